"""Shapes that static inference cannot see, read off ONNX Runtime.

Exporters build attention masks and reshape targets with shape arithmetic onnx cannot follow
(Where/Equal over Shape values, Expand to computed shapes). When the analysis binds dynamic
dims to stand-in sizes, those tensors have definite shapes at those sizes: we run only the
part of the graph that computes them (usually shape ops on the inputs, no heavy weights) and
read the shapes off. Tensors whose computation would need large weights are left unknown.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

_MAX_PROBE_WEIGHT_BYTES = 16 * 1024**2
# Shape arithmetic never needs these; a closure holding one would run the network itself.
_HEAVY_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "MultiHeadAttention",
              "GroupQueryAttention", "LSTM", "GRU", "RNN", "Einsum"}
# Output sizes that depend on the values read (a detector's regions per level): probed with
# inputs of ones they give one arbitrary size, the same at every stand-in, which would pass
# for a static dim and be folded into the graph.
_VALUE_SIZED_OPS = {"NonZero", "Unique", "Compress", "NonMaxSuppression"}


def probe(graph, stand_ins: tuple, targets: list[str]) -> dict[str, np.ndarray]:
    """Values of `targets` with the graph's dynamic input dims set to `stand_ins` (targets
    that would need heavy weights to compute are left out)."""
    import onnxruntime as ort

    nodes, targets, shape_values = _light_closure(graph, targets)
    if not targets:
        return {}
    model = graph.to_model(embed_limit=-1)
    g = model.graph
    del g.node[:]
    g.node.extend(nodes)
    needed = {n for node in nodes for n in node.input}
    del g.output[:]
    g.output.extend(helper.make_tensor_value_info(t, graph.dtypes[t], None) for t in targets)
    keep_inputs = [v for v in g.input if v.name in needed and v.name not in graph.weights]
    del g.input[:]
    g.input.extend(keep_inputs)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(graph.weights[n], n) for n in sorted(needed)
                         if n in graph.weights)
    g.initializer.extend(numpy_helper.from_array(v, n) for n, v in shape_values.items())
    feeds, names = {}, {}
    for vi in keep_inputs:
        if vi.name in graph.weights:
            continue
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(d.dim_value)
            else:
                key = d.dim_param or f"?{len(names)}"
                dims.append(names.setdefault(key, stand_ins[len(names) % len(stand_ins)]))
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = np.ones(dims, dtype=dtype)  # masks of ones: every position valid
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        values = sess.run(targets, feeds)
    except Exception:  # the probe is a best effort; unknown shapes stay unknown
        return {}
    return dict(zip(targets, values))


def probed_shapes(graph, stand_ins: tuple, unknown: list[str]) -> dict[str, tuple]:
    """Shapes of `unknown` tensors. For Reshape and Expand, whose data input is usually heavy
    to compute but already has a known shape, the small target value is probed instead and
    the output shape derived from it."""
    direct, derived = [], {}
    for name in unknown:
        node = graph.producer(name)
        data = graph.shape(node.input[0]) if node is not None and node.input else None
        if node is not None and node.op_type in ("Reshape", "Expand") and data is not None \
                and None not in data and len(node.input) > 1:
            derived[name] = (node, data)
        else:
            direct.append(name)
    values = probe(graph, stand_ins, direct + sorted({n.input[1] for n, _ in derived.values()}))
    shapes = {name: tuple(values[name].shape) for name in direct if name in values}
    for name, (node, data) in derived.items():
        target = values.get(node.input[1])
        if target is not None:
            shape = _reshaped(data, target) if node.op_type == "Reshape" else \
                _broadcast(data, target)
            if shape is not None:
                shapes[name] = shape
    return shapes


def _reshaped(data, target) -> tuple | None:
    dims = [int(d) for d in target.reshape(-1)]
    dims = [data[i] if d == 0 and i < len(data) else d for i, d in enumerate(dims)]
    total = int(np.prod(data))
    if dims.count(-1) == 1:
        known = int(np.prod([d for d in dims if d != -1]))
        if known == 0 or total % known:
            return None
        dims[dims.index(-1)] = total // known
    return tuple(dims) if int(np.prod(dims)) == total else None


def _broadcast(data, target) -> tuple | None:
    try:
        return tuple(np.broadcast_shapes(tuple(data), tuple(int(d) for d in target.reshape(-1))))
    except ValueError:
        return None


def _light_closure(graph, targets: list[str]):
    """Nodes computing `targets`, keeping only targets whose computation is cheap. A Shape
    of a tensor whose shape is known becomes a constant, so the tensor is not computed."""
    kept, order = [], {id(n): i for i, n in enumerate(graph.nodes)}
    closure: dict[int, object] = {}
    shape_values: dict[str, np.ndarray] = {}
    for target in targets:
        if graph.dtypes.get(target) in (None, onnx.TensorProto.UNDEFINED):
            continue
        mine, stack, weight_bytes = {}, [target], 0
        while stack:
            name = stack.pop()
            node = graph.producer(name)
            if node is None or id(node) in mine:
                continue
            known = graph.shape(node.input[0]) if node.op_type == "Shape" else None
            if known is not None and None not in known:
                attrs = {a.name: a.i for a in node.attribute}
                dims = list(known)[attrs.get("start", 0):attrs.get("end", len(known))]
                shape_values[name] = np.array(dims, dtype=np.int64)
                continue
            if node.op_type in _HEAVY_OPS or node.op_type in _VALUE_SIZED_OPS:
                weight_bytes = _MAX_PROBE_WEIGHT_BYTES + 1  # never probed
                break
            mine[id(node)] = node
            for name in node.input:
                w = graph.weights.get(name)
                if w is not None:
                    weight_bytes += w.nbytes
                elif name:
                    stack.append(name)
        if weight_bytes <= _MAX_PROBE_WEIGHT_BYTES:
            kept.append(target)
            closure.update(mine)
    nodes = sorted(closure.values(), key=lambda n: order[id(n)])
    needed = {n for node in nodes for n in node.input}
    return nodes, kept, {k: v for k, v in shape_values.items() if k in needed}
