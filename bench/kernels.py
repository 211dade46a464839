"""ONNX Runtime dense MatMul vs graphprune's SparseMatMul custom operator (CPU).

For every weight shape K x N, a one-node dense model ``Y = X @ W`` (ORT's MatMul, MLAS) and one
``graphprune.SparseMatMul`` model per pattern and sparsity (magnitude-masked random W; the same W
for every pattern of a shape) are timed at each M: per model, a warm-up (>= 5 runs and >= 0.2 s),
then >= ``--runs`` timed runs of that one model in a row (and >= ``--min-seconds``), each timed
with ``time.perf_counter`` around ``sess.run``; the median is kept. Models are never alternated
run by run (idle ORT thread pools spinning would distort both). With ``--rounds`` R (default 2)
the dense model and every sparse model are measured R times in turn and each keeps its lowest
median (other tenants' load only ever adds time). Every session has ``--threads`` intra-op
threads. speedup = dense / sparse, both from this one run.

Patterns: bsr1x4, bsr4x1, bsr4x4, bsr8x1 (block sparsity: that fraction of blocks is zero), csr
(unstructured), nm (n:m along K with n/m = 1 - sparsity: 2:4, 3:10, 1:5, 1:10, 1:20).

Results: bench/results/kernels.json and bench/results/kernels.md (the table is printed too).

    python bench/kernels.py                      # everything (about 10 minutes on 2 cores)
    python bench/kernels.py --quick              # 768x768 and 3072x768, 50/90 %, M 1/16/128
    python bench/kernels.py --shapes 768x3072 --patterns bsr4x1,csr --sparsities 90

``conv``: ONNX Runtime's dense Conv vs ``graphprune.SparseConv`` (im2col path) on ResNet-50-like
convolutions (NCHW, batch 1 by default; the weight masked on its matrix ``[C*kh*kw, O]``), timed
the same way; results in bench/results/kernels_conv.{json,md} (about 1-2 minutes on 2 cores):

    python bench/kernels.py conv
    python bench/kernels.py conv --shapes 64:64:3:1:56 --patterns bsr1x4 --sparsities 90
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from graphprune import kernels as gk  # noqa: E402

RESULTS = REPO / "bench" / "results"
NM_FOR_SPARSITY = {50: (2, 4), 70: (3, 10), 80: (1, 5), 90: (1, 10), 95: (1, 20)}
PATTERNS = ("bsr1x4", "bsr4x1", "bsr4x4", "bsr8x1", "csr", "nm")



def _patterns_and_sparsities(ap, args) -> tuple[list[str], list[int]]:
    """--patterns and --sparsities parsed and checked (argparse error on a bad one)."""
    patterns = args.patterns.split(",")
    sparsities = [int(v) for v in args.sparsities.split(",")]
    for p in patterns:
        if p not in PATTERNS:
            ap.error(f"unknown pattern {p}; use {', '.join(PATTERNS)}")
    for s in sparsities:
        if s not in NM_FOR_SPARSITY:
            ap.error(f"sparsity {s} is not one of {sorted(NM_FOR_SPARSITY)}")
    return patterns, sparsities


def _library() -> str | None:
    """The kernel library's path, or None (said on stderr) when it cannot be built here."""
    try:
        return gk.library_path()
    except gk.KernelsUnavailable as exc:
        print(f"kernels unavailable: {exc}", file=sys.stderr)
        return None

def dense_model(w: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "dense",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        initializer=[numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def sparse_weight(w: np.ndarray, pattern: str, sparsity: int):
    s = sparsity / 100.0
    if pattern.startswith("bsr"):
        block = tuple(int(v) for v in pattern[3:].split("x"))
        return gk.pack(gk.mask_blocks(w, s, block), "bsr", block=block), f"{block[0]}x{block[1]} blocks"
    if pattern == "csr":
        return gk.pack(gk.mask_unstructured(w, s), "csr"), "unstructured"
    if pattern == "nm":
        n, m = NM_FOR_SPARSITY[sparsity]
        return gk.pack(gk.mask_nm(w, n, m), "nm", nm=(n, m)), f"{n}:{m}"
    raise ValueError(pattern)


def dense_session(model, threads: int):
    """ONNX Runtime's own ops on `model`: the baseline, with the same threads as ours."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def time_session(sess, x, runs: int, min_seconds: float) -> float:
    feeds = {"X": x}
    t_end = time.perf_counter() + 0.2
    for i in range(5):
        sess.run(None, feeds)
    while time.perf_counter() < t_end:
        sess.run(None, feeds)
    times = []
    t_stop = time.perf_counter() + min_seconds
    while len(times) < runs or time.perf_counter() < t_stop:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    info["onnxruntime"] = onnxruntime.__version__
    info["loadavg"] = list(os.getloadavg())
    info["numpy"] = np.__version__
    return info


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "conv":
        return conv_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="768x768,768x3072,3072x768,4096x4096")
    ap.add_argument("--m", default="1,16,128", help="rows of X")
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--sparsities", default="50,70,80,90,95", help="percent")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per model and M (minimum)")
    ap.add_argument("--min-seconds", type=float, default=0.3, help="timed seconds per model and M (minimum)")
    ap.add_argument("--quick", action="store_true", help="768x768,3072x768 at 50/90 %%")
    ap.add_argument("--out", default=str(RESULTS / "kernels"), help="output path without extension")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2,
                    help="measure every model this many times (in turn); keep each one's lowest median")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.sparsities = "768x768,3072x768", "50,90"
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [int(v) for v in args.m.split(",")]
    patterns, sparsities = _patterns_and_sparsities(ap, args)

    lib = _library()
    if lib is None:
        return 1
    isa = gk.isa()
    load_start = list(os.getloadavg())
    rng = np.random.default_rng(args.seed)
    rows = []
    print(f"library {lib} (isa {isa}), {args.threads} threads", flush=True)
    for k, n in shapes:
        w = rng.standard_normal((k, n)).astype(np.float32)
        xs = {m: rng.standard_normal((m, k)).astype(np.float32) for m in ms}
        models = {}
        for pattern in patterns:
            for sp in sparsities:
                models[pattern, sp] = sparse_weight(w, pattern, sp)
        dense_t = {}
        sparse_t = {}
        errors = {}
        for rnd in range(args.rounds):
            dense = dense_session(dense_model(w), args.threads)
            for m in ms:
                t = time_session(dense, xs[m], args.runs, args.min_seconds)
                dense_t.setdefault(m, []).append(t)
                print(f"round {rnd + 1} {k}x{n} M={m}: dense {t * 1e3:.3f} ms", flush=True)
            del dense
            for (pattern, sp), (sw, desc) in models.items():
                sess = gk.session(gk.make_sparse_matmul_model(sw), threads=args.threads)
                for m in ms:
                    t = time_session(sess, xs[m], args.runs, args.min_seconds)
                    sparse_t.setdefault((pattern, sp, m), []).append(t)
                    if rnd == 0:
                        y = sess.run(None, {"X": xs[m]})[0]
                        exp = xs[m] @ gk.unpack(sw)
                        errors[pattern, sp, m] = float(np.abs(y - exp).max() / (np.abs(exp).max() + 1e-12))
                    print(f"round {rnd + 1} {k}x{n} M={m:<4d} {pattern:7s} {sp:2d}%  sparse {t * 1e3:8.3f} ms  "
                          f"speedup {min(dense_t[m]) / t:6.2f}x", flush=True)
                del sess
        for (pattern, sp), (sw, desc) in models.items():
            nz = sum(int(np.count_nonzero(v)) for v in [sw.values])
            for m in ms:
                dt, st = min(dense_t[m]), min(sparse_t[pattern, sp, m])
                rows.append({"k": k, "n": n, "m": m, "pattern": pattern, "desc": desc, "sparsity": sp,
                             "actual_sparsity": round(1.0 - nz / float(k * n), 4),
                             "stored_density": round(sw.density, 4),
                             "dense_ms": dt * 1e3, "sparse_ms": st * 1e3, "speedup": dt / st,
                             "dense_round_ms": [t * 1e3 for t in dense_t[m]],
                             "sparse_round_ms": [t * 1e3 for t in sparse_t[pattern, sp, m]],
                             "max_rel_err": errors[pattern, sp, m]})
        del models

    load_end = list(os.getloadavg())
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "isa": isa, "threads": args.threads, "runs": args.runs,
              "rounds": args.rounds, "statistic": "lowest of the rounds' medians",
              "loadavg_start": load_start, "loadavg_end": load_end, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result, shapes, ms, patterns, sparsities)
    out.with_suffix(".md").write_text(md)
    print()
    print(md)
    return 0


def markdown(result, shapes, ms, patterns, sparsities) -> str:
    rows = {(r["k"], r["n"], r["m"], r["pattern"], r["sparsity"]): r for r in result["rows"]}
    mi = result["machine"]
    lines = [
        "# SparseMatMul vs dense MatMul (ONNX Runtime CPU)",
        "",
        f"{result['date']}, {mi.get('cpu', '?')}, {mi.get('cpus')} CPUs, onnxruntime "
        f"{mi.get('onnxruntime')}, kernel ISA {result['isa']}, {result['threads']} intra-op threads, "
        f"load average {result['loadavg_start'][0]:.1f} at the start, {result['loadavg_end'][0]:.1f} at the end, "
        f"median of >= {result['runs']} runs (lowest of {result['rounds']} rounds). Cells: speedup = "
        "dense ms / sparse ms (sparse ms); "
        "> 1: the sparse operator is faster. nm sparsities: 2:4, 3:10, 1:5, 1:10, 1:20.",
        "",
    ]
    for k, n in shapes:
        for m in ms:
            dense = next((r["dense_ms"] for key, r in rows.items() if key[:3] == (k, n, m)), None)
            if dense is None:
                continue
            lines.append(f"## {k}x{n}, M={m} (dense {dense:.3f} ms)")
            lines.append("")
            lines.append("| pattern | " + " | ".join(f"{s} %" for s in sparsities) + " |")
            lines.append("|---|" + "---:|" * len(sparsities))
            for p in patterns:
                cells = []
                for s in sparsities:
                    r = rows.get((k, n, m, p, s))
                    cells.append(f"{r['speedup']:.2f}x ({r['sparse_ms']:.3f})" if r else "")
                lines.append(f"| {p} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# conv: dense Conv vs SparseConv

# C:O:k:stride:H (square input H x H, pads k // 2): ResNet-50's 3x3 convolutions of each stage
# and the 1x1 stride-2 downsample into stage 3.
CONV_SHAPES = "64:64:3:1:56,128:128:3:1:28,256:256:3:1:14,512:512:3:1:7,256:512:1:2:56"
CONV_PATTERNS = "bsr4x1,bsr1x4,bsr4x4,csr"


def parse_conv_shape(text: str):
    c, o, k, s, h = (int(v) for v in text.split(":"))
    return {"c": c, "o": o, "k": k, "stride": s, "h": h, "pad": k // 2}


def conv_label(sh) -> str:
    return (f"{sh['c']}->{sh['o']} {sh['k']}x{sh['k']}/s{sh['stride']} on {sh['h']}x{sh['h']}")


def dense_conv_model(cw: np.ndarray, sh):
    from onnx import TensorProto, helper, numpy_helper

    k, s, p = sh["k"], sh["stride"], sh["pad"]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)],
        "dense_conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", sh["c"], "H", "W"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(cw, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="bench/kernels.py conv",
                                 description="ONNX Runtime dense Conv vs graphprune.SparseConv")
    ap.add_argument("--shapes", default=CONV_SHAPES, help="C:O:k:stride:H, comma-separated")
    ap.add_argument("--patterns", default=CONV_PATTERNS)
    ap.add_argument("--sparsities", default="80,90", help="percent")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per model (minimum)")
    ap.add_argument("--min-seconds", type=float, default=0.25, help="timed seconds per model (minimum)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="measure every model this many times (in turn); keep each one's lowest median")
    ap.add_argument("--out", default=str(RESULTS / "kernels_conv"), help="output path without extension")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    shapes = [parse_conv_shape(t) for t in args.shapes.split(",")]
    patterns, sparsities = _patterns_and_sparsities(ap, args)
    lib = _library()
    if lib is None:
        return 1
    isa = gk.isa()
    load_start = list(os.getloadavg())
    rng = np.random.default_rng(args.seed)
    print(f"library {lib} (isa {isa}), {args.threads} threads, batch {args.batch}", flush=True)

    rows = []
    for sh in shapes:
        label = conv_label(sh)
        cw = (rng.standard_normal((sh["o"], sh["c"], sh["k"], sh["k"])) /
              np.sqrt(sh["c"] * sh["k"] ** 2)).astype(np.float32)
        x = rng.standard_normal((args.batch, sh["c"], sh["h"], sh["h"])).astype(np.float32)
        wm = gk.conv_weight_matrix(cw)
        models = {}
        for pattern in patterns:
            for sp in sparsities:
                sw, desc = sparse_weight(wm, pattern, sp)
                masked = gk.conv_weight_from_matrix(gk.unpack(sw), (sh["k"], sh["k"]))
                models[pattern, sp] = (sw, desc, masked)
        dense_t, sparse_t, errors = [], {}, {}
        for rnd in range(args.rounds):
            dense = dense_session(dense_conv_model(cw, sh), args.threads)
            dense_t.append(time_session(dense, x, args.runs, args.min_seconds))
            print(f"round {rnd + 1} {label}: dense {dense_t[-1] * 1e3:.3f} ms", flush=True)
            del dense
            for (pattern, sp), (sw, desc, masked) in models.items():
                node_kw = {"kernel_shape": (sh["k"], sh["k"]), "strides": sh["stride"], "pads": sh["pad"]}
                sess = gk.session(gk.make_sparse_conv_model(sw, **node_kw), threads=args.threads)
                t = time_session(sess, x, args.runs, args.min_seconds)
                sparse_t.setdefault((pattern, sp), []).append(t)
                if rnd == 0:
                    y = sess.run(None, {"X": x})[0]
                    exp = dense_session(dense_conv_model(masked, sh), args.threads).run(None, {"X": x})[0]
                    errors[pattern, sp] = float(np.abs(y - exp).max() / (np.abs(exp).max() + 1e-12))
                print(f"round {rnd + 1} {label} {pattern:7s} {sp:2d}%  sparse {t * 1e3:8.3f} ms  "
                      f"speedup {min(dense_t) / t:6.2f}x", flush=True)
                del sess
        ho = (sh["h"] + 2 * sh["pad"] - sh["k"]) // sh["stride"] + 1
        for (pattern, sp), (sw, desc, _) in models.items():
            dt, st = min(dense_t), min(sparse_t[pattern, sp])
            rows.append({**sh, "label": label, "out_hw": ho, "batch": args.batch, "pattern": pattern,
                         "desc": desc, "sparsity": sp,
                         "actual_sparsity": round(1.0 - np.count_nonzero(sw.values) / float(sw.k * sw.n), 4),
                         "stored_density": round(sw.density, 4),
                         "dense_gflop": 2e-9 * args.batch * ho * ho * sw.k * sw.n,
                         "dense_ms": dt * 1e3, "sparse_ms": st * 1e3, "speedup": dt / st,
                         "dense_round_ms": [t * 1e3 for t in dense_t],
                         "sparse_round_ms": [t * 1e3 for t in sparse_t[pattern, sp]],
                         "max_rel_err": errors[pattern, sp]})

    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "isa": isa, "threads": args.threads, "batch": args.batch,
              "runs": args.runs, "rounds": args.rounds, "statistic": "lowest of the rounds' medians",
              "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    md = conv_markdown(result, shapes, patterns, sparsities)
    out.with_suffix(".md").write_text(md)
    print()
    print(md)
    return 0


def conv_markdown(result, shapes, patterns, sparsities) -> str:
    rows = {(r["label"], r["pattern"], r["sparsity"]): r for r in result["rows"]}
    mi = result["machine"]
    lines = [
        "# SparseConv vs dense Conv (ONNX Runtime CPU)",
        "",
        (f"{result['date']}, {mi.get('cpu', '?')}, {mi.get('cpus')} CPUs, onnxruntime "
         f"{mi.get('onnxruntime')}, kernel ISA {result['isa']}, {result['threads']} intra-op threads, "
         f"batch {result['batch']}, load average {result['loadavg_start'][0]:.1f} at the start, "
         f"{result['loadavg_end'][0]:.1f} at the end, median of >= {result['runs']} runs (lowest of "
         f"{result['rounds']} rounds). NCHW, pads k // 2; the dense baseline is ORT's Conv with its "
         "default graph optimisations. Cells: speedup = dense ms / sparse ms (sparse ms); > 1: the "
         "sparse operator is faster."),
        "",
        "| conv | dense ms | " + " | ".join(f"{p} {s} %" for p in patterns for s in sparsities) + " |",
        "|---|---:|" + "---:|" * (len(patterns) * len(sparsities)),
    ]
    for sh in shapes:
        label = conv_label(sh)
        dense = next((r["dense_ms"] for key, r in rows.items() if key[0] == label), None)
        if dense is None:
            continue
        cells = []
        for p in patterns:
            for s in sparsities:
                r = rows.get((label, p, s))
                cells.append(f"{r['speedup']:.2f}x ({r['sparse_ms']:.3f})" if r else "")
        lines.append(f"| {label} | {dense:.3f} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
