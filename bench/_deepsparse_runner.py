"""Time one ONNX model in DeepSparse and print one JSON line (the last line of stdout).

Runs INSIDE the DeepSparse virtual environment that bench/_deepsparse.py makes: it imports
only deepsparse, numpy and the onnx that deepsparse itself depends on, never graphprune.

    python _deepsparse_runner.py MODEL.onnx --batch-size 16 --threads 2 --dim seq=128

Every graph input gets a concrete shape: the first axis is the batch (``--batch-size``,
whatever the model says), other symbolic or unknown axes come from ``--dim NAME=VALUE``
(an axis with no name can be given as ``--dim INPUT:AXIS=VALUE``). DeepSparse compiles static
shapes only, and its own ``input_shapes=`` override rewrites the model file *in place*, so
when a shape has to change the runner writes a rewritten copy into a temporary directory
(external-data files are linked in beside it) and compiles that; the original file is never
touched.

On failure it prints ``{"error": "..."}`` as its last line and exits 2.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # no phoning home (there is no network)

import numpy as np

_INT_TYPES = {2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
              12: np.uint32, 13: np.uint64}
_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}
_BOOL = 9
_MAX_IR, _MAX_OPSET = 9, 19  # the onnxruntime embedded in DeepSparse 1.8 loads no newer


def _parse_dims(items: list[str]) -> dict[str, int]:
    dims = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise SystemExit(f"--dim expects NAME=VALUE, got {item!r}")
        dims[name] = int(value)
    return dims


def _graph_inputs(model):
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _resolve_shapes(inputs, batch_size: int, dims: dict[str, int]):
    """[(name, elem_type, shape, changed)] with every axis concrete."""
    out, missing = [], []
    for inp in inputs:
        tt = inp.type.tensor_type
        shape, changed = [], False
        for axis, d in enumerate(tt.shape.dim):
            key_axis = f"{inp.name}:{axis}"
            if axis == 0:
                value = batch_size
            elif key_axis in dims:
                value = dims[key_axis]
            elif d.HasField("dim_param") and d.dim_param in dims:
                value = dims[d.dim_param]
            elif d.HasField("dim_value") and d.dim_value > 0:
                value = d.dim_value
            else:
                missing.append(f"{inp.name} axis {axis} ({d.dim_param or 'unnamed'})")
                value = None
            if not (d.HasField("dim_value") and d.dim_value == value):
                changed = True
            shape.append(value)
        out.append((inp.name, tt.elem_type, shape, changed))
    if missing:
        raise ValueError("dynamic input axes without a value; pass --dim NAME=VALUE "
                         "(or --dim INPUT:AXIS=VALUE): " + ", ".join(missing))
    return out


def _static_copy(model_path: str, model, shapes, tmpdir: str) -> str:
    """Write `model` (loaded without external data) with concrete input shapes into tmpdir,
    symlinking the external-data files it references so the relative locations resolve."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    by_name = {name: shape for name, _, shape, _ in shapes}
    for inp in _graph_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        for d, value in zip(dims, by_name[inp.name]):
            d.Clear()
            d.dim_value = value
    src_dir = os.path.dirname(os.path.abspath(model_path))
    locations = set()
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    for loc in locations:
        dst = os.path.join(tmpdir, loc)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.symlink(os.path.join(src_dir, loc), dst)
    path = os.path.join(tmpdir, "static_" + os.path.basename(model_path))
    onnx.save(model, path)
    return path


def _make_input(name: str, elem_type: int, shape, rng: np.random.Generator) -> np.ndarray:
    lname = name.lower()
    if elem_type == _BOOL:
        return np.ones(shape, dtype=bool)
    if elem_type in _INT_TYPES:
        dtype = _INT_TYPES[elem_type]
        if "mask" in lname:
            return np.ones(shape, dtype=dtype)
        if "token_type" in lname or "segment" in lname:
            return np.zeros(shape, dtype=dtype)
        if "position" in lname and len(shape) >= 1:
            return np.ascontiguousarray(np.broadcast_to(
                np.arange(shape[-1], dtype=dtype), shape))
        high = min(1000, int(np.iinfo(dtype).max) + 1)
        return rng.integers(0, high, size=shape, dtype=dtype)
    if elem_type in _FLOAT_TYPES:
        return rng.standard_normal(shape, dtype=np.float32).astype(_FLOAT_TYPES[elem_type])
    raise ValueError(f"input {name!r}: unsupported ONNX element type {elem_type}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="DeepSparse num_cores")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diagnose", action="store_true",
                    help="DeepSparse logs why ops/subgraphs are unsupported (stderr)")
    args = ap.parse_args(argv)
    if args.diagnose:
        os.environ["NM_LOGGING_LEVEL"] = "diagnose"  # read when the engine library loads
    try:
        result = _run(args)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the JSON error line
        if os.environ.get("GRAPHPRUNE_DEEPSPARSE_DEBUG"):
            traceback.print_exc()
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}".strip()[:4000]}), flush=True)
        return 2
    print(json.dumps(result), flush=True)
    return 0


def _run(args) -> dict:
    import deepsparse
    import onnx
    from deepsparse import compile_model

    model = onnx.load(args.model, load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if model.ir_version > _MAX_IR or opset > _MAX_OPSET:
        raise ValueError(f"model has ONNX IR version {model.ir_version} / opset {opset}; "
                         f"DeepSparse {deepsparse.__version__} loads IR <= {_MAX_IR} and opset "
                         f"<= {_MAX_OPSET} (bench/_deepsparse.py converts when it can)")
    shapes = _resolve_shapes(_graph_inputs(model), args.batch_size, _parse_dims(args.dim))
    # Compile a rewritten copy unless every input already has exactly these shapes.
    needs_copy = any(changed for *_, changed in shapes)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="gp-deepsparse-") as tmp:
        path = _static_copy(args.model, model, shapes, tmp) if needs_copy else args.model
        del model
        t0 = time.perf_counter()
        engine = compile_model(path, batch_size=args.batch_size, num_cores=args.threads)
        compile_s = time.perf_counter() - t0
        # Inputs in the engine's order, shaped as the engine reports them.
        types = {name: et for name, et, _, _ in shapes}
        inputs = [_make_input(name, types[name], list(dims), rng)
                  for name, dims in zip(engine.input_names, engine.input_shapes)]
        if args.warmup or args.runs:
            engine.run(inputs, val_inp=True)  # once with DeepSparse's own input checks
        for _ in range(max(0, args.warmup - 1)):
            engine.run(inputs, val_inp=False)
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            engine.run(inputs, val_inp=False)
            times.append((time.perf_counter() - t) * 1e3)
    return {
        "median_ms": statistics.median(times) if times else None,
        "min_ms": min(times) if times else None,
        "runs": times,
        "engine": f"deepsparse {deepsparse.__version__}",
        "num_cores": engine.num_cores,
        "batch_size": args.batch_size,
        "input_shapes": {n: list(s) for n, s in zip(engine.input_names, engine.input_shapes)},
        "fraction_of_supported_ops": engine.fraction_of_supported_ops,
        "isa": f"{engine.cpu_avx_type}{'+vnni' if engine.cpu_vnni else ''}",
        "compile_s": compile_s,
    }


if __name__ == "__main__":
    sys.exit(main())
