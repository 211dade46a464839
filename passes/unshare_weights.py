"""UnshareWeights: give every user of a deduplicated constant its own copy.

Exporters deduplicate equal constants: every zero bias (or unit norm scale) of a given size
becomes one tensor read by many layers. Sharing a weight couples the channels of all its users,
so left alone it would glue unrelated layers into one pruning group. Such constants hold one
value everywhere and are copied when small (cheap). A weight with distinct values read by
several nodes is real weight tying (ALBERT shares one layer's weights across all its layers)
and stays shared, so the analysis keeps its users coupled and the parameter count does not
grow.
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
                        w.size > _MAX_COPY_ELEMENTS or not _uniform(w):
                    continue
                if name in seen:  # every later use gets a copy of its own
                    copy = graph.unique_name(f"{name}_{node.name or node.op_type}")
                    add_weight(graph, copy, w.copy())
                    if name in graph.quantized:  # a dequantized weight: its copy is too
                        graph.quantized[copy] = graph.quantized[name]
                    node.input[i] = copy
                    changed = True
                else:
                    seen.add(name)
        if changed:
            graph.reindex()
        return changed


def _uniform(w: np.ndarray) -> bool:
    """One value everywhere (an empty tensor has none and couples nothing: left alone)."""
    flat = w.reshape(-1)
    return flat.size > 0 and bool(np.all(flat == flat[0]))
