"""Deployment export: `graphprune export MODEL --target cpu|edge -o FOLDER`.

One folder holds everything a deployment needs and nothing else:

    model.onnx                        the (pruned) model; fp16 weights where that was kept
    model.onnx.data                   its weights, only when the model is over 2 GB
    model.ort                         ONNX Runtime's ORT format (--ort-format, --target edge)
    libgraphprune_kernels.so          graphprune's sparse operators, when the model uses them
    model.required_operators.config   the operators a minimal ONNX Runtime build must include
    plan.json                         the pruning plan (replay with `graphprune --plan`)
    manifest.json                     sizes, sha256, opsets, op types, interface, how to load
    README.txt                        the same instructions for people

Every step is checked in ONNX Runtime against the fp32 model on seeded random inputs: opset
conversion and the ORT format must reproduce it (up to float rounding), fp16 is kept only when
its relative error (max |fp16 - fp32| / max |fp32| over all outputs) is within the tolerance.
The folder is built beside the destination and renamed into place at the end.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import GraphpruneError, NothingToPruneError, UnsafeResultError, UsageError
from .io import usual_file_mode

TARGETS = ("cpu", "edge")
MANIFEST_VERSION = 1
DEFAULT_FP16_TOLERANCE = 1e-2  # relative: max |fp16 - fp32| / max |fp32| over all outputs
CHECK_SAMPLES = 3  # random input sets every measurement runs on
# ORT format and opset conversion must reproduce the fp32 model up to float rounding (fused
# kernels reorder sums); anything beyond this is a conversion bug, and nothing is written.
_REPRODUCE_TOLERANCE = 1e-3
_MODEL = "model.onnx"
_ORT = "model.ort"
_ORT_CONFIG = "model.required_operators.config"
_ORT_FP16_NOTE = (
    "the ORT format bakes in the kernels of the machine that converted it: where that CPU has "
    "no fp16 kernel for an op (x86-64 for most ops), ONNX Runtime inserted Casts and runs the "
    "op in fp32; model.onnx keeps fp16 for runtimes and devices with fp16 kernels")

_OPTION_NAMES = {"sparse": "sparsity"}  # prune() keyword -> the CLI option that sets it
_LIBRARY_ROLE = ("graphprune's custom-operator library (sparse operators); register it with "
                 "SessionOptions.register_custom_ops_library")

Progress = Callable[[str], None]


@dataclass
class ExportResult:
    folder: Path
    manifest: dict
    messages: list[str] = field(default_factory=list)  # one line each, for the CLI

    def summary(self) -> str:
        files = self.manifest["files"]
        model = next(f for f in files if f["path"] == self.manifest["model"])
        lines = list(self.messages)
        lines.append(f"wrote {self.folder}/ ({len(files) + 1} files; load {model['path']}, "
                     f"{_human(model['bytes'])})")
        return "\n".join(lines)


def export(model, folder, *, target: str = "cpu", fp16: bool | None = None,
           opset: int | None = None, ort_format: bool | None = None, force: bool = False,
           prune_options: dict | None = None, no_prune: bool = False,
           fp16_tolerance: float = DEFAULT_FP16_TOLERANCE, fp16_converter: str = "auto",
           seed: int = 0, progress: Progress | None = None) -> ExportResult:
    """Prune `model` (a path or ModelProto) and write a deployment folder to `folder`.

    `target` "cpu" keeps a fp32 .onnx; "edge" also writes the ORT format and tries fp16
    (`fp16` / `ort_format` override either default). `prune_options` go to graphprune.prune
    (ratio, head_ratio, round_to, criterion, ...); `no_prune` exports the model as it is.
    `fp16_converter` is "auto" (onnxconverter-common when installed, else graphprune's own
    cast-based converter), "onnxconverter-common" or "builtin".
    """
    say = progress or (lambda _msg: None)
    if target not in TARGETS:
        raise UsageError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")
    if fp16_converter not in ("auto", "builtin", "onnxconverter-common"):
        raise UsageError(f"fp16 converter {fp16_converter!r}: expected auto, builtin or "
                         f"onnxconverter-common")
    if not (fp16_tolerance > 0 and np.isfinite(fp16_tolerance)):
        raise UsageError(f"--fp16-tolerance must be a positive number, got {fp16_tolerance}")
    want_fp16 = (target == "edge") if fp16 is None else bool(fp16)
    want_ort = (target == "edge") if ort_format is None else bool(ort_format)
    if opset is not None:
        newest = onnx.defs.onnx_opset_version()
        if not 7 <= opset <= newest:
            raise UsageError(f"--opset {opset}: expected 7 to {newest} (the newest this onnx "
                             f"package knows)")
    if no_prune and prune_options:
        given = ", ".join(f"--{_OPTION_NAMES.get(k, k).replace('_', '-')}"
                          for k in sorted(prune_options))
        raise UsageError(f"--no-prune excludes pruning options ({given})")
    source = str(model) if not isinstance(model, onnx.ModelProto) else "<model>"
    folder = Path(folder)
    _check_destination(folder, model, force)

    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        manifest, messages = _build(model, source, work, target=target, want_fp16=want_fp16,
                                    want_ort=want_ort, opset=opset,
                                    prune_options=prune_options or {}, no_prune=no_prune,
                                    tolerance=fp16_tolerance, converter=fp16_converter,
                                    seed=seed, say=say)
        _move_into_place(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportResult(folder, manifest, messages)


# --- the steps -----------------------------------------------------------------------------

def _build(model, source, work: Path, *, target, want_fp16, want_ort, opset, prune_options,
           no_prune, tolerance, converter, seed, say) -> tuple[dict, list[str]]:
    from . import __version__
    from .api import load_graph, prune, write
    from .io import save_graph

    messages: list[str] = []
    model_path = work / _MODEL
    pruning = None
    if no_prune:
        say(f"loading {source}")
        _, graph = load_graph(model)
        shell, weights = graph.split()
        save_graph(shell, weights, model_path)
    else:
        options = dict(prune_options)
        options.setdefault("seed", seed)
        try:
            result = prune(model, progress=say, **options)
        except NothingToPruneError as err:
            raise NothingToPruneError(f"{err}; use --no-prune to export it as it is") from None
        write(result, model_path, source=None)
        (work / "plan.json").write_text(result.plan.to_json())
        pruning = _pruning_summary(result)
        messages.append(result.report.summary())
    if no_prune:
        messages.append("not pruned (--no-prune): the model as it was given")

    interface = _load(model_path, weights=False)  # external weights (>2 GB) stay on disk
    custom_ops = _custom_ops(interface)
    if custom_ops:
        _copy_library(work)
        messages.append(f"custom operators: {', '.join(custom_ops)} from {_library_name()} "
                        f"(in the folder; the snippets register it)")
    say("running the fp32 model in ONNX Runtime")
    feeds = [_random_feeds(interface, seed + k) for k in range(CHECK_SAMPLES)]
    reference = _run_all(model_path, feeds, "the exported fp32 model")
    opset_before = _default_opset(interface)
    convert_opset = opset is not None and opset != opset_before
    fp32 = _load(model_path) if convert_opset or want_fp16 else None
    del interface
    if convert_opset:
        say(f"converting to opset {opset}")
        fp32 = _convert_opset(fp32, opset)
        _save(fp32, model_path)
        got = _errors(reference, _run_all(model_path, feeds, f"the opset {opset} model"))
        if not got["relative_error"] <= _REPRODUCE_TOLERANCE:
            raise UnsafeResultError(f"--opset {opset}: the converted model's outputs differ "
                                    f"from the original opset's by {got['relative_error']:.3g}"
                                    f" (relative); nothing was written")
        messages.append(f"opset: {opset_before} -> {opset}")

    fp16_info = {"requested": want_fp16, "kept": False, "tolerance": tolerance,
                 "metric": "max |fp16 - fp32| / max |fp32| over all outputs, "
                           f"{CHECK_SAMPLES} seeded random input sets"}
    if want_fp16 and custom_ops:
        fp16_info["reason"] = "graphprune's sparse operators run in fp32"
        messages.append(f"fp16: not kept, the model stays fp32 ({fp16_info['reason']})")
    elif want_fp16:
        say("converting to fp16")
        fp16_info.update(_try_fp16(fp32, work, feeds, reference, tolerance, converter))
        if fp16_info["kept"]:
            messages.append(f"fp16: kept (relative error {fp16_info['relative_error']:.3g} "
                            f"<= {tolerance:g})")
        else:
            messages.append(f"fp16: not kept, the model stays fp32 ({fp16_info['reason']})")
    del fp32

    deployed = _load(model_path, weights=False)
    external = any(p.name.startswith(_MODEL + ".data") for p in work.iterdir())
    ort_info = None
    if want_ort:
        if external:
            raise UsageError(f"{source}: the model is over 2 GB and the ORT format cannot hold "
                             f"it; export with --target cpu (or --no-ort-format)")
        say("converting to the ORT format")
        ort_info = _convert_to_ort(work, custom_ops=bool(custom_ops))
        got = _run_all(work / _ORT, feeds, "the ORT format model")
        ort_info.update(_errors(reference, got))
        allowed = tolerance if fp16_info["kept"] else _REPRODUCE_TOLERANCE
        if not ort_info["relative_error"] <= allowed:
            raise UnsafeResultError(
                f"{source}: the ORT format model's outputs differ from the fp32 model's by "
                f"{ort_info['relative_error']:.3g} (relative; allowed {allowed:g}); nothing "
                f"was written")
        messages.append(f"ORT format: {_ORT} (optimization style Fixed; operators in "
                        f"{_ORT_CONFIG})")
        ort_casts = sum(ops.count("Cast") for ops in
                        ort_info["required_operators"].get("ai.onnx", {}).values())
        if fp16_info["kept"] and ort_casts:
            ort_info["note"] = _ORT_FP16_NOTE

    primary = _ORT if want_ort else _MODEL
    final = _run_all(work / primary, feeds, f"the exported {primary}")
    check = {"file": primary, **_errors(reference, final)}
    manifest = _manifest(deployed, work, source=source, target=target, primary=primary,
                         pruning=pruning, fp16=fp16_info, ort=ort_info, external=external,
                         check=check, version=__version__, opset_requested=opset,
                         custom_ops=custom_ops)
    (work / "README.txt").write_text(_readme(manifest))
    manifest["files"] = _files(work)  # README included; the manifest cannot hash itself
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    _usual_permissions(work)
    return manifest, messages


def _usual_permissions(work: Path) -> None:
    """Temporary files and folders are private (0600/0700); the result follows the umask."""
    os.chmod(work, usual_file_mode(directory=True))
    for p in work.iterdir():
        os.chmod(p, usual_file_mode())


def _check_destination(folder: Path, model, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"-o {folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not force:
            raise UsageError(f"-o {folder}: folder exists and is not empty; use --force to "
                             f"replace it")
        if not isinstance(model, onnx.ModelProto):
            src = Path(model).resolve()
            if src == folder.resolve() or folder.resolve() in src.parents:
                raise UsageError(f"-o {folder}: holds the input model; --force would delete "
                                 f"it, choose another folder")
    if not folder.parent.is_dir():
        raise UsageError(f"-o {folder}: directory {folder.parent} does not exist")


def _move_into_place(work: Path, folder: Path) -> None:
    """Rename the finished folder over the destination (an old one is moved aside first and
    removed only once the new one is in place)."""
    if not folder.exists():
        os.rename(work, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    os.rmdir(old)
    os.rename(folder, old)
    try:
        os.rename(work, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _pruning_summary(result) -> dict:
    r = result.report
    fid = None
    if r.fidelity is not None:
        fid = {"max_abs_error": r.fidelity.max_abs_error,
               "relative_error": r.fidelity.relative_error, "cosine": r.fidelity.cosine,
               "top1_agreement": r.fidelity.top1_agreement}
    return {"criterion": r.criterion, "ratio": result.plan.ratio,
            "round_to": result.plan.round_to, "groups_found": r.groups_found,
            "groups_pruned": r.groups_pruned, "groups_frozen": len(r.frozen),
            "params_before": r.params_before, "params_cleaned": r.params_cleaned,
            "params_after": r.params_after,
            "macs_before": r.macs_before, "macs_after": r.macs_after,
            "fidelity_vs_original": fid, "plan": "plan.json",
            "sparsity": None if r.sparsity is None else {
                "pattern": r.sparsity.pattern, "sparsity": r.sparsity.sparsity,
                "candidates": len(r.sparsity.nodes),
                "sparse_nodes": [d.node for d in r.sparsity.rewritten]}}


# --- models on disk --------------------------------------------------------------------------

def _load(path: Path, weights: bool = True) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=weights)


def _save(model: onnx.ModelProto, path: Path) -> None:
    """Write with graphprune's streaming writer: external data only over 2 GB."""
    from .io import save_graph

    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    shell = onnx.ModelProto()
    shell.CopyFrom(model)
    del shell.graph.initializer[:]
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    save_graph(shell, weights, path)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = version_converter.convert_version(model, opset)
        converted.ir_version = max(converted.ir_version, _min_ir_version(converted))
        onnx.checker.check_model(converted)
    except Exception as err:  # the converter raises bare RuntimeErrors from C++
        raise UsageError(f"--opset {opset}: onnx's version converter cannot convert this model "
                         f"({_first_line(err)})") from None
    return converted


def _min_ir_version(model: onnx.ModelProto) -> int:
    try:
        return helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except Exception:
        return model.ir_version


# --- running ---------------------------------------------------------------------------------

_NP_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
             TensorProto.FLOAT16: np.float16, TensorProto.INT64: np.int64,
             TensorProto.INT32: np.int32, TensorProto.BOOL: np.bool_,
             TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8}


def _random_feeds(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    from .verify import random_inputs

    return random_inputs(model, seed)


def _custom_ops(model: onnx.ModelProto) -> list[str]:
    """graphprune operators the model uses (they need our library at run time)."""
    from .kernels import DOMAIN

    return sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})


def _library_name() -> str:
    from .kernels import LIBRARY_NAME

    return LIBRARY_NAME


def _copy_library(work: Path) -> None:
    from .kernels import KernelsUnavailable, library_path

    try:
        shutil.copy2(library_path(), work / _library_name())
    except KernelsUnavailable as err:
        raise UsageError(f"the model uses graphprune's sparse operators and their library is "
                         f"not available to copy into the folder: {_first_line(err)}") from None


def _custom_ops_entry(ops) -> dict | None:
    if not ops:
        return None
    from .kernels import DOMAIN, OPSET_VERSION, how_to_load, isa

    return {"library": _library_name(), "domain": DOMAIN, "opset": OPSET_VERSION,
            "ops": list(ops), "platform": f"{sys.platform}-{os.uname().machine}",
            "isa": f"dispatched when loaded (generic, avx2, avx512; this machine: {isa()})",
            "min_onnxruntime": "1.21", "how_to_load": how_to_load(ops, _MODEL)}


def _session(path: Path):
    """A session for checks; the folder's own copy of our library is registered when there."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    library = path.parent / _library_name()
    if library.is_file():
        opts.register_custom_ops_library(str(library))
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    if path.suffix == ".ort":
        opts.add_session_config_entry("session.load_model_format", "ORT")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_all(path: Path, feeds: list[dict], what: str) -> list[list[np.ndarray]]:
    try:
        sess = _session(path)
        return [sess.run(None, f) for f in feeds]
    except Exception as err:
        raise UnsafeResultError(f"{what} does not run in ONNX Runtime ({_first_line(err)}); "
                                f"nothing was written") from None


def _errors(reference: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> dict:
    max_abs, scale, cos, finite = 0.0, 0.0, 1.0, True
    for ref_outs, got_outs in zip(reference, got):
        for a, b in zip(ref_outs, got_outs):
            a64 = np.asarray(a, np.float64).ravel()
            b64 = np.asarray(b, np.float64).ravel()
            if a64.shape != b64.shape:
                return {"max_abs_error": float("inf"), "relative_error": float("inf"),
                        "cosine": 0.0, "finite": False}
            if a64.size == 0:
                continue
            finite = finite and bool(np.all(np.isfinite(b64)) or not np.all(np.isfinite(a64)))
            diff = np.abs(a64 - b64)
            diff = diff[np.isfinite(diff)] if finite else diff
            max_abs = max(max_abs, float(diff.max()) if diff.size else 0.0)
            scale = max(scale, float(np.max(np.abs(a64[np.isfinite(a64)]), initial=0.0)))
            denom = np.linalg.norm(a64) * np.linalg.norm(b64)
            if denom > 0 and np.isfinite(denom):
                cos = min(cos, float(a64 @ b64 / denom))
    rel = max_abs / scale if scale > 0 else max_abs
    if not finite:
        max_abs = rel = float("inf")
    return {"max_abs_error": max_abs, "relative_error": rel, "cosine": cos, "finite": finite}


# --- fp16 ------------------------------------------------------------------------------------

def _try_fp16(fp32: onnx.ModelProto, work: Path, feeds, reference, tolerance: float,
              converter: str) -> dict:
    """Convert, measure, and keep (replace model.onnx) only within the tolerance. "auto"
    tries onnxconverter-common (when installed), then graphprune's own converter."""
    if converter == "auto":
        try:
            import onnxconverter_common.float16  # noqa: F401
            order = ["onnxconverter-common", "builtin"]
        except ImportError:
            order = ["builtin"]
    else:
        order = [converter]
    attempts = []
    for name in order:
        info = _fp16_attempt(name, fp32, work, feeds, reference, tolerance)
        if info["kept"]:
            break
        attempts.append({"converter": name, "reason": info["reason"]})
    if len(order) > 1:
        info["attempts"] = attempts
        if not info["kept"]:
            info["reason"] = "; ".join(f"{a['converter']}: {a['reason']}" for a in attempts)
    return info


def _fp16_attempt(converter: str, fp32: onnx.ModelProto, work: Path, feeds, reference,
                  tolerance: float) -> dict:
    info: dict = {"converter": converter, "kept": False}
    try:
        if converter == "onnxconverter-common":
            m16 = _fp16_onnxconverter(fp32)
        else:
            m16 = to_fp16(fp32)
    except Fp16Unsupported as err:
        info["reason"] = f"cannot convert: {err}"
        return info
    except ImportError:
        raise UsageError("fp16 converter onnxconverter-common is not installed "
                         "(pip install onnxconverter-common)") from None
    except Exception as err:
        info["reason"] = f"{converter} conversion failed: {_first_line(err)}"
        return info
    side = work / "fp16"  # same file names as the final ones: external data keeps its name
    side.mkdir()
    try:
        candidate = side / _MODEL
        _save(m16, candidate)
        del m16
        try:
            got = _run_all(candidate, feeds, "the fp16 model")
        except UnsafeResultError as err:
            info["reason"] = str(err).replace("; nothing was written", "").replace(
                f"{side}{os.sep}", "")
            return info
        info.update(_errors(reference, got))
        if not info["finite"]:
            info["reason"] = "fp16 outputs overflow (inf or nan)"
        elif info["relative_error"] > tolerance:
            info["reason"] = (f"relative error {info['relative_error']:.3g} exceeds the "
                              f"tolerance {tolerance:g}")
        else:
            info["kept"] = True
            info["reason"] = "within tolerance"
            for suffix in ("", ".data"):
                src, dst = side / (_MODEL + suffix), work / (_MODEL + suffix)
                if src.exists():
                    os.replace(src, dst)
                else:
                    dst.unlink(missing_ok=True)
    finally:
        shutil.rmtree(side, ignore_errors=True)
    return info


def _fp16_onnxconverter(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Inputs and outputs stay float32 (Cast nodes at the boundary); weights beyond fp16's
        # range are clamped to it, tiny ones kept non-zero.
        return convert_float_to_float16(model, keep_io_types=True,
                                        max_finite_val=65504.0, min_positive_val=2.0**-24,
                                        disable_shape_infer=False)


class Fp16Unsupported(GraphpruneError):
    """The builtin converter does not handle this model (the export stays fp32)."""


# Ops kept in fp32 whatever their schema allows: fp16 overflows or loses too much in them
# (exponentials, powers, sums of squares, products), or they compute indices or coordinates.
_FP32_OPS = {"Exp", "Pow", "ReduceSumSquare", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
             "ReduceProd", "CumSum", "Range", "RandomNormal", "RandomUniform",
             "RandomNormalLike", "RandomUniformLike", "Multinomial", "NonMaxSuppression",
             "TopK", "RoiAlign", "GridSample", "AffineGrid", "Einsum", "LpNormalization",
             "STFT", "DFT", "MelWeightMatrix", "Det"}
_FP16_MAX = 65504.0
_FP16_TINY = 2.0**-24  # smallest subnormal: non-zero weights below it stay non-zero


def _weights_to_fp16(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array, np.float32)
    finite = np.isfinite(a)
    out = np.where(finite, np.clip(a, -_FP16_MAX, _FP16_MAX), a)
    tiny = finite & (out != 0) & (np.abs(out) < _FP16_TINY)
    out = np.where(tiny, np.copysign(_FP16_TINY, out), out)
    return out.astype(np.float16)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """graphprune's own fp16 conversion: float32 weights become float16 and every op whose
    schema accepts float16 runs in it; Cast nodes sit wherever fp32 and fp16 meet, including
    the graph inputs and outputs (which keep their float32 type).

    Careful about: positions a schema fixes to float (Resize scales) stay fp32; ops in
    _FP32_OPS and every op of another domain run in fp32; float values computed from integers
    (shape arithmetic: Cast(int -> float) -> Mul -> Floor -> Cast) stay fp32 where fp16 would
    round them; weights are clamped to fp16's range and tiny ones kept non-zero. Raises
    Fp16Unsupported for what it does not handle (subgraphs, tensors of unknown type)."""
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    if any(a.type == onnx.AttributeProto.GRAPH or a.type == onnx.AttributeProto.GRAPHS
           for n in g.node for a in n.attribute):
        raise Fp16Unsupported("control flow subgraphs (If/Loop/Scan)")
    if len(g.sparse_initializer):
        raise Fp16Unsupported("sparse initializers")
    opsets = {o.domain or "": o.version for o in m.opset_import}

    shell = _weightless(m)
    try:
        inferred = onnx.shape_inference.infer_shapes(shell)
    except Exception as err:
        raise Fp16Unsupported(f"shape inference failed ({_first_line(err)})") from None
    types: dict[str, int] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + \
            list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    for n in g.node:
        for name in list(n.input) + list(n.output):
            if name and name not in types:
                raise Fp16Unsupported(f"the type of tensor '{name}' (node '{n.name}', "
                                      f"{n.op_type}) is unknown")

    inits = {t.name: t for t in g.initializer}
    graph_outputs = [v.name for v in g.output]
    constants = {}  # Constant-node outputs with a float tensor value: handled like weights
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            attr = next((a for a in n.attribute if a.name == "value"), None)
            if attr is not None and attr.t.data_type == FLOAT:
                constants[n.output[0]] = n

    # Float values computed from integers (shape arithmetic): they stay fp32.
    from_ints: set[str] = set()
    for n in g.node:
        float_in = [i for i in n.input if i and types.get(i) == FLOAT]
        if n.op_type in ("Cast", "CastLike") and n.input and types.get(n.input[0]) != FLOAT \
                and types.get(n.input[0]) != HALF:
            from_ints.update(o for o in n.output if types.get(o) == FLOAT)
        elif float_in and all(i in from_ints or i in inits or i in constants
                              for i in float_in) and any(i in from_ints for i in float_in):
            from_ints.update(o for o in n.output if types.get(o) == FLOAT)

    # Per node and position: the element type the converted node reads / writes.
    wants_in: list[list[int]] = []
    makes_out: list[list[int]] = []
    for n in g.node:
        ins = [types.get(i, 0) if i else 0 for i in n.input]
        outs = [types.get(o, 0) if o else 0 for o in n.output]
        half_params = _half_params(n, opsets, from_ints)
        if half_params is not None:
            schema = _schema(n, opsets)
            for k, name in enumerate(n.input):
                if ins[k] == FLOAT and _formal(schema.inputs, k).type_str in half_params:
                    ins[k] = HALF
            for k, name in enumerate(n.output):
                if outs[k] == FLOAT and _formal(schema.outputs, k).type_str in half_params:
                    outs[k] = HALF
            if n.op_type == "Cast" and outs[0] == FLOAT and n.output[0] not in graph_outputs \
                    and n.output[0] not in from_ints:
                outs[0] = HALF
        wants_in.append(ins)
        makes_out.append(outs)

    # Weights (and float Constants): fp16 for fp16 readers; a fp32 original is kept beside
    # a fp16 copy when some reader needs fp32.
    readers: dict[str, set[int]] = {}
    for n, ins in zip(g.node, wants_in):
        for name, want in zip(n.input, ins):
            if name in inits or name in constants:
                readers.setdefault(name, set()).add(want)
    source_names: dict[tuple[str, int], str] = {}
    new_inits = []
    for name, wants in readers.items():
        if name in inits and inits[name].data_type != FLOAT:
            continue
        if HALF not in wants:
            continue
        keep_fp32 = FLOAT in wants or name in graph_outputs
        half_name = f"{name}.fp16" if keep_fp32 else name
        source_names[(name, HALF)] = half_name
        if name in inits:
            arr = _weights_to_fp16(numpy_helper.to_array(inits[name]))
            tensor = numpy_helper.from_array(arr, half_name)
            if keep_fp32:
                new_inits.append(tensor)
            else:
                inits[name].CopyFrom(tensor)
        else:
            node = constants[name]
            attr = next(a for a in node.attribute if a.name == "value")
            arr = _weights_to_fp16(numpy_helper.to_array(attr.t))
            if keep_fp32:
                new_inits.append(numpy_helper.from_array(arr, half_name))
            else:
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
    g.initializer.extend(new_inits)
    for v in g.input:  # models of IR < 4 also list their weights as inputs
        if v.name in inits and inits[v.name].data_type == HALF:
            v.type.tensor_type.elem_type = HALF
    if m.ir_version < 4:
        g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in new_inits)

    # Storage type of every tensor, then Casts where a reader wants another type.
    stored: dict[str, int] = {name: types[name] for name in types}
    for n, outs in zip(g.node, makes_out):
        if n.output and n.output[0] in constants and (n.output[0], HALF) in source_names \
                and source_names[(n.output[0], HALF)] == n.output[0]:
            stored[n.output[0]] = HALF
            continue
        for name, t in zip(n.output, outs):
            if name:
                stored[name] = t
    for name, t in list(stored.items()):
        if name in inits and inits[name].data_type == HALF:
            stored[name] = HALF

    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    used_names = {n.name for n in g.node} | set(types)

    def unique(base: str) -> str:
        name, k = base, 1
        while name in used_names:
            name, k = f"{base}.{k}", k + 1
        used_names.add(name)
        return name

    def cast_before(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = unique(f"{name}.to_{'fp16' if to == HALF else 'fp32'}")
            new_nodes.append(helper.make_node("Cast", [name], [out], name=unique(f"Cast_{out}"),
                                              to=to))
            casts[key] = out
        return casts[key]

    # Graph outputs keep float32: a fp16 producer writes NAME.fp16 and a Cast restores NAME.
    renamed: dict[str, str] = {}
    for name in graph_outputs:
        if stored.get(name) == HALF and name not in inits:
            renamed[name] = unique(f"{name}.fp16")

    for n, ins, outs in zip(list(g.node), wants_in, makes_out):
        for k, name in enumerate(n.input):
            if not name:
                continue
            want = ins[k]
            if (name, want) in source_names:
                n.input[k] = source_names[(name, want)]
                continue
            real = renamed.get(name, name)
            have = stored.get(name, want)
            if have != want and {have, want} <= {FLOAT, HALF}:
                n.input[k] = cast_before(real, want)
            else:
                n.input[k] = real
        if n.op_type == "Cast" and outs[0] == HALF:
            for a in n.attribute:
                if a.name == "to":
                    a.i = HALF
        if n.op_type == "ConstantOfShape" and outs and outs[0] == HALF:
            for a in n.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(
                        _weights_to_fp16(numpy_helper.to_array(a.t)), a.t.name))
        for k, name in enumerate(n.output):
            if name in renamed:
                n.output[k] = renamed[name]
        new_nodes.append(n)  # after the Casts it reads: created just before their first
        # reader, which follows the value's producer, so the order stays topological
    for name, half in renamed.items():
        new_nodes.append(helper.make_node("Cast", [half], [name], name=unique(f"Cast_{name}"),
                                          to=FLOAT))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    try:
        onnx.checker.check_model(_weightless(m))
        onnx.shape_inference.infer_shapes(_weightless(m), check_type=True, strict_mode=True)
    except Exception as err:
        raise Fp16Unsupported(f"the converted model is inconsistent ({_first_line(err)})") \
            from None
    return m


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its weights declared as inputs instead of held (for the checker and
    shape inference, without copying the weights)."""
    shell = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    shell.opset_import.extend(model.opset_import)
    shell.functions.extend(model.functions)
    g, src = shell.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    declared = {v.name for v in g.input}
    for t in src.initializer:
        if t.name not in declared:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return shell


def _schema(node: onnx.NodeProto, opsets: dict[str, int]):
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    try:
        return onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
    except Exception:
        return None


def _formal(formals, k: int):
    """The formal parameter of position k (the last one is variadic)."""
    return formals[min(k, len(formals) - 1)]


def _half_params(node: onnx.NodeProto, opsets, from_ints: set[str]) -> set | None:
    """Type parameters of `node` that may become float16, or None when it stays fp32."""
    if node.domain not in ("", "ai.onnx") or node.op_type in _FP32_OPS:
        return None
    if node.op_type == "Constant":
        return None  # handled as a weight
    if any(a.name in ("dtype", "to") for a in node.attribute) and node.op_type != "Cast":
        return None  # the output type comes from an attribute
    if node.op_type == "ConstantOfShape":
        attr = next((a for a in node.attribute if a.name == "value"), None)
        if attr is None or attr.t.data_type != TensorProto.FLOAT:
            return None
    if any(i in from_ints for i in node.input if i):
        return None
    schema = _schema(node, opsets)
    if schema is None:
        return None
    params = {tc.type_param_str for tc in schema.type_constraints
              if "tensor(float16)" in tc.allowed_type_strs}
    if node.op_type == "Cast":
        params.discard("T2")  # the output type is `to`, rewritten separately
    if node.op_type == "ConstantOfShape":
        return {"T2"} if "T2" in params else None
    return params


# --- ORT format ------------------------------------------------------------------------------

def _convert_to_ort(work: Path, custom_ops: bool = False) -> dict:
    """ONNX Runtime's own tool, in a child process (it prints and logs freely)."""
    import onnxruntime as ort

    args = ["--optimization_style", "Fixed", "--output_dir", str(work), str(work / _MODEL)]
    if custom_ops:  # the tool must load the model, and lists our ops in the operator config
        args[:0] = ["--custom_op_library", str(work / _library_name())]
    # `python -m onnxruntime.tools.convert_onnx_models_to_ort ARGS`, except that the package
    # is told torch is absent: onnxruntime.tools imports torch when installed, for helpers
    # the conversion never uses (4 s of a 5 s run).
    boot = ("import runpy, sys; sys.modules['torch'] = None; "
            "sys.argv = ['convert_onnx_models_to_ort'] + sys.argv[1:]; "
            "runpy.run_module('onnxruntime.tools.convert_onnx_models_to_ort', "
            "run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", boot, *args], capture_output=True, text=True)
    if proc.returncode != 0 or not (work / _ORT).exists():
        text = (proc.stderr or proc.stdout).strip().splitlines()
        last = next((line for line in reversed(text) if line.strip()), "no output")
        raise GraphpruneError(f"ONNX Runtime's ORT format conversion failed: {last[:300]}")
    config = work / _ORT_CONFIG
    if not config.exists():
        raise GraphpruneError("ONNX Runtime's ORT format conversion wrote no "
                              f"{_ORT_CONFIG}")
    # The tool names the absolute (temporary) path of the model it read; name the file only.
    text = re.sub(r"^# - .*[/\\]([^/\\]+)$", r"# - \1", config.read_text(), flags=re.M)
    config.write_text(text)
    return {"file": _ORT, "optimization_style": "Fixed",
            "required_operators_config": _ORT_CONFIG,
            "required_operators": _parse_ops_config(text),
            "converter": "python -m onnxruntime.tools.convert_onnx_models_to_ort "
                         "--optimization_style Fixed",
            "onnxruntime_version": ort.__version__}


def _parse_ops_config(text: str) -> dict[str, dict[str, list[str]]]:
    ops: dict[str, dict[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(";")
        if len(parts) >= 3:
            ops.setdefault(parts[0], {})[parts[1]] = sorted(
                p.split("{")[0] for p in parts[2].split(",") if p)
    return ops


# --- manifest and README ---------------------------------------------------------------------

def _value_infos(model: onnx.ModelProto, which: str) -> list[dict]:
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in getattr(model.graph, which):
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = []
        for d in t.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else
                        d.dim_param if d.HasField("dim_param") else None)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name \
            if t.elem_type else "unknown"
        out.append({"name": vi.name, "dtype": dtype, "shape": dims})
    return out


def _op_types(model: onnx.ModelProto) -> dict[str, list[str]]:
    ops: dict[str, set[str]] = {}
    for n in model.graph.node:
        ops.setdefault(n.domain or "ai.onnx", set()).add(n.op_type)
    return {d: sorted(v) for d, v in sorted(ops.items())}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_ROLES = {_MODEL: "ONNX model", _MODEL + ".data": "external weight data of model.onnx",
          _ORT: "ORT format model", _ORT_CONFIG: "required operators (minimal ONNX Runtime "
          "build: --include_ops_by_config)", "plan.json": "pruning plan (graphprune --plan)",
          "README.txt": "instructions", "manifest.json": "this manifest",
          "libgraphprune_kernels.so": _LIBRARY_ROLE}


def _files(work: Path) -> list[dict]:
    files = []
    for p in sorted(work.iterdir()):
        if p.is_file() and p.name != "manifest.json":
            files.append({"path": p.name, "role": _ROLES.get(p.name, ""),
                          "bytes": p.stat().st_size, "sha256": _sha256(p)})
    return files


def _manifest(model, work: Path, *, source, target, primary, pruning, fp16, ort, external,
              check, version, opset_requested, custom_ops=()) -> dict:
    import onnxruntime as ort_

    inputs, outputs = _value_infos(model, "input"), _value_infos(model, "output")
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    manifest = {
        "format": "graphprune-export", "version": MANIFEST_VERSION,
        "created_by": f"graphprune {version}",
        "source": source if source == "<model>" else Path(source).name,
        "target": target,
        "model": primary,
        "model_format": "ort" if primary.endswith(".ort") else "onnx",
        "onnx_model": _MODEL,
        "precision": "fp16" if fp16["kept"] else "fp32",
        "io_dtype_note": "inputs and outputs keep their types; fp16 models cast at the "
                         "boundary" if fp16["kept"] else "",
        "ir_version": model.ir_version,
        "opset": opsets,
        "opset_requested": opset_requested,
        "op_types": _op_types(model),
        "inputs": inputs, "outputs": outputs,
        "external_data": external,
        "pruning": pruning,
        "fp16": fp16,
        "ort_format": ort,
        "check": {**check, "against": "the fp32 model before fp16/ORT conversion",
                  "samples": CHECK_SAMPLES},
        "runtime": {"onnxruntime": ort_.__version__, "onnx": onnx.__version__,
                    "providers": ["CPUExecutionProvider"]},
        "custom_ops": _custom_ops_entry(custom_ops),
    }
    manifest["load"] = {"python": python_snippet(manifest), "cpp": cpp_snippet(manifest)}
    manifest["files"] = []
    return manifest


def python_snippet(manifest: dict) -> str:
    """Load and run the exported model with onnxruntime (run from the export folder)."""
    feeds = []
    for i in manifest["inputs"]:
        shape = tuple(d if isinstance(d, int) else 1 for d in i["shape"])
        maker = "np.random.rand" if i["dtype"].startswith("float") else "np.ones"
        arg = ", ".join(map(str, shape)) if maker == "np.random.rand" else repr(shape)
        feeds.append(f"    {i['name']!r}: {maker}({arg}).astype(np.{i['dtype']}),")
    dyn = any(not isinstance(d, int) for i in manifest["inputs"] for d in i["shape"])
    custom = manifest.get("custom_ops")
    lines = [
        *(["import os", ""] if custom else []),
        "import numpy as np",
        "import onnxruntime as ort",
        "",
        "options = ort.SessionOptions()",
    ]
    if custom:
        ops = ", ".join(f"{custom['domain']}.{op}" for op in custom["ops"])
        lines += [
            f"# the model uses graphprune's sparse operators ({ops}): register their library",
            f'library = os.path.abspath("{custom["library"]}")',
            "if not os.path.isfile(library):",
            "    raise SystemExit(",
            f'        "{manifest["model"]} needs graphprune\'s custom-operator library '
            f'{custom["library"]} (operators {ops}); it is not in " + os.getcwd() + ". Copy '
            f'it from the export folder, or build one with `pip install graphprune && python '
            f'-m graphprune.kernels build` (prints its path), then call '
            f'options.register_custom_ops_library(path) before creating the session.")',
            "options.register_custom_ops_library(library)",
        ]
    if manifest["model_format"] == "ort":
        lines.append('options.add_session_config_entry("session.load_model_format", "ORT")')
    lines += [
        f'session = ort.InferenceSession("{manifest["model"]}", options,',
        '                               providers=["CPUExecutionProvider"])',
        "feeds = {" + ("  # dynamic dims set to 1" if dyn else ""),
        *feeds,
        "}",
        "outputs = session.run(None, feeds)  # " + ", ".join(
            f"{o['name']}: {o['dtype']}{_shape_text(o['shape'])}" for o in manifest["outputs"]),
        "for name, value in zip([o.name for o in session.get_outputs()], outputs):",
        "    print(name, value.shape, value.dtype)",
    ]
    return "\n".join(lines) + "\n"


_CPP_TYPES = {"float32": "float", "float64": "double", "int64": "int64_t", "int32": "int32_t",
              "int8": "int8_t", "uint8": "uint8_t", "bool": "bool",
              "float16": "Ort::Float16_t"}


def cpp_snippet(manifest: dict) -> str:
    """The same with the ONNX Runtime C++ API (onnxruntime_cxx_api.h)."""
    lines = [
        "#include <onnxruntime_cxx_api.h>",
        "",
        "#include <array>",
        "#include <cstdint>",
        "#include <iostream>",
        "#include <memory>",
        "#include <vector>",
        "",
        "int main() {",
        '  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "graphprune");',
        "  Ort::SessionOptions options;",
        "  options.SetIntraOpNumThreads(1);",
    ]
    custom = manifest.get("custom_ops")
    if custom:
        lines.append(f"  // graphprune's sparse operators ({', '.join(custom['ops'])}) live in "
                     f"{custom['library']}")
        lines.append(f'  options.RegisterCustomOpsLibrary(ORT_TSTR("./{custom["library"]}"));')
    if manifest["model_format"] == "ort":
        lines.append('  options.AddConfigEntry("session.load_model_format", "ORT");')
    lines += [
        f'  Ort::Session session(env, ORT_TSTR("{manifest["model"]}"), options);',
        "  Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, "
        "OrtMemTypeDefault);",
        "",
        "  std::vector<Ort::Value> inputs;",
    ]
    for k, i in enumerate(manifest["inputs"]):
        ctype = _CPP_TYPES.get(i["dtype"], "float")
        dims = [d if isinstance(d, int) else 1 for d in i["shape"]]
        count = " * ".join(map(str, dims)) or "1"
        note = "  // dynamic dims set to 1" if any(not isinstance(d, int)
                                                     for d in i["shape"]) else ""
        lines.append(f"  // {i['name']}: {i['dtype']}{_shape_text(i['shape'])}{note}")
        lines.append(f"  std::array<int64_t, {len(dims)}> shape{k}{{"
                     f"{', '.join(map(str, dims))}}};")
        if ctype == "bool":
            lines.append(f"  std::unique_ptr<bool[]> data{k}(new bool[{count}]());")
            ptr = f"data{k}.get()"
        else:
            lines.append(f"  std::vector<{ctype}> data{k}({count});  // fill with your data")
            ptr = f"data{k}.data()"
        lines.append(f"  inputs.push_back(Ort::Value::CreateTensor<{ctype}>(memory, {ptr}, "
                     f"{count}, shape{k}.data(), shape{k}.size()));")
    in_names = ", ".join(f'"{i["name"]}"' for i in manifest["inputs"])
    out_names = ", ".join(f'"{o["name"]}"' for o in manifest["outputs"])
    n_in, n_out = len(manifest["inputs"]), len(manifest["outputs"])
    lines += [
        "",
        f"  const char* input_names[] = {{{in_names}}};",
        f"  const char* output_names[] = {{{out_names}}};",
        "  std::vector<Ort::Value> outputs = session.Run(Ort::RunOptions{nullptr}, "
        f"input_names, inputs.data(), {n_in}, output_names, {n_out});",
    ]
    for k, o in enumerate(manifest["outputs"]):
        ctype = _CPP_TYPES.get(o["dtype"], "float")
        lines.append(f"  const {ctype}* out{k} = outputs[{k}].GetTensorData<{ctype}>();  "
                     f"// {o['name']}: {o['dtype']}{_shape_text(o['shape'])}")
    lines += [
        "  std::cout << \"ran " + manifest["model"] + ": \" << outputs.size() << \" outputs\\n\";",
        "  (void)out0;" if manifest["outputs"] else "",
        "  return 0;",
        "}",
    ]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _shape_text(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _readme(m: dict) -> str:
    def section(title):
        return ["", title, "-" * len(title)]

    lines = [f"graphprune export of {m['source']} (target: {m['target']})",
             "=" * 60,
             "",
             f"Load {m['model']} ({m['model_format'].upper()} format, {m['precision']}) with "
             f"ONNX Runtime {m['runtime']['onnxruntime']} or newer, CPU execution provider.",
             f"Opset: {', '.join(f'{d} {v}' for d, v in m['opset'].items())}; "
             f"IR version {m['ir_version']}.",
             "manifest.json lists every file with its size and sha256, the op types per "
             "domain and the inputs and outputs."]
    lines += section("Inputs")
    lines += [f"  {i['name']}: {i['dtype']} {_shape_text(i['shape'])}" for i in m["inputs"]]
    lines += section("Outputs")
    lines += [f"  {o['name']}: {o['dtype']} {_shape_text(o['shape'])}" for o in m["outputs"]]
    if m["pruning"]:
        p = m["pruning"]
        lines += section("Pruning")
        cleaned = p.get("params_cleaned") or p["params_before"]
        lines += [f"  params: {p['params_before']:,} -> {p['params_after']:,}" + (
                      f" (clean-up alone -> {cleaned:,})" if cleaned != p["params_before"] else ""),
                  f"  MACs:   {p['macs_before']:,} -> {p['macs_after']:,}",
                  f"  criterion {p['criterion']}, ratio {p['ratio']}, round-to "
                  f"{p['round_to']}; {p['groups_pruned']} of {p['groups_found']} groups "
                  f"pruned; plan in plan.json"]
        if p["fidelity_vs_original"]:
            f = p["fidelity_vs_original"]
            lines.append(f"  outputs vs the original model (random inputs): relative error "
                         f"{f['relative_error']:.4g}, cosine {f['cosine']:.4f}")
    else:
        lines += section("Pruning")
        lines.append("  none (--no-prune): the model as it was given")
    lines += section("Precision")
    f16 = m["fp16"]
    if not f16["requested"]:
        lines.append("  fp32 (fp16 not requested)")
    elif f16["kept"]:
        lines.append(f"  fp16 weights and compute; inputs and outputs keep their types. "
                     f"Relative error vs fp32 {f16['relative_error']:.3g} <= tolerance "
                     f"{f16['tolerance']:g} ({f16['metric']}); converter {f16['converter']}.")
    else:
        lines.append(f"  fp32: fp16 was tried and not kept ({f16['reason']}).")
    if m["ort_format"]:
        lines += section("ORT format")
        lines += [f"  {m['ort_format']['file']}: converted with "
                  f"`{m['ort_format']['converter']}`.",
                  f"  {m['ort_format']['required_operators_config']}: pass it to ONNX "
                  "Runtime's build.py --minimal_build --include_ops_by_config to build a "
                  "runtime with only these operators."]
        if m["ort_format"].get("note"):
            lines.append(f"  Note: {m['ort_format']['note']}.")
    if m["external_data"]:
        lines += ["", "The weights are in model.onnx.data (the model is over 2 GB): keep it "
                  "beside model.onnx."]
    if m.get("custom_ops"):
        lines += section("Custom operators")
        lines += [f"  {m['custom_ops']['how_to_load']}.",
                  f"  {m['custom_ops']['library']} is in this folder "
                  f"({m['custom_ops']['platform']}; {m['custom_ops']['isa']}); ONNX Runtime "
                  f">= {m['custom_ops']['min_onnxruntime']}. The snippets below register it."]
    c = m["check"]
    lines += ["", f"Checked: {c['file']} runs in ONNX Runtime; relative error vs the fp32 "
                  f"model {c['relative_error']:.3g} on {c['samples']} random input sets."]
    lines += section("Python (pip install onnxruntime numpy; run in this folder)")
    lines += ["", *("    " + s for s in m["load"]["python"].splitlines())]
    lines += section("C++ (ONNX Runtime C++ API; link with -lonnxruntime; run in this folder)")
    lines += ["", *("    " + s for s in m["load"]["cpp"].splitlines())]
    return "\n".join(lines) + "\n"


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__
