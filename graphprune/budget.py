"""Global budgets: how many units each group gives up when the target is model-wide.

Per-group pruning removes the same fraction everywhere. A global budget ranks the units of all
groups together (scores normalised by their group's mean so groups of different scale compare)
and removes the weakest until a target is met: a fraction of all channels, or of the model's
parameters or MACs. A cap keeps any single group from being gutted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .analysis import Group
from .ir import Graph
from .metrics import count_macs, count_params, node_macs


@dataclass(frozen=True)
class Budget:
    target: str  # "channels", "params" or "macs"
    keep_fraction: float  # of channels / params / MACs to keep (model-wide)
    max_group_ratio: float = 0.8  # never remove more than this fraction of one group
    group_ratios: dict | None = None  # caps per group key (optional)
    sensitivity: object = None  # a sensitivity.Sensitivity: spread the budget by its curves


def weight_macs(graph: Graph) -> dict[str, int]:
    """MACs of the node each Conv/Gemm/MatMul weight belongs to."""
    out = {}
    for node in graph.nodes:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1:
            if graph.const(node.input[1]) is not None:
                out[node.input[1]] = node_macs(graph, node)
    return out


def allocate(groups: list[Group], scores: dict[str, np.ndarray], graph: Graph,
             budget: Budget) -> dict[str, float]:
    """Fraction of units to remove from each group so the model meets the budget.

    Units are removed weakest first (within each group's cap); the number removed is found by
    bisection on an estimate of the pruned model's parameters or MACs, in which a weight keeps
    the product of its sliced axes' kept fractions (so removing both the input and the output
    channels of a layer is not counted twice)."""
    entries = []
    for gi, group in enumerate(groups):
        s = scores[group.key]
        norm = s / (s.mean() if s.mean() > 0 else 1.0)
        entries += [(float(v), gi) for v in np.sort(norm)]
    order, removed = [], [0] * len(groups)
    caps = [_cap(g, budget) for g in groups]
    for _, gi in sorted(entries, key=lambda e: e[0]):
        if removed[gi] < caps[gi]:
            removed[gi] += 1
            order.append(gi)
    measure = _Estimator(groups, graph, budget.target)
    goal = budget.keep_fraction * measure.total(np.zeros(len(groups)))
    lo, hi = 0, len(order)  # smallest prefix of `order` that meets the goal
    while lo < hi:
        mid = (lo + hi) // 2
        if measure.total(_fractions(order[:mid], groups)) <= goal:
            hi = mid
        else:
            lo = mid + 1
    fractions = _fractions(order[:lo], groups)
    return {g.key: float(fractions[i]) for i, g in enumerate(groups)}


def _fractions(prefix: list[int], groups: list[Group]) -> np.ndarray:
    counts = np.bincount(np.asarray(prefix, dtype=np.int64), minlength=len(groups))
    return counts / np.array([g.units for g in groups])


class _Estimator:
    """Channels, parameters or MACs left when group i loses fraction r[i] of its units."""

    def __init__(self, groups: list[Group], graph: Graph, target: str):
        self.target = target
        self.units = np.array([g.units for g in groups], dtype=np.float64)
        macs_of = weight_macs(graph)
        axes: dict[tuple[str, int], int] = {}  # (weight, axis) -> group index
        for gi, g in enumerate(groups):
            for _, p in g.params:
                axes[(p.weight, p.axis)] = gi
        self.items = []  # (base cost, [group indices whose fraction scales it])
        by_weight: dict[str, list[int]] = {}
        for (weight, _), gi in axes.items():
            by_weight.setdefault(weight, []).append(gi)
        for weight, gis in by_weight.items():
            base = macs_of.get(weight, 0) if target == "macs" else graph.weights[weight].size
            if base:
                self.items.append((float(base), gis))
        counted = set(by_weight)
        self.fixed = 0.0
        if target == "params":
            self.fixed = float(count_params(graph) - sum(graph.weights[w].size for w in counted
                                                         if w in graph.weights and
                                                         graph.consumers(w)))
        elif target == "macs":
            self.fixed = float(count_macs(graph) - sum(macs_of.get(w, 0) for w in counted))

    def total(self, removed_fraction: np.ndarray) -> float:
        if self.target == "channels":
            return float((self.units * (1 - removed_fraction)).sum())
        kept = 1 - removed_fraction
        return self.fixed + sum(base * float(np.prod(kept[gis])) for base, gis in self.items)


def _cap(group: Group, budget: Budget) -> int:
    ratio = budget.max_group_ratio
    if budget.group_ratios and group.key in budget.group_ratios:
        ratio = min(ratio, budget.group_ratios[group.key])
    return min(group.units - 1, int(group.units * ratio))


__all__ = ["Budget", "allocate", "weight_macs"]
