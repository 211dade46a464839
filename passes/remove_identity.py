"""RemoveIdentity: drop Identity and inference-mode Dropout, which only forward their input.

They are noise for every later pass (pattern matching, channel tracing) and cost a copy at run
time. Consumers are pointed at the input; where the node's output is a graph output, the
producer is made to write that name instead, so the model's interface does not change.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.ir import Graph

from .base import drop_unused_weights, is_default_domain, rename_inputs


class RemoveIdentity:
    name = "remove_identity"

    def run(self, graph: Graph) -> bool:
        outputs = set(graph.output_names)
        # Sweep 1: rewire consumers of forwarders whose output is internal. Nodes are in
        # topological order, so an alias is final once recorded (chains collapse at once).
        alias: dict[str, str] = {}
        kept, removed_inputs = [], []
        for node in graph.nodes:
            rename_inputs(node, alias)
            if _forwards(graph, node) and node.output[0] not in outputs:
                alias[node.output[0]] = node.input[0]
                removed_inputs.extend(node.input[1:])
            else:
                kept.append(node)
        changed = len(kept) != len(graph.nodes)
        graph.nodes = kept
        graph.reindex()

        # Sweep 2: a forwarder that writes a graph output goes only if its input is a private
        # intermediate, which the producer can simply be renamed to write.
        drop = []
        for node in graph.nodes:
            if not _forwards(graph, node) or node.output[0] not in outputs:
                continue
            src, dst = node.input[0], node.output[0]
            producer = graph.producer(src)
            if (producer is None or src in graph.weights or src in outputs
                    or src in graph.input_names or len(graph.consumers(src)) != 1
                    or graph.consumers(src)[0] is not node):
                continue
            producer.output[list(producer.output).index(src)] = dst
            drop.append(node)
            removed_inputs.extend(node.input[1:])
        if drop:
            ids = {id(n) for n in drop}
            graph.nodes = [n for n in graph.nodes if id(n) not in ids]
            graph.reindex()
            changed = True
        drop_unused_weights(graph, [n for n in removed_inputs if n])
        return changed


def _forwards(graph: Graph, node: onnx.NodeProto) -> bool:
    """True when the node's first output is its first input at inference time."""
    if not is_default_domain(node) or not node.input or not node.input[0] or not node.output:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout":
        return False
    mask = node.output[1] if len(node.output) > 1 else ""
    if mask and (graph.consumers(mask) or mask in graph.output_names):
        return False
    if graph.opset < 7 and not any(a.name == "is_test" and a.i for a in node.attribute):
        return False  # opset < 7: training unless is_test=1
    if len(node.input) > 2 and node.input[2]:  # opset >= 12: training_mode input
        training = graph.const(node.input[2])
        if training is None or bool(np.asarray(training).reshape(-1)[0]):
            return False
    return True
