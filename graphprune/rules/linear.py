"""Gemm and MatMul with a constant weight: the fully connected layers of CNN heads and MLPs."""
from __future__ import annotations

from ..coupling import Effect, Link, ParamSlice, Port, attr, frozen, rule


def _gemm_seed(node, graph):
    ok = graph.const(node.input[1]) is not None and not attr(node, "transA", 0)
    return [(node.output[0], 1)] if ok else []


@rule("Gemm", seeds=_gemm_seed)
def gemm(node, port: Port, graph) -> Effect:
    """Output channels own rows (transB) or columns of B and the bias; input features own the other axis."""
    if graph.const(node.input[1]) is None or attr(node, "transA", 0):
        return frozen(f"Gemm '{node.name}' has no constant weight in the usual layout")
    if port.axis != 1 or (port.side == "in" and port.index != 0):
        return frozen(f"Gemm '{node.name}' mixes rows of its batch axis")
    trans_b = int(attr(node, "transB", 0))
    if port.side == "in":
        return Effect(params=[ParamSlice(node.input[1], 1 if trans_b else 0, "consumer")])
    effect = Effect(params=[ParamSlice(node.input[1], 0 if trans_b else 1, "producer")])
    if len(node.input) > 2 and node.input[2]:
        c = graph.const(node.input[2])
        if c is None:
            return frozen(f"Gemm '{node.name}' has a bias computed at run time")
        if c.ndim >= 1 and c.shape[-1] > 1:
            effect.params.append(ParamSlice(node.input[2], c.ndim - 1, "producer"))
    return effect


def _matmul_seed(node, graph):
    w = graph.const(node.input[1])
    rank = graph.rank(node.output[0])
    return [(node.output[0], rank - 1)] if w is not None and w.ndim == 2 and rank else []


@rule("MatMul", seeds=_matmul_seed)
def matmul(node, port: Port, graph) -> Effect:
    """Activation × constant 2-D weight: the last axis is consumed (weight rows) or produced (weight columns); other axes pass through."""
    w = graph.const(node.input[1])
    rank = graph.rank(node.output[0])
    if w is None or w.ndim != 2 or rank is None or rank < 2 or graph.const(node.input[0]) is not None:
        return frozen(f"MatMul '{node.name}' is not activation × constant 2-D weight")
    if port.side == "in" and port.index != 0:
        return frozen(f"MatMul '{node.name}' weight axis")
    last = rank - 1
    if port.axis != last:  # batch-like axes pass straight through
        other = (node.output[0], port.axis) if port.side == "in" else (node.input[0], port.axis)
        return Effect(links=[Link(other)])
    role, axis = ("consumer", 0) if port.side == "in" else ("producer", 1)
    return Effect(params=[ParamSlice(node.input[1], axis, role)])
