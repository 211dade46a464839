"""End to end: sparse ResNet-50 and BERT-base in ONNX Runtime with graphprune's operators, against
ORT dense and DeepSparse 1.8 on the same zero-weight ONNX; and the accuracy each pattern costs.

    python bench/sparse_e2e.py                       # everything (about 30-40 min on 2 cores)
    python bench/sparse_e2e.py --models resnet50 --batches 1 --no-quality   # a quick look

Latency (one model at a time, in this process, 2 intra-op threads, ORT_ENABLE_ALL): warm-up,
then >= --runs runs and >= --min-seconds of that model in a row; the median. Every variant of a
(model, batch, sparsity) is timed --rounds times in turn (default 2, order reversed every other
round) and keeps its lowest median, so that a stretch of slow machine does not fall on one
variant only. Per model, batch
and sparsity:
- **ORT dense**: the original model (random weights: ResNet-50 from torchvision, BERT-base from
  transformers, legacy exporter, cached by models/zoo.py and bench/_large_models.py).
- **graphprune <pattern>**: `graphprune.sparsify(model, sparsity, pattern, batch=B)`, i.e. the
  pass as a user runs it: every MatMul/Gemm/Conv masked by magnitude, nodes moved to our
  operators only where the cost model measured them faster at batch B (the others stay dense
  and unmasked: the table says how many moved).
- **DeepSparse**: DeepSparse 1.8 (its own venv, bench/_deepsparse.py) on the masked dense model
  (every candidate weight zeroed unstructured at that sparsity, dense ops): the file a
  DeepSparse user would bring. `--no-deepsparse` skips it.
Ratios are against ORT dense of the same run (speedup = dense ms / other ms).

Accuracy (`--quality`, default on): one-shot magnitude masking, no fine-tuning, of every
MatMul/Gemm/Conv weight per pattern and sparsity, on real weights and real inputs:
EfficientNet-Lite0 (ImageNet weights; photos shipped with scikit-image & co; top-1 agreement
with the dense model) and all-MiniLM-L6-v2 (32 sentences; cosine of the sentence embeddings).
See bench/quality_real.py for where the models and inputs come from.

Results: bench/results/sparse_e2e.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import model_feeds, write_results  # noqa: E402

PATTERNS = ("unstructured", "1x4", "4x4")
SEQUENCE = 128


def model_path(name: str) -> Path:
    if name == "resnet50":
        from models.zoo import torchvision_model

        return Path(torchvision_model("resnet50", "legacy"))
    if name == "bert_base":
        from bench._large_models import large_model

        return Path(large_model("bert_base"))
    raise SystemExit(f"unknown model {name!r}: resnet50 or bert_base")


def named_dims(path: Path) -> dict[str, int]:
    """Symbolic non-batch input dims, all set to SEQUENCE (what model_feeds is given)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {d.dim_param: SEQUENCE for vi in model.graph.input
            for axis, d in enumerate(vi.type.tensor_type.shape.dim)
            if axis > 0 and d.dim_param}


def latency_ms(path: Path, feeds: dict, custom: bool, args) -> float:
    import onnxruntime as ort

    from graphprune import kernels
    from graphprune.costmodel import median_ms

    so = kernels.session_options(args.threads) if custom else ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return median_ms(lambda: sess.run(None, feeds), args.runs, args.min_seconds)


def masked_model(path: Path, sparsity: float, pattern: str, dest: Path,
                 criterion: str = "magnitude", calib=None) -> Path:
    """Every candidate weight masked, dense ops kept (the DeepSparse / accuracy input)."""
    from graphprune.api import canonicalize, load_graph
    from graphprune.io import save_graph
    from graphprune.sparsity import SparsifyConfig, mask_graph

    _, graph = load_graph(str(path))
    canonicalize(graph)
    mask_graph(graph, SparsifyConfig(sparsity=sparsity, pattern=pattern, criterion=criterion),
               calib=calib)
    shell, weights = graph.split()
    return save_graph(shell, weights, dest)


def run_latency(args, tmp: Path) -> list[dict]:
    rows = []
    deepsparse = None
    if not args.no_deepsparse:
        try:
            from bench._deepsparse import ensure_venv, run_deepsparse

            ensure_venv()
            deepsparse = run_deepsparse
        except Exception as err:  # noqa: BLE001 - reported in the table, never fatal
            print(f"DeepSparse unavailable: {err}", flush=True)
            deepsparse = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    for name in args.models:
        path = model_path(name)
        for batch in args.batches:
            feeds = model_feeds(path, batch, SEQUENCE)
            for sparsity in args.sparsities:
                rows.append(_latency_row(args, tmp, name, path, batch, feeds, sparsity,
                                         deepsparse))
    return rows


def _latency_row(args, tmp: Path, name: str, path: Path, batch: int, feeds: dict,
                 sparsity: float, deepsparse) -> dict:
    """Compiles every pattern (and DeepSparse's masked model), then times ORT dense, each
    pattern and DeepSparse in turn, --rounds times (order reversed every other round), keeping
    each one's lowest median: on a shared VM two threads sometimes run for minutes at one
    thread's speed, and a single pass compared variants timed in different such stretches."""
    import graphprune
    from graphprune.sparsity import SparsifyConfig

    row = {"model": name, "batch": batch, "sparsity": sparsity, "patterns": {}}
    variants = [("dense", path, False)]
    for pattern in args.patterns:
        base, _, option = pattern.partition("/")
        t0 = time.perf_counter()
        result = graphprune.prune(str(path), ratio=0.0, verify=False,
                                  sparse=SparsifyConfig(sparsity=sparsity, pattern=base,
                                                        batch=batch, threads=args.threads,
                                                        fuse_heads=option != "no-heads"))
        compile_s = time.perf_counter() - t0
        out = graphprune.write(result, tmp / f"{name}.{pattern.replace('/', '.')}.onnx")
        rep = result.report.sparsity
        row["patterns"][pattern] = {"moved": len(rep.rewritten), "candidates": len(rep.nodes),
                                    "compile_s": compile_s, "timings_run": rep.timings_run}
        print(f"  s={sparsity} {pattern}: {len(rep.rewritten)}/{len(rep.nodes)} nodes sparse, "
              f"compile {compile_s:.1f} s", flush=True)
        variants.append((pattern, out, True))
    if callable(deepsparse):
        variants.append(("deepsparse",
                         masked_model(path, sparsity, "unstructured", tmp / f"{name}.ds.onnx"),
                         None))
    elif deepsparse is not None:
        row["deepsparse"] = {"error": deepsparse}

    times: dict[str, list[float]] = {key: [] for key, _, _ in variants}
    for rnd in range(args.rounds):
        for key, model, custom in (variants if rnd % 2 == 0 else variants[::-1]):
            if key == "deepsparse":
                if "deepsparse" in row:  # failed in an earlier round
                    continue
                try:
                    got = deepsparse(str(model), batch, threads=args.threads, runs=args.runs,
                                     dims=named_dims(path))
                except Exception as err:  # noqa: BLE001 - reported in the table, never fatal
                    row["deepsparse"] = {"error": str(err).splitlines()[0][:200]}
                    print(f"  DeepSparse failed: {row['deepsparse']['error']}", flush=True)
                    continue
                ms, engine = got["median_ms"], got.get("engine", "")
            else:
                ms = latency_ms(model, feeds, custom, args)
            times[key].append(ms)
            print(f"  {name} b{batch} s={sparsity} round {rnd + 1} {key}: {ms:.2f} ms", flush=True)
    dense = min(times["dense"])
    row["ort_dense_ms"], row["ort_dense_round_ms"] = dense, times["dense"]
    for pattern in args.patterns:
        ms = min(times[pattern])
        row["patterns"][pattern].update(ms=ms, speedup=dense / ms, round_ms=times[pattern])
        print(f"  s={sparsity} {pattern}: {ms:.2f} ms (x{dense / ms:.2f})", flush=True)
    if times.get("deepsparse") and "deepsparse" not in row:
        ms = min(times["deepsparse"])
        row["deepsparse"] = {"ms": ms, "speedup": dense / ms, "engine": engine,
                             "round_ms": times["deepsparse"]}
        print(f"  s={sparsity} DeepSparse: {ms:.2f} ms (x{dense / ms:.2f})", flush=True)
    return row


# --------------------------------------------------------------------------------------------
# accuracy

CRITERIA = ("magnitude", "activation")
LEVELS = (0.3, 0.5, 0.7, 0.9)
QUALITY_LEVELS = {"unstructured": LEVELS, "1x4": LEVELS, "4x1": LEVELS, "4x4": LEVELS,
                  "2:4": (0.5,)}


def run_quality(args, tmp: Path) -> list[dict]:
    import onnxruntime as ort

    from bench import quality_real as qr
    from graphprune.calibration import CalibrationSet
    from models import transformer_zoo as tz

    def run(path, feeds):
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(
            None, feeds)[0]

    rows = []
    # EfficientNet-Lite0: top-1 agreement with the dense model on the photo set
    path = qr.efficientnet_lite0_path()
    photos, _ = qr.find_photos()
    evals, calib_imgs = qr.image_sets(photos, qr.EVAL_IMAGES, 32)
    x = {"input": np.stack([qr._to_input(im, qr.LITE_MEAN, qr.LITE_STD) for im, _ in evals])}
    xc = np.stack([qr._to_input(im, qr.LITE_MEAN, qr.LITE_STD) for im in calib_imgs])
    calib = [{"input": xc[i:i + 8]} for i in range(0, len(xc), 8)]
    ref = run(path, x)
    for pattern, levels in QUALITY_LEVELS.items():
        for criterion in CRITERIA:
            for s in levels:
                got = run(masked_model(path, s, pattern, tmp / "q.onnx", criterion, calib), x)
                cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) *
                                            np.linalg.norm(ref, axis=1))
                rows.append({"model": "efficientnet_lite0", "pattern": pattern, "sparsity": s,
                             "criterion": criterion,
                             "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
                             "cosine_mean": float(cos.mean())})
                print(f"efficientnet_lite0 {pattern} {criterion} {s}: top-1 agreement "
                      f"{rows[-1]['top1_agreement']:.3f}", flush=True)
    # MiniLM: cosine of the mean-pooled sentence embeddings; calibration: other sentences,
    # one per batch without padding
    path = tz.transformer_model("minilm", "legacy")
    sentences = tz.minilm_sentences()
    feeds = tz.minilm_tokenize(sentences)
    pool = [t for t in tz.minilm_sentences(4 * len(sentences)) if t not in set(sentences)][:64]
    tok = tz.minilm_tokenize(pool)
    calib = CalibrationSet([{k: v[i:i + 1, :n] for k, v in tok.items()}
                            for i, n in enumerate(tok["attention_mask"].sum(1))], batch_size=1)
    mask = feeds["attention_mask"].astype(np.float32)[..., None]

    def embed(p):
        out = run(p, feeds)
        pooled = (out * mask).sum(1) / mask.sum(1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    ref = embed(path)
    for pattern, levels in QUALITY_LEVELS.items():
        for criterion in CRITERIA:
            for s in levels:
                emb = embed(masked_model(path, s, pattern, tmp / "q.onnx", criterion, calib))
                cos = (emb * ref).sum(1)
                rows.append({"model": "minilm", "pattern": pattern, "sparsity": s,
                             "criterion": criterion, "cosine_mean": float(cos.mean()),
                             "cosine_min": float(cos.min())})
                print(f"minilm {pattern} {criterion} {s}: cosine {cos.mean():.3f}", flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# tables


def latency_table(rows: list[dict], patterns) -> str:
    head = ("| model | batch | sparsity | ORT dense ms | " +
            " | ".join(f"graphprune {p}" for p in patterns) + " | DeepSparse (unstructured) |")
    lines = [head, "|" + "---|" * (5 + len(patterns))]
    for r in rows:
        cells = []
        for p in patterns:
            c = r["patterns"].get(p)
            cells.append("-" if c is None else
                         f"x{c['speedup']:.2f} ({c['ms']:.2f} ms, {c['moved']}/{c['candidates']})")
        ds = r.get("deepsparse")
        ds_cell = ("-" if ds is None else f"n/a: {ds['error']}" if "error" in ds else
                   f"x{ds['speedup']:.2f} ({ds['ms']:.2f} ms)")
        lines.append(f"| {r['model']} | {r['batch']} | {r['sparsity']:.0%} | "
                     f"{r['ort_dense_ms']:.2f} | " + " | ".join(cells) + f" | {ds_cell} |")
    return "\n".join(lines)


def quality_table(rows: list[dict]) -> str:
    lines = ["| model | metric | pattern | criterion | " +
             " | ".join(f"{v:.0%}" for v in LEVELS) + " |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for model, metric in (("efficientnet_lite0", "top1_agreement"), ("minilm", "cosine_mean")):
        for pattern in QUALITY_LEVELS:
            for criterion in CRITERIA:
                got = {r["sparsity"]: r[metric] for r in rows if r["model"] == model and
                       r["pattern"] == pattern and r.get("criterion") == criterion}
                if not got:
                    continue
                cells = [f"{got[s]:.3f}" if s in got else "-" for s in LEVELS]
                lines.append(f"| {model} | {metric} | {pattern} | {criterion} | " +
                             " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,bert_base", type=lambda s: s.split(","))
    p.add_argument("--batches", default="1,16", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--sparsities", default="0.8,0.9",
                   type=lambda s: [float(v) for v in s.split(",")])
    p.add_argument("--patterns", default=",".join(PATTERNS), type=lambda s: s.split(","),
                   help="sparsity patterns; PATTERN/no-heads: the same without sparse MatMuls "
                        "absorbing attention-head transposes (SparsifyConfig.fuse_heads)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2,
                   help="time every variant this many times in turn, keep each one's lowest median")
    p.add_argument("--no-deepsparse", action="store_true")
    p.add_argument("--no-quality", action="store_true")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--out", default="sparse_e2e")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.runs < 1:
        p.error("--rounds and --runs must be at least 1")
    for pattern in args.patterns:
        if pattern.partition("/")[2] not in ("", "no-heads"):
            p.error(f"--patterns {pattern}: the only option after '/' is no-heads")
    with tempfile.TemporaryDirectory(prefix="sparse-e2e-") as d:
        tmp = Path(d)
        lat = [] if args.no_latency else run_latency(args, tmp)
        qual = [] if args.no_quality else run_quality(args, tmp)
    md = ["# Sparse models end to end: ONNX Runtime dense vs graphprune's operators vs "
          "DeepSparse", "",
          f"Speedup = ORT dense ms / ms, same run; {args.threads} threads; lowest median of "
          f"{args.rounds} round(s) each; cells: speedup "
          f"(median ms, nodes moved to sparse ops / candidates). graphprune keeps a node dense "
          f"(and unmasked) where its cost model measured no gain. DeepSparse runs the masked "
          f"dense model (unstructured).", ""]
    if lat:
        md += [latency_table(lat, args.patterns), ""]
    if qual:
        md += ["## Accuracy cost of each pattern (one-shot masking of every candidate, no "
               "fine-tuning)",
               "", "EfficientNet-Lite0: top-1 agreement with the dense model on 64 photo crops; "
               "MiniLM: mean cosine of the 32 sentence embeddings vs dense. magnitude: smallest "
               "|W| (block L2) first; activation: smallest |W|·‖X‖ with ‖X‖ from 32 other "
               "photo crops / 64 other sentences (`--sparse-criterion activation --calib`).", "",
               quality_table(qual), ""]
    write_results(args.out, {"latency": lat, "quality": qual}, "\n".join(md),
                  extra={"args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
