"""ONNX Runtime's fused transformer ops (domain com.microsoft), as its transformer optimizer
emits them: already-optimized models prune too. Head counts live in attributes, packed
weights hold Q, K and V side by side; whole heads are the unit."""
from __future__ import annotations

import numpy as np

from ..coupling import Effect, Link, ParamSlice, Port, attr, frozen, rule, set_attr
from .elementwise import broadcast

MS = "com.microsoft"


def _heads_within(space, size: int, head: int) -> Link:
    """Couple every channel of a head to the head's first channel: heads go whole."""
    idx = np.arange(size)
    return Link(space, (idx, (idx // head) * head))


def _attention_seed(node, graph):
    return [(node.output[0], 2)] if graph.const(node.input[1]) is not None else []


@rule("Attention", domain=MS, seeds=_attention_seed)
def attention(node, port: Port, graph) -> Effect:
    """Fused self-attention: input features are consumed by the packed QKV weight; output channels are heads × head size, and each head owns its Q, K and V columns and bias; num_heads (and qkv_hidden_sizes) are rewritten."""
    w = graph.const(node.input[1])
    heads = int(attr(node, "num_heads"))
    if w is None or w.ndim != 2 or port.axis != 2 or port.index > 0:
        return frozen(f"Attention '{node.name}' on axis {port.axis} (input {port.index})")
    if port.side == "in":
        return Effect(params=[ParamSlice(node.input[1], 0, "consumer")])
    sizes = attr(node, "qkv_hidden_sizes") or [w.shape[1] // 3] * 3
    q, k, v = (int(x) for x in sizes)
    dq, dk, dv = q // heads, k // heads, v // heads
    out = np.arange(v)
    # weight columns: V column per output channel; each Q/K column to its head's first channel
    qcols, kcols = np.arange(q), np.arange(k)
    mine = np.concatenate([out, (qcols // dq) * dv, (kcols // dk) * dv])
    theirs = np.concatenate([q + k + out, qcols, q + kcols])
    effect = Effect(links=[_heads_within((node.output[0], 2), v, dv)], tags={"heads"})
    effect.params.append(ParamSlice(node.input[1], 1, "producer", pairs=(mine, theirs)))
    if len(node.input) > 2 and node.input[2]:
        effect.params.append(ParamSlice(node.input[2], 0, "producer", pairs=(mine, theirs)))

    def fix(graph, keep, node=node, space=(node.output[0], 2)):
        kept = len(keep[space]) // dv
        set_attr(node, "num_heads", kept)
        if attr(node, "qkv_hidden_sizes"):
            set_attr(node, "qkv_hidden_sizes", [kept * dq, kept * dk, kept * dv])

    effect.fixups[f"num_heads:{node.name}"] = fix
    return effect


@rule("MultiHeadAttention", domain=MS)
def multi_head_attention(node, port: Port, graph) -> Effect:
    """Separate Q, K, V inputs [B, S, H·D]: query and key heads, value and output heads go together, head by head; num_heads is rewritten."""
    heads = int(attr(node, "num_heads"))
    names = list(node.input[:3])
    shapes = [graph.shape(n) if n else None for n in names]
    me = node.input[port.index] if port.side == "in" else node.output[port.index]
    if (port.axis != 2 or (port.side == "in" and port.index > 2) or (port.side == "out" and
            port.index > 0) or any(s is None or len(s) != 3 for s in shapes)):
        return frozen(f"MultiHeadAttention '{node.name}' packed, cached or on axis {port.axis}")
    q, k, v = (s[2] for s in shapes)
    dq, dk, dv = q // heads, k // heads, v // heads
    spaces = {names[0]: dq, names[1]: dk, names[2]: dv, node.output[0]: dv}
    my_head = spaces[me]
    idx = np.arange(graph.shape(me)[2])
    effect = Effect(links=[_heads_within((me, 2), len(idx), my_head)], tags={"heads"})
    for other, width in spaces.items():
        if other != me:  # head h's first channel here ↔ head h's first channel there
            effect.links.append(Link((other, 2), (idx[::my_head], idx[::my_head] // my_head * width)))
    if len(node.input) > 3 and node.input[3] and me == node.output[0]:
        bias_pairs = (np.concatenate([np.arange(q) // dq * dv, np.arange(k) // dk * dv,
                                      np.arange(v)]), np.arange(q + k + v))
        effect.params.append(ParamSlice(node.input[3], 0, "producer", pairs=bias_pairs))

    def fix(graph, keep, node=node, space=(node.output[0], 2)):
        set_attr(node, "num_heads", len(keep[space]) // dv)

    effect.fixups[f"num_heads:{node.name}"] = fix
    return effect


@rule("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS)
def skip_layer_norm(node, port: Port, graph) -> Effect:
    """Residual add + LayerNorm over the hidden (last) axis: that axis freezes, others pass through."""
    rank = graph.rank(node.input[0])
    hidden = port.axis == rank - 1
    if (hidden and not graph.options.get("prune_hidden")) or \
            (port.side == "in" and port.index > 1) or \
            (port.side == "out" and port.index not in (0, 3)):
        return frozen(f"{node.op_type} '{node.name}' normalizes over axis {port.axis}")
    spaces = [(node.input[0], port.axis), (node.input[1], port.axis), (node.output[0], port.axis)]
    if len(node.output) > 3 and node.output[3]:
        spaces.append((node.output[3], port.axis))
    me = ((node.input if port.side == "in" else node.output)[port.index], port.axis)
    effect = Effect(links=[Link(s) for s in spaces if s != me])
    if hidden:  # gamma, beta and the folded bias follow; the statistics change
        effect.params += [ParamSlice(p, 0, "param") for p in node.input[2:5]
                          if p and graph.const(p) is not None]
        effect.tags.add("approximate")
    return effect


rule("BiasGelu", "FastGelu", "BiasAdd", "QuickGelu", "Gelu", domain=MS)(broadcast)


@rule("GroupQueryAttention", domain=MS)
def group_query_attention(node, port: Port, graph) -> Effect:
    """Query heads grouped over fewer key/value heads: a KV head goes together with all its query heads; num_heads and kv_num_heads are rewritten."""
    heads, kv_heads = int(attr(node, "num_heads")), int(attr(node, "kv_num_heads"))
    if port.axis != 2 or (port.side == "in" and port.index > 2) or \
            (port.side == "out" and port.index > 0):
        return frozen(f"GroupQueryAttention '{node.name}' cache or axis {port.axis}")
    qs, ks, vs = (graph.shape(n) if n else None for n in node.input[:3])
    if qs is None or ks is None or vs is None:
        return frozen(f"GroupQueryAttention '{node.name}' packed or of unknown shape")
    d = qs[2] // heads
    per_kv = heads // kv_heads
    query, key, value, out = node.input[0], node.input[1], node.input[2], node.output[0]
    q_idx, k_idx = np.arange(qs[2]), np.arange(ks[2])
    me = (node.input[port.index] if port.side == "in" else out)
    effect = Effect(tags={"heads"})
    if me in (query, out):
        other = out if me == query else query
        effect.links += [Link((other, 2)), _heads_within((me, 2), qs[2], d),
                         Link((key, 2), (q_idx, (q_idx // d // per_kv) * d))]
    else:
        other = value if me == key else key
        effect.links += [Link((other, 2)), _heads_within((me, 2), ks[2], d),
                         Link((query, 2), ((k_idx // d) * d, (k_idx // d) * per_kv * d))]

    def fix(graph, keep, node=node):
        set_attr(node, "num_heads", len(keep[(node.input[0], 2)]) // d)
        set_attr(node, "kv_num_heads", len(keep[(node.input[1], 2)]) // d)

    effect.fixups[f"gqa:{node.name}"] = fix
    return effect


__all__ = ["attention", "group_query_attention", "multi_head_attention", "skip_layer_norm"]
