"""Pooling and reductions over spatial axes keep channels; reducing over channels freezes."""
from __future__ import annotations

from ..coupling import (Effect, Link, Port, attr, axes_operand, frozen, identity_everywhere,
                        rule)


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def pool(node, port: Port, graph) -> Effect:
    """Pools over space: channels and batch pass through."""
    if port.axis > 1 or port.index > 0:
        return frozen(f"{node.op_type} '{node.name}' pools over axis {port.axis}")
    return identity_everywhere(node, port, graph)


@rule("RoiAlign", "MaxRoiPool")
def roi_pool(node, port: Port, graph) -> Effect:
    """Pools regions of interest of a feature map (detectors' box heads): channels pass through; output rows are regions, not images, so the other axes freeze."""
    if port.index > 0:
        return frozen(f"{node.op_type} '{node.name}' region input")
    if port.axis != 1:
        return frozen(f"{node.op_type} '{node.name}' pools over axis {port.axis}")
    return identity_everywhere(node, port, graph)


def _reduced_axes(node, graph, rank):
    axes = axes_operand(node, graph, rank)
    if axes == [] and not attr(node, "noop_with_empty_axes", 0):
        return list(range(rank))  # no axes: reduce over everything
    return axes


@rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceProd",
      "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum")
def reduce(node, port: Port, graph) -> Effect:
    """Reduces over constant axes: reduced axes freeze, others pass through (renumbered without keepdims)."""
    rank = graph.rank(node.input[0])
    axes = _reduced_axes(node, graph, rank)
    if axes is None or port.index > 0:
        return frozen(f"{node.op_type} '{node.name}' reduces over axes computed at run time")
    keep = int(attr(node, "keepdims", 1))
    kept_axes = [a for a in range(rank) if a not in axes]
    if port.side == "in":
        if port.axis in axes:
            if graph.options.get("prune_hidden") and port.axis == rank - 1 and \
                    node.op_type in ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2"):
                return Effect(tags={"approximate"})  # an RMS/mean over the pruned axis
            return frozen(f"{node.op_type} '{node.name}' reduces over axis {port.axis}")
        other = port.axis if keep else kept_axes.index(port.axis)
        return Effect(links=[Link((node.output[0], other))])
    other = port.axis if keep else kept_axes[port.axis]
    if other in axes:
        return frozen(f"{node.op_type} '{node.name}' output axis {port.axis} was reduced")
    return Effect(links=[Link((node.input[0], other))])
