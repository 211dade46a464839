"""Compensation: fold what removed channels contributed into the weights that stay.

Runs between plan and apply. For every consumer that reads a pruned group — the weights the
mask oracle zeroes: Conv (group 1), Gemm and MatMul slices with role "consumer", not grouped
convs — and whose input has statistics:

1. **Bias compensation.** A removed input channel r contributed W[:, r] · x_r to the output;
   its mean part, W[:, r] · E[x_r] (summed over the kernel taps of a conv), is added to the
   consumer's bias. The bias is created when there is none (Conv's third input, Gemm's C, an
   Add after a MatMul). With calibration data E[x_r] is measured; without, it comes from the
   folded BatchNorm statistics (calibration.data_free_stats: channel ~ N(β, γ²) pushed
   through the activation), which is exact for a channel whose BN has γ = 0 (a constant) and
   an approximation otherwise. Zero padding at a conv's border reads zeros, not the mean, so
   there the correction is approximate.
2. **Least-squares reconstruction** (calibration data only). The removed channels are
   predicted from the kept ones by ridge regression on the centered input statistics,
   x_R ≈ A (x_K − μ_K) + μ_R with A = Σ_RK (Σ_KK + λI)⁻¹, and folded in:
   W_K ← W_K + W_R A, bias ← bias + W_R (μ_R − A μ_K). With λ = 0 this is the optimal affine
   re-fit of the consumer's output (OBS-style: W_K' = W G[:, K] G[K, K]⁻¹ on the augmented,
   centered Gram), and a removed channel that is a linear combination of kept ones is undone
   exactly; λ = damp · mean diag(Σ_KK) keeps it stable, and shrinks toward the original
   weights rather than toward zero. Conv kernels are treated tap by tap with the channel
   statistics (taps taken as independent).

Statistics are those of the original model: when both a group and the group feeding it are
pruned, each consumer is compensated as if its own inputs were the only change.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import helper

from .analysis import Analysis, Group
from .calibration import Stats, consumer_refs
from .coupling import ParamSlice, Space, attr, set_attr
from .ir import Graph
from .policy import Plan
from .surgery import kept_channels

# λ relative to the kept channels' mean variance. 0.01 (GPTQ's choice) was among the best on
# bench/quality_cnn.py (0.01-0.1 within noise of each other; 1e-4 over-fits 64 calibration
# images at ratio 0.5). damp=0 is plain least squares.
DEFAULT_DAMP = 0.01


@dataclass
class Compensated:
    node: str
    weight: str
    removed: int  # input channels removed
    refit: bool  # least-squares reconstruction applied
    bias: str  # "updated", "created", "add inserted" or "none"

    def to_dict(self) -> dict:
        return asdict(self)


def compensate(graph: Graph, analysis: Analysis, plan: Plan, stats: Stats | None, *,
               damp: float = DEFAULT_DAMP, refit: bool = True) -> list[Compensated]:
    """Update consumer weights (and biases) in place for the channels `plan` removes."""
    if stats is None:
        return []
    groups = {g.key: g for g in analysis.groups}
    owner = {s: g for g in analysis.groups for s in g.spaces}
    done: list[Compensated] = []
    for gp in plan.groups:
        group = groups.get(gp.key)
        if group is None or not group.prunable or group.units != gp.size or not gp.keep or \
                max(gp.keep) >= group.units:
            continue  # apply_plan reports the mismatch
        keep = kept_channels(group, gp.keep)
        for ref in consumer_refs(graph, [group]):
            entry = _compensate_one(graph, ref, keep[ref.space], stats, owner, damp, refit)
            if entry is not None:
                done.append(entry)
    graph.reindex()
    return done


def _compensate_one(graph: Graph, ref, kept: np.ndarray, stats: Stats, owner, damp: float,
                    refit: bool) -> Compensated | None:
    param, node, space = ref.param, ref.node, ref.space
    if param.grouped or param.pairs is not None or node.domain not in ("", "ai.onnx"):
        return None
    w = graph.weights.get(param.weight)
    if w is None or not np.issubdtype(w.dtype, np.floating):
        return None
    if node.op_type == "Conv":
        if int(attr(node, "group", 1)) != 1 or param.axis != 1:
            return None
    elif node.op_type == "Gemm":
        if attr(node, "transA", 0):
            return None
    elif node.op_type == "MatMul":
        if w.ndim != 2 or param.axis != 0:
            return None
    else:
        return None
    if len(graph.consumers(param.weight)) != 1:
        return None  # a shared weight would change for its other reader too
    ts = stats.get(space[0])
    size = w.shape[param.axis]
    if ts is None or len(ts.mean) != size:
        return None
    removed = np.setdiff1d(np.arange(size), kept)
    if removed.size == 0:
        return None
    rows = np.moveaxis(w, param.axis, 0).astype(np.float64)  # [C, outputs (, taps)]
    rest = rows.shape[1:]
    rows = rows.reshape(size, -1)
    mean = np.asarray(ts.mean, dtype=np.float64)
    cov = None if (stats.data_free or not refit) else ts.covariance()
    did_refit = False
    if cov is not None and kept.size:
        a = _regression(cov, kept, removed, damp)  # [R, K]
        rows[kept] += a.T @ rows[removed]
        shift = mean[removed] - a @ mean[kept]
        did_refit = True
    else:
        shift = mean[removed]
    contribution = (shift @ rows[removed]).reshape(rest)  # [outputs (, taps)]
    if node.op_type == "Conv":
        delta = contribution.reshape(contribution.shape[0], -1).sum(axis=1)
    else:
        delta = contribution.reshape(-1) * float(attr(node, "alpha", 1.0) if
                                                node.op_type == "Gemm" else 1.0)
    rows[removed] = 0.0  # the mask oracle zeroes them; surgery removes them
    new_w = np.moveaxis(rows.reshape((size,) + rest), 0, param.axis)
    graph.weights[param.weight] = np.ascontiguousarray(new_w.astype(w.dtype))
    bias = "none"
    if np.any(delta != 0):
        bias = _add_to_bias(graph, node, delta, owner)
    return Compensated(node.name or node.output[0], param.weight, int(removed.size),
                       did_refit, bias)


def _regression(cov: np.ndarray, kept: np.ndarray, removed: np.ndarray,
                damp: float) -> np.ndarray:
    """Ridge coefficients A = Σ_RK (Σ_KK + λI)⁻¹ predicting the removed channels from the
    kept ones, λ = damp · mean diag(Σ_KK) (plus a tiny floor so a dead kept channel cannot
    make the system singular)."""
    ckk = cov[np.ix_(kept, kept)]
    crk = cov[np.ix_(removed, kept)]
    scale = float(np.mean(np.diag(ckk))) if kept.size else 0.0
    lam = max(damp, 1e-10) * scale + 1e-30
    return np.linalg.solve(ckk + lam * np.eye(kept.size), crk.T).T


def _register(owner: dict[Space, Group], space: Space, name: str, role: str) -> None:
    """Slice a weight we created with the channels of the group it now belongs to."""
    group = owner.get(space)
    if group is not None:
        group.params.append((space, ParamSlice(name, 0, role)))


def _add_to_bias(graph: Graph, node: onnx.NodeProto, delta: np.ndarray, owner) -> str:
    dtype = graph.weights[node.input[1]].dtype
    out_space = (node.output[0], 1)
    if node.op_type == "Conv":
        if len(node.input) > 2 and node.input[2]:
            b = graph.const(node.input[2])
            if b is None or b.size != delta.size:
                return "none"
            ok = _set_own(graph, node, 2, (b.reshape(-1) + delta).astype(b.dtype).reshape(b.shape))
            return "updated" if ok else "none"
        name = graph.unique_name(f"{node.input[1]}_compensation_bias")
        graph.weights[name] = delta.astype(dtype)
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        _register(owner, out_space, name, "producer")
        return "created"
    if node.op_type == "Gemm":
        beta = float(attr(node, "beta", 1.0))
        if len(node.input) > 2 and node.input[2]:
            c = graph.const(node.input[2])
            if c is None:
                return "none"
            c = c.astype(np.float64) * beta
            if c.size in (0, 1):
                new = np.full(delta.shape, float(c.reshape(-1)[0]) if c.size else 0.0) + delta
                if not _set_own(graph, node, 2, new.astype(dtype)):
                    return "none"
                _register(owner, out_space, node.input[2], "producer")
            elif c.shape[-1] == delta.size:
                if not _set_own(graph, node, 2, (c + delta).astype(dtype)):
                    return "none"
            else:
                return "none"
            set_attr(node, "beta", 1.0)
            return "updated"
        name = graph.unique_name(f"{node.input[1]}_compensation_bias")
        graph.weights[name] = delta.astype(dtype)
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        set_attr(node, "beta", 1.0)
        _register(owner, out_space, name, "producer")
        return "created"
    # MatMul: an Add of a constant right after it is its bias
    out = node.output[0]
    readers = graph.consumers(out)
    if len(readers) == 1 and readers[0].op_type == "Add" and out not in graph.output_names:
        add = readers[0]
        index = 1 if add.input[0] == out else 0
        c = graph.const(add.input[index]) if len(add.input) == 2 else None
        if c is not None and c.size == delta.size and c.shape[-1] == delta.size and \
                len(graph.consumers(add.input[index])) == 1:
            if _set_own(graph, add, index, (c.astype(np.float64) + delta.reshape(c.shape)
                                            ).astype(c.dtype)):
                return "updated"
    rank = graph.rank(out)
    inner = graph.unique_name(f"{out}_before_compensation")
    name = graph.unique_name(f"{node.input[1]}_compensation_bias")
    graph.weights[name] = delta.astype(dtype)
    node.output[0] = inner
    add = helper.make_node("Add", [inner, name], [out],
                           name=graph.unique_name(f"{node.name or 'MatMul'}_compensation"))
    graph.nodes.insert(graph.nodes.index(node) + 1, add)
    if out in graph.shapes:
        graph.shapes[inner] = graph.shapes[out]
    if out in graph.dtypes:
        graph.dtypes[inner] = graph.dtypes[out]
    graph.reindex()
    if rank:
        _register(owner, (out, rank - 1), name, "param")
    return "add inserted"


def _set_own(graph: Graph, node: onnx.NodeProto, index: int, value: np.ndarray) -> bool:
    """Write a new value for input `index` of `node`; not when another node reads it too."""
    name = node.input[index]
    if len(graph.consumers(name)) > 1 or name in graph.output_names:
        return False
    graph.weights[name] = value
    return True


def summarize(entries: list[Compensated]) -> str:
    if not entries:
        return "nothing compensated"
    refits = sum(e.refit for e in entries)
    biases: dict[str, int] = {}
    for e in entries:
        if e.bias != "none":
            biases[e.bias] = biases.get(e.bias, 0) + 1
    parts = [f"{len(entries)} consumer(s)"]
    if refits:
        parts.append(f"{refits} least-squares re-fit(s)")
    if biases:
        parts.append("bias " + ", ".join(f"{k} x{v}" for k, v in sorted(biases.items())))
    return "; ".join(parts)
