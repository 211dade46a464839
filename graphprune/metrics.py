"""Parameter and FLOP counts, from weights and inferred shapes.

Dynamic dims (the batch) count as 1, so MACs are per sample; analysis stand-ins for dynamic
dims are read as dynamic (Graph.static_dims).
"""
from __future__ import annotations

import math

import numpy as np

from .coupling import attr
from .ir import Graph


def count_params(graph: Graph) -> int:
    """Elements of floating-point weights that some node uses, and of integer weights that a
    DequantizeLinear reads (a QDQ model's quantized weights; other integer constants are
    shapes and indices)."""
    total = 0
    for name, w in graph.weights.items():
        users = graph.consumers(name)
        if users and (np.issubdtype(w.dtype, np.floating) or any(
                u.op_type == "DequantizeLinear" and u.input[0] == name for u in users)):
            total += w.size
    return int(total)


def _numel(shape) -> int:
    return math.prod(1 if d is None else d for d in shape) if shape is not None else 0


def node_macs(graph: Graph, node) -> int:
    """Multiply-accumulates of one Conv, ConvTranspose, Gemm or MatMul (0 for other ops)."""
    op = node.op_type
    if op == "Conv":
        w = graph.static_dims(node.input[1])
        return _numel(graph.static_dims(node.output[0])) * math.prod(w[1:]) if w else 0
    if op == "ConvTranspose":
        w = graph.static_dims(node.input[1])
        return _numel(graph.static_dims(node.input[0])) * math.prod(w[1:]) if w else 0
    if op in ("Gemm", "MatMul"):
        a = graph.static_dims(node.input[0])
        if not a:
            return 0
        k = a[0] if op == "Gemm" and attr(node, "transA", 0) else a[-1]
        return _numel(graph.static_dims(node.output[0])) * (k or 1)
    return 0


def count_macs(graph: Graph) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul: the work pruning removes."""
    return int(sum(node_macs(graph, node) for node in graph.nodes))
