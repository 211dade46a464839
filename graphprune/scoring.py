"""Importance criteria: one score per unit of a group; the weakest units are removed.

Every criterion is a small class with the same interface so that the policy never needs to
know which one it got. Magnitude criteria aggregate over every member weight of the group
(producer filters and consumer slices alike), the way group-level pruning methods do.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .analysis import Group
from .errors import UsageError
from .ir import Graph


class Criterion(Protocol):
    name: str

    def score(self, group: Group, graph: Graph) -> np.ndarray: ...


def channel_norms(weight: np.ndarray, axis: int, p: int) -> np.ndarray:
    """L1 or squared-L2 norm of every slice of `weight` along `axis`, without copying it
    (the FC layers of VGG-style heads hold hundreds of megabytes)."""
    if weight.ndim == 0:
        return np.abs(weight.reshape(1)).astype(np.float64)
    axes = list(range(weight.ndim))
    if p == 1:
        others = tuple(a for a in axes if a != axis)
        return np.abs(weight).sum(axis=others, dtype=np.float64)
    return np.einsum(weight, axes, weight, axes, [axis]).astype(np.float64)


def grouped_input_norms(weight: np.ndarray, groups: int, p: int) -> np.ndarray:
    """Norms of a grouped conv's input channels: axis 1 is local to each output group."""
    c_out, local = weight.shape[0], weight.shape[1]
    w = np.abs(weight.astype(np.float64, copy=False)).reshape(groups, c_out // groups, local, -1)
    w = w if p == 1 else w * w
    return w.sum(axis=(1, 3)).reshape(-1)  # [groups * local] = input channels in order


class Magnitude:
    """Group L1 / L2 norm of every weight entry a unit owns (producer and consumer)."""

    def __init__(self, p: int):
        self.p = p
        self.name = f"l{p}"

    def score(self, group: Group, graph: Graph) -> np.ndarray:
        total = np.zeros(group.units)
        for space, param in group.params:
            if param.role == "param":
                continue
            w = graph.weights[param.weight]
            norms = (grouped_input_norms(w, param.grouped, self.p) if param.grouped
                     else channel_norms(w, param.axis, self.p))
            mine, theirs = param.pairs if param.pairs is not None else (
                np.arange(len(norms)), np.arange(len(norms)))
            np.add.at(total, group.unit_of[space][mine], norms[theirs])
        return total if self.p == 1 else np.sqrt(total)


class BNScale:
    """|gamma| of the BatchNorms folded into the group's producers (network slimming)."""

    name = "bn_scale"

    def score(self, group: Group, graph: Graph) -> np.ndarray:
        total = np.zeros(group.units)
        found = False
        for space in group.spaces:
            scale = graph.bn_scales.get(space[0])
            if scale is not None and space[1] == 1 and len(scale) == group.sizes[space]:
                np.add.at(total, group.unit_of[space], scale)
                found = True
        return total if found else Magnitude(2).score(group, graph)


class Random:
    """Uniform random scores: the baseline every criterion must beat."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, group: Group, graph: Graph) -> np.ndarray:
        rng = np.random.default_rng([self.seed, group.id])
        return rng.random(group.units)


CRITERIA = {"l1": lambda seed: Magnitude(1), "l2": lambda seed: Magnitude(2),
            "bn_scale": lambda seed: BNScale(), "random": Random}


def make_criterion(name: str, seed: int = 0) -> Criterion:
    if name not in CRITERIA:
        raise UsageError(f"unknown criterion '{name}': choose one of {', '.join(CRITERIA)}")
    return CRITERIA[name](seed)
