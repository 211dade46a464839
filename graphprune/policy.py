"""Pruning policy: turns scores and a budget into a plan of kept units per group.

The plan is plain data so it can be saved as JSON, reviewed, edited and replayed. `ratio` has
Torch-Pruning's `pruning_ratio` meaning (the fraction of channels removed from every prunable
group), so results compare directly.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .analysis import Analysis, Group
from .budget import Budget, allocate
from .errors import UsageError
from .ir import Graph
from .scoring import Criterion

PLAN_VERSION = 1


@dataclass(frozen=True)
class PolicyConfig:
    ratio: float = 0.4
    round_to: int = 8
    exclude: tuple[str, ...] = ()
    head_ratio: float | None = None  # fraction of attention heads removed; None: `ratio`
    budget: Budget | None = None  # a model-wide target instead of one ratio per group

    def __post_init__(self):
        for name, value in (("--ratio", self.ratio), ("--head-ratio", self.head_ratio)):
            if value is not None and (math.isnan(value) or not 0.0 <= value < 1.0):
                raise UsageError(f"{name} must be in [0, 1), got {value}")
        if self.round_to < 1:
            raise UsageError(f"--round-to must be a positive integer, got {self.round_to}")


@dataclass
class GroupPlan:
    key: str
    size: int  # number of units in the group
    keep: list[int]  # kept unit ids, ascending
    members: list[str] = field(default_factory=list)  # for people reading the plan


@dataclass
class Plan:
    criterion: str
    ratio: float
    round_to: int
    groups: list[GroupPlan]
    skipped: dict[str, str] = field(default_factory=dict)  # group key -> why it was not pruned
    version: int = PLAN_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> "Plan":
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("the top level is not an object")
            if data.get("version") != PLAN_VERSION:
                raise UsageError(f"{source}: plan version {data.get('version')} is not "
                                 f"{PLAN_VERSION}; re-create it with --save-plan")
            groups = [GroupPlan(**g) for g in data["groups"]]
            return cls(data["criterion"], data["ratio"], data["round_to"], groups,
                       data.get("skipped", {}))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"{source}: not a graphprune plan ({err})") from None

    def by_key(self) -> dict[str, GroupPlan]:
        return {g.key: g for g in self.groups}


def make_plan(analysis: Analysis, graph: Graph, criterion: Criterion,
              config: PolicyConfig) -> Plan:
    skipped, candidates, scores = {}, [], {}
    for group in analysis.prunable:
        hit = _excluded(group, config.exclude)
        if hit:
            skipped[group.key] = f"excluded by --exclude {hit}"
            continue
        candidates.append(group)
        scores[group.key] = criterion.score(group, graph)
    channel_groups = [g for g in candidates if "heads" not in g.tags]
    ratios = {g.key: config.ratio for g in channel_groups}
    if config.budget is not None and config.budget.sensitivity is not None:
        from .sensitivity import allocate_by_sensitivity  # imports this module

        ratios = allocate_by_sensitivity(channel_groups, config.budget.sensitivity, graph,
                                         config.budget)
    elif config.budget is not None:
        ratios = allocate(channel_groups, scores, graph, config.budget)
    groups = []
    for group in candidates:
        if "heads" in group.tags:  # units are whole heads: their channel count is already
            ratio = config.ratio if config.head_ratio is None else config.head_ratio
            keep = select(group, scores[group.key], ratio, 1)  # a multiple of the head size
        else:
            keep = select(group, scores[group.key], ratios[group.key], config.round_to)
        if len(keep) < group.units:
            groups.append(GroupPlan(group.key, group.units, keep.tolist(),
                                    [f"{t}:{a}" for t, a in group.spaces]))
    return Plan(criterion.name, config.ratio, config.round_to, groups, skipped)


def _excluded(group: Group, exclude: tuple[str, ...]) -> str | None:
    names = set(group.nodes) | {t for t, _ in group.spaces} | {p.weight for _, p in group.params}
    return next((e for e in exclude if e in names), None)


def kept_count(n: int, ratio: float, round_to: int, nearest: bool = False) -> int:
    """Channels to keep out of n: never zero, a multiple of round_to where n allows.
    The number removed is rounded down, or to the nearest (heads: 40 % of 2 KV groups is 1)."""
    keep = n - (int(n * ratio + 0.5) if nearest else int(n * ratio))
    if round_to > 1 and n > round_to:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    return max(1, min(n, keep))


def select(group: Group, scores: np.ndarray, ratio: float, round_to: int) -> np.ndarray:
    """Kept unit ids of one group, honouring its block structure and non-empty members."""
    if group.blocks is None:
        count = kept_count(group.units, ratio, round_to, nearest="heads" in group.tags)
        keep = _top(scores, np.arange(group.units), count)
    elif group.block_mode == "whole":
        n_blocks, per = group.blocks.shape
        block_scores = scores[group.blocks].sum(axis=1)
        step = max(1, round_to // math.gcd(round_to, per))
        kept_blocks = _top(block_scores, np.arange(n_blocks), kept_count(n_blocks, ratio, step))
        keep = group.blocks[kept_blocks].ravel()
    else:  # uniform: the same count in every block
        n_blocks, per = group.blocks.shape
        step = max(1, round_to // math.gcd(round_to, n_blocks))
        k = kept_count(per, ratio, step)
        keep = np.concatenate([_top(scores, b, k) for b in group.blocks])
    keep = _non_empty(group, scores, np.asarray(keep))
    return np.sort(keep)


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The k ids with the highest scores; ties go to the lower id so plans are deterministic."""
    order = np.lexsort((ids, -scores[ids]))
    return np.sort(ids[order[:k]])


def _non_empty(group: Group, scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """No member tensor may lose all its channels (a Split output, a Concat input)."""
    kept = set(keep.tolist())
    for space in group.spaces:
        units = group.unit_of[space]
        if not kept.intersection(units.tolist()):
            best = int(units[np.argmax(scores[units])])
            kept.add(best)
    return np.array(sorted(kept))
