"""Conventions of other exporters that graphprune must take as they come.

Paddle2ONNX declares dynamic dims as -1 (dim_value) instead of a dim_param; a rule that meets a
node it did not foresee freezes those channels instead of stopping the run; image models with
dynamic height and width are checked at a useful size, not at 1x1, where padding dominates.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper

from graphprune import prune
from graphprune import analysis as analysis_mod
from graphprune.api import analyze_model
from graphprune.coupling import RULES, Port, Rule
from graphprune.verify import random_inputs, reference_run, session
from models.blocks import BLOCKS


def _with_dims(model: onnx.ModelProto, dims: dict[int, object]) -> onnx.ModelProto:
    """Copy of `model` whose first input has `dims` (axis -> int or dim_param name)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    shape = out.graph.input[0].type.tensor_type.shape
    for axis, value in dims.items():
        d = shape.dim[axis]
        if isinstance(value, int):
            d.dim_value = value
        else:
            d.dim_param = value
    for vi in out.graph.output:
        vi.type.tensor_type.shape.dim[0].dim_value = -1 if dims.get(0) == -1 else \
            vi.type.tensor_type.shape.dim[0].dim_value
    return out


def test_minus_one_dims_are_dynamic():
    model = _with_dims(BLOCKS["resnet_basic"](0), {0: -1})
    result = prune(model, ratio=0.4, round_to=1)
    report = result.report
    assert report.macs_before > 0 and report.macs_after > 0, "a -1 dim counted as a size"
    assert 0 < report.macs_after < report.macs_before
    assert report.fidelity is not None
    dim0 = result.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == -1, "the input's declared shape must be kept as it was"
    feeds = random_inputs(model)
    assert next(iter(feeds.values())).shape[0] == 1


def test_dynamic_image_size_is_checked_at_a_useful_size():
    x = BLOCKS["resnet_basic"](0)
    rank = len(x.graph.input[0].type.tensor_type.shape.dim)
    assert rank == 4
    model = _with_dims(x, {2: "height", 3: "width"})
    feeds, outputs = reference_run(session(model.SerializeToString()))
    h, w = next(iter(feeds.values())).shape[2:]
    assert (h, w) == (64, 64)
    assert outputs[0].shape[0] == 1


def test_a_failing_rule_freezes_its_channels(monkeypatch):
    model = BLOCKS["resnet_basic"](0)

    def broken(node, port, graph):
        raise IndexError("a shape this rule did not foresee")

    monkeypatch.setitem(RULES, "Relu", Rule("Relu", broken))
    _, analysis = analyze_model(model)
    reasons = [g.frozen for g in analysis.groups if g.frozen]
    assert any("the Relu rule could not follow node" in r and "IndexError" in r for r in reasons)
    assert analysis_mod  # the wrapper lives in graphprune.analysis


def test_concat_of_unknown_rank_is_frozen_not_a_crash():
    # Concat whose inputs come from an op onnx cannot infer (a custom-domain op): no rank.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8, 1, 1],
                           np.random.default_rng(0).standard_normal(64).astype(np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Mystery", ["c"], ["m"], name="mystery", domain="example.custom"),
             helper.make_node("Concat", ["c", "m"], ["cat"], name="cat", axis=1),
             helper.make_node("Mystery", ["cat"], ["y"], name="mystery2", domain="example.custom")]
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("example.custom", 1)])
    graph, analysis = analyze_model(model)
    assert analysis.groups
    cat = graph.node_by_name("cat")
    effect = RULES["Concat"].couple(cat, Port("in", 0, 1), graph)
    assert effect.frozen and "Concat 'cat'" in effect.frozen
