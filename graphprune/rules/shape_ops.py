"""Ops that move channels around: concat/split offsets, flatten and reshape block expansion,
transposes, squeezes, resizes and pads, and channel shuffle as a permutation."""
from __future__ import annotations

import math

import numpy as np

from ..coupling import (Effect, Link, ParamSlice, Port, attr, axes_operand, frozen,
                        identity_everywhere, normalize_axis, rule, set_attr, set_constant)


def _dims(graph, tensor):
    shape = graph.shape(tensor)
    return None if shape is None else list(shape)


# ---------------------------------------------------------------- concat / split
@rule("Concat")
def concat(node, port: Port, graph) -> Effect:
    """Offsets: input k's channels map to the output after the sizes of inputs before it."""
    ranks = {graph.rank(t) for t in [*node.input, node.output[0]]} - {None}
    if len(ranks) != 1:
        return frozen(f"Concat '{node.name}' has inputs of unknown or unequal rank")
    rank = ranks.pop()
    axis = normalize_axis(int(attr(node, "axis")), rank)
    sizes = [(_dims(graph, t) or [None] * rank)[axis] for t in node.input]
    if None in sizes:
        return frozen(f"Concat '{node.name}' has inputs of unknown size")
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    out = (node.output[0], port.axis)
    effect = Effect()
    if port.axis != axis:
        if port.side == "in":
            effect.links.append(Link(out))
        for i, t in enumerate(node.input):
            if port.side == "in" and i == port.index:
                continue
            if graph.const(t) is not None:
                effect.params.append(ParamSlice(t, port.axis, "param"))
            else:
                effect.links.append(Link((t, port.axis)))
        return effect
    for i, t in enumerate(node.input):
        local = np.arange(sizes[i])
        if port.side == "in":
            if i == port.index:
                effect.links.append(Link(out, (local, local + offsets[i])))
        elif graph.const(t) is not None:
            effect.params.append(ParamSlice(t, axis, "param", pairs=(local + offsets[i], local)))
        else:
            effect.links.append(Link((t, axis), (local + offsets[i], local)))
    return effect


def _split_sizes(node, graph, size):
    if len(node.input) > 1 and node.input[1]:
        value = graph.const(node.input[1])
        return None if value is None else [int(v) for v in value]
    sizes = attr(node, "split")
    if sizes:
        return [int(v) for v in sizes]
    n = len(node.output)
    chunk = math.ceil(size / n)
    return [min(chunk, size - k * chunk) for k in range(n)]


@rule("Split")
def split(node, port: Port, graph) -> Effect:
    """Offsets back: each output takes a range of the input; split sizes are rewritten."""
    rank = graph.rank(node.input[0])
    axis = normalize_axis(int(attr(node, "axis", 0)), rank)
    if port.side == "in" and port.index > 0:
        return frozen(f"Split '{node.name}' sizes input")
    size = (_dims(graph, node.input[0]) or [None] * rank)[axis]
    sizes = None if size is None else _split_sizes(node, graph, size)
    if sizes is None:
        return frozen(f"Split '{node.name}' has sizes computed at run time")
    if port.axis != axis:
        spaces = [(node.input[0], port.axis)] + [(o, port.axis) for o in node.output]
        me = (node.input[0] if port.side == "in" else node.output[port.index], port.axis)
        return Effect(links=[Link(s) for s in spaces if s != me])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    effect = Effect()
    for k, out in enumerate(node.output):
        local = np.arange(sizes[k])
        if port.side == "in":
            effect.links.append(Link((out, axis), (local + offsets[k], local)))
        elif k == port.index:
            effect.links.append(Link((node.input[0], axis), (local, local + offsets[k])))

    def fix(graph, keep, node=node, axis=axis):
        new = np.array([len(keep[(o, axis)]) for o in node.output], dtype=np.int64)
        if graph.opset >= 13:
            if len(node.input) < 2:
                node.input.append("")
            set_constant(graph, node, 1, new)
            for i, a in enumerate(node.attribute):
                if a.name == "num_outputs":
                    del node.attribute[i]
                    break
        else:
            set_attr(node, "split", [int(v) for v in new])

    effect.fixups[f"split:{node.name}"] = fix
    return effect


@rule("Slice")
def slice_(node, port: Port, graph) -> Effect:
    """Slicing another axis passes channels through; a step-1 range of the channel axis is an
    offset (like one Split output) and its bounds are rewritten."""
    if port.index > 0:
        return frozen(f"Slice '{node.name}' parameter input")
    rank = graph.rank(node.input[0])
    if graph.opset >= 10:
        starts, ends = (graph.const(n) if n else None for n in node.input[1:3])
        axes = graph.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        steps = graph.const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None):
            return frozen(f"Slice '{node.name}' has bounds computed at run time")
    else:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
    axes = list(range(len(starts))) if axes is None else [normalize_axis(int(a), rank) for a in axes]
    steps = [1] * len(axes) if steps is None else [int(v) for v in steps]
    dim = (_dims(graph, node.input[0]) or [None] * rank)[port.axis]
    for k, (a, st) in enumerate(zip(axes, steps)):
        if a != port.axis:
            continue
        if dim is None or st != 1:
            return frozen(f"Slice '{node.name}' steps through the channel axis {a}")
        lo, hi = (_clamp(int(v), dim) for v in (starts[k], ends[k]))
        if lo == 0 and hi == dim:
            break
        return _channel_range(node, port, graph, k, lo, hi)
    return identity_everywhere(node, port, graph)


def _clamp(v: int, dim: int) -> int:
    return min(max(v + dim if v < 0 else v, 0), dim)


def _channel_range(node, port, graph, k, lo, hi) -> Effect:
    src, dst = (node.input[0], port.axis), (node.output[0], port.axis)
    idx = np.arange(lo, hi)
    pairs = (idx, idx - lo) if port.side == "in" else (idx - lo, idx)
    effect = Effect(links=[Link(dst if port.side == "in" else src, pairs)])

    def fix(graph, keep, node=node, k=k, src=src, lo=lo, hi=hi):
        kept = keep[src]
        bounds = (int(np.searchsorted(kept, lo)), int(np.searchsorted(kept, hi)))
        if graph.opset >= 10:
            for i, value in zip((1, 2), bounds):
                array = graph.const(node.input[i]).copy()
                array[k] = value
                set_constant(graph, node, i, array)
        else:
            for name, value in zip(("starts", "ends"), bounds):
                values = list(attr(node, name))
                values[k] = value
                set_attr(node, name, values)

    effect.fixups[f"slice:{node.name}"] = fix
    return effect


# ---------------------------------------------------------------- flatten / reshape
def _merge_pairs(dims: list[int], position: int) -> tuple[np.ndarray, np.ndarray]:
    """Channel index of every element when axes `dims` merge into one, channel at `position`."""
    shape = [1] * len(dims)
    shape[position] = dims[position]
    channel = np.broadcast_to(np.arange(dims[position]).reshape(shape), dims).ravel()
    return channel, np.arange(channel.size)


@rule("Flatten")
def flatten(node, port: Port, graph) -> Effect:
    """Block expansion: channel c of C×H×W becomes features c·H·W … (c+1)·H·W−1."""
    dims = _dims(graph, node.input[0])
    if dims is None:
        return frozen(f"Flatten '{node.name}' input shape unknown")
    axis = normalize_axis(int(attr(node, "axis", 1)), len(dims))
    tail = dims[axis:]
    if None in tail:
        return frozen(f"Flatten '{node.name}' flattens dynamic axes")
    if port.side == "in":
        if port.axis < axis:
            if axis == 1 and port.axis == 0:
                return Effect(links=[Link((node.output[0], 0))])
            return frozen(f"Flatten '{node.name}' merges axis {port.axis} into rows")
        chan, feat = _merge_pairs(tail, port.axis - axis)
        return Effect(links=[Link((node.output[0], 1), (chan, feat))])
    if port.axis == 0:
        return Effect(links=[Link((node.input[0], 0))]) if axis == 1 else frozen(
            f"Flatten '{node.name}' merges rows")
    position = next((i for i, d in enumerate(tail) if d > 1), 0)
    chan, feat = _merge_pairs(tail, position)
    return Effect(links=[Link((node.input[0], axis + position), (feat, chan))])


def _prefix_match(a: list, b: list) -> bool:
    """Whether the axes before two aligned axes hold the same elements (size-1 axes aside)."""
    a, b = [d for d in a if d != 1], [d for d in b if d != 1]
    if None in a or None in b:
        return a == b
    return math.prod(a) == math.prod(b)


RUNTIME = -2  # a target entry read from tensor shapes at run time: it follows the pruning


def _entry_origin(graph, node, position: int, index: int = 1):
    """Where entry `position` of the shape vector `node.input[index]` is made, seen through
    value-preserving wrappers (casts, a 1-D Reshape, Expand's `Where(x == -1, 1, x)` guard):
    (owner, input index, position) of the constant or of the Concat piece that holds it, with
    `is_const`; None when it is computed some other way."""
    owner = node
    while True:
        if graph.const(owner.input[index]) is not None:
            return owner, index, position, True
        producer = graph.producer(owner.input[index])
        if producer is None:
            return None
        if producer.op_type == "Concat":
            break
        if producer.op_type in ("Cast", "Identity") or (
                producer.op_type == "Reshape" and graph.rank(producer.input[0]) == 1):
            owner, index = producer, 0
        elif _is_minus_one_guard(graph, producer):
            owner, index = producer, 2
        else:
            return None
    found = _concat_piece(graph, producer, position)
    if found is None:
        return None
    i, within = found
    return producer, i, within, graph.const(producer.input[i]) is not None


def _target_entry(graph, node, position: int, index: int = 1):
    """Reshape/Expand target entry `position` (ConstantOfShape's shape: index 0): (value,
    setter) when it is a compile-time constant, also inside a Concat of pieces (legacy exports
    build [batch, C, H, W] from Shape ops); (RUNTIME, None) when it is a scalar read from shapes
    at run time; (None, None) when it is computed some other way."""
    origin = _entry_origin(graph, node, position, index)
    if origin is None:
        return None, None
    owner, i, within, is_const = origin
    if is_const:
        value = graph.const(owner.input[i])
        return int(value.reshape(-1)[within]), _entry_setter(owner, i, within)
    return (RUNTIME, None) if _scalar_from_shape(graph, owner.input[i]) else (None, None)


def _entry_source(graph, node, position: int, index: int = 1):
    """The space `(x, axis)` whose size entry `position` of a shape vector reads at run time
    (Gather or Slice of Shape(x), through casts and unsqueezes), or None. Coupling to it keeps
    the entry right whatever the pruning does to x."""
    origin = _entry_origin(graph, node, position, index)
    if origin is None or origin[3]:
        return None
    owner, i, within, _ = origin
    pick = graph.producer(owner.input[i])
    while pick is not None and pick.op_type in ("Cast", "Unsqueeze", "Squeeze", "Identity"):
        pick = graph.producer(pick.input[0])
    if pick is None or pick.op_type not in ("Slice", "Gather"):
        return None
    if pick.op_type == "Gather":
        picked = graph.const(pick.input[1])
        dim = int(picked.reshape(-1)[0]) if picked is not None and picked.size == 1 else None
    else:
        params = [graph.const(n) if n else None for n in list(pick.input[1:]) + [""] * 4][:4]
        starts, _, axes, steps = params
        plain = (axes is None or axes.reshape(-1).tolist() == [0]) and \
            (steps is None or steps.reshape(-1).tolist() == [1])
        dim = int(starts.reshape(-1)[0]) + within if starts is not None and plain and \
            int(starts.reshape(-1)[0]) >= 0 else None
    shape = graph.producer(pick.input[0])
    if dim is None or shape is None or shape.op_type != "Shape":
        return None
    start = attr(shape, "start", 0)
    rank = graph.rank(shape.input[0])
    if rank is None or start < 0 or attr(shape, "end") is not None:
        return None
    return (shape.input[0], dim + start) if dim + start < rank else None


def _concat_piece(graph, concat, position: int) -> tuple[int, int] | None:
    """(input index, position inside it) of entry `position` of a Concat of 1-D pieces."""
    offset = 0
    for i, piece in enumerate(concat.input):
        shape = graph.shape(piece)
        if shape is None or len(shape) != 1 or shape[0] is None:
            return None
        if offset <= position < offset + shape[0]:
            return i, position - offset
        offset += shape[0]
    return None


def _is_minus_one_guard(graph, node) -> bool:
    if node.op_type != "Where" or len(node.input) != 3:
        return False
    cond = graph.producer(node.input[0])
    ones = graph.const(node.input[1])
    return cond is not None and cond.op_type == "Equal" and ones is not None and \
        cond.input[0] == node.input[2] and bool(np.all(ones == 1))


def _scalar_from_shape(graph, tensor: str) -> bool:
    """A piece that is part of a run-time shape (Unsqueeze(Gather(Shape(x))), Slice(Shape(x)),
    possibly through casts; products and maxima of such dims, as tf2onnx's Einsum builds its
    batch x heads entries with ReduceProd and Max): it follows whatever pruning did to x."""
    node = graph.producer(tensor)
    while node is not None and node.op_type in ("Unsqueeze", "Cast", "Squeeze", "Reshape",
                                                 "Identity", "ReduceProd"):
        node = graph.producer(node.input[0])
    if node is not None and node.op_type in ("Max", "Min", "Mul"):
        return all(_scalar_from_shape(graph, i) for i in node.input)
    if node is not None and node.op_type in ("Gather", "Slice"):
        node = graph.producer(node.input[0])
    return node is not None and node.op_type == "Shape"


def _entry_setter(owner, input_index: int, position: int):
    def set_entry(graph, value: int):
        array = graph.const(owner.input[input_index]).copy()
        array[position] = value
        set_constant(graph, owner, input_index, array)
    return set_entry


def _shape_entry_fixup(node, out_axis: int, space, graph):
    """Keep Reshape's target shape right after the channel count at `out_axis` changes."""
    value, setter = _target_entry(graph, node, out_axis)
    if value is None:
        return None
    if value <= 0:  # -1 or 0: the runtime derives it
        return lambda graph, keep: None
    return lambda graph, keep: setter(graph, len(keep[space]))


@rule("Reshape")
def reshape(node, port: Port, graph) -> Effect:
    """Block expansion or merge along aligned axes, channel shuffle as a permutation, heads folded into a dynamic batch axis; literal target entries (and the head count inside a run-time batch × heads entry) are rewritten; a target read whole off Shape(t) (reshape_as) couples the output to t."""
    if port.index > 0:
        return frozen(f"Reshape '{node.name}' shape input")
    shuffle = _channel_shuffle(node, port, graph)
    if shuffle is not None:
        return shuffle
    din, dout = _dims(graph, node.input[0]), _dims(graph, node.output[0])
    if din is None or dout is None:
        return frozen(f"Reshape '{node.name}' has unknown shapes")
    mine, theirs = (din, dout) if port.side == "in" else (dout, din)
    a = port.axis
    if mine[a] == 1:  # one channel, never removed: nothing couples through it
        return Effect()
    their_dynamic = graph.dynamic.get(node.output[0] if port.side == "in" else node.input[0],
                                      frozenset())
    for b in range(len(theirs)):
        if not _prefix_match(mine[:a], theirs[:b]) or theirs[b] is None:
            continue
        for k in range(1, len(theirs) - b + 1):  # theirs[b:b+k] merged equals mine[a]?
            if None not in theirs[b:b + k] and math.prod(theirs[b:b + k]) == mine[a] and (
                    k == 1 or (theirs[b] > 1 and b not in their_dynamic)):
                pairs = None
                if k > 1:  # my channel axis splits; their axis b is its high part
                    mine_idx = np.arange(mine[a])
                    pairs = (mine_idx, mine_idx // math.prod(theirs[b + 1:b + k]))
                return _reshape_effect(node, port, graph, (node.input[0] if port.side == "out"
                                                           else node.output[0], b), pairs)
        for k in range(2, len(mine) - a + 1):  # mine[a:a+k] merged equals theirs[b]?
            if None not in mine[a:a + k] and math.prod(mine[a:a + k]) == theirs[b] and \
                    b not in their_dynamic:
                chan, feat = _merge_pairs(mine[a:a + k], 0)
                return _reshape_effect(node, port, graph, (node.input[0] if port.side == "out"
                                                           else node.output[0], b), (chan, feat))
    merged = _merged_with_batch(node, port, graph, mine, theirs)
    if merged is None:
        merged = _heads_into_batch(node, port, graph)
    if merged is not None:
        return merged
    return frozen(f"Reshape '{node.name}' reshapes axis {a} in a way that has no rule")


def _merged_with_batch(node, port, graph, mine, theirs) -> Effect | None:
    """Heads folded into a dynamic batch axis ([B, H, S, D] <-> [B*H, S, D]), the way batched
    attention is exported: head h is every element i of the merged axis with i % H == h.
    The merged axis' target entry cannot name B*H' statically, so it must be derived at run
    time (-1, 0, or computed from shapes; the constant H of Mul(batch, H) is rewritten); the
    heads entry is rewritten where it is literal."""
    a = port.axis
    me = node.input[0] if port.side == "in" else node.output[0]
    them = node.output[0] if port.side == "in" else node.input[0]
    my_dynamic, their_dynamic = graph.dynamic.get(me, ()), graph.dynamic.get(them, ())
    for b in range(len(theirs)):
        if theirs[b] is None:
            continue
        if a >= 1 and (a - 1) in my_dynamic and _prefix_match(mine[:a - 1], theirs[:b]) and \
                mine[a - 1] is not None and theirs[b] == mine[a - 1] * mine[a]:
            idx = np.arange(theirs[b])
            link, other_axis, them_merged = Link((them, b), (idx % mine[a], idx)), b, True
            break
        if b + 1 < len(theirs) and b in their_dynamic and _prefix_match(mine[:a], theirs[:b]) \
                and theirs[b + 1] is not None and mine[a] == theirs[b] * theirs[b + 1]:
            idx = np.arange(mine[a])
            link, other_axis, them_merged = Link((them, b + 1), (idx, idx % theirs[b + 1])), \
                b + 1, False
            break
    else:
        return None
    heads_out = (node.output[0], other_axis) if port.side == "in" else (node.output[0], a)
    effect = Effect(links=[link])
    merged_output = them_merged == (port.side == "in")
    value, setter = _target_entry(graph, node, heads_out[1])
    if value is None and merged_output:  # B*H as Mul(batch read from a shape, H) (BLOOM)
        product = _shape_product_setter(graph, node, heads_out[1])
        if product is not None:
            heads = (node.input[0], a if port.side == "in" else other_axis)
            effect.fixups[f"reshape:{node.name}"] = lambda g, keep: product(g, len(keep[heads]))
            return effect
    if value is None:
        return frozen(f"Reshape '{node.name}' target shape is computed at run time")
    if value > 0 and merged_output:  # the output holds B*H': it must come from the run time
        return frozen(f"Reshape '{node.name}' fixes the merged batch×heads size")
    if value > 0:
        effect.fixups[f"reshape:{node.name}"] = lambda g, keep: setter(g, len(keep[heads_out]))
    if not merged_output and heads_out[1] > 0:  # the batch entry, B = B*H / H, follows too
        quotient = _shape_quotient_setter(graph, node, heads_out[1] - 1)
        if quotient is not None:
            effect.fixups[f"reshape-batch:{node.name}"] = \
                lambda g, keep: quotient(g, len(keep[heads_out]))
    return effect


def _heads_into_batch(node, port, graph) -> Effect | None:
    """The channel axis splits into heads x head size and the heads join the dynamic batch axis
    before it, [.., B, H*D] <-> [.., B*H, D], as torch's nn.MultiheadAttention exports it
    (``view(S, B * H, D)``): channel c is in head c // D, element i of the merged axis in
    head i % H. The merged entry of the target is B * H computed at run time; where it is
    Mul(batch from Shape, H) the constant H is rewritten, where it is -1 or 0 nothing is."""
    src, dst = node.input[0], node.output[0]
    tensor = src if port.side == "in" else dst
    for packed, merged in ((src, dst), (dst, src)):
        found = _heads_batch_axes(graph, packed, merged)
        if found is None:
            continue
        pa, mb, heads, size = found
        batch = graph.shape(merged)[mb] // heads
        mine_c = np.repeat(np.arange(heads * size), batch)  # channel c is in every batch row
        theirs_i = mine_c // size + heads * np.tile(np.arange(batch), heads * size)
        if tensor == packed and port.axis == pa:
            effect = Effect(links=[Link((merged, mb), (mine_c, theirs_i))])
        elif tensor == merged and port.axis == mb:
            effect = Effect(links=[Link((packed, pa), (theirs_i, mine_c))])
        else:
            return None
        if dst == packed:  # [.., B*H, D] -> [.., B, H*D]: the H*D entry follows the channels
            fix = _shape_entry_fixup(node, pa, (packed, pa), graph)
        else:
            fix = _batch_heads_fixup(graph, node, mb, (packed, pa), size)
        if fix is None:
            return frozen(f"Reshape '{node.name}' fixes the merged batch×heads size")
        effect.fixups[f"reshape:{node.name}"] = fix
        return effect
    return None


def _heads_batch_axes(graph, packed: str, merged: str):
    """(channel axis of `packed`, merged axis of `merged`, H, D) where `packed` is [.., B, H*D]
    and `merged` is [.., B*H, D] with B dynamic; None otherwise."""
    p, q = _dims(graph, packed), _dims(graph, merged)
    if p is None or q is None or len(q) != len(p) or len(p) < 2:
        return None
    p_dynamic, q_dynamic = graph.dynamic.get(packed, ()), graph.dynamic.get(merged, ())
    for a in range(1, len(p)):
        b = a - 1
        size = q[b + 1]
        if (a - 1 not in p_dynamic or b not in q_dynamic or None in (p[a - 1], p[a], q[b], size)
                or size <= 0 or p[a] % size or p[a] == size or p[:a - 1] != q[:b]
                or p[a + 1:] != q[b + 2:] or a + 1 in p_dynamic or b + 1 in q_dynamic):
            continue
        heads = p[a] // size
        if q[b] == p[a - 1] * heads:
            return a, b, heads, size
    return None


def _batch_heads_fixup(graph, node, position: int, channels_space, size: int):
    """Fixup for a B*H target entry: None where it cannot follow the pruning (a literal)."""
    value, _ = _target_entry(graph, node, position)
    if value is not None and value <= 0:
        return lambda graph, keep: None
    setter = _shape_product_setter(graph, node, position)
    if setter is None:
        return None
    return lambda graph, keep: setter(graph, len(keep[channels_space]) // size)


def _shape_product_setter(graph, node, position: int):
    """Target entry `position` of Reshape `node` built as Concat(.., Unsqueeze(Mul(scalar read
    from a shape, constant)), ..): a setter of that constant, else None."""
    return _shape_arithmetic_setter(graph, node, position, "Mul", (1, 0))


def _shape_quotient_setter(graph, node, position: int):
    """The same for Div(scalar read from a shape, constant): BLOOM recovers the batch size
    from a [B*H, ..] shape by dividing by H."""
    return _shape_arithmetic_setter(graph, node, position, "Div", (1,))


def _shape_arithmetic_setter(graph, node, position: int, op: str, const_inputs: tuple):
    concat = graph.producer(node.input[1])
    found = None if concat is None or concat.op_type != "Concat" else \
        _concat_piece(graph, concat, position)
    if found is None or graph.shape(concat.input[found[0]]) != (1,):
        return None
    arith = graph.producer(concat.input[found[0]])
    while arith is not None and arith.op_type in ("Unsqueeze", "Cast", "Reshape"):
        arith = graph.producer(arith.input[0])
    if arith is None or arith.op_type != op:
        return None
    for index in const_inputs:
        value = graph.const(arith.input[index])
        if value is not None and value.size == 1 and \
                _scalar_from_shape(graph, arith.input[1 - index]):
            def set_constant_operand(graph, count, arith=arith, index=index, value=value):
                set_constant(graph, arith, index, np.full_like(value, count))
            return set_constant_operand
    return None


def _shaped_like(graph, node) -> str | None:
    """The tensor t when Reshape/Expand `node` takes its whole target from Shape(t) (torch's
    reshape_as / expand_as): the output is shaped like t, axis for axis."""
    shape = graph.producer(node.input[1])
    if shape is None or shape.op_type != "Shape" or any(a.name in ("start", "end")
                                                         for a in shape.attribute):
        return None
    like = shape.input[0]
    return like if graph.rank(like) == graph.rank(node.output[0]) else None


def _reshape_effect(node, port, graph, other, pairs):
    effect = Effect(links=[Link(other, pairs)])
    out_space = other if port.side == "in" else (node.output[0], port.axis)
    like = _shaped_like(graph, node)
    if like is not None:  # the target is read off `like` at run time: couple to its axis
        effect.links.append(Link((like, out_space[1]), pairs if port.side == "in" else None))
        return effect
    fix = _shape_entry_fixup(node, out_space[1], out_space, graph)
    if fix is None:
        return frozen(f"Reshape '{node.name}' target shape is computed at run time")
    effect.fixups[f"reshape:{node.name}"] = fix
    return effect


def _channel_shuffle(node, port, graph) -> Effect | None:
    """Reshape [N,C,...] → [N,g,C/g,...] → Transpose(1↔2) → Reshape [N,C,...] as one permutation.

    Channel i*(C/g)+j becomes j*g+i. The kept set must hold the same j in every group i, so the
    rule also couples channel i*(C/g)+j with j inside the input space.
    """
    chain = _find_shuffle(node, graph)
    if chain is None:
        return None
    first, transpose, last, groups, channels = chain
    if (port.side == "in" and node is not first) or (port.side == "out" and node is not last):
        return frozen(f"channel shuffle '{node.name}' inner tensor")
    per = channels // groups
    c = np.arange(channels)
    i, j = c // per, c % per
    src, dst = (first.input[0], 1), (last.output[0], 1)
    effect = Effect()
    if port.side == "in":
        effect.links += [Link(dst, (c, j * groups + i)), Link(src, (c, j))]
    else:
        effect.links += [Link(src, (j * groups + i, c))]

    inner, _ = _target_entry(graph, first, 2)
    outer, _ = _target_entry(graph, last, 1)
    if inner is None or outer is None:
        return frozen(f"channel shuffle '{first.name}' has target shapes computed at run time")

    def fix(graph, keep, first=first, last=last, src=src):
        kept = len(keep[src])
        if inner > 0:
            _target_entry(graph, first, 2)[1](graph, kept // groups)
        if outer > 0:
            _target_entry(graph, last, 1)[1](graph, kept)

    effect.fixups[f"shuffle:{first.name}"] = fix
    return effect


def _find_shuffle(node, graph):
    def only_consumer(tensor, op):
        users = graph.consumers(tensor)
        return users[0] if len(users) == 1 and users[0].op_type == op and \
            tensor not in graph.output_names else None

    if node.op_type != "Reshape":
        return None
    if len(_dims(graph, node.output[0]) or []) == 5:
        first = node
    else:
        t = graph.producer(node.input[0])
        first = graph.producer(t.input[0]) if t is not None and t.op_type == "Transpose" else None
        if first is None or first.op_type != "Reshape":
            return None
    transpose = only_consumer(first.output[0], "Transpose")
    last = transpose and only_consumer(transpose.output[0], "Reshape")
    if last is None or (node is not first and node is not last):
        return None
    din, mid = _dims(graph, first.input[0]), _dims(graph, first.output[0])
    dout = _dims(graph, last.output[0])
    perm = list(attr(transpose, "perm", []))
    if (din is None or mid is None or dout is None or len(din) != 4 or len(mid) != 5 or
            perm != [0, 2, 1, 3, 4] or din != dout or None in mid[1:3] or mid[1] * mid[2] != din[1]
            or mid[3:] != din[2:]):
        return None
    return first, transpose, last, mid[1], din[1]


# ---------------------------------------------------------------- axis permutations
@rule("Transpose")
def transpose(node, port: Port, graph) -> Effect:
    """Moves the channel axis to its permuted position."""
    rank = graph.rank(node.input[0])
    perm = list(attr(node, "perm", list(range(rank))[::-1]))
    if port.side == "in":
        return Effect(links=[Link((node.output[0], perm.index(port.axis)))])
    return Effect(links=[Link((node.input[0], perm[port.axis]))])


@rule("Squeeze", "Unsqueeze")
def squeeze(node, port: Port, graph) -> Effect:
    """Renumbers axes around the squeezed/unsqueezed ones."""
    if port.index > 0:
        return frozen(f"{node.op_type} '{node.name}' axes input")
    squeezing = node.op_type == "Squeeze"
    big = node.input[0] if squeezing else node.output[0]
    big_rank = graph.rank(big)
    axes = axes_operand(node, graph, big_rank)
    if not axes and len(node.input) < 2 and attr(node, "axes") is None:
        axes = None  # Squeeze without axes: every size-1 axis
    if axes is None:
        if not squeezing:
            return frozen(f"Unsqueeze '{node.name}' axes computed at run time")
        axes = [i for i, d in enumerate(graph.shape(big)) if d == 1]
    kept = [a for a in range(big_rank) if a not in axes]
    on_big = (port.side == "in") == squeezing
    if on_big:
        if port.axis in axes:
            return frozen(f"{node.op_type} '{node.name}' axis {port.axis}")
        other = (node.output[0] if squeezing else node.input[0], kept.index(port.axis))
    else:
        other = (big, kept[port.axis])
    return Effect(links=[Link(other)])


# ---------------------------------------------------------------- spatial resampling / padding
@rule("Resize", "Upsample")
def resize(node, port: Port, graph) -> Effect:
    """Channels pass through when their scale is 1; a `sizes` entry is rewritten, or read at run time off the input's own shape (F.interpolate to another tensor's size)."""
    if port.index > 0:
        return frozen(f"{node.op_type} '{node.name}' parameter input")
    scales = attr(node, "scales")
    sizes = None
    if node.op_type == "Resize" and graph.opset >= 11:
        scales = graph.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        sizes = graph.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    elif node.op_type == "Upsample" and len(node.input) > 1:
        scales = graph.const(node.input[1])
    elif node.op_type == "Resize":
        scales = graph.const(node.input[1])
    effect = identity_everywhere(node, port, graph)
    if attr(node, "axes") is not None:
        return frozen(f"{node.op_type} '{node.name}' with axes attribute")
    if scales is not None and len(scales) > port.axis:
        if float(scales[port.axis]) != 1.0:
            return frozen(f"{node.op_type} '{node.name}' rescales axis {port.axis}")
        return effect
    if sizes is not None:
        def fix(graph, keep, node=node, axis=port.axis, space=(node.output[0], port.axis)):
            value = graph.const(node.input[3]).copy()
            value[axis] = len(keep[space])
            set_constant(graph, node, 3, value)
        effect.fixups[f"sizes:{node.name}"] = fix
        return effect
    if node.op_type == "Resize" and len(node.input) > 3 and node.input[3] and \
            _entry_source(graph, node, port.axis, 3) == (node.input[0], port.axis):
        return effect  # F.interpolate(x, size=...): the channel count is read off x itself
    return frozen(f"{node.op_type} '{node.name}' has scales computed at run time")


@rule("Pad")
def pad(node, port: Port, graph) -> Effect:
    """Channels pass through when the channel axis is not padded."""
    if port.index > 0:
        return frozen(f"Pad '{node.name}' parameter input")
    rank = graph.rank(node.input[0])
    pads = attr(node, "pads") if graph.opset < 11 else graph.const(node.input[1])
    if pads is None:
        return frozen(f"Pad '{node.name}' pads computed at run time")
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        value = graph.const(node.input[3])
        if value is None:
            return frozen(f"Pad '{node.name}' axes computed at run time")
        axes = [normalize_axis(int(a), rank) for a in value]
    n = len(axes)
    for k, a in enumerate(axes):
        if a == port.axis and (int(pads[k]) != 0 or int(pads[k + n]) != 0):
            return frozen(f"Pad '{node.name}' pads the channel axis")
    return identity_everywhere(node, port, graph)


@rule("Expand")
def expand(node, port: Port, graph) -> Effect:
    """Broadcasting to a target shape: an axis that is not expanded passes through and its
    entry in the target shape is rewritten; an axis the broadcast creates (from size 1, as when
    one key/value head is repeated for every query head) holds copies, any of which can go:
    its entry is rewritten to the kept count. A target read whole off Shape(t) (expand_as), or
    an entry read off one dim of t at run time, couples the output to t."""
    if port.index > 0:
        return frozen(f"Expand '{node.name}' shape input")
    din, dout = _dims(graph, node.input[0]), _dims(graph, node.output[0])
    if din is None or dout is None:
        return frozen(f"Expand '{node.name}' has unknown shapes")
    shift = len(dout) - len(din)
    in_axis = port.axis if port.side == "in" else port.axis - shift
    out_axis = in_axis + shift
    copies = port.side == "out" and (in_axis < 0 or din[in_axis] == 1)
    if not copies and (in_axis < 0 or din[in_axis] != dout[out_axis]):
        return frozen(f"Expand '{node.name}' broadcasts axis {out_axis}")
    effect = Effect()
    if not copies:
        other = (node.output[0], out_axis) if port.side == "in" else (node.input[0], in_axis)
        effect.links.append(Link(other))
    like = _shaped_like(graph, node)
    if like is not None:  # expand_as: the target is read off `like` at run time
        effect.links.append(Link((like, out_axis)))
        return effect
    target = graph.shape(node.input[1])
    if target is None or target[0] is None:
        return frozen(f"Expand '{node.name}' target of unknown length")
    position = out_axis - (len(dout) - target[0])
    if position >= 0:
        value, setter = _target_entry(graph, node, position)
        source = _entry_source(graph, node, position) if value == RUNTIME else None
        if source is not None:  # read off a dim at run time: stand or fall with it
            effect.links.append(Link(source))
            return effect
        if value is None or (copies and setter is None):
            return frozen(f"Expand '{node.name}' target shape is computed at run time")
        if value > 1:
            space = (node.output[0], out_axis)
            effect.fixups[f"expand:{node.name}"] = lambda g, keep: setter(g, len(keep[space]))
    elif copies:  # the input is broadcast against a longer target: nothing to rewrite
        return frozen(f"Expand '{node.name}' broadcasts axis {out_axis} from the input's rank")
    return effect


@rule("ConstantOfShape")
def constant_of_shape(node, port: Port, graph) -> Effect:
    """A filled tensor of a given shape (the zeros a detector scatters its regions into): a literal size entry is rewritten, one read off a dim of t at run time couples the axis to t."""
    if port.side == "in":
        return frozen(f"ConstantOfShape '{node.name}' shape input")
    value, setter = _target_entry(graph, node, port.axis, index=0)
    source = _entry_source(graph, node, port.axis, index=0) if value == RUNTIME else None
    if source is not None:
        return Effect(links=[Link(source)])
    if value is None or setter is None:
        return frozen(f"ConstantOfShape '{node.name}' shape is computed at run time")
    space = (node.output[0], port.axis)
    effect = Effect()
    effect.fixups[f"constant_of_shape:{node.name}"] = lambda g, keep: setter(g, len(keep[space]))
    return effect


@rule("Shape", "Size")
def shape_of(node, port: Port, graph) -> Effect:
    """Reads only the shape: the values it computes follow the pruned shape at run time."""
    if port.side == "out":
        return frozen(f"{node.op_type} '{node.name}' output")
    return Effect()


@rule("Gather")
def gather(node, port: Port, graph) -> Effect:
    """Gathering along another axis passes channels through (renumbered); along the channel axis freezes."""
    if port.index > 0:
        return frozen(f"Gather '{node.name}' indices")
    rank = graph.rank(node.input[0])
    axis = normalize_axis(int(attr(node, "axis", 0)), rank)
    q = graph.rank(node.input[1])
    if q is None:
        return frozen(f"Gather '{node.name}' indices of unknown rank")
    if port.side == "in":
        if port.axis == axis:
            return frozen(f"Gather '{node.name}' indexes the channel axis")
        other = port.axis if port.axis < axis else port.axis + q - 1
        return Effect(links=[Link((node.output[0], other))])
    if axis <= port.axis < axis + q:
        return frozen(f"Gather '{node.name}' output axis comes from the indices")
    other = port.axis if port.axis < axis else port.axis - q + 1
    return Effect(links=[Link((node.input[0], other))])
