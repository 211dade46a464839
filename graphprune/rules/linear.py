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
    """Activation × constant 2-D weight: the last axis is consumed (weight rows) or produced (weight columns); other axes pass through. Activation × activation (attention): batch axes (heads) couple A, B and the output; the contracted axes of A and B couple to each other."""
    w = graph.const(node.input[1])
    rank = graph.rank(node.output[0])
    if rank is None or rank < 2 or graph.const(node.input[0]) is not None:
        return frozen(f"MatMul '{node.name}' is not activation × weight or activation")
    if w is None:
        return _batched_matmul(node, port, graph)
    if w.ndim != 2:
        return frozen(f"MatMul '{node.name}' has a {w.ndim}-D constant weight")
    if port.side == "in" and port.index != 0:
        return frozen(f"MatMul '{node.name}' weight axis")
    last = rank - 1
    if port.axis != last:  # batch-like axes pass straight through
        other = (node.output[0], port.axis) if port.side == "in" else (node.input[0], port.axis)
        return Effect(links=[Link(other)])
    role, axis = ("consumer", 0) if port.side == "in" else ("producer", 1)
    return Effect(params=[ParamSlice(node.input[1], axis, role)])


def _batched_matmul(node, port: Port, graph) -> Effect:
    """A[..., M, K] @ B[..., K, N]: M follows the output's rows, N its columns, K of A is K of
    B (removing it from both is exact), and batch axes broadcast like elementwise ops."""
    a, b, out = node.input[0], node.input[1], node.output[0]
    sa, sb, so = graph.shape(a), graph.shape(b), graph.shape(out)
    if sa is None or sb is None or so is None or len(sa) < 2 or len(sb) < 2:
        return frozen(f"MatMul '{node.name}' has operands of unknown or vector shape")
    ra, rb, ro = len(sa), len(sb), len(so)
    links = []
    if port.side == "in" and port.index == 0:
        if port.axis == ra - 1:
            links.append(Link((b, rb - 2)))
        elif port.axis == ra - 2:
            links.append(Link((out, ro - 2)))
        else:
            links += _batch_links(port.axis + ro - ra, (b, sb), (out, so), rank_out=ro)
    elif port.side == "in":
        if port.axis == rb - 2:
            links.append(Link((a, ra - 1)))
        elif port.axis == rb - 1:
            links.append(Link((out, ro - 1)))
        else:
            links += _batch_links(port.axis + ro - rb, (a, sa), (out, so), rank_out=ro)
    else:
        if port.axis == ro - 1:
            links.append(Link((b, rb - 1)))
        elif port.axis == ro - 2:
            links.append(Link((a, ra - 2)))
        else:
            links += _batch_links(port.axis, (a, sa), (b, sb), rank_out=ro)
    effect = Effect(links=links)
    batch = (port.axis < ra - 2 if port.side == "in" and port.index == 0 else
             port.axis < rb - 2 if port.side == "in" else port.axis < ro - 2)
    if batch:  # a batch axis of activation @ activation: the axis of attention heads
        effect.tags.add("heads")
    return effect


def _batch_links(out_axis: int, *tensors, rank_out: int) -> list[Link]:
    """Links to the same broadcast batch axis of each tensor, unless it broadcasts there."""
    links = []
    for name, shape in tensors:
        axis = out_axis - (rank_out - len(shape))
        if 0 <= axis < len(shape) - 2 and shape[axis] != 1:
            links.append(Link((name, axis)))
    return links


@rule("Einsum")
def einsum(node, port: Port, graph) -> Effect:
    """Activation × activation with explicit labels (MaxViT's attention): an axis couples to every axis with the same label; a label both operands and the output share is a batch axis (heads, as in MatMul), one both operands sum over is removed from both. Constant operands, ellipses and a label one operand sums over alone freeze."""
    terms = _einsum_terms(attr(node, "equation", b""))
    if terms is None or len(node.input) != 2 or any(
            graph.const(t) is not None for t in node.input):
        return frozen(f"Einsum '{node.name}' is not a two-activation equation with explicit "
                      "labels")
    tensors = [*node.input, node.output[0]]
    shapes = [graph.shape(t) for t in tensors]
    if any(s is None or len(s) != len(labels) for s, labels in zip(shapes, terms)):
        return frozen(f"Einsum '{node.name}' has operands of unknown shape")
    me = port.index if port.side == "in" else 2
    label = terms[me][port.axis]
    holders = [i for i, labels in enumerate(terms) if label in labels]
    if holders in ([0], [1]):
        return frozen(f"Einsum '{node.name}' sums label '{label}' of one operand alone")
    size = shapes[me][port.axis]
    links = []
    for i in holders:
        axis = terms[i].index(label)
        if i == me or shapes[i][axis] == 1:  # broadcast along that axis
            continue
        if shapes[i][axis] != size and size != 1:
            return frozen(f"Einsum '{node.name}' label '{label}' has different sizes")
        links.append(Link((tensors[i], axis)))
    effect = Effect(links=links)
    if holders == [0, 1, 2]:
        effect.tags.add("heads")
    return effect


def _einsum_terms(equation) -> list[str] | None:
    """[labels of input 0, labels of input 1, labels of the output], or None for an implicit
    output, an ellipsis or a label repeated within one term."""
    text = (equation.decode() if isinstance(equation, bytes) else str(equation)).replace(" ", "")
    if "->" not in text or "." in text:
        return None
    lhs, out = text.split("->")
    terms = [*lhs.split(","), out]
    if len(terms) != 3 or any(len(set(t)) != len(t) for t in terms):
        return None
    return terms
