"""What every canonicalizing pass shares: the Pass protocol and a few graph-editing helpers."""
from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import numpy as np
import onnx
from onnx import helper

from graphprune.ir import Graph

DEFAULT_DOMAINS = ("", "ai.onnx")


@runtime_checkable
class Pass(Protocol):
    """A graph rewrite. `run` returns True when it changed the graph and leaves it reindexed."""

    name: str

    def run(self, graph: Graph) -> bool: ...


def is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS


def rename_inputs(node: onnx.NodeProto, mapping: dict[str, str]) -> None:
    """Rename tensors `node` reads, including ones its subgraphs capture from the outer scope
    (a name a subgraph defines itself shadows the outer one and is left alone)."""
    if not mapping:
        return
    for i, name in enumerate(node.input):
        if name in mapping:
            node.input[i] = mapping[name]
    for attr in node.attribute:
        subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subgraphs:
            _rename_in_subgraph(sub, mapping)


def _rename_in_subgraph(sub: onnx.GraphProto, mapping: dict[str, str]) -> None:
    inner = {i.name for i in sub.input} | {t.name for t in sub.initializer}
    inner |= {o for n in sub.node for o in n.output}
    visible = {k: v for k, v in mapping.items() if k not in inner}
    if not visible:
        return
    for n in sub.node:
        rename_inputs(n, visible)
    for out in sub.output:  # a subgraph output may name an outer tensor directly
        if out.name in visible:
            out.name = visible[out.name]


def add_weight(graph: Graph, name: str, value: np.ndarray) -> None:
    """Store a new weight. Models before IR 4 must list every initializer as a graph input,
    so there the weight is declared too (to_model refreshes the declared type and shape)."""
    graph.weights[name] = value
    if 0 < graph.model.ir_version < 4 and name not in {v.name for v in graph.model.graph.input}:
        graph.model.graph.input.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))


def drop_unused_weights(graph: Graph, names: Iterable[str]) -> None:
    """Delete the given weights if nothing reads them any more (graph must be reindexed).

    Old-IR models also list weights among the graph inputs; those entries go too, or the
    exported model would turn a dropped weight into a required input."""
    outputs = set(graph.output_names)
    delete_weights(graph, {n for n in names
                           if n in graph.weights and not graph.consumers(n) and n not in outputs})


def delete_weights(graph: Graph, names: set[str]) -> None:
    """Delete weights the caller knows nothing reads any more, with their old-IR input entries
    (see drop_unused_weights, which checks that first)."""
    for name in names:
        del graph.weights[name]
    if names:
        inputs = graph.model.graph.input
        keep = [v for v in inputs if v.name not in names]
        if len(keep) != len(inputs):
            del inputs[:]
            inputs.extend(keep)
