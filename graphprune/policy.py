"""Pruning policy: turns scores and a budget into a plan of kept units per group.

The plan is plain data so it can be saved as JSON, reviewed, edited and replayed. `ratio` has
Torch-Pruning's `pruning_ratio` meaning (the fraction of channels removed from every prunable
group), so results compare directly.
"""
from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

from .analysis import Analysis, Group
from .budget import Budget, allocate
from .errors import UsageError
from .ir import Graph
from .scoring import Criterion

PLAN_VERSION = 1
AUTO = "auto"
RoundTo = int | str  # a positive int, or AUTO


@lru_cache(maxsize=1)
def nchwc_block() -> int:
    """Channels per block of ONNX Runtime's NCHWc CPU kernels (MLAS) on this machine: 16 with
    AVX-512F, else 8 (AVX2, and a harmless choice where the NCHWc layout is not used)."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        return 16 if "avx512f" in line.split() else 8
        except OSError:
            pass
    return 8


def parse_round_to(value: RoundTo) -> RoundTo:
    """A positive int, `auto`, or `auto:N` (auto with block N, as a plan records it), also from
    the strings the command line gives; anything else is a UsageError."""
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    head, _, block = text.partition(":")
    number = block if head == AUTO else text
    if not isinstance(value, bool) and number.isdigit() and int(number) >= 1:
        return f"{AUTO}:{int(number)}" if head == AUTO else int(number)
    raise UsageError(f"--round-to must be 'auto' or a positive integer, got {value!r}")


@dataclass(frozen=True)
class Rounding:
    """How kept channel counts are rounded.

    `step`: kept counts are multiples of it where a group (or a concat segment of one) is
    larger. `kernel`: what ONNX Runtime's NCHWc kernels need, `step` being their block (see
    `--round-to auto`): a group of exactly one block stays whole (fewer channels would send the
    next conv to the slow non-blocked path), and a grouped conv that keeps the same count per
    group (ShuffleNet v1's) keeps a multiple of the block per conv group where it had several
    (else the conv leaves the NCHWc layout), or half-block multiples where it had one block.
    (ResNeXt/RegNet-style grouped convs lose whole groups instead: rules/conv.py.)
    Concat inputs and Split outputs are rounded one by one in every mode."""

    step: int = 1
    kernel: bool = False

    @classmethod
    def of(cls, round_to: RoundTo) -> "Rounding":
        value = parse_round_to(round_to)
        if isinstance(value, int):
            return cls(value)
        block = value.partition(":")[2]
        return cls(int(block) if block else nchwc_block(), True)

    @property
    def label(self) -> RoundTo:
        """What the plan records: the int given, or `auto:<block>` (which --round-to takes
        back, to get the same rounding on a machine with another block size)."""
        return f"{AUTO}:{self.step}" if self.kernel else self.step


@dataclass(frozen=True)
class PolicyConfig:
    ratio: float = 0.4
    round_to: RoundTo = AUTO  # a positive int, or "auto" (see Rounding)
    exclude: tuple[str, ...] = ()
    head_ratio: float | None = None  # fraction of attention heads removed; None: `ratio`
    budget: Budget | None = None  # a model-wide target instead of one ratio per group

    def __post_init__(self):
        for name, value in (("--ratio", self.ratio), ("--head-ratio", self.head_ratio)):
            if value is not None and (math.isnan(value) or not 0.0 <= value < 1.0):
                raise UsageError(f"{name} must be in [0, 1), got {value}")
        parse_round_to(self.round_to)


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
    round_to: RoundTo  # the int used, or "auto:<block>"; informative (a replay keeps `keep`)
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
    rounding = Rounding.of(config.round_to)
    groups = []
    for group in candidates:
        if "heads" in group.tags:  # units are whole heads: their channel count is already
            ratio = config.ratio if config.head_ratio is None else config.head_ratio
            keep = select(group, scores[group.key], ratio, 1)  # a multiple of the head size
        else:
            keep = select(group, scores[group.key], ratios[group.key], rounding)
        if len(keep) < group.units:
            groups.append(GroupPlan(group.key, group.units, keep.tolist(),
                                    [f"{t}:{a}" for t, a in group.spaces]))
    return Plan(criterion.name, config.ratio, rounding.label, groups, skipped)


def _excluded(group: Group, exclude: tuple[str, ...]) -> str | None:
    names = set(group.nodes) | {t for t, _ in group.spaces} | {p.weight for _, p in group.params}
    return next((e for e in exclude if e in names), None)


def kept_count(n: int, ratio: float, round_to: int, nearest: bool = False,
               floor: bool = False) -> int:
    """Channels to keep out of n: never zero, a multiple of round_to where n allows.
    The number removed is rounded down, or to the nearest (heads: 40 % of 2 KV groups is 1).
    `floor`: n of exactly round_to also stays a multiple (so stays whole)."""
    keep = n - (int(n * ratio + 0.5) if nearest else int(n * ratio))
    if round_to > 1 and (n > round_to or (floor and n == round_to)):
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    return max(1, min(n, keep))


def select(group: Group, scores: np.ndarray, ratio: float,
           round_to: int | Rounding) -> np.ndarray:
    """Kept unit ids of one group, honouring its block structure and non-empty members."""
    rounding = round_to if isinstance(round_to, Rounding) else Rounding(round_to)
    step, kernel = rounding.step, rounding.kernel
    if group.blocks is None:
        count = kept_count(group.units, ratio, step, "heads" in group.tags, floor=kernel)
        segments = _segments(group) if step > 1 or "heads" in group.tags else []
        if len(segments) > 1 and "heads" in group.tags:
            # heads packed with others (Falcon's fused Q, K, V: 4 + 1 + 1 heads on one axis):
            # each part loses its own share, so one key/value head is never the one to go
            keep = np.concatenate([_top(scores, seg, kept_count(len(seg), ratio, 1, True))
                                   for seg in segments])
        elif len(segments) > 1:
            keep = _select_segments(scores, segments, count, step, kernel)
        else:
            keep = _top(scores, np.arange(group.units), count)
    elif group.block_mode == "whole":
        n_blocks, per = group.blocks.shape
        block_scores = scores[group.blocks].sum(axis=1)
        block_step = max(1, step // math.gcd(step, per))
        kept_blocks = _top(block_scores, np.arange(n_blocks),
                           kept_count(n_blocks, ratio, block_step))
        keep = group.blocks[kept_blocks].ravel()
    else:  # uniform: the same count in every block (the groups of a grouped conv)
        n_blocks, per = group.blocks.shape
        if kernel and per % step == 0 and per > step:  # NCHWc needs whole blocks per group
            k = kept_count(per, ratio, step, floor=True)
        elif kernel and per == step:  # can only shrink out of NCHWc: do, as its 1x1 neighbours
            k = kept_count(per, ratio, step // 2)  # shrink too (measured faster than whole)
        else:
            k = kept_count(per, ratio, max(1, step // math.gcd(step, n_blocks)))
        keep = np.concatenate([_top(scores, b, k) for b in group.blocks])
    keep = _non_empty(group, scores, np.asarray(keep))
    return np.sort(keep)


def _segments(group: Group) -> list[np.ndarray]:
    """The group's units split by which member tensors hold them, in unit order: a Concat's
    inputs (or a Split's outputs) become segments of their own, so rounding each segment
    rounds every member tensor. One segment when every member holds every unit."""
    columns = []
    for space in group.spaces:
        held = np.zeros(group.units, dtype=bool)
        held[group.unit_of[space]] = True
        if not held.all():
            columns.append(held)
    if not columns:
        return [np.arange(group.units)]
    _, label = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
    label = label.ravel()
    first = {int(lab): i for i, lab in reversed(list(enumerate(label)))}
    return [np.flatnonzero(label == lab) for lab in sorted(first, key=first.get)]


def _select_segments(scores: np.ndarray, segments: list[np.ndarray], count: int, step: int,
                     kernel: bool) -> np.ndarray:
    """Keep about `count` units, each segment a multiple of `step` (segments not larger than
    `step`, or equal to it without `kernel`, keep what the scores give them, at least one).

    The scores decide how many units each segment would keep (the group's top `count`); those
    counts are rounded down to multiples of `step` (at least one step), then steps go to the
    segments with the largest remainders while the total is below `count`."""
    chosen = set(_top(scores, np.arange(len(scores)), count).tolist())
    wanted = [sum(int(u) in chosen for u in seg) for seg in segments]
    sizes = [len(seg) for seg in segments]
    aligned = [a > step or (kernel and a == step) for a in sizes]
    counts = [max(step, min(w // step * step, a // step * step)) if ok else max(1, w)
              for w, a, ok in zip(wanted, sizes, aligned)]
    missing = count - sum(counts)
    order = sorted((i for i in range(len(segments)) if aligned[i]),
                   key=lambda i: (counts[i] - wanted[i], i))
    for i in order:
        if 2 * missing < step:
            break
        if wanted[i] <= counts[i]:
            continue
        grown = min(counts[i] + step, sizes[i])
        missing -= grown - counts[i]
        counts[i] = grown
    return np.concatenate([_top(scores, seg, k) for seg, k in zip(segments, counts)])


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
