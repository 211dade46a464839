"""bench/compile: how long the whole graphprune run takes, and how much memory, next to Torch-Pruning.

    python bench/compile.py [--models resnet50,light_resnet50,...] [--out bench/results]

graphprune: the CLI-equivalent run ``graphprune.prune(path, ratio) + graphprune.write(...)``
(load → canonicalize → analyze → plan → apply → verify → write), once with ``verify=True`` (the
default) and once with ``verify=False``, on the dynamo export of each torchvision model (from
``models.zoo``) and on the onnx wheel's light ResNet-50.  Torch-Pruning 1.6: the same torchvision
architecture (random init, eval) pruned at the same ratio with ``BasePruner`` +
``MagnitudeImportance(p=2)`` (final classifier ignored), then exported to ONNX, which is the only
way a Torch-Pruning user gets an ONNX file: with the legacy exporter (opset 17) and with the
dynamo exporter, each in its own child.

Why this shape:
* every measurement is a fresh subprocess, so ``ru_maxrss`` is that run's own peak; the RSS right
  after the imports is the baseline, and peak − baseline is what the run itself costs;
* imports are outside the timed region on both sides (their seconds are kept in the JSON);
* everything is repeated and the median reported, because the machine is shared and noisy
  (single Torch-Pruning prune timings were seen to vary 10× between runs); a Torch-Pruning child
  takes seconds to tens of seconds, so ``--tp-repeats 1`` is there for a quick run;
* before each run it waits (bounded: ``--max-wait``, ``--max-wait-total``) for other processes
  to leave a core free, records the busy-core reading it started under, and records process CPU
  seconds next to wall seconds: CPU time suffers far less from a busy neighbour;
* a step-by-step RSS/time trace comes from graphprune's public ``progress`` callback, which fires
  at the start of each step, so the step that raises the high-water mark can be named.

Target (issue): the whole ResNet-50 run under 1 s, peak memory under 2× the file size (checked
here as (peak − baseline) / file size; the absolute peak / file size is in the JSON as well).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import RESULTS_DIR, machine_info, run_child, write_results  # noqa: E402
from models.zoo import LIGHT_MODELS, TORCHVISION_MODELS  # noqa: E402  (imports no torch: the parent stays small)

RATIO = 0.4
LIGHT_PREFIX = "light_"
GP_TIMEOUT = 600
TP_TIMEOUT = 600
TP_EXPORTERS = ("legacy", "dynamo")

# One graphprune run: imports, baseline, then prune + write timed as one (what the CLI does).
GP_CHILD = r'''
import time
t0 = time.perf_counter()
import graphprune
import_s = time.perf_counter() - t0
base_rss, base_peak = rss_mb(), peak_mb()
marks = []
def progress(msg):
    marks.append([msg, time.perf_counter(), rss_mb(), hwm_mb()])
try:
    t, c = time.perf_counter(), time.process_time()
    result = graphprune.prune(PATH, ratio=RATIO, verify=VERIFY, progress=progress)
    t_prune = time.perf_counter()
    marks.append(["<write>", t_prune, rss_mb(), hwm_mb()])
    graphprune.write(result, OUT)
    t_end, c_end = time.perf_counter(), time.process_time()
    marks.append(["<end>", t_end, rss_mb(), hwm_mb()])
except Exception as err:
    emit({"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
          "import_s": import_s, "baseline_rss_mb": base_rss, "peak_mb": peak_mb(),
          "hwm_mb": hwm_mb()})
    raise SystemExit(0)
import os, re
rep = result.report
# One segment per progress message (each fires as its step starts), labelled by the message
# without paths and counts, so the trace survives stages being added or renamed.
trace = [{"step": re.sub(r"\d+", "N", re.sub(r"\S*/\S*", "", m[0])).strip(),
          "s": marks[i + 1][1] - m[1], "rss_end_mb": marks[i + 1][2],
          "peak_end_mb": marks[i + 1][3], "peak_growth_mb": marks[i + 1][3] - m[3]}
         for i, m in enumerate(marks[:-1])]
emit({"ok": True, "total_s": t_end - t, "total_cpu_s": c_end - c, "prune_s": t_prune - t, "write_s": t_end - t_prune,
      "seconds": dict(rep.seconds, write=t_end - t_prune), "import_s": import_s,
      "baseline_rss_mb": base_rss, "baseline_peak_mb": base_peak, "peak_mb": peak_mb(),
      "hwm_mb": hwm_mb(),
      "rss_after_prune_mb": marks[-2][2], "stage_trace": trace,
      "raw_marks": [[m[0], m[1] - t, m[2], m[3]] for m in marks],
      "out_bytes": os.path.getsize(OUT), "groups_pruned": rep.groups_pruned,
      "groups_found": rep.groups_found, "param_ratio": rep.param_ratio, "mac_ratio": rep.mac_ratio,
      "cosine": rep.fidelity.cosine if rep.fidelity is not None else None})
'''

# One Torch-Pruning run: build, prune (DependencyGraph build + step), export with EXPORTER.
TP_CHILD = r'''
import time, warnings, os
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import torch, torchvision
import torch_pruning as tp
if EXPORTER == "dynamo":
    import onnxscript  # the dynamo exporter's lazy import: keep it out of the timed export
import_s = time.perf_counter() - t0
base_rss, base_peak = rss_mb(), peak_mb()
out = {"ok": False, "import_s": import_s, "baseline_rss_mb": base_rss, "exporter": EXPORTER,
       "torch_threads": torch.get_num_threads()}
stage = "build"
try:
    torch.manual_seed(0)
    kwargs = {"weights": None}
    if NAME == "googlenet":  # as models.zoo exports it: no training-only aux heads
        kwargs.update(aux_logits=False, init_weights=True)
    t = time.perf_counter()
    model = torchvision.models.get_model(NAME, **kwargs).eval()
    out["build_s"] = time.perf_counter() - t
    example = torch.randn(1, 3, 224, 224)
    # the final classifier: the last Linear/Conv producing the 1000 classes
    heads = [(n, m) for n, m in model.named_modules()
             if (isinstance(m, torch.nn.Linear) and m.out_features == 1000)
             or (isinstance(m, torch.nn.Conv2d) and m.out_channels == 1000)]
    out["ignored_layer"] = heads[-1][0]
    params_before = sum(p.numel() for p in model.parameters())
    stage = "dependency graph"
    t, c = time.perf_counter(), time.process_time()
    pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=RATIO, ignored_layers=[heads[-1][1]])
    out["dg_build_s"] = time.perf_counter() - t
    stage = "pruner.step"
    t = time.perf_counter()
    pruner.step()
    out["step_s"] = time.perf_counter() - t
    out["prune_s"] = out["dg_build_s"] + out["step_s"]
    out["prune_cpu_s"] = time.process_time() - c
    out["peak_after_prune_mb"] = peak_mb()
    out["param_ratio"] = sum(p.numel() for p in model.parameters()) / params_before
    stage = f"{EXPORTER} export"
    model.eval()
    io = {"input_names": ["input"], "output_names": ["output"],
          "dynamic_axes": {"input": {0: "batch"}, "output": {0: "batch"}}}
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
        if EXPORTER == "legacy":
            torch.onnx.export(model, (example,), OUT, dynamo=False, opset_version=17, **io)
        else:
            program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, **io)
            program.save(OUT, external_data=False)
    out["export_s"] = time.perf_counter() - t
    out["export_cpu_s"] = time.process_time() - c
    out["total_s"] = out["prune_s"] + out["export_s"]
    out["total_cpu_s"] = out["prune_cpu_s"] + out["export_cpu_s"]
    out["peak_mb"], out["hwm_mb"] = peak_mb(), hwm_mb()
    out["out_bytes"] = os.path.getsize(OUT)
    out["ok"] = True
    # Not measured: is the exported file usable, and does it match the pruned torch model?
    stage = "check"
    import numpy as np, onnxruntime as ort
    sess = ort.InferenceSession(OUT, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out["ort_max_abs_diff"] = float(np.abs(got - ref).max())
    orig = torchvision.models.get_model(NAME, **kwargs).eval()
    macs_before, _ = tp.utils.count_ops_and_params(orig, example)
    macs_after, _ = tp.utils.count_ops_and_params(model, example)
    out["mac_ratio"] = macs_after / macs_before
except Exception as err:
    msg = str(err).strip().splitlines()
    if stage == "check":
        out["check_error"] = f"{type(err).__name__}: {msg[0][:300] if msg else ''}"
    else:
        import traceback
        out["ok"] = False
        out["error"] = f"{stage}: {type(err).__name__}: {msg[0][:300] if msg else ''}"
        out["traceback_tail"] = traceback.format_exc()[-1500:]
        out["peak_mb"], out["hwm_mb"] = peak_mb(), hwm_mb()
emit(out)
'''


# Materialises the input in a child, so the parent stays small (see peak()).
PREPARE_CHILD = r'''
from models.zoo import light_model, torchvision_model
if NAME.startswith("light_"):
    import onnx
    onnx.save(light_model(NAME[len("light_"):]), DEST)
    emit({"ok": True, "path": DEST})
else:
    emit({"ok": True, "path": str(torchvision_model(NAME, "dynamo"))})
'''


class Quiet:
    """Before each measurement, wait (bounded) until other processes leave a core free.

    The machine is shared: with two cores, one busy neighbour doubles a timing.  Each run
    records the busy-core reading it started under (``busy_cores_before``) either way.
    """

    def __init__(self, threshold: float = 0.7, max_wait: float = 30.0, budget: float = 900.0):
        self.threshold, self.max_wait, self.budget = threshold, max_wait, budget
        self.total = 0.0

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system irq softirq steal (idle and iowait left out)
        return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / _CLK_TCK

    def busy_cores(self, seconds: float) -> float | None:
        a = self._busy_seconds()
        time.sleep(seconds)
        b = self._busy_seconds()
        return None if a is None or b is None else (b - a) / seconds

    def wait(self) -> tuple[float, float | None]:
        t0 = time.perf_counter()
        limit = min(self.max_wait, max(0.0, self.budget - self.total))
        busy = self.busy_cores(0.3)
        while busy is not None and busy >= self.threshold and time.perf_counter() - t0 < limit:
            busy = self.busy_cores(1.0)
        waited = time.perf_counter() - t0
        self.total += waited
        return waited, busy


_CLK_TCK = os.sysconf("SC_CLK_TCK")
QUIET = Quiet()


def peak(run: dict) -> float:
    """The child's peak RSS: ru_maxrss, unless the parent's RSS at fork inflated it.

    Linux carries the RSS a process had before exec into the child's ru_maxrss, so a parent
    larger than the child would set a floor under every measurement; VmHWM starts at exec. The
    parent is kept small so the two agree; where they do not, VmHWM is used (and flagged).
    """
    hwm = run.get("hwm_mb")
    if hwm is not None and run["peak_mb"] > hwm + 8:
        run["peak_inflated_by_parent"] = True
        return hwm
    return run["peak_mb"]


def child_code(template: str, **consts) -> str:
    """The template with its UPPERCASE constants defined in front (repr'd, so paths are safe)."""
    return "".join(f"{k} = {v!r}\n" for k, v in consts.items()) + template


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def gp_runs(path: Path, verify: bool, repeats: int, workdir: Path) -> list[dict]:
    runs = []
    for i in range(repeats):
        out = workdir / f"gp_{path.stem}_{int(verify)}_{i}.onnx"
        waited, busy = QUIET.wait()
        run = run_child(child_code(GP_CHILD, PATH=str(path), OUT=str(out), RATIO=RATIO,
                                   VERIFY=verify), GP_TIMEOUT)
        out.unlink(missing_ok=True)
        run["busy_cores_before"], run["waited_s"] = busy, waited
        runs.append(run)
        log(f"  graphprune verify={verify} #{i + 1}: " + (
            f"{run['total_s']:.3f} s, peak {peak(run):.0f} MiB" if run["ok"]
            else f"FAILED {run['error']}"))
    return runs


def gp_summary(runs: list[dict], file_bytes: int) -> dict:
    """Medians over the successful repeats (per-stage seconds and stage peak growth per key)."""
    good = [r for r in runs if r["ok"]]
    if not good:
        return {"ok": False, "error": runs[0].get("error") if runs else "not run"}
    file_mb = file_bytes / 2**20
    top = median([peak(r) for r in good])
    delta = median([peak(r) - r["baseline_rss_mb"] for r in good])
    stages = {k: median([r["seconds"].get(k) for r in good]) for k in good[0]["seconds"]}
    steps = [t["step"] for t in good[0]["stage_trace"]]
    growth = {k: median([t["peak_growth_mb"] for r in good for t in r["stage_trace"]
                         if t["step"] == k]) for k in steps}
    step_s = {k: median([t["s"] for r in good for t in r["stage_trace"] if t["step"] == k])
              for k in steps}
    return {"ok": True, "n": len(good), "failed": len(runs) - len(good),
            "total_s": median([r["total_s"] for r in good]),
            "total_s_all": [r["total_s"] for r in good],
            "total_cpu_s": median([r.get("total_cpu_s") for r in good]),
            "busy_cores_before": [r.get("busy_cores_before") for r in runs],
            "seconds": stages, "step_seconds": step_s, "step_peak_growth_mb": growth,
            "import_s": median([r["import_s"] for r in good]),
            "baseline_rss_mb": median([r["baseline_rss_mb"] for r in good]),
            "peak_mb": top, "peak_minus_baseline_mb": delta,
            "peak_inflated_by_parent": any(r.get("peak_inflated_by_parent") for r in good),
            "peak_over_file": top / file_mb, "peak_minus_baseline_over_file": delta / file_mb,
            "rss_after_prune_mb": median([r["rss_after_prune_mb"] for r in good]),
            "out_bytes": good[0]["out_bytes"], "groups_pruned": good[0]["groups_pruned"],
            "groups_found": good[0]["groups_found"], "param_ratio": good[0]["param_ratio"],
            "mac_ratio": good[0]["mac_ratio"], "cosine": good[0]["cosine"]}


def tp_runs(name: str, exporter: str, repeats: int, workdir: Path) -> list[dict]:
    runs = []
    for i in range(repeats):
        out = workdir / f"tp_{name}_{exporter}_{i}.onnx"
        waited, busy = QUIET.wait()
        run = run_child(child_code(TP_CHILD, NAME=name, OUT=str(out), RATIO=RATIO,
                                   EXPORTER=exporter), TP_TIMEOUT)
        out.unlink(missing_ok=True)
        run["busy_cores_before"], run["waited_s"] = busy, waited
        runs.append(run)
        log(f"  torch-pruning + {exporter} export #{i + 1}: " + (
            f"prune {run['prune_s']:.2f} s, export {run['export_s']:.2f} s, "
            f"peak {peak(run):.0f} MiB" if run["ok"] else f"FAILED {run['error']}"))
    return runs


def tp_summary(runs: list[dict]) -> dict:
    good = [r for r in runs if r["ok"]]
    if not good:
        return {"ok": False, "error": runs[0].get("error") if runs else "not run"}
    keys = ("build_s", "dg_build_s", "step_s", "prune_s", "export_s", "total_s", "import_s",
            "prune_cpu_s", "export_cpu_s", "total_cpu_s",
            "baseline_rss_mb", "peak_after_prune_mb")
    summary = {k: median([r.get(k) for r in good]) for k in keys}
    summary["peak_mb"] = median([peak(r) for r in good])
    summary["busy_cores_before"] = [r.get("busy_cores_before") for r in runs]
    summary["peak_minus_baseline_mb"] = median([peak(r) - r["baseline_rss_mb"] for r in good])
    summary["peak_inflated_by_parent"] = any(r.get("peak_inflated_by_parent") for r in good)
    for k in ("param_ratio", "mac_ratio", "out_bytes", "ignored_layer", "ort_max_abs_diff",
              "check_error", "torch_threads"):
        summary[k] = good[0].get(k)
    return {"ok": True, "n": len(good), "failed": len(runs) - len(good), **summary}


def measure(model: str, repeats: int, tp_repeats: int, workdir: Path, skip_tp: bool) -> dict:
    row: dict = {"model": model}
    if model.startswith(LIGHT_PREFIX):
        row["source"] = f"onnx wheel light model {model[len(LIGHT_PREFIX):]} (random weights)"
    else:
        row["source"] = "torchvision, random init, dynamo export (models.zoo)"
    prep = run_child(child_code(PREPARE_CHILD, NAME=model, DEST=str(workdir / f"{model}.onnx")),
                     TP_TIMEOUT)
    if not prep["ok"]:
        row["input_error"] = prep["error"]
        log(f"{model}: input unavailable: {prep['error']}")
        return row
    path = Path(prep["path"])
    row["loadavg_before"] = os.getloadavg()
    row["git"] = machine_info()["git"]  # the code under test changes while others work
    row["file"], row["file_bytes"] = str(path), path.stat().st_size
    row["file_mb"] = row["file_bytes"] / 2**20
    log(f"{model}: {row['file_mb']:.1f} MiB")
    runs = {True: [], False: []}
    for _ in range(repeats):  # interleave verify / no-verify so drift hits both alike
        for verify in (True, False):
            runs[verify] += gp_runs(path, verify, 1, workdir)
    row["graphprune"] = gp_summary(runs[True], row["file_bytes"])
    row["graphprune_no_verify"] = gp_summary(runs[False], row["file_bytes"])
    row["graphprune_runs"] = {"verify": runs[True], "no_verify": runs[False]}
    if skip_tp or model.startswith(LIGHT_PREFIX):
        return row
    row["torch_pruning"] = {}
    for exporter in TP_EXPORTERS:
        tp_raw = tp_runs(model, exporter, tp_repeats, workdir)
        tp = tp_summary(tp_raw)
        tp["runs"] = tp_raw
        row["torch_pruning"][exporter] = tp
        if tp["ok"] and row["graphprune"]["ok"]:
            tp["gp_over_tp"] = row["graphprune"]["total_s"] / tp["total_s"]
            if row["graphprune"].get("total_cpu_s") and tp.get("total_cpu_s"):
                tp["gp_over_tp_cpu"] = row["graphprune"]["total_cpu_s"] / tp["total_cpu_s"]
            if row["graphprune_no_verify"]["ok"]:
                tp["gp_no_verify_over_tp"] = row["graphprune_no_verify"]["total_s"] / tp["total_s"]
    return row


# ---------------------------------------------------------------------------- tables

def _f(value, fmt="{:.2f}", none="—"):
    return none if value is None else fmt.format(value)


def _busy_note(rows: list[dict]) -> str:
    readings = [b for row in rows for key in ("graphprune", "graphprune_no_verify")
                for b in (row.get(key) or {}).get("busy_cores_before") or [] if b is not None]
    readings += [b for row in rows for t in (row.get("torch_pruning") or {}).values()
                 for b in t.get("busy_cores_before") or [] if b is not None]
    if not readings:
        return ""
    return (f"Other load when runs started: median {statistics.median(readings):.1f}, max "
            f"{max(readings):.1f} busy cores of {os.cpu_count()}.")


def tables(rows: list[dict], repeats: int, tp_repeats: int) -> str:
    main = ["| model | file MiB | gp s | gp s (no verify) | gp peak MiB | gp peak−base MiB "
            "| ÷ file | TP prune s | TP export s legacy / dynamo | TP peak−base MiB legacy / "
            "dynamo | gp ÷ TP wall legacy / dynamo | gp ÷ TP CPU legacy / dynamo "
            "| params kept gp / TP |",
            "|" + "---|" * 13]
    stage_names: list[str] = []
    for row in rows:
        for k in (row.get("graphprune") or {}).get("seconds") or {}:
            if k not in stage_names:
                stage_names.append(k)
    stages = ["| model | " + " | ".join(stage_names) + " | largest peak growth |",
              "|" + "---|" * (len(stage_names) + 2)]
    failures = []
    for row in rows:
        name = row["model"]
        if "input_error" in row:
            failures.append(f"- {name}: input model unavailable: {row['input_error']}")
            continue
        gp, gpn = row["graphprune"], row["graphprune_no_verify"]
        tpl = row.get("torch_pruning", {}).get("legacy", {})
        tpd = row.get("torch_pruning", {}).get("dynamo", {})
        for label, s in (("graphprune", gp), ("graphprune --no-verify", gpn),
                         ("Torch-Pruning + legacy export", tpl),
                         ("Torch-Pruning + dynamo export", tpd)):
            if s and not s.get("ok"):
                failures.append(f"- {name}: {label} failed: {s.get('error')}")
            elif s and s.get("failed"):
                failures.append(f"- {name}: {label}: {s['failed']} of {s['n'] + s['failed']} "
                                f"repeats failed")
            if s and s.get("peak_inflated_by_parent"):
                failures.append(f"- {name}: {label}: ru_maxrss was inflated by the parent's "
                                f"RSS at fork; VmHWM used for the peak")
            if s and s.get("check_error"):
                failures.append(f"- {name}: {label}: exported file check failed: "
                                f"{s['check_error']}")
        ok = gp.get("ok")
        tp_prune = tpl.get("prune_s") if tpl.get("ok") else tpd.get("prune_s")
        main.append("| " + " | ".join([
            name, _f(row["file_mb"], "{:.1f}"),
            _f(gp.get("total_s") if ok else None, "{:.3f}", "failed"),
            _f(gpn.get("total_s") if gpn.get("ok") else None, "{:.3f}", "failed"),
            _f(gp.get("peak_mb"), "{:.0f}"), _f(gp.get("peak_minus_baseline_mb"), "{:.0f}"),
            _f(gp.get("peak_minus_baseline_over_file"), "{:.1f}×"),
            _f(tp_prune, "{:.2f}", "failed" if "torch_pruning" in row else "n/a"),
            f"{_f(tpl.get('export_s'), none='failed' if tpl else 'n/a')} / "
            f"{_f(tpd.get('export_s'), none='failed' if tpd else 'n/a')}",
            f"{_f(tpl.get('peak_minus_baseline_mb'), '{:.0f}', '—')} / "
            f"{_f(tpd.get('peak_minus_baseline_mb'), '{:.0f}', '—')}",
            f"{_f(tpl.get('gp_over_tp'), '{:.3f}')} / {_f(tpd.get('gp_over_tp'), '{:.3f}')}",
            f"{_f(tpl.get('gp_over_tp_cpu'), '{:.3f}')} / "
            f"{_f(tpd.get('gp_over_tp_cpu'), '{:.3f}')}",
            f"{_f(gp.get('param_ratio'))} / "
            f"{_f(tpl.get('param_ratio') or tpd.get('param_ratio'))}",
        ]) + " |")
        if ok:
            growth = gp.get("step_peak_growth_mb") or {}
            big = max(growth, key=growth.get) if growth else None
            stages.append("| " + " | ".join(
                [name] + [_f(gp["seconds"].get(k), "{:.3f}") for k in stage_names]
                + [f"{big} +{growth[big]:.0f} MiB" if big else "—"]) + " |")
    lines = [f"## graphprune vs Torch-Pruning, ratio {RATIO}",
             "",
             f"graphprune: `prune(path, ratio={RATIO})` + `write()` (load → prune → verify → "
             f"write), median of {repeats} fresh processes; Torch-Pruning 1.6: DependencyGraph "
             f"+ `pruner.step()` (BasePruner, MagnitudeImportance(p=2), classifier ignored), "
             f"then `torch.onnx.export`, {tp_repeats} run(s) per exporter"
             + (" (once: each run takes long)" if tp_repeats == 1 else "")
             + ". Imports excluded. peak−base = ru_maxrss − RSS after imports. "
             "gp ÷ TP = graphprune total / (TP prune + export), same run, in wall seconds and "
             "in process CPU seconds (all threads; less sensitive to a busy machine). "
             + _busy_note(rows), ""]
    lines += main + ["", "graphprune `report.seconds` (median, verify run) and the step (as "
                     "named by its progress message) that raised peak RSS most:", ""] + stages
    target = next((r for r in rows if r["model"] == "resnet50" and r.get("graphprune", {})
                   .get("ok")), None)
    if target:
        gp = target["graphprune"]
        lines += ["", f"Target, ResNet-50 (torchvision, dynamo export, {target['file_mb']:.0f} "
                      f"MiB): whole run {gp['total_s']:.3f} s (target < 1 s: "
                      f"{'met' if gp['total_s'] < 1 else 'missed'}); peak − baseline "
                      f"{gp['peak_minus_baseline_over_file']:.2f}× file (target < 2×: "
                      f"{'met' if gp['peak_minus_baseline_over_file'] < 2 else 'missed'}; "
                      f"absolute peak {gp['peak_over_file']:.2f}× file)."]
    if failures:
        lines += ["", "Failures:", ""] + failures
    return "\n".join(lines)


def _parent_peak_mb() -> float:
    """This process's own peak (it must stay under the children's baselines; see peak())."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = ["resnet50", f"{LIGHT_PREFIX}resnet50"] + [m for m in TORCHVISION_MODELS
                                                          if m != "resnet50"]
    parser.add_argument("--models", default=",".join(default),
                        help="comma-separated torchvision names and/or light_<name> "
                             "(default: resnet50, light_resnet50, then all TORCHVISION_MODELS)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results directory")
    parser.add_argument("--repeats", type=int, default=3, help="graphprune runs per model")
    parser.add_argument("--tp-repeats", type=int, default=3,
                        help="Torch-Pruning runs per model and exporter")
    parser.add_argument("--skip-tp", action="store_true", help="graphprune only")
    parser.add_argument("--max-wait", type=float, default=30.0,
                        help="seconds to wait for a quiet machine before each run")
    parser.add_argument("--max-wait-total", type=float, default=900.0,
                        help="total seconds of such waiting")
    args = parser.parse_args(argv)
    QUIET.max_wait, QUIET.budget = args.max_wait, args.max_wait_total
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    known = set(TORCHVISION_MODELS) | {LIGHT_PREFIX + m for m in LIGHT_MODELS}
    if set(models) - known:
        parser.error(f"unknown model(s) {sorted(set(models) - known)}; choose from "
                     f"{sorted(known)}")
    git_at_start = machine_info()["git"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_compile_") as tmp:
        for model in models:
            rows.append(measure(model, args.repeats, args.tp_repeats, Path(tmp), args.skip_tp))
            # partial results survive a crash or an interrupted run
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "compile.partial.json").write_text(
                json.dumps(rows, indent=1, default=str))
    table = tables(rows, args.repeats, args.tp_repeats)
    if machine_info()["git"] != git_at_start:
        table += ("\n\nNote: the repository's commit or working tree changed during this run "
                  f"(start: {git_at_start}); rows may measure different graphprune code.")
    write_results("compile", rows, table, args.out,
                  extra={"ratio": RATIO, "repeats": args.repeats, "tp_repeats": args.tp_repeats,
                         "parent_peak_mb": _parent_peak_mb(), "git_at_start": git_at_start,
                         "quiet_wait_total_s": QUIET.total})
    (Path(args.out) / "compile.partial.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
