"""ONNX Runtime's fused ops (com.microsoft Attention, SkipLayerNormalization, BiasGelu):
whole heads and FFN channels prune, attributes follow, the mask oracle holds."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import prune
from graphprune.api import analyze_model
from graphprune.verify import random_inputs, run
from oracle_testlib import masked_reference

S, C, H, F = 8, 64, 4, 128


def _fused_block(seed=0, qkv_sizes=False):
    rng = np.random.default_rng(seed)
    inits = []

    def w(name, *shape, scale=None):
        a = rng.standard_normal(shape).astype(np.float32) * (scale or 1 / np.sqrt(shape[0]))
        inits.append(numpy_helper.from_array(a.astype(np.float32), name))
        return name

    attrs = {"num_heads": H}
    if qkv_sizes:
        attrs["qkv_hidden_sizes"] = [C, C, C]
    nodes = [
        helper.make_node("Attention", ["input", w("qkv_w", C, 3 * C), w("qkv_b", 3 * C, scale=.1)],
                         ["ctx"], name="attn", domain="com.microsoft", **attrs),
        helper.make_node("MatMul", ["ctx", w("wo", C, C)], ["proj"], name="proj"),
        helper.make_node("SkipLayerNormalization", ["proj", "input", w("g1", C, scale=1),
                         w("b1", C, scale=.1), w("bo", C, scale=.1)], ["ln1"], name="ln1",
                         domain="com.microsoft", epsilon=1e-5),
        helper.make_node("MatMul", ["ln1", w("w1", C, F)], ["f1"], name="fc1"),
        helper.make_node("BiasGelu", ["f1", w("bf1", F, scale=.1)], ["g"], name="gelu",
                         domain="com.microsoft"),
        helper.make_node("MatMul", ["g", w("w2", F, C)], ["f2"], name="fc2"),
        helper.make_node("SkipLayerNormalization", ["f2", "ln1", w("g2", C, scale=1),
                         w("b2", C, scale=.1), w("bf2", C, scale=.1)], ["output"], name="ln2",
                         domain="com.microsoft", epsilon=1e-5),
    ]
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, S, C])], [helper.make_tensor_value_info(
            "output", TensorProto.FLOAT, [1, S, C])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("qkv_sizes", [False, True])
def test_fused_attention_prunes_whole_heads(qkv_sizes):
    model = _fused_block(qkv_sizes=qkv_sizes)
    result = prune(model, ratio=0.5, head_ratio=0.5, round_to=1)
    attn = next(n for n in result.model.graph.node if n.op_type == "Attention")
    assert helper.get_attribute_value(next(a for a in attn.attribute
                                           if a.name == "num_heads")) == H // 2
    weights = {t.name: t for t in result.model.graph.initializer}
    assert list(weights["qkv_w"].dims) == [C, 3 * C // 2]
    assert list(weights["w1"].dims) == [C, F // 2]  # FFN channels through BiasGelu
    onnx.checker.check_model(result.model, full_check=True)

    feeds = random_inputs(model, seed=2)
    want, have, orig = run(masked_reference(model, result.plan), feeds)[0], \
        run(result.model, feeds)[0], \
        run(model, feeds)[0]
    assert np.abs(want - have).max() <= 1e-4 * max(1.0, np.abs(want).max())
    assert not np.allclose(want, orig, atol=1e-3)


def test_hidden_size_stays_by_default():
    _, analysis = analyze_model(_fused_block())
    frozen = [g.frozen for g in analysis.frozen]
    assert any("SkipLayerNormalization" in why for why in frozen)
