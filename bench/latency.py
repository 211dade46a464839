"""ONNX Runtime CPU latency of original vs pruned models, next to the MACs ratio.

For every model, prune at ``--ratio`` with each ``--round-to`` value, then time
the original and every pruned variant in ONNX Runtime (CPUExecutionProvider,
ORT_ENABLE_ALL, 2 intra-op threads, 1 inter-op thread) at each batch size.

How a variant is timed (``measure_child``): in a fresh subprocess of its own
(so no idle thread pool, allocator arena or page cache state of another
session is around), one InferenceSession is created, and per batch size it
runs a warm-up (>= 5 runs and >= 0.5 s), then >= ``--runs`` timed runs of that
one model in a row (and at least ``--min-seconds`` of them, so that the
millisecond-scale models get enough samples to average out scheduler noise),
each timed with ``time.perf_counter`` around ``sess.run``.  Models are never
alternated run by run.

With ``--rounds`` > 1 each model's variants are measured again in reverse
order (original, r1, r8, ..., then ..., r8, r1, original), so that a slow
drift of the shared machine affects original and pruned alike; the block with
the lowest median is kept for each variant (noise from other tenants only ever
adds time), and every round's median is kept in the JSON. A model whose original
runs at batch 1 in under ``--short-ms`` gets at least ``--short-rounds`` rounds:
for such models the median differs by up to 2.4x from one process to the next
on this VM.

Each child also records how many cores other processes kept busy during the
block (/proc/stat); on this shared machine a block where that reaches
``--max-foreign`` is redone after waiting for a quiet moment (bounded by
``--max-wait`` / ``--max-wait-total``), and one that never gets clean is kept
but marked with a dagger in the table.

The latency ratio is pruned median / original median, both measured in the
same invocation; the target is latency ratio <= 1.2 x MACs ratio.  As a
cross-check that is little affected by other processes (they only ever add
time) the ratio of the fastest runs is reported too, with its own summary.

Results: bench/results/latency.json and bench/results/latency.md (the table is
printed too).  Nothing in here is a hard-coded figure: the recommended
``round_to`` is whatever the run measured.

    python bench/latency.py                       # all 13 torchvision models
    python bench/latency.py --models resnet50,mobilenet_v2 --round-to 1,16,auto
    python bench/latency.py --quick               # batch 1, round_to 8/16/auto, 20 runs
    python bench/latency.py --light               # + onnx-wheel light models (batch 1)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import tempfile
import time

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))
from _common import machine_info, run_child, write_results  # noqa: E402
TARGET = 1.2  # latency ratio / MACs ratio must stay at or under this
LIGHT_PREFIX = "light:"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def extra_machine_info() -> dict:
    """What bench/_common.machine_info() leaves out and latency depends on."""
    import onnxruntime

    info: dict = {"onnxruntime": onnxruntime.__version__,
                  "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        fields: dict = {}
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
        flags = set(fields.get("flags", "").split())
        info.update(cpu_family=fields.get("cpu family"), cpu_model_number=fields.get("model"),
                    simd=[f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                                      "avx512_bf16", "amx_tile") if f in flags],
                    hypervisor="hypervisor" in flags)
    except OSError:
        pass
    try:
        import graphprune
        info["graphprune_default_round_to"] = graphprune.DEFAULT_ROUND_TO
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def cpu_busy_seconds() -> float | None:
    """CPU-seconds the whole machine has been busy (all cores; steal counts as busy)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest is inside user)
    busy = vals[0] + vals[1] + vals[2] + vals[5] + vals[6] + (vals[7] if len(vals) > 7 else 0)
    return busy / _CLK_TCK


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_cores(seconds: float = 1.0) -> float | None:
    """Cores busy over the next ``seconds`` (this process sleeps meanwhile)."""
    a = cpu_busy_seconds()
    time.sleep(seconds)
    b = cpu_busy_seconds()
    return None if a is None or b is None else (b - a) / seconds


def wait_for_quiet(threshold: float, max_wait: float) -> tuple[float, float | None]:
    """Sleep until other processes use < ``threshold`` cores (or ``max_wait`` passes).

    Returns (seconds waited, last busy-cores reading).
    """
    t0 = time.perf_counter()
    busy = machine_busy_cores(0.5)
    while busy is not None and busy >= threshold and time.perf_counter() - t0 < max_wait:
        busy = machine_busy_cores(2.0)
    return time.perf_counter() - t0, busy


# --------------------------------------------------------------------------
# the measuring child
# --------------------------------------------------------------------------

def _stats(samples_s: list[float]) -> dict:
    import numpy as np

    ms = np.asarray(samples_s) * 1e3
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(q50), "iqr_ms": float(q75 - q25), "q25_ms": float(q25),
            "q75_ms": float(q75), "min_ms": float(ms.min()), "mean_ms": float(ms.mean()),
            "runs": int(ms.size)}


def measure_child(spec: dict) -> dict:
    """Time one model file at each batch size (runs inside the child process).

    Besides the timings, each block records ``foreign_cores``: how many cores
    the rest of the machine kept busy meanwhile (machine-wide busy CPU time
    from /proc/stat, steal included, minus this process's own CPU time, over
    the block's wall time).  The parent re-measures a block where that is high.
    """
    import resource

    import numpy as np
    import onnxruntime as ort

    def own_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = spec["threads"]
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(spec["path"], opts, providers=["CPUExecutionProvider"])
    out = {"session_s": time.perf_counter() - t0, "batches": {}}
    inp = sess.get_inputs()[0]
    rng = np.random.default_rng(0)
    for batch in spec["batches"]:
        shape = [batch if i == 0 else d for i, d in enumerate(inp.shape)]
        if not all(isinstance(d, int) for d in shape):
            raise ValueError(f"input {inp.name} has unknown dims {inp.shape}")
        feeds = {inp.name: rng.standard_normal(shape).astype(np.float32)}
        start = time.perf_counter()
        warm = 0
        while warm < spec["warmup"] or time.perf_counter() - start < spec["warmup_seconds"]:
            sess.run(None, feeds)
            warm += 1
        samples: list[float] = []
        busy0, own0, start = cpu_busy_seconds(), own_cpu(), time.perf_counter()
        while (len(samples) < spec["runs"]
               or (time.perf_counter() - start < spec["min_seconds"]
                   and len(samples) < spec["max_runs"])):
            t = time.perf_counter()
            sess.run(None, feeds)
            samples.append(time.perf_counter() - t)
        wall, busy1, own1 = time.perf_counter() - start, cpu_busy_seconds(), own_cpu()
        stats = {**_stats(samples), "warmup_runs": warm, "block_s": wall,
                 "own_cores": (own1 - own0) / wall}
        if busy0 is not None and busy1 is not None:
            stats["foreign_cores"] = max(0.0, (busy1 - busy0 - (own1 - own0)) / wall)
        out["batches"][str(batch)] = stats
    del sess
    return out


_CHILD_CODE = """
_sys.path.insert(0, {bench!r})
import latency as _latency
emit(_latency.measure_child(_json.loads({spec!r})))
"""


def measure_block(path: pathlib.Path, batch: int, args, waits: dict) -> dict:
    """Measure one (model file, batch) block, retrying when other processes got in the way.

    Before each attempt, waits (within the run's waiting budget) for the
    machine to be quiet.  Returns the first clean block, else the attempt
    with the lowest median, marked ``contended``.
    """
    spec = {"path": str(path), "batches": [batch], "threads": args.threads,
            "warmup": args.warmup, "warmup_seconds": args.warmup_seconds,
            "runs": args.runs, "min_seconds": args.min_seconds, "max_runs": args.max_runs}
    attempts = []
    for _attempt in range(args.attempts):
        budget = max(0.0, args.max_wait_total - waits["total"])
        waited, busy = wait_for_quiet(args.max_foreign, min(args.max_wait, budget))
        waits["total"] += waited
        out = run_child(_CHILD_CODE.format(bench=str(BENCH), spec=json.dumps(spec)),
                        timeout=args.child_timeout)
        if not out.get("ok"):
            raise RuntimeError(out.get("error", "child failed"))
        block = out["batches"][str(batch)]
        block.update(waited_s=waited, busy_before=busy, session_s=out["session_s"])
        attempts.append(block)
        foreign = block.get("foreign_cores")
        if foreign is None or foreign < args.max_foreign:
            block["contended"] = False
            break
    else:
        block = min(attempts, key=lambda b: b["median_ms"])
        block["contended"] = True
        waits["contended"] += 1
    waits["blocks"] += 1
    waits["retried"] += len(attempts) > 1
    block["attempts"] = len(attempts)
    block["attempt_medians_ms"] = [a["median_ms"] for a in attempts]
    return block


# --------------------------------------------------------------------------
# pruning and bookkeeping (parent)
# --------------------------------------------------------------------------

def _channel_stats(model) -> dict:
    """How many Conv/Gemm output-channel counts are multiples of 8 / 16 (kernel-friendly)."""
    import numpy as np

    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    counts = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            shape = dims.get(node.input[1])
            if shape:
                counts.append(shape[0] if node.op_type == "Conv" else shape[-1])
    if not counts:
        return {"layers": 0}
    c = np.asarray(counts)
    return {"layers": int(c.size), "mult8": float((c % 8 == 0).mean()),
            "mult16": float((c % 16 == 0).mean())}


def _model_source(name: str):
    """(path or ModelProto, batches allowed) for a model name."""
    sys.path.insert(0, str(ROOT))
    from models import zoo

    if name.startswith(LIGHT_PREFIX):
        return zoo.light_model(name[len(LIGHT_PREFIX):]), (1,)
    return zoo.torchvision_model(name, "dynamo"), None


def _geomean(values) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def bench_model(name: str, args, tmpdir: pathlib.Path, waits: dict) -> dict:
    import onnx
    import graphprune

    entry: dict = {"model": name, "variants": {}, "errors": {}}
    src, allowed = _model_source(name)
    batches = [b for b in args.batches if allowed is None or b in allowed]
    entry["batches"] = batches
    if not batches:
        entry["errors"]["batches"] = f"none of {args.batches} allowed (static batch {allowed})"
        return entry
    orig_path = tmpdir / f"{_safe(name)}.orig.onnx"
    if isinstance(src, onnx.ModelProto):
        onnx.save(src, str(orig_path))
    else:
        orig_path = pathlib.Path(src)
    files = {"original": orig_path}
    entry["variants"]["original"] = {"round_to": None}

    for rt in args.round_to:
        key = f"r{rt}"
        t0 = time.perf_counter()
        try:
            res = graphprune.prune(src if isinstance(src, onnx.ModelProto) else str(src),
                                   ratio=args.ratio, round_to=rt, verify=False)
        except Exception as exc:  # noqa: BLE001 - report and go on
            entry["errors"][key] = f"prune: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            log(f"  {name} round_to={rt}: prune failed: {entry['errors'][key]}")
            continue
        path = tmpdir / f"{_safe(name)}.{key}.onnx"
        graphprune.write(res, path)
        rep = res.report
        entry["variants"][key] = {
            "round_to": rt, "plan_round_to": res.plan.round_to,
            "prune_s": time.perf_counter() - t0,
            "macs_before": rep.macs_before, "macs_after": rep.macs_after,
            "params_before": rep.params_before, "params_after": rep.params_after,
            "mac_ratio": rep.mac_ratio, "param_ratio": rep.param_ratio,
            "groups_found": rep.groups_found, "groups_pruned": rep.groups_pruned,
            "channels": _channel_stats(res.model),
        }
        files[key] = path
        if "macs" not in entry:
            entry["macs"], entry["params"] = rep.macs_before, rep.params_before
            orig_model = src if isinstance(src, onnx.ModelProto) else onnx.load(str(src))
            entry["variants"]["original"]["channels"] = _channel_stats(orig_model)
            del orig_model
        del res
        log(f"  {name} round_to={rt}: MACs x{rep.mac_ratio:.3f} params x{rep.param_ratio:.3f} "
            f"({time.perf_counter() - t0:.1f} s)")
    del src

    order = list(files)
    measured: dict[str, dict[str, list[dict]]] = {k: {str(b): [] for b in batches} for k in order}
    rounds, rnd = args.rounds, 0
    while rnd < rounds:
        for key in (order if rnd % 2 == 0 else order[::-1]):
            for b in batches:
                try:
                    block = measure_block(files[key], b, args, waits)
                except Exception as exc:  # noqa: BLE001
                    entry["errors"][f"{key}.b{b}.round{rnd}"] = f"measure: {exc}"
                    log(f"  {name} {key} b{b} round {rnd}: measure failed: {exc}")
                    continue
                measured[key][str(b)].append(block)
                note = (f", waited {block['waited_s']:.0f} s" if block["waited_s"] >= 1 else "")
                note += (f", {block['attempts']} attempts" if block["attempts"] > 1 else "")
                note += " CONTENDED" if block["contended"] else ""
                log(f"  {name} {key:>8} b{b:<3} round {rnd}: {block['median_ms']:8.2f} ms "
                    f"(iqr {block['iqr_ms']:.2f}, n={block['runs']}, "
                    f"others {block.get('foreign_cores', float('nan')):.2f} cores{note})")
        if rnd == 0:
            rounds = max(rounds, _rounds_for(measured["original"], args))
            entry["rounds"] = rounds
        rnd += 1

    for key, per_batch in measured.items():
        var = entry["variants"][key]
        var["latency"] = {}
        for b, blocks in per_batch.items():
            if not blocks:
                continue
            clean = [x for x in blocks if not x["contended"]] or blocks
            best = min(clean, key=lambda x: x["median_ms"])
            var["latency"][b] = {**best, "round_medians_ms": [x["median_ms"] for x in blocks],
                                 "round_contended": [x["contended"] for x in blocks],
                                 "fastest_run_ms": min(x["min_ms"] for x in blocks)}
    orig_lat = entry["variants"]["original"].get("latency", {})
    for key, var in entry["variants"].items():
        if key == "original":
            continue
        var["latency_ratio"], var["latency_over_macs"] = {}, {}
        var["fastest_ratio"], var["fastest_over_macs"] = {}, {}
        for b, lat in var.get("latency", {}).items():
            if b in orig_lat:
                ratio = lat["median_ms"] / orig_lat[b]["median_ms"]
                var["latency_ratio"][b] = ratio
                var["latency_over_macs"][b] = ratio / var["mac_ratio"]
                # fastest run vs fastest run: a cross-check that noise from other processes
                # (which only ever adds time) disturbs much less than the median
                fast = lat["fastest_run_ms"] / orig_lat[b]["fastest_run_ms"]
                var["fastest_ratio"][b] = fast
                var["fastest_over_macs"][b] = fast / var["mac_ratio"]
    for path in files.values():
        if path.parent == tmpdir:
            path.unlink(missing_ok=True)
    return entry


def _rounds_for(original: dict[str, list[dict]], args) -> int:
    """Rounds for a model whose original runs at batch 1 in under --short-ms: at least
    --short-rounds. Each round times every variant in a fresh process, and for such small
    models the steady-state median differs widely from one process to the next on this VM
    with nothing else running (MobileNetV3-Small at batch 1, the original, four processes:
    1.12, 2.24, 2.72, 2.07 ms), so the lowest of a few processes' medians is what compares
    fairly."""
    blocks = original.get("1") or []
    if blocks and min(x["median_ms"] for x in blocks) < args.short_ms:
        return args.short_rounds
    return args.rounds


def _safe(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


# --------------------------------------------------------------------------
# summary and report
# --------------------------------------------------------------------------

def summarize(entries: list[dict], round_tos: list[int], batches: list[int],
              basis: str = "latency") -> dict:
    """Per round_to: geomean latency ratio and cells meeting the target; the recommendation.

    ``basis`` "latency" uses median ratios (the figures of record), "fastest" the
    fastest-run ratios (the cross-check).
    """
    ratio_key, over_key = f"{basis}_ratio", f"{basis}_over_macs"
    per_rt = {}
    for rt in round_tos:
        key = f"r{rt}"
        row = {"round_to": rt, "per_batch": {}}
        all_ratios, all_met, all_cells = [], 0, 0
        for b in batches:
            ratios, met, cells, missing, contended = [], 0, 0, [], 0
            for e in entries:
                var = e["variants"].get(key)
                if not var or str(b) not in var.get(ratio_key, {}):
                    continue
                ratios.append(var[ratio_key][str(b)])
                cells += 1
                orig = e["variants"]["original"]["latency"].get(str(b), {})
                contended += bool(var["latency"][str(b)].get("contended")
                                  or orig.get("contended"))
                over = var[over_key][str(b)]
                if over <= TARGET:
                    met += 1
                else:
                    missing.append({"model": e["model"], "latency_over_macs": over})
            row["per_batch"][str(b)] = {"geomean_latency_ratio": _geomean(ratios),
                                        "met": met, "cells": cells, "missing": missing,
                                        "contended_cells": contended}
            all_ratios += ratios
            all_met += met
            all_cells += cells
        row["geomean_latency_ratio"] = _geomean(all_ratios)
        row["geomean_mac_ratio"] = _geomean(
            [e["variants"][key]["mac_ratio"] for e in entries if key in e["variants"]])
        row["met"], row["cells"] = all_met, all_cells
        per_rt[key] = row
    candidates = [r for r in per_rt.values() if r["cells"] and r["geomean_latency_ratio"]]
    best = None
    if candidates:
        top = max(r["met"] for r in candidates)
        best = min((r for r in candidates if r["met"] == top),
                   key=lambda r: r["geomean_latency_ratio"])["round_to"]
    return {"basis": basis, "per_round_to": per_rt, "recommended_round_to": best,
            "rule": "most (model, batch) cells with latency/MACs <= "
                    f"{TARGET}, ties broken by lowest geometric-mean latency ratio"}


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(data: dict) -> str:
    cfg, info, summ = data["config"], data["machine"], data["summary"]
    out = ["# ONNX Runtime CPU latency: original vs pruned", ""]
    out.append(f"{info.get('date')}, {info.get('cpu_model')} (family {info.get('cpu_family')} "
               f"model {info.get('cpu_model_number')}; {', '.join(info.get('simd', []))}), "
               f"nproc {info.get('nproc')}, onnxruntime {info.get('onnxruntime')}, "
               f"git {str((info.get('git') or {}).get('commit'))[:10]}"
               f"{' (dirty)' if (info.get('git') or {}).get('dirty') else ''}.")
    out.append(f"ratio {cfg['ratio']}, {cfg['threads']} intra-op threads, 1 inter-op, "
               f"ORT_ENABLE_ALL; per variant and batch, in a process of its own: warm-up "
               f">= {cfg['warmup']} runs and {cfg['warmup_seconds']} s, then >= {cfg['runs']} "
               f"timed runs (and >= {cfg['min_seconds']} s) of that one model in a row. "
               f"{cfg['rounds']} round(s) (order reversed each round; at least "
               f"{cfg.get('short_rounds', cfg['rounds'])} for a model under "
               f"{cfg.get('short_ms', 0)} ms at batch 1); a block during which "
               f"other processes kept >= {cfg['max_foreign']} cores busy is re-measured "
               f"(up to {cfg['attempts']} attempts); the lowest clean block median is kept. "
               f"Latency ratio = pruned median / original median; "
               f"target latency/MACs <= {TARGET}. "
               f"† = no clean block (other processes busy throughout).")
    out.append("")
    out.append("| model | round_to | batch | MACs x | params x | orig ms (IQR) | pruned ms (IQR) "
               "| latency x | lat/MACs | fastest x | ch%16 |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for e in data["models"]:
        orig = e["variants"].get("original", {}).get("latency", {})
        for key, var in e["variants"].items():
            if key == "original":
                continue
            for b in e["batches"]:
                lat = var.get("latency", {}).get(str(b))
                o = orig.get(str(b))
                lom = var.get("latency_over_macs", {}).get(str(b))
                flag = "" if lom is None or lom <= TARGET else " **miss**"
                if (lat and lat.get("contended")) or (o and o.get("contended")):
                    flag += " †"
                out.append(
                    f"| {e['model']} | {var['round_to']} | {b} | {var['mac_ratio']:.3f} | "
                    f"{var['param_ratio']:.3f} | "
                    f"{_f(o and o['median_ms'])} ({_f(o and o['iqr_ms'])}) | "
                    f"{_f(lat and lat['median_ms'])} ({_f(lat and lat['iqr_ms'])}) | "
                    f"{_f(var.get('latency_ratio', {}).get(str(b)), '{:.3f}')} | "
                    f"{_f(lom)}{flag} | "
                    f"{_f(var.get('fastest_ratio', {}).get(str(b)), '{:.3f}')} | "
                    f"{_f(var.get('channels', {}).get('mult16'), '{:.0%}')} |")
        for k, err in e.get("errors", {}).items():
            out.append(f"| {e['model']} | {k} | - | - | - | - | - | - | error: "
                       f"{err.replace('|', '/')[:120]} | - | - |")
    out.append("")
    out.append("fastest x = fastest pruned run / fastest original run over all blocks, a "
               "cross-check little affected by other processes; ch%16 = share of the pruned "
               "model's Conv/Gemm output-channel counts that are multiples of 16.")
    for title, summ_ in (("Summary (medians)", summ), ("Cross-check (fastest runs)",
                                                         data.get("summary_fastest"))):
        if not summ_:
            continue
        out += ["", f"## {title}", "",
                "| round_to | geomean MACs x | geomean latency x (all) | met (all) | "
                + " | ".join(f"geomean latency x b{b} | met b{b}" for b in cfg["batches"])
                + " | cells with †|",
                "|---:|---:|---:|---:|" + "---:|---:|" * len(cfg["batches"]) + "---:|"]
        for row in summ_["per_round_to"].values():
            cells = [f"{_f(row['per_batch'][str(b)]['geomean_latency_ratio'], '{:.3f}')} | "
                     f"{row['per_batch'][str(b)]['met']}/{row['per_batch'][str(b)]['cells']}"
                     for b in cfg["batches"] if str(b) in row["per_batch"]]
            tainted = sum(pb["contended_cells"] for pb in row["per_batch"].values())
            out.append(f"| {row['round_to']} | {_f(row['geomean_mac_ratio'], '{:.3f}')} | "
                       f"{_f(row['geomean_latency_ratio'], '{:.3f}')} | "
                       f"{row['met']}/{row['cells']} | " + " | ".join(cells)
                       + f" | {tainted} |")
        out.append("")
        best = summ_["recommended_round_to"]
        if best is None:
            out.append("No recommendation: nothing was measured.")
            continue
        row = summ_["per_round_to"][f"r{best}"]
        label = "Recommended round_to" if summ_ is summ else "Fastest-run basis would pick"
        out.append(f"**{label}: {best}** ({summ_['rule']}): geomean latency "
                   f"x{row['geomean_latency_ratio']:.3f} at geomean MACs "
                   f"x{row['geomean_mac_ratio']:.3f}, {row['met']}/{row['cells']} cells "
                   f"within {TARGET}x of the MACs ratio.")
        misses = [f"{m['model']} b{b} ({m['latency_over_macs']:.2f}x)"
                  for b, pb in row["per_batch"].items() for m in pb["missing"]]
        if misses:
            out.append(f"Missing the target with round_to={best}: {', '.join(misses)}.")
    blocks = data.get("blocks", {})
    out.append(f"\nBlocks measured: {blocks.get('total', 0)}, re-measured because other "
               f"processes were busy: {blocks.get('retried', 0)}, still contended after "
               f"every attempt: {blocks.get('contended', 0)} ({blocks.get('kept_contended', 0)} "
               f"of them are a figure in the table, marked †); waited {data.get('waited_s', 0) / 60:.1f} min "
               f"for a quiet machine. Total time {data['elapsed_s'] / 60:.1f} min.")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _round_tos(text: str) -> list:
    """--round-to values: positive ints and/or 'auto' (graphprune's default)."""
    from graphprune.policy import parse_round_to

    try:
        return [parse_round_to(x) for x in text.split(",") if x.strip()]
    except Exception as err:  # noqa: BLE001 - argparse reports it
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))
    from models.zoo import LIGHT_MODELS, TORCHVISION_MODELS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=None,
                   help="comma list (torchvision names, or light:NAME); default all torchvision")
    p.add_argument("--light", action="store_true", help="add the onnx-wheel light models (batch 1)")
    p.add_argument("--round-to", default="1,8,16,auto", type=_round_tos,
                   help="comma list of ints and/or 'auto' (the default rounding)")
    p.add_argument("--batches", default="1,16", type=_ints)
    p.add_argument("--runs", type=int, default=20, help="timed runs per block (>= 20 advised)")
    p.add_argument("--min-seconds", type=float, default=1.0,
                   help="keep timing until this many seconds have passed (up to --max-runs)")
    p.add_argument("--max-runs", type=int, default=300)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--warmup-seconds", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=2,
                   help="measure every variant this many times (order reversed each round)")
    p.add_argument("--short-ms", type=float, default=10.0,
                   help="a model whose original takes less than this at batch 1 ...")
    p.add_argument("--short-rounds", type=int, default=4,
                   help="... is measured in at least this many rounds (fresh processes)")
    p.add_argument("--ratio", type=float, default=0.4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-foreign", type=float, default=0.25,
                   help="cores other processes may keep busy during a block before it is redone")
    p.add_argument("--attempts", type=int, default=2, help="tries per block when contended")
    p.add_argument("--max-wait", type=float, default=90,
                   help="seconds to wait for a quiet machine before one block")
    p.add_argument("--max-wait-total", type=float, default=900,
                   help="seconds of such waiting in the whole run")
    p.add_argument("--child-timeout", type=float, default=900)
    p.add_argument("--quick", action="store_true",
                   help="batch 1 only, round_to 8,16,auto, 20 runs, 1 round")
    p.add_argument("--out", default="latency", help="results basename in bench/results/")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.round_to, args.runs, args.rounds = [1], [8, 16, "auto"], 20, 1
        args.short_rounds = 1
    if (args.runs < 1 or args.rounds < 1 or args.short_rounds < 1 or args.attempts < 1
            or not args.round_to or not args.batches or min(args.batches) < 1):
        p.error("--runs, --rounds, --short-rounds, --attempts, --round-to and --batches must be "
                "positive")

    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        names = list(TORCHVISION_MODELS)
    if args.light:
        names += [LIGHT_PREFIX + n for n in LIGHT_MODELS if LIGHT_PREFIX + n not in names]
    bad = [n for n in names if n not in TORCHVISION_MODELS
           and not (n.startswith(LIGHT_PREFIX) and n[len(LIGHT_PREFIX):] in LIGHT_MODELS)]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {list(TORCHVISION_MODELS)} "
                f"or light:NAME with NAME in {list(LIGHT_MODELS)}")

    info = {**machine_info(), **extra_machine_info()}
    config = {k: v for k, v in vars(args).items() if k not in ("child_timeout", "out")}
    config["models"] = names
    log(f"{len(names)} models, round_to {args.round_to}, batches {args.batches}, "
        f"{args.rounds} round(s); {info['cpu_model']}, nproc {info['nproc']}, "
        f"ort {info['onnxruntime']}, load {info['loadavg_start']}")
    start = time.perf_counter()
    entries: list[dict] = []
    waits = {"total": 0.0, "blocks": 0, "retried": 0, "contended": 0}
    partial = RESULTS / f"{args.out}.partial.json"

    def collect() -> dict:
        info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        blocks = [lat for e in entries for v in e["variants"].values()
                  for lat in v.get("latency", {}).values()]
        return {"machine": info, "config": config, "target_latency_over_macs": TARGET,
                "summary": summarize(entries, args.round_to, args.batches),
                "summary_fastest": summarize(entries, args.round_to, args.batches, "fastest"),
                "blocks": {"total": waits["blocks"], "retried": waits["retried"],
                           "contended": waits["contended"],
                           "kept_contended": sum(bool(x.get("contended")) for x in blocks)},
                "elapsed_s": time.perf_counter() - start, "waited_s": waits["total"],
                "models": entries}

    with tempfile.TemporaryDirectory(prefix="graphprune-latency-") as tmp:
        for i, name in enumerate(names, 1):
            log(f"[{i}/{len(names)}] {name}")
            t0 = time.perf_counter()
            try:
                entries.append(bench_model(name, args, pathlib.Path(tmp), waits))
            except Exception as exc:  # noqa: BLE001 - a model failing must not end the run
                log(f"  {name}: failed: {type(exc).__name__}: {exc}")
                entries.append({"model": name, "variants": {}, "batches": [],
                                "errors": {"model": f"{type(exc).__name__}: {exc}"}})
            log(f"  {name} done in {time.perf_counter() - t0:.0f} s "
                f"(total {(time.perf_counter() - start) / 60:.1f} min)")
            RESULTS.mkdir(parents=True, exist_ok=True)  # partial results survive a kill
            partial.write_text(json.dumps(collect(), indent=1, default=str) + "\n")
    data = collect()
    rows = data.pop("models")
    jpath, mpath = write_results(args.out, rows, markdown({**data, "models": rows}), extra=data)
    partial.unlink(missing_ok=True)
    log(f"wrote {jpath} and {mpath}")
    print(f"recommended round_to: {data['summary']['recommended_round_to']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
