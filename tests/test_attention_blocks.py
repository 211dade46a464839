"""Every builder in models.attention yields a valid, deterministic, runnable transformer block
that computes what it claims (checked against a numpy reference built from its weights)."""
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from models.attention import ATTENTION_BLOCKS, ATTENTION_CONFIGS, INPUT_SHAPE


def _input(seed=123):
    return np.random.default_rng(seed).standard_normal(INPUT_SHAPE).astype(np.float32)


def _session(model: onnx.ModelProto):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=sorted(ATTENTION_BLOCKS))
def built(request):
    return request.param, ATTENTION_BLOCKS[request.param](0)


def test_registry_matches_configs():
    assert set(ATTENTION_BLOCKS) == set(ATTENTION_CONFIGS)
    assert set(ATTENTION_BLOCKS) >= {"mha_postnorm", "mha_prenorm", "packed_qkv", "gqa",
                                     "swiglu_ffn"}


def test_checker_and_structure(built):
    name, model = built
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 9
    (opset,) = model.opset_import
    assert opset.domain in ("", "ai.onnx") and opset.version == ATTENTION_CONFIGS[name]["opset"]
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    (inp,) = model.graph.input
    assert inp.name == "input"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == list(INPUT_SHAPE)
    out = model.graph.output[0]
    assert out.name == "output"
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == list(INPUT_SHAPE)
    assert {t.data_type for t in model.graph.initializer} <= {onnx.TensorProto.FLOAT,
                                                               onnx.TensorProto.INT64}
    assert not any(n.op_type == "Constant" for n in model.graph.node)  # weights are initializers


def test_runs_with_finite_nontrivial_output(built):
    name, model = built
    x = _input()
    outs = _session(model).run(None, {"input": x})
    assert len(outs) == len(model.graph.output)
    y = outs[0]
    assert y.shape == INPUT_SHAPE and y.dtype == np.float32
    assert np.isfinite(y).all()
    assert y.std() > 0.1
    assert np.abs(y - x).mean() > 0.1  # not the residual alone
    assert not np.allclose(y[0, 0], y[0, 1])  # positions differ
    y2 = _session(model).run(None, {"input": _input(7)})[0]
    assert np.abs(y2 - y).mean() > 0.1  # depends on the input


def test_deterministic(built):
    name, model = built
    builder = ATTENTION_BLOCKS[name]
    assert builder(0).SerializeToString() == model.SerializeToString()
    assert builder(seed=0).SerializeToString() == model.SerializeToString()
    assert builder(1).SerializeToString() != model.SerializeToString()


def test_attention_probabilities_are_nontrivial(built):
    """Softmax rows sum to 1, masked keys get ~0, and the rows are neither one-hot nor uniform."""
    name, model = built
    cfg = ATTENTION_CONFIGS[name]
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if cfg["heads"] is None:
        assert not softmax
        return
    (node,) = softmax
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT,
                                                        None))
    probs = _session(m).run([node.output[0]], {"input": _input()})[0]
    seq = INPUT_SHAPE[1]
    assert probs.shape == (1, cfg["heads"], seq, seq)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    if cfg["mask"] == "causal":
        assert probs[..., np.triu_indices(seq, 1)[0], np.triu_indices(seq, 1)[1]].max() < 1e-6
        rows = probs[:, :, seq // 2:, :]  # rows with several visible keys
    else:
        assert probs[..., -2:].max() < 1e-3  # padding mask on the last two keys
        rows = probs
    assert rows.max() < 0.999  # not one-hot
    assert rows.std(-1).mean() > 1e-3  # not uniform


# ---------------------------------------------------------------------------------------------
# numpy reference: the same computation written directly from the weights (by name)

_erf = np.vectorize(math.erf)


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _rms(x, w, eps=1e-6):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w


def _gelu(x, form):
    if form == "tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / np.sqrt(2)))


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _attention(q, k, v, heads, kv_heads, dim, mask, rope=None):
    """q [S, heads*dim], k/v [S, kv_heads*dim] -> [S, heads*dim]."""
    seq = q.shape[0]
    q = q.reshape(seq, heads, dim).transpose(1, 0, 2)
    k = k.reshape(seq, kv_heads, dim).transpose(1, 0, 2)
    v = v.reshape(seq, kv_heads, dim).transpose(1, 0, 2)
    if rope is not None:
        q, k = rope(q), rope(k)
    k = np.repeat(k, heads // kv_heads, axis=0)  # head h uses KV head h // rep
    v = np.repeat(v, heads // kv_heads, axis=0)
    p = _softmax(q @ k.transpose(0, 2, 1) / np.sqrt(dim) + mask)
    return (p @ v).transpose(1, 0, 2).reshape(seq, heads * dim)


def _reference(name, model, x):
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    x = x[0].astype(np.float64)
    cfg = ATTENTION_CONFIGS[name]

    def lin(h, p, bias=True):
        y = h @ w[f"{p}.weight"]
        return y + w[f"{p}.bias"] if bias else y

    def mha(h, mask):
        q, k, v = lin(h, "attn.q"), lin(h, "attn.k"), lin(h, "attn.v")
        ctx = _attention(q, k, v, cfg["heads"], cfg["kv_heads"], cfg["head_dim"], mask)
        return lin(ctx, "attn.o")

    def swiglu(h):
        gate = h @ w["mlp.gate_proj.weight"]
        act = gate / (1 + np.exp(-gate))
        return (act * (h @ w["mlp.up_proj.weight"])) @ w["mlp.down_proj.weight"]

    if name == "mha_postnorm":
        h = _ln(mha(x, w["padding_mask"][0, 0]) + x, w["attn.ln.weight"], w["attn.ln.bias"], 1e-12)
        f = lin(_gelu(lin(h, "ffn.fc1"), "erf"), "ffn.fc2")
        return _ln(f + h, w["ffn.ln.weight"], w["ffn.ln.bias"], 1e-12)
    if name == "mha_prenorm":
        h = x + mha(_ln(x, w["ln_1.weight"], w["ln_1.bias"], 1e-5), w["causal_mask"][0, 0])
        f = lin(_gelu(lin(_ln(h, w["ln_2.weight"], w["ln_2.bias"], 1e-5), "mlp.fc"), "erf"),
                "mlp.proj")
        return _ln(h + f, w["ln_f.weight"], w["ln_f.bias"], 1e-5)
    if name == "packed_qkv":
        hd = cfg["heads"] * cfg["head_dim"]
        qkv = lin(_ln(x, w["ln_1.weight"], w["ln_1.bias"], 1e-5), "attn.c_attn")
        ctx = _attention(qkv[:, :hd], qkv[:, hd:2 * hd], qkv[:, 2 * hd:], cfg["heads"],
                         cfg["kv_heads"], cfg["head_dim"], w["causal_mask"][0, 0])
        h = x + lin(ctx, "attn.c_proj")
        f = lin(_gelu(lin(_ln(h, w["ln_2.weight"], w["ln_2.bias"], 1e-5), "mlp.c_fc"), "tanh"),
                "mlp.c_proj")
        return h + f
    if name == "gqa":
        cos, sin = w["rope.cos"][0, 0], w["rope.sin"][0, 0]
        half = cfg["head_dim"] // 2

        def rope(t):  # t [H, S, D]
            return t * cos + np.concatenate([-t[..., half:], t[..., :half]], -1) * sin

        h = _rms(x, w["input_layernorm.weight"])
        ctx = _attention(lin(h, "attn.q_proj", False), lin(h, "attn.k_proj", False),
                         lin(h, "attn.v_proj", False), cfg["heads"], cfg["kv_heads"],
                         cfg["head_dim"], w["causal_mask"][0, 0], rope)
        h = x + lin(ctx, "attn.o_proj", False)
        h = h + swiglu(_rms(h, w["post_attention_layernorm.weight"]))
        return _rms(h, w["norm.weight"])
    if name == "swiglu_ffn":
        return x + swiglu(_rms(x, w["norm.weight"]))
    raise AssertionError(f"no reference for {name}")


def test_matches_numpy_reference(built):
    name, model = built
    x = _input()
    got = _session(model).run(["output"], {"input": x})[0][0]
    want = _reference(name, model, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_gqa_expands_kv_heads_the_torch_way():
    model = ATTENTION_BLOCKS["gqa"](0)
    ops = [n.op_type for n in model.graph.node]
    for chain in (["Unsqueeze", "Expand", "Reshape"],):
        starts = [i for i in range(len(ops)) if ops[i:i + len(chain)] == chain]
        assert len(starts) == 2, "one Unsqueeze->Expand->Reshape for K and one for V"
    k_proj = {t.name: list(t.dims) for t in model.graph.initializer}["attn.k_proj.weight"]
    assert k_proj == [64, 16]  # 2 KV heads x 8
