"""Where ONNX Runtime's CPU time goes, per kind of node: an original model next to pruned ones.

    python bench/ort_profile.py --zoo densenet121 --round-to 8,auto [--batch 1] [--threads 2]
    python bench/ort_profile.py MODEL.onnx PRUNED.onnx ...

Each node's time is the median of its kernel time over the runs (ONNX Runtime's profiler), so
runs slowed by other processes on a shared machine hardly count. Nodes are grouped by kind in
the graph ONNX Runtime actually runs (ORT_ENABLE_ALL): convs in the blocked NCHWc layout (1x1,
kxk, depthwise, grouped) or not, the ReorderInput/ReorderOutput copies into and out of that
layout, Concat, BatchNormalization, ... A pruned model whose channel counts suit the kernels
keeps the original's kinds and counts; one that does not shows NCHW convs and extra reorders.
The last row is the single-thread CPU time per run (time.thread_time, which time-slicing by
other processes does not inflate), the ratio to the first model after it.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import model_feeds  # noqa: E402  (every input, token ids and masks too)


def _options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:  # models with graphprune's sparse operators (--sparsity) need the library
        from graphprune import kernels
        opts.register_custom_ops_library(kernels.library_path(build_if_missing=False))
    except Exception:  # noqa: BLE001 - dense models run without it
        pass
    return opts


def node_kinds(path: str, threads: int, tmp: str) -> dict[str, str]:
    """Node name -> kind, read from the graph ONNX Runtime optimized for this CPU."""
    opts = _options(threads)
    opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
    ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    # only the graph and the weights' dims are read (an external-data model's optimized copy
    # points at data files beside the original, not beside it)
    model = onnx.load(opts.optimized_model_filepath, load_external_data=False)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    kinds = {}
    for node in model.graph.node:
        layout = "NCHWc " if node.domain.endswith("nchwc") else ""
        kind = node.op_type
        if node.op_type in ("Conv", "FusedConv"):
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            w = shapes.get(node.input[1], [0, 0, 1, 1])
            shape = ("depthwise" if group > 1 and w[1] == 1 else "grouped" if group > 1
                     else "1x1" if w[2:] == [1, 1] else "kxk")
            layout = layout or "NCHW "
            kind = f"Conv {shape}"
        if node.domain == "graphprune":
            kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [])
            kind = f"graphprune {node.op_type}" + (
                " 1x1" if kernel and set(kernel) == {1} else " kxk" if kernel else "")
        kinds[node.name] = layout + kind
    return kinds


def profile(path: str, batch: int, runs: int, threads: int, seq: int = 128) -> dict:
    with tempfile.TemporaryDirectory(prefix="graphprune-profile-") as tmp:
        kinds = node_kinds(path, threads, tmp)
        opts = _options(threads)
        opts.enable_profiling, opts.profile_file_prefix = True, os.path.join(tmp, "profile")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feeds = model_feeds(path, batch, seq)
        warmup = 3
        for _ in range(warmup + runs):
            sess.run(None, feeds)
        events = json.loads(pathlib.Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["name"][:-len("_kernel_time")]].append(e["dur"] / 1000)
    per_kind: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    for node, ms in times.items():
        kind = kinds.get(node, "other")
        per_kind[kind] += float(np.median(ms[warmup:] or ms))
        count[kind] += 1
    return {"ms": dict(per_kind), "nodes": dict(count),
            "cpu_ms": cpu_time(path, batch, runs, seq)}


def cpu_time(path: str, batch: int, runs: int, seq: int = 128) -> float:
    """Median single-thread CPU time of one run, ms."""
    sess = ort.InferenceSession(path, _options(1), providers=["CPUExecutionProvider"])
    feeds = model_feeds(path, batch, seq)
    for _ in range(3):
        sess.run(None, feeds)
    samples = []
    for _ in range(runs):
        start = time.thread_time()
        sess.run(None, feeds)
        samples.append(time.thread_time() - start)
    return float(np.median(samples) * 1e3)


def table(labels: list[str], results: list[dict]) -> str:
    kinds = sorted({k for r in results for k in r["ms"]},
                   key=lambda k: -max(r["ms"].get(k, 0.0) for r in results))
    lines = ["| node kind | " + " | ".join(labels) + " |",
             "|---|" + "---:|" * len(labels)]
    for kind in kinds:
        cells = [f"{r['ms'].get(kind, 0.0):.3f} ms ({r['nodes'].get(kind, 0)})" for r in results]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    total = [f"{sum(r['ms'].values()):.3f} ms" for r in results]
    lines.append("| **sum of node medians** | " + " | ".join(total) + " |")
    base = results[0]["cpu_ms"]
    cpu = [f"{r['cpu_ms']:.2f} ms (x{r['cpu_ms'] / base:.3f})" for r in results]
    lines.append("| **1-thread CPU time per run** | " + " | ".join(cpu) + " |")
    return "\n".join(lines)


def _zoo_variants(name: str, round_tos: list, tmp: str) -> tuple[list[str], list[str]]:
    import graphprune
    from graphprune.api import canonicalize, load_graph
    from graphprune.io import save_graph
    from graphprune.policy import parse_round_to
    from models import zoo

    source = str(zoo.torchvision_model(name, "dynamo"))
    paths, labels = [source], ["original"]
    # The original after graphprune's canonicalizing passes alone, nothing pruned: what the
    # clean-up (BatchNorm folding, global pools for ReduceMean, ...) gains by itself, so the
    # pruned models' gain over it is the pruning's.
    _, graph = load_graph(source)
    canonicalize(graph)
    path = os.path.join(tmp, f"{name}.canonical.onnx")
    save_graph(*graph.split(), path)
    paths.append(path)
    labels.append("original, canonicalized")
    for value in round_tos:
        result = graphprune.prune(source, ratio=0.4, round_to=parse_round_to(value),
                                  verify=False)
        path = os.path.join(tmp, f"{name}.{value}.onnx")
        graphprune.write(result, path)
        paths.append(path)
        labels.append(f"round-to {result.plan.round_to} (MACs x{result.report.mac_ratio:.3f})")
    return paths, labels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", help="model files; the first is the reference")
    p.add_argument("--zoo", help="a torchvision zoo model, pruned at ratio 0.4 for each --round-to")
    p.add_argument("--round-to", default="8,auto")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128,
                   help="dynamic non-batch input dims (a transformer's sequence length)")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if bool(args.zoo) == bool(args.models):
        p.error("give model files or --zoo NAME")
    if min(args.batch, args.seq, args.runs, args.threads) < 1:
        p.error("--batch, --seq, --runs and --threads must be at least 1")
    with tempfile.TemporaryDirectory(prefix="graphprune-profile-") as tmp:
        if args.zoo:
            paths, labels = _zoo_variants(args.zoo, args.round_to.split(","), tmp)
        else:
            paths, labels = args.models, [os.path.basename(m) for m in args.models]
        results = [profile(path, args.batch, args.runs, args.threads, args.seq)
                   for path in paths]
    print(f"{args.zoo or ''} batch {args.batch}, {args.threads} intra-op threads, "
          f"onnxruntime {ort.__version__}; per-node median over {args.runs} runs, "
          f"(nodes) per kind\n")
    print(table(labels, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
