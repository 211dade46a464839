"""Elementwise ops: channels pass straight through, broadcast operands are coupled or sliced.

A residual Add couples the channels of both branches; an SE-block Mul couples the gate's
channels to the feature map's; a per-channel constant (bias, PRelu slope) is sliced with them.
"""
from __future__ import annotations

from ..coupling import (Effect, Link, ParamSlice, Port, attr, frozen, identity_everywhere,
                        normalize_axis, rule)

UNARY = (
    "Relu", "LeakyRelu", "PRelu_", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu",
    "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Abs", "Neg",
    "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
    "Cast", "Not", "Identity", "Dropout", "IsNaN", "IsInf", "Shrink",
)
BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu",
             "Clip", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or",
             "Xor", "BitShift", "Mod")


@rule(*[op for op in UNARY if not op.endswith("_")])
def unary(node, port: Port, graph) -> Effect:
    """Elementwise: every axis passes straight through."""
    if port.side == "out" and port.index > 0:
        return frozen(f"{node.op_type} '{node.name}' secondary output")
    return identity_everywhere(node, port, graph)


@rule(*BROADCAST)
def broadcast(node, port: Port, graph) -> Effect:
    """Broadcasting elementwise: operands of the same size on the axis are coupled (residual Add, SE Mul); per-channel constants are sliced; size-1 operands broadcast."""
    if port.side == "out" and port.index > 0:
        return frozen(f"{node.op_type} '{node.name}' secondary output")
    out = node.output[0]
    out_shape = graph.shape(out)
    if out_shape is None:
        return frozen(f"{node.op_type} '{node.name}' has an unknown output shape")
    rank = len(out_shape)
    me = node.input[port.index] if port.side == "in" else out
    my_rank = graph.rank(me)
    out_axis = port.axis + rank - my_rank
    size = out_shape[out_axis]
    effect = Effect()
    if port.side == "in":
        effect.links.append(Link((out, out_axis)))
    for i, name in enumerate(node.input):
        if not name or (port.side == "in" and i == port.index):
            continue
        shape = graph.shape(name)
        if shape is None:
            return frozen(f"{node.op_type} '{node.name}' input '{name}' has an unknown shape")
        axis = out_axis - (rank - len(shape))
        if axis < 0 or shape[axis] == 1:
            continue  # broadcast along the channel axis: nothing to slice
        if shape[axis] != size:
            return frozen(f"{node.op_type} '{node.name}' broadcasts '{name}' oddly on axis {axis}")
        if graph.const(name) is not None:
            effect.params.append(ParamSlice(name, axis, "param"))
        else:
            effect.links.append(Link((name, axis)))
    return effect


@rule("CastLike")
def cast_like(node, port: Port, graph) -> Effect:
    """Casts input 0 to input 1's type: channels flow from input 0; input 1 gives only a type."""
    if port.side == "in" and port.index == 1:
        return Effect()
    return identity_everywhere(node, port, graph)


@rule("QuantizeLinear", "DequantizeLinear")
def quantize_linear(node, port: Port, graph) -> Effect:
    """A QDQ model's activation (de)quantization: channels pass through; a per-channel scale and zero point on the channel axis are sliced with them."""
    if port.index > 0:
        return frozen(f"{node.op_type} '{node.name}' scale or zero point")
    scale = graph.const(node.input[1]) if len(node.input) > 1 else None
    if scale is None or attr(node, "block_size"):
        return frozen(f"{node.op_type} '{node.name}' scale computed at run time or blocked")
    effect = identity_everywhere(node, port, graph)
    if scale.size > 1:  # per axis
        rank = graph.rank(node.input[0])
        axis = normalize_axis(int(attr(node, "axis", 1)), rank) if rank is not None else None
        if axis is None:
            return frozen(f"{node.op_type} '{node.name}' input of unknown rank")
        if axis == port.axis:
            effect.params += [ParamSlice(name, 0, "param") for name in node.input[1:3] if name]
    return effect
