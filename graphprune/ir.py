"""The graph IR every stage works on.

We keep ONNX's own NodeProto for nodes (nothing to translate, nothing lost) but hold weights as
numpy arrays keyed by tensor name, because every stage after loading (folding, scoring, surgery)
reads or slices weights, and a numpy view is the cheap, uniform way to do that. Producer and
consumer indexes are rebuilt on demand after passes rewrite the node list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Weights above this many elements are declared, not embedded, when shapes are inferred:
# copying them is what makes onnx shape inference slow, and no shape depends on their values.
_INFER_EMBED_LIMIT = 4096
# Ops whose first output has the shape and type of their first input.
_SHAPE_PRESERVING = {"GroupNormalization", "InstanceNormalization", "LayerNormalization",
                     "BatchNormalization", "Relu", "Sigmoid", "Gelu", "HardSwish",
                     # com.microsoft fused ops
                     "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "BiasGelu",
                     "FastGelu", "QuickGelu", "BiasAdd", "GroupQueryAttention",
                     "SimplifiedLayerNormalization"}
# scikit-learn preprocessing as skl2onnx writes it (ai.onnx.ml has no shape inference for
# these): a Scaler or Normalizer in front of an MLP left every shape after it unknown.
_ML_FLOAT_SAME_SHAPE = {"Scaler", "Normalizer"}


@dataclass
class Graph:
    """A mutable ONNX graph: nodes in topological order, weights as numpy arrays."""

    model: onnx.ModelProto  # metadata, opsets, graph inputs/outputs; its initializers are unused
    nodes: list[onnx.NodeProto]
    weights: dict[str, np.ndarray]
    shapes: dict[str, tuple] = field(default_factory=dict)  # dims: int, or None when unknown
    dtypes: dict[str, int] = field(default_factory=dict)
    # |gamma| of BatchNorms folded away, keyed by the tensor the BN produced: the BN-scale
    # criterion needs them after folding has removed the BN nodes.
    bn_scales: dict[str, np.ndarray] = field(default_factory=dict)
    # Weights a QDQ model dequantized at run time, now float: how to quantize them back
    # (quantization.Quantization), and the slices surgery took of each such weight, in order.
    quantized: dict[str, object] = field(default_factory=dict)
    slices: dict[str, list] = field(default_factory=dict)
    # Axes whose `shapes` value is a stand-in for a dynamic dim (see infer_shapes).
    dynamic: dict[str, frozenset] = field(default_factory=dict)
    bound: bool = False  # shapes were inferred with stand-ins for dynamic dims
    # Switches the coupling rules read: "prune_hidden" lets normalised axes be pruned
    # (approximately: the norm's statistics change).
    options: dict = field(default_factory=dict)
    _producer: dict[str, onnx.NodeProto] = field(default_factory=dict, repr=False)
    _consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_model(cls, model: onnx.ModelProto,
                   weights: dict[str, np.ndarray] | None = None) -> "Graph":
        """Build the IR; Constant nodes become weights (Paddle/TF exports keep weights there).

        `weights` are the initializers already read as arrays (graphprune.protoscan reads a
        file that way, so a large model is never held twice); otherwise they are converted
        from `model`, which is left untouched."""
        if weights is None:
            weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        else:
            weights = dict(weights)
        nodes = []
        for node in model.graph.node:
            value = _constant_value(node)
            if value is not None:
                weights[node.output[0]] = value
            else:  # a copy: passes rewrite nodes, and the caller's model must stay untouched
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                nodes.append(copy)
        graph = cls(model=_without_weights(model), nodes=nodes, weights=weights)
        graph.reindex()
        return graph

    # ---------------------------------------------------------------- queries
    @property
    def opset(self) -> int:
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return imp.version
        return 1

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.model.graph.input if v.name not in self.weights]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.model.graph.output]

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return self._consumers.get(tensor, [])

    def const(self, tensor: str) -> np.ndarray | None:
        """The value of a tensor known at compile time, or None."""
        return self.weights.get(tensor) if tensor else None

    def static_dims(self, tensor: str) -> tuple | None:
        """Shape with stand-ins for dynamic dims shown as None: what is really known."""
        shape = self.shape(tensor)
        axes = self.dynamic.get(tensor)
        if shape is None or not axes:
            return shape
        return tuple(None if i in axes else d for i, d in enumerate(shape))

    def shape(self, tensor: str) -> tuple | None:
        if tensor in self.weights:
            return tuple(self.weights[tensor].shape)
        return self.shapes.get(tensor)

    def rank(self, tensor: str) -> int | None:
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def node_by_name(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.nodes if n.name == name), None)

    def dynamic_symbols(self) -> dict[int, tuple[str, int, int]]:
        """Stand-in prime -> (dim name, axis where an input first has it, scale): how to read
        the stand-ins in `shapes` after infer_shapes(bind_dynamic=True); the dim stood in as
        prime x scale (see SPATIAL_STAND_IN_SCALE)."""
        return {_DYNAMIC_STAND_INS[index % len(_DYNAMIC_STAND_INS)]: (key, axis, scale)
                for _, key, index, axis, scale in _dynamic_dims(self.model.graph.input)}

    # ---------------------------------------------------------------- mutation
    def reindex(self) -> None:
        """Rebuild producer/consumer maps after the node list changed."""
        self._producer = {}
        self._consumers = {}
        for node in self.nodes:
            for out in node.output:
                if out:
                    self._producer[out] = node
            for name in _node_inputs(node):
                if name:
                    self._consumers.setdefault(name, []).append(node)

    def replace_uses(self, old: str, new: str) -> None:
        """Point every consumer of `old` at `new` (graph outputs are left to the caller)."""
        for node in self.consumers(old):
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    def unique_name(self, base: str) -> str:
        taken = set(self.weights) | set(self._producer) | {n.name for n in self.nodes}
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        return name

    # ---------------------------------------------------------------- shapes
    def infer_shapes(self, strict: bool = False, bind_dynamic: bool = False) -> None:
        """Static shapes for every tensor, inferred without copying large weights.

        onnx leaves some op outputs untyped (GroupNormalization-21 in onnx 1.23); for ops that
        keep their input's shape we fill the gap ourselves and infer again, so the tensors
        after them get shapes too. `strict` raises on any inconsistency (used on results).
        """
        probe = {}
        if bind_dynamic:  # a second binding tells which dims follow the dynamic ones
            self._infer(_PROBE_STAND_INS)
            probe = self.shapes
        model = self._infer(_DYNAMIC_STAND_INS if bind_dynamic else None)
        self.bound = bind_dynamic
        self.dynamic = {}
        for name, dims in self.shapes.items():
            other = probe.get(name)
            if other is not None and len(other) == len(dims):
                axes = frozenset(i for i, (d, e) in enumerate(zip(dims, other)) if d != e)
            else:
                axes = frozenset(range(len(dims))) if bind_dynamic else frozenset()
            if axes:
                self.dynamic[name] = axes
        if strict:
            onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)

    def _infer(self, stand_ins: tuple | None) -> onnx.ModelProto:
        """One inference with gap filling into self.shapes; returns the model it inferred.
        With stand-ins, shapes still unknown are probed in ONNX Runtime (probe.py)."""
        hints: list[onnx.ValueInfoProto] = []
        for _ in range(64):  # each round can uncover one more fused op per layer
            model = self.to_model(embed_limit=_INFER_EMBED_LIMIT)
            model.graph.value_info.extend(hints)
            if stand_ins:
                _bind_dynamic_dims(model, stand_ins)
            try:
                inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
            except Exception:  # partial information is still useful
                inferred = onnx.shape_inference.infer_shapes(model)
            self._read_shapes(inferred)
            self._shapes_tied_by_spec()
            new_hints = self._shape_preserving_gaps()
            if not new_hints and stand_ins:  # again while it finds more: a probed Reshape
                new_hints = self._probed_hints(stand_ins)  # can give the next its data shape
            if not new_hints:
                break
            hints += new_hints
        return model

    def _probed_hints(self, stand_ins: tuple) -> list[onnx.ValueInfoProto]:
        from .probe import probed_shapes

        unknown = [o for n in self.nodes for o in n.output if o and o not in self.weights and
                   (self.shapes.get(o) is None or None in self.shapes[o])]
        if not unknown:
            return []
        found = probed_shapes(self, stand_ins, unknown)
        hints = []
        for name, dims in found.items():
            dtype = self.dtypes.get(name)
            if dtype is None:  # Reshape/Expand outputs onnx left untyped keep their data's type
                producer = self.producer(name)
                dtype = self.dtypes.get(producer.input[0]) if producer is not None else None
            if dtype is not None:
                hints.append(helper.make_tensor_value_info(name, dtype, list(dims)))
        return hints

    def _read_shapes(self, inferred: onnx.ModelProto) -> None:
        self.shapes, self.dtypes = {}, {}
        g = inferred.graph
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            t = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
                continue
            # Paddle exports declare dynamic dims as -1: unknown, like an unset dim.
            dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                         for d in t.shape.dim)
            self.shapes[vi.name] = dims
            self.dtypes[vi.name] = t.elem_type

    def _shapes_tied_by_spec(self) -> None:
        """Operands whose shapes the op's spec makes equal, where onnx's inference leaves one
        unknown: ScatterElements' indices and updates, GatherElements' indices and output
        (a detector builds its indices with an Expand to a shape computed at run time)."""
        for node in self.nodes:
            if node.op_type == "ScatterElements" and len(node.input) > 2:
                pair = (node.input[1], node.input[2])
            elif node.op_type == "GatherElements" and len(node.input) > 1 and node.output:
                pair = (node.input[1], node.output[0])
            else:
                continue
            a, b = (self.shapes.get(t) for t in pair)
            if a is None or b is None or len(a) != len(b):
                continue
            merged = tuple(x if x is not None else y for x, y in zip(a, b))
            for t in pair:
                self.shapes[t] = merged

    def _shape_preserving_gaps(self) -> list[onnx.ValueInfoProto]:
        """Shapes onnx cannot infer: ops that keep their input's shape, and ONNX Runtime's
        fused transformer ops (onnx has no schema for them)."""
        hints = []
        for node in self.nodes:
            out = node.output[0] if node.output else ""
            src = node.input[0] if node.input else ""
            if not out or out in self.shapes or src not in self.shapes or src not in self.dtypes:
                continue
            dims = list(self.shapes[src])
            if node.op_type in _SHAPE_PRESERVING:
                pass
            elif node.domain == "ai.onnx.ml" and node.op_type in _ML_FLOAT_SAME_SHAPE:
                hints.append(helper.make_tensor_value_info(  # float whatever the input type
                    out, onnx.TensorProto.FLOAT, [d if d is not None else "?" for d in dims]))
                continue
            elif node.op_type == "Attention" and node.domain == "com.microsoft":
                w = self.weights.get(node.input[1])
                sizes = [a.ints for a in node.attribute if a.name == "qkv_hidden_sizes"]
                if w is None and not sizes:
                    continue
                dims = dims[:2] + [int(sizes[0][2]) if sizes and sizes[0] else w.shape[1] // 3]
            elif node.op_type == "EmbedLayerNormalization" and node.domain == "com.microsoft":
                table = self.weights.get(node.input[2]) if len(node.input) > 2 else None
                if table is None or len(dims) != 2:
                    continue
                dims = dims + [table.shape[1]]
                dtype = helper.np_dtype_to_tensor_dtype(table.dtype)
                hints.append(helper.make_tensor_value_info(
                    out, dtype, [d if d is not None else "?" for d in dims]))
                continue
            elif node.op_type == "MultiHeadAttention" and node.domain == "com.microsoft":
                value = self.shapes.get(node.input[2]) if len(node.input) > 2 else None
                if value is None or len(value) != 3:
                    continue
                dims = dims[:2] + [value[2]]
            else:
                continue
            hints.append(helper.make_tensor_value_info(
                out, self.dtypes[src], [d if d is not None else "?" for d in dims]))
        return hints

    # ---------------------------------------------------------------- export
    def split(self) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The model without initializers and the weights it uses: what a streaming writer
        needs, without copying weights into protobuf."""
        return self.to_model(embed_limit=-1), {n: a for n, a in self.weights.items()
                                               if self._used(n)}

    def to_model(self, embed_limit: int | None = None) -> onnx.ModelProto:
        """Assemble a ModelProto. With `embed_limit`, larger weights are declared as graph
        inputs instead of embedded (used for fast shape inference only); -1 leaves every
        weight out (see split)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        g = model.graph
        del g.node[:]
        g.node.extend(self.nodes)
        del g.value_info[:]
        declared = []
        listed = {v.name for v in g.input}
        old_ir = 0 < self.model.ir_version < 4  # there every initializer is also a graph input
        for name, array in self.weights.items():
            if not self._used(name) or embed_limit == -1:
                continue
            if embed_limit is not None and array.size > embed_limit:
                if name not in listed and not old_ir:  # else declared with the weight inputs
                    declared.append(helper.make_tensor_value_info(
                        name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape))
            else:
                g.initializer.append(numpy_helper.from_array(array, name))
        # Inputs that name weights follow the weights' new shapes, and go with the weights no
        # node reads any more (not written, they would become required inputs); in IR < 4 a
        # weight added since loading (a folded bias, a rewritten shape constant) is declared.
        weight_names = [v.name for v in g.input if v.name in self.weights and self._used(v.name)]
        if old_ir:
            weight_names += [n for n in self.weights if n not in listed and self._used(n)]
        real_inputs = [v for v in g.input if v.name not in self.weights]
        weight_inputs = [helper.make_tensor_value_info(
            n, helper.np_dtype_to_tensor_dtype(self.weights[n].dtype), self.weights[n].shape)
            for n in weight_names]
        del g.input[:]
        g.input.extend(real_inputs + weight_inputs + declared)
        return model

    def _used(self, name: str) -> bool:
        return bool(self._consumers.get(name)) or name in self.output_names


# Stand-ins for dynamic dims during analysis, one per symbolic name: primes unlike real
# channel counts, and small, because data propagation materialises Range(batch)-like values.
_DYNAMIC_STAND_INS = (23, 29, 41, 43, 47, 53)
_PROBE_STAND_INS = (31, 37, 59, 61, 67, 71)


# Dynamic height/width of an image input stand in as a multiple of this: detectors and
# segmenters downsample by up to 32 and upsample again, and a prime size would make their skip
# connections disagree (YOLOv8's neck Concat then had unknown sizes and froze).
SPATIAL_STAND_IN_SCALE = 32


def _dynamic_dims(inputs):
    """Yields (dim, symbol, index, axis, scale) for every dynamic dim of the graph inputs
    (unset, a dim_param, or Paddle's -1). `index` numbers the symbols in order of first
    appearance; `scale` is SPATIAL_STAND_IN_SCALE where a symbol first appears on a non-batch
    axis of a rank-4 input, else 1."""
    seen: dict[str, tuple[int, int, int]] = {}
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                continue
            key = dim.dim_param or f"?{len(seen)}"
            if key not in seen:
                scale = SPATIAL_STAND_IN_SCALE if len(dims) == 4 and axis > 0 else 1
                seen[key] = (len(seen), axis, scale)
            yield (dim, key, *seen[key])


def _bind_dynamic_dims(model: onnx.ModelProto, stand_ins: tuple) -> None:
    for dim, _, index, _, scale in list(_dynamic_dims(model.graph.input)):
        dim.dim_value = stand_ins[index % len(stand_ins)] * scale


def _node_inputs(node: onnx.NodeProto) -> Iterable[str]:
    """Inputs of a node including names its subgraphs capture from the outer scope."""
    yield from node.input
    for attr in node.attribute:
        subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subgraphs:
            inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.input}
            inner |= {t.name for t in sub.initializer}
            for n in sub.node:
                for name in _node_inputs(n):
                    if name and name not in inner:
                        yield name


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or not node.attribute:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    return None  # sparse or string constants stay nodes


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model without initializers or nodes (those live in the IR): copying
    the weights twice is what would make loading large models slow and memory-hungry."""
    shell = onnx.ModelProto()
    for fd, value in model.ListFields():
        if fd.name == "graph":
            continue
        if getattr(fd, "is_repeated", None) or getattr(fd, "label", None) == 3:
            getattr(shell, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(shell, fd.name).CopyFrom(value)
        else:
            setattr(shell, fd.name, value)
    g, sg = model.graph, shell.graph
    sg.name, sg.doc_string = g.name, g.doc_string
    for part in ("input", "output", "value_info", "sparse_initializer", "metadata_props"):
        getattr(sg, part).extend(getattr(g, part))
    return shell
