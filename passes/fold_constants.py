"""FoldConstants: evaluate at compile time what does not depend on the model's inputs.

Exporters emit shape arithmetic (Shape -> Gather -> Concat -> Reshape) and weight
preprocessing (Transpose, Cast, Mul of initializers). Turning those into weights lets the
later passes see plain Reshape targets and plain weights, and keeps pruning from having to
reason about arithmetic on constants.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graphprune.ir import Graph

from .base import add_weight, drop_unused_weights, is_default_domain

# Different on every run: folding would freeze one draw. Quantization ops on weights are how
# QDQ models say "this weight is int8"; folding them would silently dequantize the model.
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli", "Constant",
               "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# Ops that only rearrange a weight (a classifier matrix reshaped before Gemm): their result is
# no larger than their input, so the size cap does not apply.
_LAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"}


class FoldConstants:
    name = "fold_constants"

    def __init__(self, max_elements: int = 1_000_000):
        self.max_elements = max_elements

    def run(self, graph: Graph) -> bool:
        """Fold until nothing is left; shapes are re-inferred between sweeps because a folded
        shape computation lets the next one's shapes (and so its Shape ops) become known."""
        if not graph.shapes:
            graph.infer_shapes()
        changed = False
        for _ in range(64):
            if not self._sweep(graph):
                break
            changed = True
            graph.infer_shapes(bind_dynamic=graph.bound)
        return changed

    def _sweep(self, graph: Graph) -> bool:
        kept, folded_inputs = [], []
        for node in graph.nodes:
            values = self._fold(graph, node)
            if values is None:
                kept.append(node)
                continue
            for name, value in values.items():
                add_weight(graph, name, value)
            folded_inputs.extend(n for n in node.input if n)
        changed = len(kept) != len(graph.nodes)
        graph.nodes = kept
        graph.reindex()
        drop_unused_weights(graph, folded_inputs)
        return changed

    def _fold(self, graph: Graph, node: onnx.NodeProto) -> dict[str, np.ndarray] | None:
        if not is_default_domain(node) or not any(node.output):
            return None
        if node.op_type == "Shape":
            return self._fold_shape(graph, node)
        if node.op_type in ("Gather", "Slice") and len(node.input) > 1 and \
                all(n in graph.weights for n in node.input[1:] if n):
            picked = self._fold_static_dims(graph, node)
            if picked is not None:
                return picked
        if (node.op_type in _NEVER_FOLD
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                       for a in node.attribute)
                or not all(n in graph.weights for n in node.input if n)):
            return None
        layout = node.op_type in _LAYOUT_OPS
        # A result no larger than the node's largest input weight does not grow the model
        # (weight standardization computed in the graph: NF-ResNet's 3x3 convs of 512 channels)
        cap = max([self.max_elements] + [graph.weights[n].size for n in node.input if n])
        if not layout and self._too_big_before(graph, node, cap):
            return None
        try:
            results = _evaluate(graph, node)
        except Exception:  # unsupported or invalid here: leave the node to the runtime
            return None
        values = {}
        for name, value in zip([o for o in node.output if o], results):
            value = np.asarray(value)
            if value.dtype == object or (value.size > cap and not layout):
                return None  # sequences, strings, or too large to embed
            dtype = graph.dtypes.get(name)
            if dtype:  # the reference backend may promote (e.g. scalars): keep ONNX's type
                value = value.astype(helper.tensor_dtype_to_np_dtype(dtype), copy=False)
            values[name] = value
        return values

    def _fold_shape(self, graph: Graph, node: onnx.NodeProto) -> dict[str, np.ndarray] | None:
        """Shape of a fully static tensor. A None dim (dynamic batch) keeps the node."""
        shape = graph.static_dims(node.input[0])
        if shape is None or any(d is None for d in shape):
            return None
        attrs = {a.name: a.i for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        # ONNX's start/end follow Python slicing: negatives count from the end, both clamp.
        return {node.output[0]: np.array(shape[start:end], dtype=np.int64)}

    def _fold_static_dims(self, graph: Graph, node: onnx.NodeProto) -> dict | None:
        """Gather(Shape(x), i) or Slice(Shape(x), ...) picking only static dims of x, even if
        another dim (the batch) is dynamic: legacy exports compute Reshape targets this way."""
        shape_node = graph.producer(node.input[0])
        if shape_node is None or shape_node.op_type != "Shape":
            return None
        shape = graph.static_dims(shape_node.input[0])
        if shape is None:
            return None
        attrs = {a.name: a.i for a in shape_node.attribute}
        dims = np.asarray(list(shape)[attrs.get("start", 0):attrs.get("end", len(shape))],
                          dtype=object)
        try:
            if node.op_type == "Gather":
                if any(a.name == "axis" and a.i != 0 for a in node.attribute):
                    return None
                index = np.asarray(graph.weights[node.input[1]])
                if index.size == 0 or index.min() < -len(dims) or index.max() >= len(dims):
                    return None
                picked = dims[index]
            else:  # Slice on the 1-D shape vector
                params = [graph.weights[n] if n else None for n in node.input[1:5]]
                starts, ends = int(params[0].reshape(-1)[0]), int(params[1].reshape(-1)[0])
                step = 1 if len(params) < 4 or params[3] is None else \
                    int(params[3].reshape(-1)[0])
                if (len(params) > 2 and params[2] is not None and
                        int(params[2].reshape(-1)[0]) not in (0, -1)) or \
                        params[0].size != 1 or step == 0:
                    return None
                picked = dims[slice(starts, ends, step)]
        except (IndexError, ValueError):
            return None
        if any(d is None for d in np.ravel(picked)):
            return None
        return {node.output[0]: np.asarray(picked, dtype=np.int64).reshape(np.shape(picked))}

    def _too_big_before(self, graph: Graph, node: onnx.NodeProto, cap: int) -> bool:
        """Refuse before evaluating when the result size is already known to exceed the cap
        (a ConstantOfShape of a huge shape would otherwise be materialized)."""
        for out in node.output:
            shape = graph.shapes.get(out) if out else None
            if shape and all(d is not None for d in shape):
                if int(np.prod(shape, dtype=np.int64)) > cap:
                    return True
        if node.op_type == "ConstantOfShape":
            dims = np.asarray(graph.weights[node.input[0]]).reshape(-1)
            return int(np.prod(np.maximum(dims, 0), dtype=np.float64)) > self.max_elements
        return False


def _evaluate(graph: Graph, node: onnx.NodeProto) -> list:
    """Run one node on the ONNX reference backend, at the graph's own opsets."""
    from onnx.reference import ReferenceEvaluator

    names = [n for n in dict.fromkeys(node.input) if n]
    inputs = [helper.make_tensor_value_info(
        n, helper.np_dtype_to_tensor_dtype(graph.weights[n].dtype), None) for n in names]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
               for o in node.output if o]
    model = helper.make_model(helper.make_graph([node], "fold", inputs, outputs),
                              opset_imports=list(graph.model.opset_import),
                              ir_version=graph.model.ir_version or onnx.IR_VERSION)
    return ReferenceEvaluator(model).run(None, {n: graph.weights[n] for n in names})
