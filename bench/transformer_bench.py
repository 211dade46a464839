"""Transformer benchmarks (issue 3): quality on the real all-MiniLM-L6-v2, compile time and
memory on BERT-base and a ~1 B-parameter LLaMA-style model, and ORT latency before/after.

    python bench/transformer_bench.py quality            # MiniLM embedding cosine per ratio
    python bench/transformer_bench.py compile [MODELS]   # wall time + peak memory of the whole run
    python bench/transformer_bench.py latency [MODELS]   # ORT CPU latency at sequence 128

Each compile/latency measurement runs in a fresh process (bench/_common.run_child), so peak
memory is that run's own. Results: bench/results/transformers_<part>.json and .md.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import run_child, write_results  # noqa: E402

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)


# ----------------------------------------------------------------------------- quality
def quality(args) -> None:
    import numpy as np

    import graphprune
    from graphprune.verify import session
    from models import transformer_zoo as tz

    path = tz.transformer_model("minilm", "dynamo")
    sentences = tz.minilm_sentences()
    feeds = tz.minilm_tokenize(sentences)
    mask = feeds["attention_mask"].astype(np.float32)[..., None]

    def embed(model_path) -> np.ndarray:
        out = session(str(model_path)).run(None, feeds)[0]
        pooled = (out * mask).sum(1) / mask.sum(1)  # sentence-transformers mean pooling
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    reference = embed(path)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for part, kwargs in (("heads", lambda r: {"ratio": 0.0, "head_ratio": r}),
                             ("ffn", lambda r: {"ratio": r, "head_ratio": 0.0}),
                             ("both", lambda r: {"ratio": r, "head_ratio": r})):
            for ratio in RATIOS:
                result = graphprune.prune(path, criterion=args.criterion, verify=False,
                                          **kwargs(ratio))
                out = graphprune.write(result, pathlib.Path(tmp) / f"{part}{ratio}.onnx")
                cos = (embed(out) * reference).sum(1)
                rows.append({"pruned": part, "ratio": ratio, "criterion": args.criterion,
                             "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                             "param_ratio": result.report.param_ratio,
                             "mac_ratio": result.report.mac_ratio})
    lines = [f"all-MiniLM-L6-v2 (real weights), {len(sentences)} real sentences, criterion "
             f"{args.criterion}: cosine of mean-pooled embeddings, pruned vs original", "",
             "| pruned | ratio | cosine mean | cosine min | params × | MACs × |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['pruned']} | {r['ratio']:.1f} | {r['cosine_mean']:.4f} | "
              f"{r['cosine_min']:.4f} | {r['param_ratio']:.3f} | {r['mac_ratio']:.3f} |"
              for r in rows]
    write_results(f"transformers_quality_{args.criterion}", rows, "\n".join(lines))


# ----------------------------------------------------------------------------- compile
_COMPILE = """
import time, graphprune
t0 = time.perf_counter()
r = graphprune.prune({path!r}, ratio=0.4, head_ratio=0.4, verify={verify})
graphprune.write(r, {out!r})
wall = time.perf_counter() - t0
emit({{"wall_s": wall, "peak_mb": peak_mb(), "stages": r.report.seconds,
      "param_ratio": r.report.param_ratio, "mac_ratio": r.report.mac_ratio,
      "params_before": r.report.params_before}})
"""
_BASELINE = "import graphprune\nemit({'peak_mb': peak_mb()})\n"


def _weight_mb(path: pathlib.Path) -> float:
    size = path.stat().st_size
    data = path.with_name(path.name + ".data")
    return (size + (data.stat().st_size if data.exists() else 0)) / 2**20


def compile_(args) -> None:
    from _large_models import large_model

    base = run_child(_BASELINE, 120)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = large_model(name)
            for verify in (True, False):
                res = run_child(_COMPILE.format(path=str(path), verify=verify,
                                                out=str(pathlib.Path(tmp) / "out.onnx")), 1800)
                res.update(model=name, verify=verify, weights_mb=_weight_mb(path),
                           baseline_mb=base.get("peak_mb"))
                rows.append(res)
    lines = ["whole run (load → prune 40 % heads + 40 % FFN → verify → write), fresh process",
             "", "| model | weights MiB | verify | wall s | peak MiB | (peak − imports) ÷ "
             "weights | params × | MACs × |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not r.get("ok"):
            lines.append(f"| {r['model']} | {r['weights_mb']:.0f} | {r['verify']} | failed: "
                         f"{r.get('error')} | | | | |")
            continue
        over = (r["peak_mb"] - (r["baseline_mb"] or 0)) / r["weights_mb"]
        lines.append(f"| {r['model']} | {r['weights_mb']:.0f} | {r['verify']} | "
                     f"{r['wall_s']:.2f} | {r['peak_mb']:.0f} | {over:.2f} | "
                     f"{r['param_ratio']:.3f} | {r['mac_ratio']:.3f} |")
    write_results("transformers_compile_" + "_".join(args.models), rows, "\n".join(lines))


# ----------------------------------------------------------------------------- latency
_LATENCY = """
import time, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
s = ort.InferenceSession({path!r}, o, providers=["CPUExecutionProvider"])
feeds = {{"input_ids": np.random.default_rng(0).integers(0, 1000, ({batch}, {seq})),
         "attention_mask": np.ones(({batch}, {seq}), np.int64)}}
feeds = {{k: v for k, v in feeds.items() if k in {{i.name for i in s.get_inputs()}}}}
for _ in range({warmup}): s.run(None, feeds)
times = []
for _ in range({runs}):
    t = time.perf_counter(); s.run(None, feeds); times.append(time.perf_counter() - t)
emit({{"median_ms": 1000 * float(np.median(times)), "runs": len(times)}})
"""


def latency(args) -> None:
    import graphprune
    from _large_models import large_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = large_model(name)
            result = graphprune.prune(path, ratio=0.4, head_ratio=0.4, verify=False)
            pruned = graphprune.write(result, pathlib.Path(tmp) / f"{name}.pruned.onnx")
            mac_ratio = result.report.mac_ratio
            del result
            batches = (1, 16) if name == "bert_base" else (1,)
            runs = args.runs if name == "bert_base" else max(5, args.runs // 4)
            for batch in batches:
                timing = {}
                for label, p in (("original", path), ("pruned", pruned)):  # one model in a row
                    timing[label] = run_child(_LATENCY.format(
                        path=str(p), batch=batch, seq=args.seq, warmup=3, runs=runs), 3600)
                ok = all(t.get("ok") for t in timing.values())
                rows.append({"model": name, "batch": batch, "seq": args.seq,
                             **{f"{k}_ms": v.get("median_ms") for k, v in timing.items()},
                             "latency_ratio": (timing["pruned"]["median_ms"] /
                                               timing["original"]["median_ms"]) if ok else None,
                             "mac_ratio": mac_ratio, "runs": runs})
    lines = [f"ONNX Runtime CPU, 2 threads, sequence {args.seq}, median of the runs, pruned at "
             "40 % heads + 40 % FFN", "", "| model | batch | original ms | pruned ms | "
             "latency × | MACs × |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lat = "failed" if r["latency_ratio"] is None else f"{r['latency_ratio']:.3f}"
        lines.append(f"| {r['model']} | {r['batch']} | {r['original_ms'] or 0:.1f} | "
                     f"{r['pruned_ms'] or 0:.1f} | {lat} | {r['mac_ratio']:.3f} |")
    write_results("transformers_latency_" + "_".join(args.models), rows, "\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("quality", "compile", "latency"))
    parser.add_argument("models", nargs="*", default=["bert_base", "llama_1b"])
    parser.add_argument("--criterion", default="l2")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    {"quality": quality, "compile": compile_, "latency": latency}[args.part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

