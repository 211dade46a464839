"""Run two models in ONNX Runtime on the same inputs and measure how far their outputs differ."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

_NP_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
             onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
             onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_,
             onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}


@dataclass
class Fidelity:
    max_abs_error: float  # largest |a - b| over all outputs
    relative_error: float  # max_abs_error / max |a|: comparable across models
    cosine: float  # cosine similarity of the flattened outputs (worst output)
    top1_agreement: float | None  # for classifier-like outputs [N, classes]
    elements: int = 0  # output elements compared: 0 when every output was empty (a detector
    # that finds nothing in noise), which makes the figures above say nothing
    resized: int = 0  # outputs whose data-dependent size changed (a detector's count of
    # detections): not compared element by element


def session(model: onnx.ModelProto | bytes | str, threads: int = 1,
            custom_ops: bool = False) -> ort.InferenceSession:
    """A session for checking outputs; `custom_ops` registers graphprune's sparse operators."""
    if custom_ops:
        from .kernels import session_options

        opts = session_options(threads)
    else:
        opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # failures come back as exceptions, reported in one line
    # Checking needs no graph optimizations, pre-packed weights or arenas: those copy every
    # weight again (ResNet-50: 260 MB instead of 130 MB with layout transforms; with only the
    # basic level, a model whose BatchNorms are not folded yet still got fused copies of its
    # conv weights: in bench/compile.py, ONNX's light ResNet-50's reference run grew the peak by
    # 236 MiB instead of 126) and make sessions slower to build (that reference run: 0.39 s
    # against 0.26 s).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.enable_cpu_mem_arena = False
    opts.add_session_config_entry("session.disable_prepacking", "1")
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def random_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Inputs for every graph input; dynamic dims become `batch` (first axis) or 1."""
    rng = np.random.default_rng(seed)
    weights = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in weights:
            continue
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else
                (batch if i == 0 else 1) for i, d in enumerate(t.shape.dim)]
        dtype = _NP_TYPES.get(t.elem_type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(dims, dtype=dtype)
    return feeds


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8}


# Dynamic sizes tried, in turn, for the non-batch dims of float inputs (images, audio): at 1x1
# a CNN sees mostly padding and a pruned model can match the original by accident (a
# detector's output was identical), and audio front ends refuse one sample (reflect padding);
# 64 suits strides up to 32 (FPN necks), 512 audio windows (an STFT front end).
_CHECK_SIZES = (64, 512, 32, 1)


def session_inputs(sess: ort.InferenceSession, seed: int = 0, batch: int = 1,
                   size: int = 1) -> dict[str, np.ndarray]:
    """Like random_inputs, from a session's own input list (no model proto needed). Dynamic
    non-batch dims of float inputs get `size`, other dynamic dims 1; a named dim keeps the
    value of its first appearance everywhere (a recurrent state's 'batch' on axis 1)."""
    rng = np.random.default_rng(seed)
    feeds, symbols = {}, {}
    for arg in sess.get_inputs():
        dtype = _ORT_TYPES.get(arg.type, np.float32)
        wide = np.issubdtype(dtype, np.floating) and len(arg.shape) >= 2
        dims = []
        for i, d in enumerate(arg.shape):
            if isinstance(d, int) and d >= 0:
                dims.append(d)
                continue
            value = batch if i == 0 else size if wide else 1
            dims.append(symbols.setdefault(d, value) if isinstance(d, str) and d else value)
        feeds[arg.name] = (rng.standard_normal(dims).astype(dtype)
                           if np.issubdtype(dtype, np.floating) else np.zeros(dims, dtype))
    return feeds


def reference_run(sess: ort.InferenceSession, seed: int = 0):
    """Feeds and outputs of the first of _CHECK_SIZES at which the model runs (a model may
    accept only some sizes, e.g. a text recogniser whose height must pool down to 1)."""
    dynamic = any(not (isinstance(d, int) and d >= 0) for a in sess.get_inputs()
                  for d in a.shape[1:])
    sizes = _CHECK_SIZES if dynamic else (1,)
    for k, size in enumerate(sizes):
        feeds = session_inputs(sess, seed, size=size)
        try:
            return feeds, sess.run(None, feeds)
        except Exception:
            if k == len(sizes) - 1:
                raise
    raise AssertionError("unreachable")


def run(model, feeds) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def compare(reference: list[np.ndarray], candidate: list[np.ndarray],
            classifier: list[bool] | None = None) -> Fidelity:
    """How far `candidate` outputs are from `reference`. Outputs of different shapes (sizes
    that depend on the data, checked by the caller) are counted, not compared. `classifier`
    marks the outputs whose top-1 agreement means something ([batch, classes]); by default
    every 2-D output may."""
    max_abs, scale, cos, top1, elements, resized = 0.0, 0.0, 1.0, None, 0, 0
    for i, (a, b) in enumerate(zip(reference, candidate)):
        if a.shape != b.shape:
            resized += 1
            continue
        a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        if a64.size == 0:
            continue
        elements += a64.size
        max_abs = max(max_abs, float(np.max(np.abs(a64 - b64))))
        scale = max(scale, float(np.max(np.abs(a64))))
        denom = np.linalg.norm(a64) * np.linalg.norm(b64)
        cos = min(cos, float(a64 @ b64 / denom) if denom > 0 else float(np.array_equal(a64, b64)))
        likely = classifier[i] if classifier is not None and i < len(classifier) else True
        if likely and a.ndim == 2 and a.shape[1] > 1 and top1 is None:
            top1 = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
    return Fidelity(max_abs, max_abs / scale if scale > 0 else max_abs, cos, top1, elements,
                    resized)
