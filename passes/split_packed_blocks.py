"""SplitPackedBlocks: a packed projection taken apart by Reshape and picks becomes one Split.

torch's nn.MultiheadAttention (torchvision's ViT, nn.TransformerEncoder) projects Q, K and V
with one [E, 3E] weight and separates them as ``unflatten(-1, (3, E)).unsqueeze(0)
.transpose(0, -2).squeeze(-2)`` followed by ``[0]``, ``[1]``, ``[2]``: in ONNX a Reshape
[..., 3E] -> [..., 3, E], Unsqueeze / Transpose / Squeeze moving the block axis to the front,
and a Gather per block. Each Gather output is simply x[..., i*E:(i+1)*E], i.e. one output of
Split(x, axis=-1), the form in which packed QKV reaches the coupling rules from other exporters
(GPT-2's c_attn). Gather on a reshaped channel axis has no coupling rule of its own, so without
this rewrite every head of such a model stays frozen. timm's attention does the same with
``reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)``: Split (legacy export) or one Slice
per block (dynamo) on the block axis, each followed by a Squeeze of it.

The rewrite tracks every axis through the chain and applies only where the picks take whole
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
_PICKERS = ("Gather", "Split", "Slice")  # ops that may take blocks off the block axis


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
    """(chain nodes, picks, block count, block dims, axis order after a pick), or None where
    the pattern does not hold."""
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
        if readers and all(r.op_type in _PICKERS and is_default_domain(r) for r in readers):
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
    picks = _picks(graph, readers, axis, len(labels), blocks)
    if picks is None:
        return None
    seen = set()
    for index, output, _ in picks:
        if index in seen and output in graph.output_names:
            return None  # a second pick of a block would become an alias of the first
        seen.add(index)
    return chain, picks, blocks, inner, order


def _picks(graph: Graph, readers, axis: int, rank: int, blocks: int):
    """[(block, tensor that holds it without the block axis, nodes that made it)] for the
    readers of the block axis: Gather of one index (nn.MultiheadAttention, Swin), or Split into
    single blocks / a Slice of one block, then Squeeze of that axis (``unbind``, as timm's
    attention separates Q, K, V); None where a reader is anything else."""
    picks = []
    for reader in readers:
        if reader.op_type == "Gather":
            index = graph.const(reader.input[1])
            if (int(attr(reader, "axis", 0)) % rank != axis or index is None or index.ndim != 0
                    or not -blocks <= int(index) < blocks):
                return None
            picks.append((int(index) % blocks, reader.output[0], [reader]))
            continue
        if reader.op_type == "Split":
            if (int(attr(reader, "axis", 0)) % rank != axis or len(reader.output) != blocks
                    or any(size != 1 for size in _split_sizes(graph, reader, blocks))):
                return None
        elif _slice_block(graph, reader, axis, rank, blocks) is None:
            return None
        for k, out in enumerate(reader.output):
            users = graph.consumers(out)
            if not users and reader.op_type == "Split" and out not in graph.output_names:
                continue  # a block nobody reads
            squeeze = users[0] if len(users) == 1 else None
            if (squeeze is None or squeeze.op_type != "Squeeze" or out in graph.output_names
                    or [int(a) % rank for a in (_axes(graph, squeeze) or [])] != [axis]):
                return None
            index = k if reader.op_type == "Split" else _slice_block(graph, reader, axis, rank,
                                                                       blocks)
            picks.append((index, squeeze.output[0], [reader, squeeze]))
    return picks


def _split_sizes(graph: Graph, split: onnx.NodeProto, blocks: int) -> list[int]:
    """Split's sizes: the input after opset 13, the attribute before, equal parts without."""
    if len(split.input) > 1 and split.input[1]:
        sizes = graph.const(split.input[1])
        return [-1] if sizes is None else [int(v) for v in sizes.reshape(-1)]
    return list(attr(split, "split", [1] * blocks))


def _slice_block(graph: Graph, node: onnx.NodeProto, axis: int, rank: int,
                 blocks: int) -> int | None:
    """The block a Slice keeps where it keeps exactly one (start i, end i + 1, step 1, on the
    block axis), else None."""
    values = [graph.const(name) if name else None for name in list(node.input[1:5])]
    values += [None] * (4 - len(values))
    starts, ends, axes, steps = values
    if starts is None or ends is None or starts.size != 1 or ends.size != 1:
        return None
    if (axes is not None and int(axes.reshape(-1)[0]) % rank != axis) or (
            axes is None and axis != 0) or (steps is not None and int(steps.reshape(-1)[0]) != 1):
        return None
    start = int(starts.reshape(-1)[0])
    start = start + blocks if start < 0 else start
    end = min(int(ends.reshape(-1)[0]), blocks)
    end = end + blocks if end < 0 else end
    return start if 0 <= start < blocks and end == start + 1 else None


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


def _rewrite(graph: Graph, reshape: onnx.NodeProto, chain, picks, blocks: int,
             inner: list[int], order: list[int]) -> None:
    """Split x into the blocks; a block with several inner axes is reshaped into them (the
    leading axes copied by 0 entries) and transposed into the order the Gathers gave."""
    outputs: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for index, output, _ in picks:
        if index in outputs:
            aliases[output] = outputs[index]
        else:
            outputs[index] = output
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
    gone = {id(n): n for n in (reshape, *chain, *(n for _, _, made in picks for n in made))}
    removed = set(gone)
    unused = [i for n in gone.values() for i in n.input[1:] if i]
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
