"""Conv and ConvTranspose: producers of output channels, consumers of input channels.

Depthwise convs tie each input channel to its output channel(s). Grouped convs with as many
outputs as inputs (ResNeXt, RegNet) tie input block g to output block g and lose whole groups;
other grouped convs (ShuffleNet v1) keep the same number of channels in every group.
"""
from __future__ import annotations

import numpy as np

from ..coupling import (Constraint, Effect, Link, ParamSlice, Port, attr, frozen, rule,
                        set_attr)


def _out_seed(node, graph):
    return [(node.output[0], 1)] if graph.const(node.input[1]) is not None else []


# graph.options key: names of grouped convs kept to equal counts per group (analysis.py sets it
# when losing whole groups conflicts with a neighbour's constraint).
UNIFORM_GROUPED = "uniform_grouped_convs"


def whole_grouped_conv(node, graph) -> bool:
    """A spatial grouped conv with as many outputs as inputs (ResNeXt, RegNet): group g reads
    input block g and writes output block g, so it can lose whole groups."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return False
    w = graph.const(node.input[1]) if len(node.input) > 1 else None
    group = int(attr(node, "group", 1))
    if w is None or w.ndim < 3 or group <= 1:
        return False
    c_in, c_out = w.shape[1] * group, w.shape[0]
    return (c_in == c_out and c_in != group and int(np.prod(w.shape[2:])) > 1
            and node.name not in graph.options.get(UNIFORM_GROUPED, ()))


def _group_fixup(node, in_space, per_group: int = 1):
    """`group` follows the kept input channels: one per group (depthwise), or whole groups."""
    def fix(graph, keep):
        set_attr(node, "group", int(len(keep[in_space])) // per_group)
    return fix


@rule("Conv", seeds=_out_seed)
def conv(node, port: Port, graph) -> Effect:
    """Output channels own the filters and bias; input channels own weight columns; depthwise ties input to output channels; grouped convs lose whole groups (as many outputs as inputs) or keep every group equally sized."""
    w = graph.const(node.input[1])
    if w is None:
        return frozen(f"Conv '{node.name}' has a weight computed at run time")
    if port.axis != 1 or (port.side == "in" and port.index != 0):
        return frozen(f"Conv '{node.name}' mixes its spatial axes")
    group = int(attr(node, "group", 1))
    c_out, c_in = w.shape[0], w.shape[1] * group
    in_space, out_space = (node.input[0], 1), (node.output[0], 1)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    effect = Effect()
    if port.side == "out":
        effect.params.append(ParamSlice(node.input[1], 0, "producer"))
        if bias:
            effect.params.append(ParamSlice(bias, 0, "producer"))
    if group == 1:
        if port.side == "in":
            effect.params.append(ParamSlice(node.input[1], 1, "consumer"))
        return effect
    if group == c_in:  # depthwise, channel multiplier m = c_out / c_in
        m = c_out // c_in
        pairs = None if m == 1 else (np.repeat(np.arange(c_in), m), np.arange(c_out))
        if port.side == "in":
            effect.links.append(Link(out_space, pairs))
        else:
            effect.links.append(Link(in_space, None if pairs is None else (pairs[1], pairs[0])))
        effect.fixups[f"group:{node.name}"] = _group_fixup(node, in_space)
        return effect
    if whole_grouped_conv(node, graph):
        # ResNeXt, RegNet: spatial conv group g reads input block g and writes output block g.
        # Remove whole conv groups: the blocks keep their width (ONNX Runtime's blocked layout
        # wants 16-channel multiples per group) and the work falls with the group count.
        # (ShuffleNet v1's grouped 1x1 convs sit between channel shuffles, which move channels
        # across groups: tying their sides would freeze the whole stream; they stay uniform.)
        if port.side == "in":
            effect.links.append(Link(out_space, None))
        else:
            effect.links.append(Link(in_space, None))
        effect.constraints.append(Constraint(in_space if port.side == "in" else out_space,
                                             group, "whole"))
        effect.fixups[f"group:{node.name}"] = _group_fixup(node, in_space, c_in // group)
        return effect
    # Other grouped convs (ShuffleNet's 1x1s): each side keeps the same number of channels in
    # every group; the two sides are otherwise independent.
    effect.constraints.append(Constraint(in_space if port.side == "in" else out_space,
                                         group, "uniform"))
    if port.side == "in":
        effect.params.append(ParamSlice(node.input[1], 1, "consumer", grouped=group))
    return effect


@rule("ConvTranspose", seeds=_out_seed)
def conv_transpose(node, port: Port, graph) -> Effect:
    """Like Conv with the weight axes swapped; depthwise transposed convs tie input to output channels."""
    w = graph.const(node.input[1])
    if w is None:
        return frozen(f"ConvTranspose '{node.name}' has a weight computed at run time")
    if port.axis != 1 or (port.side == "in" and port.index != 0):
        return frozen(f"ConvTranspose '{node.name}' mixes its spatial axes")
    group = int(attr(node, "group", 1))
    c_in, c_out = w.shape[0], w.shape[1] * group
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    effect = Effect()
    if group == 1:
        if port.side == "in":
            effect.params.append(ParamSlice(node.input[1], 0, "consumer"))
        else:
            effect.params.append(ParamSlice(node.input[1], 1, "producer"))
            if bias:
                effect.params.append(ParamSlice(bias, 0, "producer"))
        return effect
    if group == c_in == c_out:  # depthwise transposed conv
        in_space, out_space = (node.input[0], 1), (node.output[0], 1)
        effect.links.append(Link(out_space if port.side == "in" else in_space))
        effect.params.append(ParamSlice(node.input[1], 0, "producer"))
        if bias:
            effect.params.append(ParamSlice(bias, 0, "producer"))
        effect.fixups[f"group:{node.name}"] = _group_fixup(node, in_space)
        return effect
    return frozen(f"grouped ConvTranspose '{node.name}' (group={group}) is not supported")
