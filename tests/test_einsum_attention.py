"""Attention written with Einsum (MaxViT's form): heads couple through both Einsums and prune
into a model equal to the mask oracle; forms the rule does not cover freeze with a reason."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphprune import prune
from graphprune.api import analyze_model
from graphprune.rules.linear import _einsum_terms
from oracle_testlib import assert_equals_oracle

S, E, H, D = 6, 16, 4, 4
RNG = np.random.default_rng(11)


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32) / 4


def _attention(scores_eq="bhid,bhjd->bhij", context_eq="bhij,bhjd->bhid"):
    inits = [numpy_helper.from_array(np.array([0, 0, H, D], np.int64), "split"),
             numpy_helper.from_array(np.array([0, 0, E], np.int64), "merge"),
             numpy_helper.from_array(_w(E, E), "Wo")]
    nodes = []
    for t in "qkv":
        inits.append(numpy_helper.from_array(_w(E, E), f"W{t}"))
        nodes += [helper.make_node("MatMul", ["x", f"W{t}"], [f"{t}0"], name=f"{t}_proj"),
                  helper.make_node("Reshape", [f"{t}0", "split"], [f"{t}1"], name=f"{t}_split"),
                  helper.make_node("Transpose", [f"{t}1"], [f"{t}h"], perm=[0, 2, 1, 3],
                                   name=f"{t}_heads")]
    nodes += [helper.make_node("Einsum", ["qh", "kh"], ["scores"], equation=scores_eq,
                               name="scores"),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1, name="softmax"),
              helper.make_node("Einsum", ["p", "vh"], ["ctx"], equation=context_eq,
                               name="context"),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3], name="merge_t"),
              helper.make_node("Reshape", ["ctx_t", "merge"], ["merged"], name="merge_heads"),
              helper.make_node("MatMul", ["merged", "Wo"], ["out"], name="o_proj"),
              helper.make_node("Add", ["out", "x"], ["y"], name="residual")]
    graph = helper.make_graph(
        nodes, "einsum_attention",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", S, E])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", S, E])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_einsum_attention_heads_prune_and_match_the_mask_oracle():
    model = _attention()
    _, analysis = analyze_model(model)
    (heads,) = [g for g in analysis.prunable if "heads" in g.tags]
    assert heads.units == H
    einsum_axes = {s for s in heads.spaces if s[0] in ("qh", "kh", "vh", "scores", "p", "ctx")}
    assert einsum_axes == {(t, 1) for t in ("qh", "kh", "vh", "scores", "p", "ctx")}
    result = prune(model, ratio=0.0, head_ratio=0.5)
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert weights["Wq"].shape == weights["Wk"].shape == (E, E // 2)
    feeds = [{"x": RNG.standard_normal((batch, S, E)).astype(np.float32)} for batch in (1, 3)]
    outputs = assert_equals_oracle(model, result, feeds, tolerance=1e-5)
    assert [o.shape for o in outputs] == [(batch, S, E) for batch in (1, 3)]


def test_label_summed_in_one_operand_freezes_its_channels():
    # "bkjd" sums the key's heads away on their own: the key's heads stay (the query's and the
    # value's still couple through the output and prune together)
    model = _attention(scores_eq="bhid,bkjd->bhij")
    _, analysis = analyze_model(model)
    assert not [g for g in analysis.prunable if ("kh", 1) in g.spaces]
    assert any("sums label 'k' of one operand alone" in (g.frozen or "") and ("kh", 1) in g.spaces
               for g in analysis.groups)


@pytest.mark.parametrize("equation,terms", [
    (b"B G H I D, B G H J D -> B G H I J", ["BGHID", "BGHJD", "BGHIJ"]),
    ("ij,jk", None),  # implicit output
    ("...id,...jd->...ij", None),  # ellipsis
    ("iij,jk->ik", None),  # a repeated label (a diagonal)
    ("ij->ji", None),  # one operand
])
def test_equation_parsing(equation, terms):
    assert _einsum_terms(equation) == terms
