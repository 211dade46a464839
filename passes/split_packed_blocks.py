"""SplitPackedBlocks: a packed projection taken apart by Reshape and Gather becomes one Split.

torch's nn.MultiheadAttention (torchvision's ViT, nn.TransformerEncoder) projects Q, K and V
with one [E, 3E] weight and separates them as ``unflatten(-1, (3, E)).unsqueeze(0)
.transpose(0, -2).squeeze(-2)`` followed by ``[0]``, ``[1]``, ``[2]``: in ONNX a Reshape
[..., 3E] -> [..., 3, E], Unsqueeze / Transpose / Squeeze moving the block axis to the front,
and a Gather per block. Each Gather output is simply x[..., i*E:(i+1)*E], i.e. one output of
Split(x, axis=-1), the form in which packed QKV reaches the coupling rules from other exporters
(GPT-2's c_attn). Gather on a reshaped channel axis has no coupling rule of its own, so without
this rewrite every head of such a model stays frozen.

The rewrite tracks every axis through the chain and applies only where the Gathers pick whole
blocks on the block axis and the chain neither left an inserted axis nor removed one of x's;
a block with several inner axes (Swin's heads x head size) is reshaped into them and
transposed into the order the picks had. The intermediate tensors must have no other reader,
and the block count and sizes must be static (not stand-ins).
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from graphprune.coupling import attr
from graphprune.ir import Graph

from .base import add_weight, drop_unused_weights, is_default_domain

_BLOCK, _CHANNEL, _UNIT = "block", "channel", "unit"  # axis labels; leading axes are ints


class SplitPackedBlocks:
    name = "split_packed_blocks"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            if node.op_type == "Reshape" and is_default_domain(node):
                match = _match(graph, node)
                if match is not None:
                    _rewrite(graph, node, *match)
                    changed = True
        return changed


def _match(graph: Graph, reshape: onnx.NodeProto):
    """(chain nodes, gathers, block count, block dims, axis order after a Gather), or None
    where the pattern does not hold."""
    x, y = reshape.input[0], reshape.output[0]
    sx, sy = graph.shape(x), graph.shape(y)
    if sx is None or sy is None or len(sx) < 1 or len(sy) <= len(sx):
        return None
    lead = len(sx) - 1
    blocks, inner = sy[lead], list(sy[lead + 1:])
    if (list(sy[:lead]) != list(sx[:lead]) or None in (blocks, *inner) or blocks < 2
            or blocks * math.prod(inner) != sx[-1]
            or graph.dynamic.get(y, frozenset()) & set(range(lead, len(sy)))):
        return None
    labels: list = [*range(lead), _BLOCK, *((_CHANNEL, j) for j in range(len(inner)))]
    chain, tensor = [], y
    while True:
        if tensor in graph.output_names:
            return None
        readers = graph.consumers(tensor)
        if readers and all(r.op_type == "Gather" and is_default_domain(r) for r in readers):
            break
        if len(readers) != 1 or not is_default_domain(readers[0]):
            return None
        labels = _follow(graph, readers[0], labels)
        if labels is None:
            return None
        chain.append(readers[0])
        tensor = readers[0].output[0]
    axis = labels.index(_BLOCK)
    rest = [label for label in labels if label != _BLOCK]
    canonical = [*range(lead), *((_CHANNEL, j) for j in range(len(inner)))]
    if sorted(map(str, rest)) != sorted(map(str, canonical)):
        return None  # an axis the chain inserted is left, or one of x's was squeezed
    order = [canonical.index(label) for label in rest]
    picked = set()
    for gather in readers:
        index = graph.const(gather.input[1])
        if (int(attr(gather, "axis", 0)) % len(labels) != axis or index is None
                or index.ndim != 0 or not -blocks <= int(index) < blocks):
            return None
        index = int(index) % blocks
        if index in picked and gather.output[0] in graph.output_names:
            return None  # a second pick of a block would become an alias of the first
        picked.add(index)
    return chain, readers, blocks, inner, order


def _follow(graph: Graph, node: onnx.NodeProto, labels: list) -> list | None:
    """The axis labels after a shape-only node, or None for any other node."""
    rank = len(labels)
    if node.op_type == "Transpose":
        perm = attr(node, "perm", list(range(rank))[::-1])
        return [labels[int(p)] for p in perm]
    if node.op_type not in ("Unsqueeze", "Squeeze"):
        return None
    axes = _axes(graph, node)
    if axes is None:
        return None
    if node.op_type == "Unsqueeze":
        out = list(labels)
        for a in sorted(int(a) % (rank + len(axes)) for a in axes):
            out.insert(a, _UNIT)
        return out
    drop = {int(a) % rank for a in axes}  # a squeezed axis of x is caught by _match's check
    return [label for i, label in enumerate(labels) if i not in drop]


def _axes(graph: Graph, node: onnx.NodeProto) -> list[int] | None:
    """Unsqueeze / Squeeze axes: the attribute before opset 13, the constant input after."""
    axes = attr(node, "axes")
    if axes is not None:
        return list(axes)
    if len(node.input) > 1 and node.input[1]:
        value = graph.const(node.input[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return None


def _rewrite(graph: Graph, reshape: onnx.NodeProto, chain, gathers, blocks: int,
             inner: list[int], order: list[int]) -> None:
    """Split x into the blocks; a block with several inner axes is reshaped into them (the
    leading axes copied by 0 entries) and transposed into the order the Gathers gave."""
    outputs: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for gather in gathers:
        index = int(graph.const(gather.input[1])) % blocks
        if index in outputs:
            aliases[gather.output[0]] = outputs[index]
        else:
            outputs[index] = gather.output[0]
    base = reshape.name or "packed"
    x = reshape.input[0]
    lead = len(graph.shape(x)) - 1
    plain = len(inner) == 1 and order == sorted(order)
    names = [outputs[i] if plain and i in outputs else graph.unique_name(f"{base}_block{i}")
             for i in range(blocks)]
    split_name = graph.unique_name(f"{base}_split")
    sizes = [math.prod(inner)] * blocks
    if graph.opset >= 13:
        sizes_name = graph.unique_name(f"{base}_split_sizes")
        add_weight(graph, sizes_name, np.array(sizes, np.int64))
        new = [helper.make_node("Split", [x, sizes_name], names, axis=lead, name=split_name)]
    else:
        new = [helper.make_node("Split", [x], names, axis=lead, split=sizes, name=split_name)]
    if not plain:
        if len(inner) > 1:
            target = graph.unique_name(f"{base}_block_shape")
            add_weight(graph, target, np.array([0] * lead + list(inner), np.int64))
        transposed = order != sorted(order)
        for index, final in outputs.items():
            shaped = names[index]
            if len(inner) > 1:
                shaped = graph.unique_name(f"{names[index]}_shaped") if transposed else final
                new.append(helper.make_node("Reshape", [names[index], target], [shaped],
                                            name=graph.unique_name(f"{base}_block{index}_reshape")))
            if transposed:
                new.append(helper.make_node("Transpose", [shaped], [final], perm=order,
                                            name=graph.unique_name(f"{base}_block{index}_transpose")))
    removed = {id(n) for n in (reshape, *chain, *gathers)}
    unused = [i for n in (reshape, *chain, *gathers) for i in n.input[1:] if i]
    kept = []
    for n in graph.nodes:
        if n is reshape:
            kept.extend(new)
        elif id(n) not in removed:
            kept.append(n)
    graph.nodes = kept
    graph.reindex()
    for old, name in aliases.items():
        graph.replace_uses(old, name)
    if aliases:
        graph.reindex()
    drop_unused_weights(graph, unused)
