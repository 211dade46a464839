"""QDQ-quantized weights: pruned as float, written back as the integers they were.

A QDQ model (ONNX Runtime's `quantize_static`, TensorRT-style exports) feeds each layer's weight
through DequantizeLinear(int8 weight, scale, zero point). The canonicalizing pass
`dequantize_weights` replaces that by the float weight it computes and keeps the quantization
here; the pruner then slices plain float weights. After surgery `requantize` turns each such
weight back into integers with the kept channels' scales: slicing never changes a value, so the
integers are exactly the original ones, and the written model stays quantized. A weight whose
values left the quantization grid (compensation re-fits it) stays float rather than be rounded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper

from .ir import Graph


@dataclass
class Quantization:
    """How a float weight was dequantized: scale (and zero point) per tensor (`axis` None) or
    per slice along `axis`; `dtype` the integer type of the stored weight."""

    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int | None
    dtype: np.dtype


def _broadcast(values: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    if axis is None:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def dequantize(q: np.ndarray, quant: Quantization) -> np.ndarray:
    """(q - zero point) * scale, as DequantizeLinear computes it."""
    zero = 0 if quant.zero_point is None else \
        _broadcast(quant.zero_point.astype(np.int64), quant.axis, q.ndim)
    diff = (q.astype(np.int64) - zero).astype(quant.scale.dtype)
    return diff * _broadcast(quant.scale, quant.axis, q.ndim)


def quantize_exactly(w: np.ndarray, quant: Quantization) -> np.ndarray | None:
    """The integers that dequantize to exactly `w`, or None when `w` is off the grid."""
    zero = 0 if quant.zero_point is None else \
        _broadcast(quant.zero_point.astype(np.int64), quant.axis, w.ndim)
    scale = _broadcast(quant.scale, quant.axis, w.ndim)
    info = np.iinfo(quant.dtype)
    # in float64: float32 division is off by up to |q| * 2^-23, which would misround int32
    # biases of a few million
    q = np.clip(np.rint(w.astype(np.float64) / scale.astype(np.float64)) + zero,
                info.min, info.max).astype(quant.dtype)
    return q if np.array_equal(dequantize(q, quant), w) else None


def sliced(quant: Quantization, slices: list[tuple[int, np.ndarray | None]],
           size: int) -> Quantization | None:
    """`quant` after the weight was sliced by `slices` ((axis, indices) in order); None when a
    slice along the quantization axis is not a plain index list."""
    if quant.axis is None:
        return quant
    scale, zero = quant.scale, quant.zero_point
    for axis, index in slices:
        if axis != quant.axis:
            continue
        if index is None:
            return None
        scale = scale[index]
        zero = None if zero is None else zero[index]
    if scale.shape[0] != size:
        return None
    return Quantization(scale, zero, quant.axis, quant.dtype)


def requantize(graph: Graph) -> tuple[int, list[str]]:
    """Give every dequantized weight that is still on its grid its DequantizeLinear back (with
    the kept channels' scales). Returns how many were, and the weights left float."""
    left, done = [], 0
    for name, quant in sorted(graph.quantized.items()):
        w = graph.weights.get(name)
        users = graph.consumers(name)
        if w is None or not users:
            continue
        size = w.shape[quant.axis] if quant.axis is not None else 0
        now = sliced(quant, graph.slices.get(name, []), size)
        q = None if now is None else quantize_exactly(w, now)
        if q is None:
            left.append(name)
            continue
        inputs = [graph.unique_name(f"{name}_quantized"), graph.unique_name(f"{name}_scale")]
        graph.weights[inputs[0]], graph.weights[inputs[1]] = q, now.scale
        if now.zero_point is not None:
            inputs.append(graph.unique_name(f"{name}_zero_point"))
            graph.weights[inputs[2]] = now.zero_point
        attrs = {} if now.axis is None else {"axis": now.axis}
        node = helper.make_node("DequantizeLinear", inputs, [name],
                                name=graph.unique_name(f"{name}_dequantize"), **attrs)
        del graph.weights[name]
        first = min(i for i, n in enumerate(graph.nodes) if any(n is u for u in users))
        graph.nodes.insert(first, node)
        graph.reindex()
        done += 1
    return done, left
