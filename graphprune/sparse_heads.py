"""Attention-head transposes absorbed by the sparse MatMuls that feed or read them.

A transformer's Q, K and V projections are followed by Reshape [B, S, H, D] -> Transpose
(0,2,1,3), or (0,2,3,1) for a key that is transposed for Q K^T, and the attention output goes
through Transpose (0,2,1,3) -> Reshape [B, S, H * D] before the output projection. ONNX Runtime
runs each Transpose as a copy of the whole activation; graphprune's SparseMatMul can instead
write its result in the head layout (heads_out, heads_out_layout) and read its input from it
(heads_in), so those copies disappear. BERT-base at batch 16, 90 % unstructured
(bench/ort_profile.py, README): its 48 Transposes took 24.0 ms, and the single-thread CPU time
per run went from 1034 to 1019 ms with them gone.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .coupling import attr
from .ir import Graph
from .sparsity import _sole_consumer

_PERMS = {(0, 2, 1, 3): "bhsd", (0, 2, 3, 1): "bhds"}


def fuse_head_layouts(graph: Graph) -> list[str]:
    """Rewrites every SparseMatMul whose output is split into heads, or whose input is merged
    from heads, so that it does that itself; the Reshape and Transpose go. Shapes decide: the
    Reshape must keep X's batch and sequence axes (the graph's bound dynamic dims tell) and
    split or merge only the last one into static heads. Returns the rewritten nodes' names."""
    from .kernels import DOMAIN

    outputs = set(graph.output_names)
    drop: set[int] = set()
    changed: list[str] = []
    for node in graph.nodes:
        if node.domain != DOMAIN or node.op_type != "SparseMatMul" or id(node) in drop:
            continue
        if _has_residual(node):
            continue
        attrs = {a.name for a in node.attribute}
        if "heads_in" in attrs or "heads_out" in attrs:
            continue
        split = _split_after(graph, node, outputs)
        merge = _merge_before(graph, node, outputs)
        if split:
            reshape, transpose, heads, layout = split
            node.attribute.extend([helper.make_attribute("heads_out", heads),
                                   helper.make_attribute("heads_out_layout", layout)])
            node.output[0] = transpose.output[0]
            drop.update((id(reshape), id(transpose)))
        if merge:
            transpose, reshape, heads = merge
            node.attribute.append(helper.make_attribute("heads_in", heads))
            node.input[0] = transpose.input[0]
            drop.update((id(reshape), id(transpose)))
        if split or merge:
            changed.append(node.name or node.output[0])
    if changed:
        graph.nodes = [n for n in graph.nodes if id(n) not in drop]
        graph.reindex()
    return changed


def fold_scalar_scales(graph: Graph) -> list[str]:
    """A sparse MatMul read only by a Mul with a scalar constant (and by Shape nodes) takes
    the factor into its values and bias, and the Mul goes: c * (X W + b) = X (c W) + c b.
    torch's scaled_dot_product_attention export scales Q and K by D**-0.25 each; after
    fuse_head_layouts ONNX Runtime can no longer fold those Muls into its FusedMatMul. Only
    without an activation or a residual, and where the constant's rank does not exceed the
    output's (so broadcasting changes no shape). Returns the rewritten nodes' names."""
    from .kernels import DOMAIN
    from .passes.base import add_weight

    outputs = set(graph.output_names)
    drop: set[int] = set()
    changed: list[str] = []
    for node in graph.nodes:
        if node.domain != DOMAIN or node.op_type != "SparseMatMul":
            continue
        if attr(node, "activation", b"none") != b"none" or _has_residual(node):
            continue
        # Besides the Mul only Shape may read Y (torch's exports take Q's shape there): the
        # scaled tensor has the same shape, so those read it instead.
        users = graph.consumers(node.output[0])
        muls = [u for u in users if u.op_type == "Mul" and u.domain in ("", "ai.onnx")]
        shapes = [u for u in users if u.op_type == "Shape" and u.domain in ("", "ai.onnx")]
        if node.output[0] in outputs or len(muls) != 1 or len(muls) + len(shapes) != len(users):
            continue
        mul = muls[0]
        other = mul.input[1] if mul.input[0] == node.output[0] else mul.input[0]
        c = graph.const(other)
        rank = graph.rank(node.output[0])
        if c is None or c.size != 1 or c.dtype != np.float32 or not np.isfinite(c).all() or \
                rank is None or c.ndim > rank:
            continue
        if any(i < len(node.input) and node.input[i] and node.input[i] not in graph.weights
               for i in (1, 4)):  # values and bias must be initializers to scale them
            continue
        factor = np.float32(c.reshape(-1)[0])
        inputs = list(node.input)
        for i in (1, 4):  # values, bias
            if i < len(inputs) and inputs[i]:
                name = graph.unique_name(f"{inputs[i]}.scaled")
                add_weight(graph, name, (graph.weights[inputs[i]] * factor).astype(np.float32))
                node.input[i] = name
        for shape in shapes:
            shape.input[0] = mul.output[0]
        node.output[0] = mul.output[0]
        drop.add(id(mul))
        changed.append(node.name or node.output[0])
    if changed:
        graph.nodes = [n for n in graph.nodes if id(n) not in drop]
        graph.reindex()
    return changed


def _has_residual(node: onnx.NodeProto) -> bool:
    """A residual input is laid out like Y and would scale with it: such nodes stay as they are."""
    return len(node.input) > 5 and bool(node.input[5])


def _static(dim) -> bool:
    return isinstance(dim, int) and dim > 0


def _same_rows(graph: Graph, a: str, a_axes: tuple, b: str, b_axes: tuple) -> bool:
    """Whether tensor a's axes a_axes are b's b_axes: equal known dims (a dynamic dim is bound
    to a stand-in prime, the same for the same symbol), dynamic on both sides or on neither."""
    sa, sb = graph.shape(a), graph.shape(b)
    da, db = graph.dynamic.get(a, frozenset()), graph.dynamic.get(b, frozenset())
    return all(sa[i] is not None and sa[i] == sb[j] and (i in da) == (j in db)
               for i, j in zip(a_axes, b_axes))


def _split_after(graph: Graph, node: onnx.NodeProto, outputs: set[str]):
    """(Reshape, Transpose, heads, layout) when Y [B, S, N] -> Reshape [B, S, H, D] ->
    Transpose (0,2,1,3) or (0,2,3,1) is all that reads Y; else None."""
    y, x = node.output[0], node.input[0]
    reshape = _sole_consumer(graph, y, outputs)
    if reshape is None or reshape.op_type != "Reshape" or reshape.domain not in ("", "ai.onnx"):
        return None
    transpose = _sole_consumer(graph, reshape.output[0], outputs)
    if transpose is None or transpose.op_type != "Transpose" or transpose.domain not in ("", "ai.onnx"):
        return None
    layout = _PERMS.get(tuple(attr(transpose, "perm", ())))
    xs, rs = graph.shape(x), graph.shape(reshape.output[0])
    if layout is None or xs is None or rs is None or len(xs) != 3 or len(rs) != 4:
        return None
    n = attr(node, "n")
    heads, dim = rs[2], rs[3]
    if not (_static(heads) and _static(dim) and heads * dim == n):
        return None
    if {2, 3} & graph.dynamic.get(reshape.output[0], frozenset()):
        return None
    if not _same_rows(graph, x, (0, 1), reshape.output[0], (0, 1)):
        return None
    return reshape, transpose, heads, layout


def _merge_before(graph: Graph, node: onnx.NodeProto, outputs: set[str]):
    """(Transpose, Reshape, heads) when X comes from A [B, H, S, D] -> Transpose (0,2,1,3) ->
    Reshape [B, S, H * D], each read only by the next; else None."""
    reshape = graph.producer(node.input[0])
    if reshape is None or reshape.op_type != "Reshape" or reshape.domain not in ("", "ai.onnx"):
        return None
    if _sole_consumer(graph, reshape.output[0], outputs) is not node:
        return None
    transpose = graph.producer(reshape.input[0])
    if transpose is None or transpose.op_type != "Transpose" or \
            transpose.domain not in ("", "ai.onnx") or \
            tuple(attr(transpose, "perm", ())) != (0, 2, 1, 3):
        return None
    if _sole_consumer(graph, transpose.output[0], outputs) is not reshape:
        return None
    a, x = transpose.input[0], node.input[0]
    shape_a, xs = graph.shape(a), graph.shape(x)
    if shape_a is None or xs is None or len(shape_a) != 4 or len(xs) != 3:
        return None
    k = attr(node, "k")
    heads, dim = shape_a[1], shape_a[3]
    if not (_static(heads) and _static(dim) and heads * dim == k):
        return None
    if {1, 3} & graph.dynamic.get(a, frozenset()):
        return None
    if not _same_rows(graph, a, (0, 2), x, (0, 1)):
        return None
    return transpose, reshape, heads
