"""Surgery: carry out a plan on the graph.

Every member weight is sliced along its channel axis, then the fix-ups the rules registered
rewrite the attributes and shape constants the channels flow through (group counts, Split
sizes, Reshape targets). `mask` is the oracle used by the tests: instead of removing channels it
zeroes every weight entry that makes or reads a removed channel, which must give the same
outputs. Zeroing the readers covers a channel that a weight consumes; zeroing the makers covers a
channel summed between two activations (the contracted axis of Q @ Kᵀ), which no weight reads:
removing it drops its terms from the sum, zeroing it at its source adds zeros.
"""
from __future__ import annotations

import numpy as np

from .analysis import Analysis, Group
from .coupling import ParamSlice, Space
from .errors import UsageError
from .ir import Graph
from .policy import Plan


def kept_channels(group: Group, keep_units) -> dict[Space, np.ndarray]:
    alive = np.zeros(group.units, dtype=bool)
    alive[np.asarray(keep_units, dtype=np.int64)] = True
    return {s: np.nonzero(alive[group.unit_of[s]])[0] for s in group.spaces}


def apply_plan(graph: Graph, analysis: Analysis, plan: Plan, mode: str = "slice") -> int:
    """Prune (mode "slice") or mask (mode "mask") `graph` in place; returns groups changed."""
    groups = {g.key: g for g in analysis.groups}
    changed = 0
    for gp in plan.groups:
        group = groups.get(gp.key)
        if group is None or group.units != gp.size:
            raise UsageError(f"the plan's group '{gp.key}' does not match this model "
                             f"(was the plan saved for another model?)")
        if not group.prunable:
            raise UsageError(f"the plan prunes group '{gp.key}', which is frozen here: "
                             f"{group.frozen}")
        if not gp.keep or max(gp.keep) >= group.units or len(set(gp.keep)) != len(gp.keep):
            raise UsageError(f"the plan's group '{gp.key}' keeps invalid unit ids")
        keep = kept_channels(group, gp.keep)
        if any(len(k) == 0 for k in keep.values()):
            raise UsageError(f"the plan's group '{gp.key}' removes every channel of a tensor")
        params = sorted(group.params, key=lambda sp: not sp[1].grouped)  # grouped ones first
        for space, param in params:
            if mode == "slice":
                graph.weights[param.weight] = _slice(graph.weights[param.weight], param,
                                                     keep[space], group.sizes[space])
                if param.weight in graph.quantized:  # requantization needs the kept indices
                    graph.slices.setdefault(param.weight, []).append(
                        (param.axis, None if param.grouped else
                         _weight_index(param, keep[space], group.sizes[space])))
            elif param.role in ("consumer", "producer"):
                graph.weights[param.weight] = _mask(graph.weights[param.weight], param,
                                                    keep[space], group.sizes[space])
        if mode == "slice":
            for fix in group.fixups.values():
                fix(graph, keep)
        changed += 1
    return changed


def _weight_index(param: ParamSlice, keep: np.ndarray, size: int) -> np.ndarray:
    if param.pairs is None:
        return keep
    mine, theirs = param.pairs
    alive = np.zeros(size, dtype=bool)
    alive[keep] = True
    return np.unique(theirs[alive[mine]])


def _slice(w: np.ndarray, param: ParamSlice, keep: np.ndarray, size: int) -> np.ndarray:
    if param.grouped:
        return _slice_grouped(w, param.grouped, keep)
    return np.ascontiguousarray(np.take(w, _weight_index(param, keep, size), axis=param.axis))


def _slice_grouped(w: np.ndarray, groups: int, keep: np.ndarray) -> np.ndarray:
    """Grouped conv: each output row keeps the kept input channels of its own group."""
    c_out, local = w.shape[0], w.shape[1]
    per_group = keep.reshape(groups, -1) - (np.arange(groups) * local)[:, None]
    rows = per_group[np.arange(c_out) // (c_out // groups)]
    return np.ascontiguousarray(w[np.arange(c_out)[:, None], rows])


def _mask(w: np.ndarray, param: ParamSlice, keep: np.ndarray, size: int) -> np.ndarray:
    w = w.copy()
    if param.grouped:
        c_out, local = w.shape[0], w.shape[1]
        dead = np.ones(size, dtype=bool)
        dead[keep] = False
        groups = param.grouped
        channel = (np.arange(c_out) // (c_out // groups))[:, None] * local + np.arange(local)
        w[dead[channel]] = 0
        return w
    removed = np.setdiff1d(np.arange(w.shape[param.axis]), _weight_index(param, keep, size))
    index = [slice(None)] * w.ndim
    index[param.axis] = removed
    w[tuple(index)] = 0
    return w
