"""The vocabulary of coupling rules and the table they are registered in.

A *channel space* is one axis of one tensor, `(tensor, axis)`. A coupling rule answers one
question for one op type: "channel c on this axis of this port of the node — which channels of
which other tensors, and which weight entries, stand or fall with it?" The dependency analysis
asks that question at every port a channel space touches and joins the answers into groups.
Rules never modify the graph: they describe links, weight slices, constraints and the fix-ups
that surgery must run on attributes and shape constants.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import onnx

from .ir import Graph

Space = tuple[str, int]  # (tensor name, non-negative axis)


@dataclass(frozen=True)
class Port:
    """Where a channel space meets a node: input or output `index`, on `axis` of that tensor."""

    side: Literal["in", "out"]
    index: int
    axis: int


@dataclass
class Link:
    """Channels of the queried space coupled to channels of `other`.

    `pairs` is `(mine, theirs)`: equal-length index arrays; `None` means identity (same size).
    """

    other: Space
    pairs: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class ParamSlice:
    """Entries of weight `weight` along `axis` that belong to channels of a space.

    role: "producer" (makes the channel: conv output filters, their bias), "consumer" (reads the
    channel: conv input slices, Gemm columns), or "param" (per-channel parameters on the path:
    norm scales, per-channel constants of Mul/Add). The mask oracle zeroes producer and consumer
    entries.
    `pairs` maps space channels to weight indices when it is not the identity.
    `grouped` marks a grouped-conv weight whose axis 1 holds per-group local input indices.
    """

    weight: str
    axis: int
    role: Literal["producer", "consumer", "param"]
    pairs: tuple[np.ndarray, np.ndarray] | None = None
    grouped: int = 0  # number of conv groups when axis 1 is local to a group


@dataclass
class Constraint:
    """Channels of `space` come in `blocks` equal contiguous blocks.

    mode "uniform": every block keeps the same number of channels (grouped conv);
    mode "whole": blocks are kept or removed entirely (GroupNorm groups, attention heads).
    """

    space: Space
    blocks: int
    mode: Literal["uniform", "whole"]


# A fix-up runs after weights are sliced: it receives the graph and the kept channel indices of
# every space in the group, and rewrites attributes or shape constants of one node.
Fixup = Callable[[Graph, dict[Space, np.ndarray]], None]


@dataclass
class Effect:
    """A rule's answer for one port."""

    links: list[Link] = field(default_factory=list)
    params: list[ParamSlice] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    fixups: dict[str, Fixup] = field(default_factory=dict)  # keyed so repeats collapse
    frozen: str | None = None
    tags: set[str] = field(default_factory=set)  # e.g. "heads": the group prunes whole heads


def frozen(reason: str) -> Effect:
    return Effect(frozen=reason)


RuleFn = Callable[[onnx.NodeProto, Port, Graph], Effect]
SeedFn = Callable[[onnx.NodeProto, Graph], list[Space]]


@dataclass(frozen=True)
class Rule:
    op_type: str
    couple: RuleFn
    seeds: SeedFn | None = None  # channel spaces this op creates (its output channels)


RULES: dict[str, Rule] = {}  # "Op" for the default domain, "domain:Op" for others


def rule(*op_types: str, seeds: SeedFn | None = None, domain: str = ""):
    """Register a coupling rule for op types of one domain (default: ONNX's own)."""

    def register(fn: RuleFn) -> RuleFn:
        for op in op_types:
            key = f"{domain}:{op}" if domain else op
            if key in RULES:
                raise ValueError(f"duplicate coupling rule for {key}")
            RULES[key] = Rule(key, fn, seeds)
        return fn

    return register


def rule_for(node: onnx.NodeProto) -> Rule | None:
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return RULES.get(f"{domain}:{node.op_type}" if domain else node.op_type)


# ---------------------------------------------------------------- helpers shared by rules
def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def tensor_at(node: onnx.NodeProto, port: Port) -> str:
    return (node.input if port.side == "in" else node.output)[port.index]


def identity_everywhere(node: onnx.NodeProto, port: Port, graph: Graph,
                        inputs: tuple[int, ...] = (0,)) -> Effect:
    """Same axis on the data inputs and the first output: elementwise unary ops and kin."""
    spaces = [(node.input[i], port.axis) for i in inputs if i < len(node.input)]
    spaces.append((node.output[0], port.axis))
    me = (tensor_at(node, port), port.axis)
    return Effect(links=[Link(s) for s in spaces if s != me])


def set_constant(graph: Graph, node: onnx.NodeProto, input_index: int, value: np.ndarray) -> None:
    """Give one node its own copy of a rewritten constant (exports share shape constants)."""
    name = graph.unique_name(f"{node.name or node.op_type}_{input_index}_pruned")
    graph.weights[name] = value
    node.input[input_index] = name


def axes_operand(node: onnx.NodeProto, graph: Graph, rank: int) -> list[int] | None:
    """The `axes` of Squeeze/Unsqueeze/Reduce*: an attribute in older opsets, input 1 in newer
    ones. Sorted and non-negative; [] when absent; None when computed at run time."""
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = graph.const(node.input[1])
        if value is None:
            return None
        axes = value.tolist()
    return sorted(normalize_axis(int(a), rank) for a in (axes or []))


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis
