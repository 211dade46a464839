"""Sensitivity sweep: how much the output moves when one group alone is pruned.

For every prunable group and ratio, the group's readers are masked exactly as the mask oracle
does (the pruned model computes the same), and the model's output error against the original
is measured in ONNX Runtime. One session serves the whole sweep: the readers' weights are
exposed as overridable graph inputs, so each measurement only feeds different weights.
The curves then decide how a model-wide budget is spread (`allocate_by_sensitivity`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from .analysis import Analysis, Group
from .budget import Budget, _Estimator
from .errors import UsageError
from .ir import Graph
from .policy import select
from .scoring import Criterion
from .surgery import _mask, kept_channels
from .verify import session


@dataclass
class Sensitivity:
    ratios: list[float]
    errors: dict[str, list[float]]  # group key -> relative output error at each ratio
    criterion: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, source: str) -> "Sensitivity":
        try:
            data = json.loads(text)
            return cls([float(r) for r in data["ratios"]],
                       {k: [float(e) for e in v] for k, v in data["errors"].items()},
                       str(data["criterion"]))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"{source}: not a graphprune sensitivity file ({err})") from None


def measure(graph: Graph, analysis: Analysis, criterion: Criterion, ratios: list[float],
            feeds: dict[str, np.ndarray], round_to: int = 1,
            progress: Callable[[str], None] | None = None) -> Sensitivity:
    groups = analysis.prunable
    readers = sorted({p.weight for g in groups for _, p in g.params if p.role == "consumer"})
    sess = session(_with_weight_inputs(graph, readers).SerializeToString())
    reference = sess.run(None, feeds)
    errors = {}
    for i, group in enumerate(groups):
        if progress:
            progress(f"sensitivity {i + 1}/{len(groups)}: {group.key}")
        scores = criterion.score(group, graph)
        errors[group.key] = []
        for ratio in ratios:
            keep = kept_channels(group, select(group, scores, ratio, round_to))
            masked = {}
            for space, p in group.params:
                if p.role == "consumer":
                    base = masked.get(p.weight, graph.weights[p.weight])
                    masked[p.weight] = _mask(base, p, keep[space], group.sizes[space])
            errors[group.key].append(_relative_error(reference, sess.run(None, {**feeds,
                                                                                **masked})))
    return Sensitivity(list(ratios), errors, criterion.name)


def _with_weight_inputs(graph: Graph, names: list[str]) -> onnx.ModelProto:
    """The model with `names` also declared as graph inputs: initializers become defaults
    that a run may override."""
    model = graph.to_model()
    declared = {v.name for v in model.graph.input}
    for name in names:
        if name not in declared:
            w = graph.weights[name]
            model.graph.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(w.dtype), w.shape))
    return model


def _relative_error(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    num = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(reference, got))
    den = sum(float(np.sum(a.astype(np.float64) ** 2)) for a in reference)
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def allocate_by_sensitivity(groups: list[Group], sens: Sensitivity, graph: Graph,
                            budget: Budget) -> dict[str, float]:
    """Ratios per group from the sweep: repeatedly take the step (a group moving to its next
    measured ratio) that costs the least output error per unit of budget saved, until the
    target is met. Groups missing from the sweep keep ratio 0."""
    known = [g for g in groups if g.key in sens.errors]
    measure_ = _Estimator(known, graph, budget.target)
    levels = np.zeros(len(known), dtype=np.int64)  # index into [0] + sens.ratios
    ratios = np.array([0.0] + list(sens.ratios))
    curves = [np.array([0.0] + sens.errors[g.key]) for g in known]
    caps = [budget.max_group_ratio if not budget.group_ratios else
            min(budget.max_group_ratio, budget.group_ratios.get(g.key, 1.0)) for g in known]
    goal = budget.keep_fraction * measure_.total(np.zeros(len(known)))
    current = measure_.total(np.zeros(len(known)))
    while current > goal:
        best, best_cost = None, None
        for i in range(len(known)):
            nxt = levels[i] + 1
            if nxt >= len(ratios) or ratios[nxt] > caps[i]:
                continue
            trial = ratios[levels].copy()
            trial[i] = ratios[nxt]
            saved = current - measure_.total(trial)
            if saved <= 0:
                continue
            cost = max(curves[i][nxt] - curves[i][levels[i]], 0.0) / saved
            if best_cost is None or cost < best_cost:
                best, best_cost = i, cost
        if best is None:
            break
        levels[best] += 1
        current = measure_.total(ratios[levels])
    allocated = {g.key: float(ratios[levels[i]]) for i, g in enumerate(known)}
    return {g.key: allocated.get(g.key, 0.0) for g in groups}
