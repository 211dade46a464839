"""ReduceToGlobalPool: a ReduceMean / ReduceMax over every spatial axis becomes GlobalAveragePool
/ GlobalMaxPool.

torch's dynamo exporter writes adaptive average pooling to 1x1 (squeeze-excite blocks, the
classifier head) as ReduceMean over (H, W), where the legacy exporter writes GlobalAveragePool.
ONNX Runtime's CPU provider runs GlobalAveragePool in its blocked NCHWc layout but not
ReduceMean, so each such ReduceMean costs a reorder of its (large) input back to NCHW: in
MobileNetV3-Small (dynamo) 8 of the 18 reorder-input nodes ONNX Runtime inserts go away with
this rewrite. The two forms compute the same values; keepdims=0 becomes the pool followed by a
Flatten, which drops the two unit axes the same way.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graphprune.coupling import attr
from graphprune.ir import Graph

from .base import drop_unused_weights, is_default_domain

_GLOBAL_POOL = {"ReduceMean": "GlobalAveragePool", "ReduceMax": "GlobalMaxPool"}
# Element types both global pools accept (the reductions also take integers).
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


class ReduceToGlobalPool:
    name = "reduce_to_global_pool"

    def run(self, graph: Graph) -> bool:
        nodes, unused, changed = [], [], False
        for node in graph.nodes:
            replacement = _rewrite(graph, node)
            if replacement is None:
                nodes.append(node)
                continue
            nodes.extend(replacement)
            unused.extend(node.input[1:])
            changed = True
        if changed:
            graph.nodes = nodes
            graph.reindex()
            drop_unused_weights(graph, [n for n in unused if n])
        return changed


def _rewrite(graph: Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """The nodes that replace `node`, or None where it is not a reduction over all of H, W."""
    if not is_default_domain(node) or node.op_type not in _GLOBAL_POOL:
        return None
    x, y = node.input[0], node.output[0]
    rank = graph.rank(x)
    # Rank 4 only. A global pool averages every axis after the second, so for rank 3 it would
    # also match ReduceMean over the last axis of [batch, sequence, hidden]: the statistics of
    # a decomposed LayerNorm / RMSNorm, which ONNX Runtime's fusions and the coupling rules
    # recognise only as ReduceMean.
    if rank != 4 or graph.dtypes.get(x) not in _FLOAT_TYPES:
        return None
    axes = _axes(graph, node)
    if axes is None or sorted(int(a) % rank for a in axes) != [2, 3]:
        return None
    keepdims = attr(node, "keepdims", 1)
    pool_out = y if keepdims else graph.unique_name(f"{y}_pooled")
    pool = helper.make_node(_GLOBAL_POOL[node.op_type], [x], [pool_out],
                            name=node.name or graph.unique_name("global_pool"))
    if keepdims:
        return [pool]
    flatten = helper.make_node("Flatten", [pool_out], [y], axis=1,
                               name=graph.unique_name(f"{node.name or 'global_pool'}_flatten"))
    return [pool, flatten]


def _axes(graph: Graph, node: onnx.NodeProto) -> list[int] | None:
    """The reduced axes: the attribute before opset 18, the constant second input after.
    None when they are not known at compile time or not given (all axes are reduced then, and
    a rank-4 input would lose its batch and channel axes too)."""
    axes = attr(node, "axes")
    if axes is not None:
        return list(axes)
    if len(node.input) < 2 or not node.input[1]:
        return None
    value = graph.const(node.input[1])
    return None if value is None else np.asarray(value).reshape(-1).tolist()
