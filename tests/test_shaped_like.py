"""Reshape and Expand whose whole target is Shape(t) (torch's reshape_as / expand_as, LeViT's
BatchNorm over flattened tokens): the output is shaped like t at run time, so its channels are
t's channels. They couple to t and need no rewritten constant."""
import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphprune import prune
from graphprune.api import analyze_model
from oracle_testlib import assert_equals_oracle, residual_model

N, C, HIDDEN = 6, 8, 16
RNG = np.random.default_rng(5)


def _levit_like() -> onnx.ModelProto:
    """x [B, N, C] -> MatMul -> flatten(0, 1) -> BatchNorm -> reshape_as -> Relu ->
    Mul(., expand_as(token mean)) -> MatMul -> + x."""
    def const(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [const("W1", (RNG.standard_normal((C, HIDDEN)) / np.sqrt(C)).astype(np.float32)),
             const("W2", (RNG.standard_normal((HIDDEN, C)) / 4).astype(np.float32)),
             const("scale", RNG.uniform(0.5, 1.5, HIDDEN).astype(np.float32)),
             const("bias", RNG.uniform(-0.5, 0.5, HIDDEN).astype(np.float32)),
             const("mean", RNG.uniform(-0.1, 0.1, HIDDEN).astype(np.float32)),
             const("var", RNG.uniform(0.5, 1.5, HIDDEN).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("Flatten", ["h"], ["rows"], axis=2),
             helper.make_node("BatchNormalization", ["rows", "scale", "bias", "mean", "var"],
                              ["normed"]),
             helper.make_node("Shape", ["h"], ["h_shape"]),
             helper.make_node("Reshape", ["normed", "h_shape"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["gate"], axes=[1], keepdims=1),
             helper.make_node("Shape", ["a"], ["a_shape"]),
             helper.make_node("Expand", ["gate", "a_shape"], ["gate_x"]),
             helper.make_node("Mul", ["a", "gate_x"], ["gated"]),
             helper.make_node("MatMul", ["gated", "W2"], ["out"]),
             helper.make_node("Add", ["out", "x"], ["y"])]
    return residual_model("levit_like", nodes, inits, ["B", N, C])


def test_reshape_as_and_expand_as_couple_to_the_shape_source():
    model = _levit_like()
    _, analysis = analyze_model(model)
    (group,) = [g for g in analysis.prunable if ("h", 2) in g.spaces]
    assert {("h2", 2), ("gate_x", 2), ("rows", 1)} <= set(group.spaces)
    result = prune(model, ratio=0.5, round_to=1)
    onnx.checker.check_model(result.model, full_check=True)
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert weights["W1"].shape == (C, HIDDEN // 2) and weights["W2"].shape == (HIDDEN // 2, C)
    feeds = [{"x": RNG.standard_normal((batch, N, C)).astype(np.float32)} for batch in (1, 3)]
    outputs = assert_equals_oracle(model, result, feeds, tolerance=1e-5)
    assert [o.shape for o in outputs] == [(batch, N, C) for batch in (1, 3)]
