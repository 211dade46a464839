"""DequantizeWeights: a QDQ model's DequantizeLinear of a constant integer weight becomes the
float weight it computes, and the quantization is kept in `graph.quantized`.

The pruner slices float weights; graphprune.quantization.requantize turns them back into the
same integers after surgery, so a quantized model is pruned without leaving its format.
Activations keep their QuantizeLinear/DequantizeLinear pairs (a coupling rule passes channels
through them). Block-wise quantization (opset 21 `block_size`) is left as it is.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.ir import Graph
from graphprune.quantization import Quantization, dequantize

from .base import drop_unused_weights, is_default_domain


class DequantizeWeights:
    name = "dequantize_weights"

    def run(self, graph: Graph) -> bool:
        removed = []
        outputs = set(graph.output_names)
        for node in graph.nodes:
            quant = self._match(graph, node, outputs)
            if quant is None:
                continue
            graph.weights[node.output[0]] = dequantize(graph.weights[node.input[0]], quant)
            graph.quantized[node.output[0]] = quant
            removed.append(node)
        if not removed:
            return False
        gone = {id(n) for n in removed}
        graph.nodes = [n for n in graph.nodes if id(n) not in gone]
        graph.reindex()
        drop_unused_weights(graph, [t for n in removed for t in n.input if t])
        return True

    @staticmethod
    def _match(graph: Graph, node: onnx.NodeProto, outputs: set) -> Quantization | None:
        if node.op_type != "DequantizeLinear" or not is_default_domain(node) or \
                node.output[0] in outputs:
            return None
        q = graph.weights.get(node.input[0])
        scale = graph.weights.get(node.input[1]) if len(node.input) > 1 else None
        has_zero = len(node.input) > 2 and bool(node.input[2])
        zero = graph.weights.get(node.input[2]) if has_zero else None
        if q is None or scale is None or (has_zero and zero is None) or \
                not np.issubdtype(q.dtype, np.integer) or \
                not np.issubdtype(scale.dtype, np.floating):
            return None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("block_size"):
            return None
        if scale.size == 1 and scale.ndim <= 1:
            axis = None
        elif scale.ndim == 1 and q.ndim > 0:
            axis = int(attrs.get("axis", 1))
            axis = axis + q.ndim if axis < 0 else axis
            if not 0 <= axis < q.ndim or q.shape[axis] != scale.size:
                return None
        else:
            return None
        return Quantization(scale.reshape(-1) if axis is not None else scale.reshape(()),
                            None if zero is None else (zero.reshape(-1) if axis is not None
                                                       else zero.reshape(())),
                            axis, q.dtype)
