"""Element-wise indexing along one axis (ScatterElements, GatherElements): the other axes keep
their coordinates, so channels on them pass through; the indexed axis freezes."""
from __future__ import annotations

from ..coupling import Effect, Link, Port, attr, frozen, normalize_axis, rule


def _same_dims(graph, tensors, axis: int) -> bool:
    dims = set()
    for t in tensors:
        shape = graph.shape(t)
        if shape is None or axis >= len(shape) or shape[axis] is None:
            return False
        dims.add(shape[axis])
    return len(dims) == 1


@rule("ScatterElements", "GatherElements")
def elements_along_axis(node, port: Port, graph) -> Effect:
    """Scatters or gathers element by element along `axis` (a detector's multi-level region features merged into one tensor): data, indices, updates and output share every other axis, whose channels pass through when the sizes agree; the indexed axis freezes."""
    rank = graph.rank(node.input[0])
    if rank is None:
        return frozen(f"{node.op_type} '{node.name}' input of unknown rank")
    axis = normalize_axis(int(attr(node, "axis", 0)), rank)
    if port.axis == axis:
        return frozen(f"{node.op_type} '{node.name}' indexes axis {axis}")
    tensors = [t for t in list(node.input[:3]) + [node.output[0]] if t]
    # Indices (and updates) may be smaller than data on the other axes: then channels of data
    # beyond them are not addressed the same way, so only equal sizes pass through. By the
    # spec indices has the shape of updates (Scatter) or of the output (Gather), so those two
    # are compared with data (a run-time Expand often leaves the indices' shape unknown).
    sized = node.input[2] if node.op_type == "ScatterElements" else node.output[0]
    if not _same_dims(graph, [node.input[0], sized], port.axis):
        return frozen(f"{node.op_type} '{node.name}' operands differ in size on axis "
                      f"{port.axis}")
    me = ((node.input if port.side == "in" else node.output)[port.index], port.axis)
    return Effect(links=[Link((t, port.axis)) for t in tensors if (t, port.axis) != me])
