"""EliminateDeadNodes: drop nodes nothing reads and weights nobody uses.

Other passes (folding, rewiring) orphan nodes and weights; leaving them would keep stale
channels alive for the pruner and bloat the exported model.
"""
from __future__ import annotations

from graphprune.ir import Graph, _node_inputs

from .base import drop_unused_weights


class EliminateDeadNodes:
    name = "eliminate_dead"

    def run(self, graph: Graph) -> bool:
        # One backward sweep over the topological order: a node is live when a live node
        # (or the graph's outputs) reads one of its outputs.
        live = set(graph.output_names)
        kept = []
        for node in reversed(graph.nodes):
            if any(out and out in live for out in node.output):
                kept.append(node)
                live.update(_node_inputs(node))
        kept.reverse()
        changed = len(kept) != len(graph.nodes)
        graph.nodes = kept
        graph.reindex()
        before = len(graph.weights)
        drop_unused_weights(graph, list(graph.weights))
        return changed or len(graph.weights) != before
