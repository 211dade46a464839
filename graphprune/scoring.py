r"""Importance criteria: one score per unit of a group; the weakest units are removed.

Every criterion is a small class with the same interface so that the policy never needs to
know which one it got. Magnitude criteria aggregate over every member weight of the group
(producer filters and consumer slices alike), the way group-level pruning methods do.

| name | score of a unit | data |
|---|---|---|
| l1, l2 | L1 / L2 norm of every weight entry the unit owns | none |
| bn_scale | \|γ\| of the folded BatchNorms (network slimming) | none |
| lamp | LAMP: squared L2 norm / sum of the squared norms of the group's units that are at least as large; rank-equivalent to l2 in a group, in [0, 1] across groups | none |
| fpgm | FPGM: redundancy of the producer filters (sum of distances to the others) | none |
| obs | output-error increase of each consumer when the channel is removed and the rest re-fitted (OBS): ‖W_c‖² / [G⁻¹]_cc | optional |
| activation | Wanda: Σ \|W\| · ‖X_c‖ over the consumer slices | required |
| random | uniform random (the baseline) | none |
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

    def __init__(self):
        self.fallbacks = 0  # groups without a folded BatchNorm, scored by L2 instead

    def score(self, group: Group, graph: Graph) -> np.ndarray:
        total = np.zeros(group.units)
        found = False
        for space in group.spaces:
            scale = graph.bn_scales.get(space[0])
            if scale is not None and space[1] == 1 and len(scale) == group.sizes[space]:
                np.add.at(total, group.unit_of[space], scale)
                found = True
        if not found:
            self.fallbacks += 1
            return Magnitude(2).score(group, graph)
        return total


class Random:
    """Uniform random scores: the baseline every criterion must beat."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, group: Group, graph: Graph) -> np.ndarray:
        rng = np.random.default_rng([self.seed, group.id])
        return rng.random(group.units)




def lamp_scores(squared: np.ndarray) -> np.ndarray:
    """LAMP (Lee et al. 2021): s_u / Σ_{v: s_v ≥ s_u} s_v for squared norms s.

    Strictly increasing in s (so rank-equivalent to the norm inside a group), 1 for the largest
    unit, and on the same [0, 1] scale in every group."""
    s = np.asarray(squared, dtype=np.float64)
    ascending = np.sort(s)
    tail = np.cumsum(ascending[::-1])[::-1]  # tail[i] = sum of ascending[i:]
    denom = tail[np.searchsorted(ascending, s, side="left")]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(denom > 0, s / np.where(denom > 0, denom, 1.0), 0.0)
    return out


class LAMP:
    """Layer-adaptive magnitude: the group L2 norm made comparable across groups."""

    name = "lamp"

    def score(self, group: Group, graph: Graph) -> np.ndarray:
        return lamp_scores(Magnitude(2).score(group, graph) ** 2)


class FPGM:
    """Filter pruning via geometric median (He et al. 2019), on the group's producer filters.

    A unit's feature vector is the concatenation of every producer filter it owns (a residual
    group has one per producer). Units whose filters lie closest to the others — the smallest
    sum of Euclidean distances, i.e. nearest the geometric median — are the most replaceable.
    The ranking is computed greedily: after the most central unit is taken out, the sums are
    recomputed over the remaining units, so of two identical filters only one is redundant.
    Scores are the removal order scaled to (0, 1] (the first removed scores 1/n). Filters longer
    than `dims` are reduced by a seeded Gaussian random projection (Johnson-Lindenstrauss:
    distances are kept to a few percent), which keeps VGG/ResNet-50 heads fast.
    """

    name = "fpgm"

    def __init__(self, seed: int = 0, dims: int = 256):
        self.seed, self.dims = seed, dims

    def features(self, group: Group, graph: Graph) -> np.ndarray | None:
        blocks = []
        for space, param in group.params:
            if param.role != "producer":
                continue
            w = graph.weights[param.weight]
            if w.ndim < 2:  # biases are not filters
                continue
            rows = np.moveaxis(w, param.axis, 0).reshape(w.shape[param.axis], -1)
            mine, theirs = param.pairs if param.pairs is not None else (
                np.arange(rows.shape[0]), np.arange(rows.shape[0]))
            units = group.unit_of[space][np.asarray(mine)]
            theirs = np.asarray(theirs)
            order = np.lexsort((theirs, units))
            units, theirs = units[order], theirs[order]
            counts = np.bincount(units, minlength=group.units)
            slot = np.arange(len(units)) - np.repeat(np.cumsum(counts) - counts, counts)
            k = int(counts.max(initial=0))
            if k == 0:
                continue
            blocks.append((rows, units, theirs, slot, k))
        if not blocks:
            return None
        total = sum(rows.shape[1] * k for rows, _, _, _, k in blocks)
        project = total > self.dims
        width = self.dims if project else total
        out = np.zeros((group.units, width), dtype=np.float64)
        offset = 0
        rng = np.random.default_rng([self.seed, group.id, 7])
        for rows, units, theirs, slot, k in blocks:
            f = rows.shape[1]
            if project:
                # project each row (one channel's filter) separately per slot, then add: the
                # same as projecting the concatenation with a block-Gaussian matrix
                if k == 1 and np.array_equal(units, np.arange(group.units)) and \
                        np.array_equal(theirs, np.arange(rows.shape[0])):
                    out += _sketch(rows, self.dims, rng)  # the usual case: no copies
                    continue
                for s_ in range(k):
                    pick = slot == s_
                    if pick.any():  # a unit has one row per slot: no repeats
                        out[units[pick]] += _sketch(rows[theirs[pick]], self.dims, rng)
            else:
                cols = offset + slot[:, None] * f + np.arange(f)[None, :]
                out[units[:, None], cols] = rows[theirs].astype(np.float64)
                offset += k * f
        return out

    def score(self, group: Group, graph: Graph) -> np.ndarray:
        feats = self.features(group, graph)
        if feats is None:
            return Magnitude(2).score(group, graph)
        n = feats.shape[0]
        sq = np.einsum("ij,ij->i", feats, feats)
        feats = feats.astype(np.float32)
        sq = sq.astype(np.float32)
        dist = feats @ feats.T  # in place from here: n² entries can be large
        dist *= -2.0
        dist += sq[:, None]
        dist += sq[None, :]
        np.maximum(dist, 0.0, out=dist)
        np.sqrt(dist, out=dist)
        np.fill_diagonal(dist, 0.0)
        sums = dist.sum(axis=1)
        scores = np.empty(n)
        for step in range(n):  # remove the most central unit, then re-measure the rest
            i = int(np.argmin(sums))
            scores[i] = (step + 1) / n
            sums -= dist[i]  # symmetric: a row is contiguous
            sums[i] = np.inf
        return scores


def _sketch(rows: np.ndarray, dims: int, rng: np.random.Generator) -> np.ndarray:
    """Random projection of rows to `dims` columns: every input column gets a random sign and
    input column j is added to output column j mod dims (a count sketch with a fixed, balanced
    hash). Inner products, hence distances, are preserved in expectation as by a Gaussian
    projection, at the cost of one contiguous pass over the weights (in chunks of rows, so a
    VGG head's 400 MB weight is never copied whole)."""
    n, f = rows.shape
    sign = rng.integers(0, 2, f).astype(np.float32) * 2 - 1
    whole = f - f % dims
    out = np.empty((n, dims), dtype=np.float64)
    step = max(1, (1 << 22) // max(f, 1))  # about 16 MB of float32 per chunk
    for start in range(0, n, step):
        signed = rows[start:start + step].astype(np.float32, copy=False) * sign
        block = signed[:, :whole].reshape(len(signed), -1, dims).sum(axis=1, dtype=np.float64)
        block[:, :f - whole] += signed[:, whole:]
        out[start:start + step] = block
    return out


def _as_rows(w: np.ndarray, axis: int) -> np.ndarray:
    """A consumer weight as [channels, everything else]."""
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


class OBS:
    """Second-order criterion (Optimal Brain Surgeon, per consumer; cf. OBS/OBSPA).

    For a consumer with weight W (outputs × input channels × taps) and input second-moment
    matrix G = E[x xᵀ] over channels (taps taken as independent: G ⊗ I), removing input
    channel c and re-fitting the remaining weights optimally raises the consumer's output
    squared error by ‖W[:, c]‖² / [G⁻¹]_cc. A unit scores the sum over its consumers.

    G is the measured Gram matrix with calibration statistics (damped by `damp` × its mean
    diagonal, as in GPTQ/OBC). Without data it is a surrogate: diagonal, with the second
    moments derived from folded BatchNorm statistics where the consumer's input traces back to
    a BN (calibration.data_free_stats), else the identity; with a diagonal G re-fitting gains
    nothing and the score is E[x_c²]·‖W[:, c]‖².
    """

    name = "obs"

    def __init__(self, stats=None, damp: float = 0.01):
        self.stats, self.damp = stats, damp
        self._inverse: dict[str, np.ndarray] = {}  # per tensor: several consumers share one

    def _tensor(self, tensor: str):
        return None if self.stats is None else self.stats.get(tensor)

    def score(self, group: Group, graph: Graph) -> np.ndarray:
        total = np.zeros(group.units)
        found = False
        for space, param in group.params:
            if param.role != "consumer":
                continue
            w = graph.weights[param.weight]
            ts = self._tensor(space[0])
            size = group.sizes[space]
            second = ts.second_moment if ts is not None else None
            if second is not None and len(second) != size:
                ts, second = None, None
            if param.grouped:
                err = grouped_input_norms(w, param.grouped, 2)
                if second is not None:
                    err = err * second
                np.add.at(total, group.unit_of[space], err)
                found = True
                continue
            norms = channel_norms(w, param.axis, 2)
            moment = ts.moment() if ts is not None else None
            if moment is not None and param.pairs is None and len(norms) == size:
                if space[0] not in self._inverse:
                    self._inverse[space[0]] = _inverse_diagonal(moment, self.damp)
                err = norms / self._inverse[space[0]]
                np.add.at(total, group.unit_of[space], err)
            else:
                mine, theirs = param.pairs if param.pairs is not None else (
                    np.arange(len(norms)), np.arange(len(norms)))
                scale = second[mine] if second is not None else 1.0
                np.add.at(total, group.unit_of[space][mine], norms[theirs] * scale)
            found = True
        return total if found else Magnitude(2).score(group, graph)


def _inverse_diagonal(moment: np.ndarray, damp: float) -> np.ndarray:
    """diag((G + λI)⁻¹) with λ = damp · mean diag(G) (a tiny floor keeps dead channels finite)."""
    g = np.array(moment, dtype=np.float64)
    lam = damp * float(np.mean(np.diag(g))) if g.size else 0.0
    lam = max(lam, 1e-12)
    g[np.diag_indices_from(g)] += lam
    if len(g) > 256:  # float32 halves the O(n³) inverse; scores need no more precision
        g = g.astype(np.float32)
    try:
        return np.diag(np.linalg.inv(g)).astype(np.float64)
    except np.linalg.LinAlgError:
        return np.diag(np.linalg.pinv(g)).astype(np.float64)


class Activation:
    """Wanda-style (Sun et al. 2023): Σ |W| · ‖X_c‖₂ over the unit's consumer slices, with
    ‖X_c‖ the L2 norm of input channel c over every calibration sample and position."""

    name = "activation"
    needs_data = True

    def __init__(self, stats=None):
        self.stats = stats

    def score(self, group: Group, graph: Graph) -> np.ndarray:
        if self.stats is None or self.stats.data_free:
            raise UsageError("criterion 'activation' needs calibration data: pass --calib PATH "
                             "(a folder of .npy/.npz arrays or images)")
        total = np.zeros(group.units)
        found = False
        for space, param in group.params:
            if param.role != "consumer":
                continue
            ts = self.stats.get(space[0])
            if ts is None or ts.sumsq is None or len(ts.sumsq) != group.sizes[space]:
                continue
            w = graph.weights[param.weight]
            wn = (grouped_input_norms(w, param.grouped, 1) if param.grouped
                  else channel_norms(w, param.axis, 1))
            xn = ts.norms()
            mine, theirs = param.pairs if param.pairs is not None else (
                np.arange(len(wn)), np.arange(len(wn)))
            np.add.at(total, group.unit_of[space][mine], wn[theirs] * xn[mine])
            found = True
        return total if found else Magnitude(1).score(group, graph)


# name -> factory(seed, stats): every criterion, data-free or not, is built the same way
CRITERIA = {"l1": lambda seed, stats=None: Magnitude(1),
            "l2": lambda seed, stats=None: Magnitude(2),
            "bn_scale": lambda seed, stats=None: BNScale(),
            "random": lambda seed, stats=None: Random(seed),
            "lamp": lambda seed, stats=None: LAMP(),
            "fpgm": lambda seed, stats=None: FPGM(seed),
            "obs": lambda seed, stats=None: OBS(stats),
            "activation": lambda seed, stats=None: Activation(stats)}
DATA_CRITERIA = ("activation",)  # need --calib
STATS_CRITERIA = ("activation", "obs")  # use statistics when they are there


def make_criterion(name: str, seed: int = 0, stats=None) -> Criterion:
    """The criterion `name`; `stats` (calibration.Stats) feeds the data-aware ones."""
    if name not in CRITERIA:
        raise UsageError(f"unknown criterion '{name}': choose one of {', '.join(CRITERIA)}")
    return CRITERIA[name](seed, stats)
