"""Normalizations: per-channel ones pass channels through; those across channels freeze them.

GroupNormalization computes statistics per group, so it stays exact only when whole groups go.
"""
from __future__ import annotations

import numpy as np

from ..coupling import (Constraint, Effect, ParamSlice, Port, attr, frozen,
                        identity_everywhere, normalize_axis, rule, set_attr)


@rule("BatchNormalization")
def batch_norm(node, port: Port, graph) -> Effect:
    """Per-channel statistics: channels pass through and slice scale, bias, mean and variance."""
    if (port.side == "in" and port.index > 0) or (port.side == "out" and port.index > 0):
        return frozen(f"BatchNormalization '{node.name}' in training form")
    effect = identity_everywhere(node, port, graph)
    if port.axis == 1:
        effect.params += [ParamSlice(p, 0, "param") for p in node.input[1:5]
                          if graph.const(p) is not None]
        if len(effect.params) != 4:
            return frozen(f"BatchNormalization '{node.name}' has parameters computed at run time")
    return effect


@rule("InstanceNormalization")
def instance_norm(node, port: Port, graph) -> Effect:
    """Per-channel normalisation over space: channels pass through with their scale and bias."""
    if port.axis != 1 or (port.side == "in" and port.index > 0):
        return frozen(f"InstanceNormalization '{node.name}' normalizes over spatial axes")
    effect = identity_everywhere(node, port, graph)
    effect.params += [ParamSlice(p, 0, "param") for p in node.input[1:3]]
    return effect


@rule("GroupNormalization")
def group_norm(node, port: Port, graph) -> Effect:
    """Statistics per group of channels: prunable only by whole groups; num_groups is rewritten."""
    if port.axis != 1 or (port.side == "in" and port.index > 0):
        return frozen(f"GroupNormalization '{node.name}' normalizes over spatial axes")
    groups = int(attr(node, "num_groups"))
    channels = graph.shape(node.input[0])[1]
    per_group = channels // groups
    effect = identity_everywhere(node, port, graph)
    effect.constraints.append(Constraint((node.input[0], 1), groups, "whole"))
    for p in node.input[1:3]:
        size = graph.const(p).shape[0]
        # opset 18 stores one scale per group, opset 21 one per channel
        pairs = None if size == channels else (np.arange(channels), np.arange(channels) // per_group)
        effect.params.append(ParamSlice(p, 0, "param", pairs=pairs))

    def fix(graph, keep, node=node, space=(node.input[0], 1)):
        set_attr(node, "num_groups", int(len(keep[space]) // per_group))

    effect.fixups[f"num_groups:{node.name}"] = fix
    return effect


@rule("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")
def layer_norm(node, port: Port, graph) -> Effect:
    """Normalises over the trailing axes: those freeze, leading axes pass through. With --prune-hidden the last axis is pruned with its scale and bias (approximate: the statistics change)."""
    rank = graph.rank(node.input[0])
    first = normalize_axis(int(attr(node, "axis", -1)), rank)
    if (port.side == "in" and port.index > 0) or port.index > 0:
        return frozen(f"{node.op_type} '{node.name}' parameter or statistics port")
    if port.axis >= first:
        if not (graph.options.get("prune_hidden") and first == rank - 1):
            return frozen(f"{node.op_type} '{node.name}' normalizes over axis {port.axis}")
        return approximate_norm(node, port, graph, node.input[1:3])
    return identity_everywhere(node, port, graph)


def approximate_norm(node, port: Port, graph, params) -> Effect:
    """A norm over the pruned axis: channels pass through, its per-channel parameters are
    sliced, and the group is marked approximate (mean and variance are taken over fewer
    channels afterwards)."""
    effect = identity_everywhere(node, port, graph)
    effect.params += [ParamSlice(p, 0, "param") for p in params
                      if p and graph.const(p) is not None and graph.const(p).ndim == 1]
    effect.tags.add("approximate")
    return effect


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(node, port: Port, graph) -> Effect:
    """Normalises over one axis (all trailing ones before opset 13): that freezes, others pass through."""
    rank = graph.rank(node.input[0])
    if graph.opset >= 13:
        over = port.axis == normalize_axis(int(attr(node, "axis", -1)), rank)
    else:  # older opsets flatten every axis from `axis` on into the softmax
        over = port.axis >= normalize_axis(int(attr(node, "axis", 1)), rank)
    if over:
        return frozen(f"{node.op_type} '{node.name}' normalizes over axis {port.axis}")
    return identity_everywhere(node, port, graph)
