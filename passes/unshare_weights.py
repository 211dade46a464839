"""UnshareWeights: give every user of a small shared weight its own copy.

Exporters deduplicate equal constants: every zero bias of a given size becomes one tensor read
by many layers. Sharing a weight couples the channels of all its users, so left alone it would
glue unrelated layers into one pruning group. Small weights are copied (cheap); large shared
weights are real weight tying and stay shared, so the analysis keeps them coupled.
"""
from __future__ import annotations

import numpy as np

from graphprune.ir import Graph

from .base import add_weight

_MAX_COPY_ELEMENTS = 1 << 16


class UnshareWeights:
    name = "unshare_weights"

    def run(self, graph: Graph) -> bool:
        changed = False
        seen: set[str] = set()
        for node in graph.nodes:
            for i, name in enumerate(node.input):
                w = graph.weights.get(name)
                if w is None or not np.issubdtype(w.dtype, np.floating) or w.ndim == 0 or \
                        w.size > _MAX_COPY_ELEMENTS:
                    continue
                if name in seen:  # every later use gets a copy of its own
                    copy = graph.unique_name(f"{name}_{node.name or node.op_type}")
                    add_weight(graph, copy, w.copy())
                    node.input[i] = copy
                    changed = True
                else:
                    seen.add(name)
        if changed:
            graph.reindex()
        return changed
