"""Small ONNX transformer blocks: attention heads, grouped-query attention, FFN channels.

Every ``build_<name>(seed=0)`` returns a deterministic, fully shape-annotated
``onnx.ModelProto`` with one float32 input ``"input"`` [1, 8, 64] (batch, seq,
hidden) and an output ``"output"`` of the same shape.  The graphs are written
with ``onnx.helper`` in the decomposed form the torch exporters emit:

* projections are ``MatMul(x, W[in, out])`` (+ ``Add(bias)``), weights stored
  transposed from torch's ``[out, in]``;
* heads are split by ``Reshape`` to [B, S, H, D] with an int64 shape
  initializer (the literal form [1, 8, H, D], and the ``0``-copy / ``-1``
  forms [0, 0, H, D] and [1, -1, H, D]), then ``Transpose`` [0, 2, 1, 3]
  (K straight to [0, 2, 3, 1]);
* scores ``MatMul(Q, Kᵀ)`` scaled by ``Div``/``Mul`` (or Q and Kᵀ each by
  ``D**-0.25`` before the product, as torch's SDPA decomposition does), plus
  an additive constant mask, ``Softmax(axis=-1)``, ``MatMul(probs, V)``,
  ``Transpose`` [0, 2, 1, 3] and ``Reshape`` back to [B, S, H*D];
* LayerNormalization (opset 17+) or decomposed RMSNorm; FFNs with the Gelu op,
  the Erf form or the tanh form of GELU, or SwiGLU with ``Silu = x*Sigmoid(x)``.

``ATTENTION_BLOCKS`` maps names to builders, ``ATTENTION_CONFIGS`` gives each
block's sizes (heads, KV heads, head dim, FFN width, and which shape-constant
form it uses) for tests that prune heads or channels.

Opset 18, IR version 9, except where the ``Gelu`` op is used: it exists from
opset 20 on, so those blocks import opset 20 (still IR 9).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from models.blocks import _Graph

BATCH, SEQ, HIDDEN = 1, 8, 64
INPUT_SHAPE = (BATCH, SEQ, HIDDEN)


class _Attn(_Graph):
    """``_Graph`` plus the transformer pieces; names are ``<prefix>.<role>``."""

    def linear(self, x, cin, cout, name, bias=True, gain=1.0):
        """MatMul(x, W[cin, cout]) (+ Add(bias)): node ``name.matmul`` (``name.add``)."""
        w = self.init(f"{name}.weight", self.he((cin, cout), cin, gain))
        y = self.op("MatMul", [x, w], f"{name}.matmul")
        if bias:
            y = self.op("Add", [y, self.init(f"{name}.bias", self.small(cout))], f"{name}.add")
        return y

    def layernorm(self, x, c, name, eps=1e-5, out=None):
        scale = self.init(f"{name}.weight", self.rng.uniform(0.5, 1.5, c))
        bias = self.init(f"{name}.bias", self.small(c))
        return self.op("LayerNormalization", [x, scale, bias], name, out=out, axis=-1,
                       epsilon=eps)

    def rmsnorm(self, x, c, name, eps=1e-6, out=None):
        """x / sqrt(mean(x^2) + eps) * weight, decomposed as exporters emit it."""
        sq = self.op("Pow", [x, self.scalar(2.0)], f"{name}.pow")
        axes = self.ints(f"{name}.axes", [-1])
        mean = self.op("ReduceMean", [sq, axes], f"{name}.mean", keepdims=1)
        var = self.op("Add", [mean, self.scalar(eps)], f"{name}.add_eps")
        std = self.op("Sqrt", [var], f"{name}.sqrt")
        inv = self.op("Div", [self.scalar(1.0), std], f"{name}.reciprocal")
        normed = self.op("Mul", [x, inv], f"{name}.normalize")
        weight = self.init(f"{name}.weight", self.rng.uniform(0.5, 1.5, c))
        return self.op("Mul", [normed, weight], f"{name}.scale", out=out)

    def gelu(self, x, name, form):
        if form == "op":  # opset 20
            return self.op("Gelu", [x], name)
        if form == "erf":  # x * 0.5 * (1 + erf(x / sqrt(2))), as BERT exports
            d = self.op("Div", [x, self.scalar(float(np.float32(np.sqrt(2.0))))], f"{name}.div")
            e = self.op("Erf", [d], f"{name}.erf")
            a = self.op("Add", [e, self.scalar(1.0)], f"{name}.add")
            m = self.op("Mul", [x, a], f"{name}.mul")
            return self.op("Mul", [m, self.scalar(0.5)], f"{name}.mul_half")
        if form == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), GPT-2 gelu_new
            half = self.op("Mul", [x, self.scalar(0.5)], f"{name}.mul_half")
            cube = self.op("Pow", [x, self.scalar(3.0)], f"{name}.pow")
            c = self.op("Mul", [cube, self.scalar(0.044715)], f"{name}.mul_coef")
            inner = self.op("Add", [x, c], f"{name}.add_cube")
            s = self.op("Mul", [inner, self.scalar(float(np.float32(np.sqrt(2 / np.pi))))],
                        f"{name}.mul_scale")
            t = self.op("Tanh", [s], f"{name}.tanh")
            one = self.op("Add", [t, self.scalar(1.0)], f"{name}.add_one")
            return self.op("Mul", [half, one], name)
        raise ValueError(form)

    def split_heads(self, x, heads, dim, name, shape, perm=(0, 2, 1, 3)):
        """Reshape [B, S, heads*dim] -> ``shape`` (an initializer name), then Transpose."""
        r = self.op("Reshape", [x, shape], f"{name}.reshape")
        return self.op("Transpose", [r], f"{name}.transpose", perm=list(perm))

    def rope(self, x, dim, cos, sin, name):
        """x * cos + rotate_half(x) * sin on the last axis (rotate_half: [-x2, x1])."""
        half = dim // 2
        axes = self.ints(f"{name}.axes", [3])
        x1 = self.op("Slice", [x, self.ints(f"{name}.x1.starts", [0]),
                               self.ints(f"{name}.x1.ends", [half]), axes], f"{name}.slice_x1")
        x2 = self.op("Slice", [x, self.ints(f"{name}.x2.starts", [half]),
                               self.ints(f"{name}.x2.ends", [np.iinfo(np.int64).max]), axes],
                     f"{name}.slice_x2")
        rot = self.op("Concat", [self.op("Neg", [x2], f"{name}.neg"), x1], f"{name}.rotate_half",
                      axis=-1)
        a = self.op("Mul", [x, cos], f"{name}.mul_cos")
        b = self.op("Mul", [rot, sin], f"{name}.mul_sin")
        return self.op("Add", [a, b], f"{name}.add")

    def attention_core(self, q, k, v, name, head_dim, mask=None, scale="div"):
        """q [B,H,S,D], k already transposed [B,H,D,S], v [B,H,S,D] -> [B,H,S,D].

        ``scale``: "div" (scores / sqrt(D)), "mul" (scores * D**-0.5) or "sdpa"
        (q and k each * D**-0.25 before the product)."""
        if scale == "sdpa":
            s = self.scalar(float(np.float32(head_dim ** -0.25)))
            q = self.op("Mul", [q, s], f"{name}.q_scale")
            k = self.op("Mul", [k, s], f"{name}.k_scale")
        scores = self.op("MatMul", [q, k], f"{name}.scores")
        if scale == "div":
            scores = self.op("Div", [scores, self.scalar(float(np.float32(np.sqrt(head_dim))))],
                             f"{name}.scale")
        elif scale == "mul":
            scores = self.op("Mul", [scores, self.scalar(float(np.float32(head_dim ** -0.5)))],
                             f"{name}.scale")
        if mask is not None:
            scores = self.op("Add", [scores, mask], f"{name}.mask_add")
        probs = self.op("Softmax", [scores], f"{name}.softmax", axis=-1)
        return self.op("MatMul", [probs, v], f"{name}.context")

    def merge_heads(self, ctx, name, shape):
        t = self.op("Transpose", [ctx], f"{name}.merge_transpose", perm=[0, 2, 1, 3])
        return self.op("Reshape", [t, shape], f"{name}.merge_reshape")

    def causal_mask(self, name="causal_mask"):
        """Constant [1, 1, S, S]: 0 on and below the diagonal, float32 min above (as HF)."""
        m = np.triu(np.full((SEQ, SEQ), np.finfo(np.float32).min, np.float32), k=1)
        return self.init(name, m[None, None])

    def padding_mask(self, valid=SEQ - 2, name="padding_mask"):
        """Constant [1, 1, 1, S] extended BERT mask: the last keys padded (-10000)."""
        m = np.zeros((1, 1, 1, SEQ), np.float32)
        m[..., valid:] = -10000.0
        return self.init(name, m)


# ---------------------------------------------------------------------------------------------
def _mha(g: _Attn, x, heads, dim, name, *, split_shape, merge_shape, mask, scale,
         qkv_bias=True):
    """Separate Q/K/V projections, attention, output projection (no residual)."""
    hd = heads * dim
    q = g.split_heads(g.linear(x, HIDDEN, hd, f"{name}.q", qkv_bias), heads, dim, f"{name}.q",
                      split_shape[0])
    k = g.split_heads(g.linear(x, HIDDEN, hd, f"{name}.k", qkv_bias), heads, dim, f"{name}.k",
                      split_shape[1], perm=(0, 2, 3, 1))
    v = g.split_heads(g.linear(x, HIDDEN, hd, f"{name}.v", qkv_bias), heads, dim, f"{name}.v",
                      split_shape[2])
    ctx = g.attention_core(q, k, v, name, dim, mask, scale)
    return g.linear(g.merge_heads(ctx, name, merge_shape), hd, HIDDEN, f"{name}.o")


def build_mha_postnorm(seed: int = 0) -> onnx.ModelProto:
    """BERT-like post-norm encoder layer: hidden 64, 4 heads x 16, FFN 128 (Erf GELU).

    One head-split shape constant [1, 8, 4, 16] shared by the Q, K and V Reshapes (exporters
    deduplicate equal constants), merge shape [1, 8, 64], scores / 4, constant padding mask
    [1, 1, 1, 8] (last two keys masked), LayerNorm after each residual Add.
    """
    g = _Attn(seed)
    heads, dim, ffn = 4, 16, 128
    shape = g.ints("attn.head_shape", [BATCH, SEQ, heads, dim])
    a = _mha(g, "input", heads, dim, "attn", split_shape=[shape] * 3,
             merge_shape=g.ints("attn.merge_shape", [BATCH, SEQ, heads * dim]),
             mask=g.padding_mask(), scale="div")
    h = g.layernorm(g.op("Add", [a, "input"], "attn.residual"), HIDDEN, "attn.ln", eps=1e-12)
    f = g.gelu(g.linear(h, HIDDEN, ffn, "ffn.fc1", gain=2.0), "ffn.gelu", "erf")
    f = g.linear(f, ffn, HIDDEN, "ffn.fc2")
    f = g.op("Add", [f, h], "ffn.residual")
    g.layernorm(f, HIDDEN, "ffn.ln", eps=1e-12, out="output")
    return g.build("mha_postnorm", INPUT_SHAPE, ["output"], build_mha_postnorm.__doc__)


def build_mha_prenorm(seed: int = 0) -> onnx.ModelProto:
    """GPT-2/ViT-like pre-norm decoder layer: hidden 64, 4 heads x 16, FFN 256 (Gelu op).

    LayerNorm before attention and FFN, causal mask [1, 1, 8, 8], head split through
    per-projection shape constants [0, 0, 4, 16] (0 copies the input dim), merge [0, 0, 64],
    scores * 0.25, final LayerNorm.  Opset 20 for the Gelu op.
    """
    g = _Attn(seed, opset=20)
    heads, dim, ffn = 4, 16, 256
    shapes = [g.ints(f"attn.{p}.head_shape", [0, 0, heads, dim]) for p in "qkv"]
    h = g.layernorm("input", HIDDEN, "ln_1")
    a = _mha(g, h, heads, dim, "attn", split_shape=shapes,
             merge_shape=g.ints("attn.merge_shape", [0, 0, heads * dim]),
             mask=g.causal_mask(), scale="mul")
    x = g.op("Add", ["input", a], "attn.residual")
    f = g.layernorm(x, HIDDEN, "ln_2")
    f = g.gelu(g.linear(f, HIDDEN, ffn, "mlp.fc", gain=2.0), "mlp.gelu", "op")
    f = g.linear(f, ffn, HIDDEN, "mlp.proj")
    x = g.op("Add", [x, f], "mlp.residual")
    g.layernorm(x, HIDDEN, "ln_f", out="output")
    return g.build("mha_prenorm", INPUT_SHAPE, ["output"], build_mha_prenorm.__doc__)


def build_packed_qkv(seed: int = 0) -> onnx.ModelProto:
    """GPT-2-like pre-norm layer with one QKV projection: hidden 64, 4 heads x 16, FFN 256.

    MatMul to [1, 8, 192] + bias, then Split (opset 18, split sizes [64, 64, 64] as an input)
    into Q, K, V along the last axis; head split [1, -1, 4, 16], merge [1, -1, 64]; SDPA-style
    scaling (Q and Kᵀ each * 16**-0.25); causal mask; tanh-form GELU (gelu_new).
    """
    g = _Attn(seed)
    heads, dim, ffn = 4, 16, 256
    hd = heads * dim
    h = g.layernorm("input", HIDDEN, "ln_1")
    qkv = g.linear(h, HIDDEN, 3 * hd, "attn.c_attn")
    q, k, v = g.op("Split", [qkv, g.ints("attn.split_sizes", [hd, hd, hd])], "attn.split",
                   n_out=3, axis=-1)
    shape = g.ints("attn.head_shape", [BATCH, -1, heads, dim])
    q = g.split_heads(q, heads, dim, "attn.q", shape)
    k = g.split_heads(k, heads, dim, "attn.k", shape, perm=(0, 2, 3, 1))
    v = g.split_heads(v, heads, dim, "attn.v", shape)
    ctx = g.attention_core(q, k, v, "attn", dim, g.causal_mask(), scale="sdpa")
    merged = g.merge_heads(ctx, "attn", g.ints("attn.merge_shape", [BATCH, -1, hd]))
    a = g.linear(merged, hd, HIDDEN, "attn.c_proj")
    x = g.op("Add", ["input", a], "attn.residual")
    f = g.layernorm(x, HIDDEN, "ln_2")
    f = g.gelu(g.linear(f, HIDDEN, ffn, "mlp.c_fc", gain=2.0), "mlp.gelu", "tanh")
    f = g.linear(f, ffn, HIDDEN, "mlp.c_proj")
    g.op("Add", [x, f], "mlp.residual", out="output")
    return g.build("packed_qkv", INPUT_SHAPE, ["output"], build_packed_qkv.__doc__)


def _rope_tables(dim: int, base: float = 10000.0):
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    freqs = np.outer(np.arange(SEQ, dtype=np.float64), inv)
    emb = np.concatenate([freqs, freqs], axis=-1)  # HF layout: [f0..f_{d/2-1}, f0..]
    return (np.cos(emb)[None, None].astype(np.float32),
            np.sin(emb)[None, None].astype(np.float32))


def _swiglu(g: _Attn, x, inter, name):
    """down(silu(gate(x)) * up(x)), bias-free; Silu as Mul(x, Sigmoid(x))."""
    gate = g.linear(x, HIDDEN, inter, f"{name}.gate_proj", bias=False)
    up = g.linear(x, HIDDEN, inter, f"{name}.up_proj", bias=False)
    act = g.act(gate, "silu", f"{name}.act")
    prod = g.op("Mul", [act, up], f"{name}.mul")
    return g.linear(prod, inter, HIDDEN, f"{name}.down_proj", bias=False)


def build_gqa(seed: int = 0) -> onnx.ModelProto:
    """LLaMA-like decoder layer: hidden 64, 8 query heads x 8, 2 KV heads (GQA), SwiGLU 176.

    Bias-free projections (Q 64, K 16, V 16 channels; K and V share the head-split constant
    [1, 8, 2, 8]), decomposed RMSNorm, rotary embedding on
    Q and K (constant cos/sin [1, 1, 8, 8]), K/V repeated to 8 heads the way torch exports
    ``repeat_kv``: Unsqueeze [B,2,S,D] -> [B,2,1,S,D], Expand [B,2,4,S,D], Reshape [B,8,S,D];
    then Kᵀ by Transpose [0, 1, 3, 2]; scores * 8**-0.5; causal mask; final RMSNorm.
    """
    g = _Attn(seed)
    heads, kv_heads, dim, inter = 8, 2, 8, 176
    rep = heads // kv_heads
    cos_t, sin_t = _rope_tables(dim)
    cos, sin = g.init("rope.cos", cos_t), g.init("rope.sin", sin_t)
    h = g.rmsnorm("input", HIDDEN, "input_layernorm")
    q = g.split_heads(g.linear(h, HIDDEN, heads * dim, "attn.q_proj", bias=False), heads, dim,
                      "attn.q", g.ints("attn.q.head_shape", [BATCH, SEQ, heads, dim]))
    kv_shape = g.ints("attn.kv.head_shape", [BATCH, SEQ, kv_heads, dim])
    k = g.split_heads(g.linear(h, HIDDEN, kv_heads * dim, "attn.k_proj", bias=False), kv_heads,
                      dim, "attn.k", kv_shape)
    v = g.split_heads(g.linear(h, HIDDEN, kv_heads * dim, "attn.v_proj", bias=False), kv_heads,
                      dim, "attn.v", kv_shape)
    q = g.rope(q, dim, cos, sin, "attn.q.rope")
    k = g.rope(k, dim, cos, sin, "attn.k.rope")
    axis2 = g.ints("attn.repeat_kv.axes", [2])
    expand_shape = g.ints("attn.repeat_kv.expand_shape", [BATCH, kv_heads, rep, SEQ, dim])
    heads_shape = g.ints("attn.repeat_kv.shape", [BATCH, heads, SEQ, dim])

    def repeat_kv(t, name):
        u = g.op("Unsqueeze", [t, axis2], f"{name}.unsqueeze")
        e = g.op("Expand", [u, expand_shape], f"{name}.expand")
        return g.op("Reshape", [e, heads_shape], f"{name}.reshape")

    k = repeat_kv(k, "attn.k.repeat_kv")
    v = repeat_kv(v, "attn.v.repeat_kv")
    kt = g.op("Transpose", [k], "attn.k.transpose_t", perm=[0, 1, 3, 2])
    ctx = g.attention_core(q, kt, v, "attn", dim, g.causal_mask(), scale="mul")
    merged = g.merge_heads(ctx, "attn", g.ints("attn.merge_shape", [BATCH, SEQ, heads * dim]))
    a = g.linear(merged, heads * dim, HIDDEN, "attn.o_proj", bias=False)
    x = g.op("Add", ["input", a], "attn.residual")
    f = _swiglu(g, g.rmsnorm(x, HIDDEN, "post_attention_layernorm"), inter, "mlp")
    x = g.op("Add", [x, f], "mlp.residual")
    g.rmsnorm(x, HIDDEN, "norm", out="output")
    return g.build("gqa", INPUT_SHAPE, ["output"], build_gqa.__doc__)


def build_swiglu_ffn(seed: int = 0) -> onnx.ModelProto:
    """Pre-norm SwiGLU FFN block: RMSNorm, gate/up 64 -> 176, Silu(gate) * up, down, residual."""
    g = _Attn(seed)
    f = _swiglu(g, g.rmsnorm("input", HIDDEN, "norm"), 176, "mlp")
    g.op("Add", ["input", f], "mlp.residual", out="output")
    return g.build("swiglu_ffn", INPUT_SHAPE, ["output"], build_swiglu_ffn.__doc__)


ATTENTION_BLOCKS: dict[str, Callable[[int], onnx.ModelProto]] = {
    "mha_postnorm": build_mha_postnorm,
    "mha_prenorm": build_mha_prenorm,
    "packed_qkv": build_packed_qkv,
    "gqa": build_gqa,
    "swiglu_ffn": build_swiglu_ffn,
}

# heads / kv_heads / head_dim are None for the FFN-only block; "head_shape" is the form of the
# head-split Reshape constant ("literal" [1, 8, H, D], "zero" [0, 0, H, D], "minus_one"
# [1, -1, H, D]); "shared_head_shape": which head-split Reshapes share one constant ("qkv",
# "kv" or None).
ATTENTION_CONFIGS: dict[str, dict] = {
    "mha_postnorm": dict(heads=4, kv_heads=4, head_dim=16, ffn=128, norm="post",
                         head_shape="literal", shared_head_shape="qkv", mask="padding",
                         gelu="erf", opset=18),
    "mha_prenorm": dict(heads=4, kv_heads=4, head_dim=16, ffn=256, norm="pre",
                        head_shape="zero", shared_head_shape=None, mask="causal",
                        gelu="op", opset=20),
    "packed_qkv": dict(heads=4, kv_heads=4, head_dim=16, ffn=256, norm="pre",
                       head_shape="minus_one", shared_head_shape="qkv", mask="causal",
                       gelu="tanh", opset=18),
    "gqa": dict(heads=8, kv_heads=2, head_dim=8, ffn=176, norm="rms",
                head_shape="literal", shared_head_shape="kv", mask="causal",
                gelu=None, opset=18),
    "swiglu_ffn": dict(heads=None, kv_heads=None, head_dim=None, ffn=176, norm="rms",
                       head_shape=None, shared_head_shape=None, mask=None, gelu=None,
                       opset=18),
}
