"""Conventions of other exporters that graphprune must take as they come.

Paddle2ONNX declares dynamic dims as -1 (dim_value) instead of a dim_param; a rule that meets a
node it did not foresee freezes those channels instead of stopping the run; image models with
dynamic height and width are checked at a useful size, not at 1x1, where padding dominates.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune import prune
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


def test_a_named_dim_keeps_one_value_across_inputs():
    """A recurrent state [2, batch, 4] beside audio [batch, sequence]: 'batch' is 1 in both,
    'sequence' takes the check size (audio front ends refuse a single sample)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, "batch", 4])
    nodes = [helper.make_node("ReduceSum", ["x"], ["r"], keepdims=1),
             helper.make_node("Unsqueeze", ["r", "zero"], ["ru"]),
             helper.make_node("Add", ["s", "ru"], ["y"])]
    zero = helper.make_tensor("zero", TensorProto.INT64, [1], [0])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "batch", 4])
    model = helper.make_model(helper.make_graph(nodes, "g", [x, s], [y], [zero]),
                              opset_imports=[helper.make_opsetid("", 18)])
    feeds, outputs = reference_run(session(model.SerializeToString()))
    assert feeds["x"].shape == (1, 64) and feeds["s"].shape == (2, 1, 4)
    assert outputs[0].shape == (2, 1, 4)


def _fpn_block(h, w):
    """conv (stride 2) -> Resize x2 -> Concat with the full-size branch -> conv: an FPN
    neck's skip connection, with the input's height and width as given."""
    rng = np.random.default_rng(0)

    def weight(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, h, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, h, w])
    inits = [weight("w1", (16, 8, 3, 3)), weight("w2", (16, 16, 3, 3)),
             weight("w3", (16, 8, 1, 1)), weight("w4", (4, 32, 1, 1)),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="stem"),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w2"], ["d"], strides=[2, 2], pads=[1, 1, 1, 1],
                              name="down"),
             helper.make_node("Relu", ["d"], ["dr"]),
             helper.make_node("Resize", ["dr", "", "scales"], ["up"], mode="nearest", name="up"),
             helper.make_node("Conv", ["x", "w3"], ["lat"], name="lateral"),
             helper.make_node("Concat", ["up", "lat"], ["cat"], axis=1, name="cat"),
             helper.make_node("Conv", ["cat", "w4"], ["y"], name="head")]
    return helper.make_model(helper.make_graph(nodes, "fpn", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 18)])


def test_dynamic_image_size_keeps_skip_connections_consistent():
    """A prime stand-in for a dynamic height (23 -> 12 -> 24 after down and up) made the
    Concat's inputs disagree, so the neck froze; the dynamic model must prune like the
    static one."""
    static = prune(_fpn_block(32, 32), ratio=0.5, round_to=1)
    dynamic = prune(_fpn_block("h", "w"), ratio=0.5, round_to=1)
    assert dynamic.report.groups_pruned == static.report.groups_pruned >= 2
    assert dynamic.report.params_after == static.report.params_after
    assert dynamic.report.fidelity is not None


def _sklearn_mlp() -> onnx.ModelProto:
    """What skl2onnx writes for make_pipeline(StandardScaler(), MLPClassifier((16, 8))):
    an ai.onnx.ml Scaler (which onnx's shape inference leaves untyped), then MatMul/Add/Relu
    layers and a probability head."""
    rng = np.random.default_rng(2)
    w = lambda *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32),  # noqa: E731
                                           f"w{len(inits)}")
    inits, nodes = [], [helper.make_node("Scaler", ["X"], ["scaled"], domain="ai.onnx.ml",
                                         offset=[0.1] * 6, scale=[2.0] * 6)]
    x = "scaled"
    for i, (cin, cout, act) in enumerate(((6, 16, "Relu"), (16, 8, "Relu"), (8, 2, "Softmax"))):
        inits.append(w(cin, cout))
        inits.append(w(cout))
        nodes += [helper.make_node("MatMul", [x, inits[-2].name], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", inits[-1].name], [f"add{i}"]),
                  helper.make_node(act, [f"add{i}"], [f"act{i}"])]
        x = f"act{i}"
    graph = helper.make_graph(nodes, "skl", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, [None, 6])], [helper.make_tensor_value_info(
            x, TensorProto.FLOAT, [None, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 1)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_sklearn_scaler_in_front_of_an_mlp_keeps_shapes_known():
    from oracle_testlib import assert_equals_oracle

    model = _sklearn_mlp()
    result = prune(model, ratio=0.5, round_to=1)
    weights = {t.name: numpy_helper.to_array(t).shape for t in result.model.graph.initializer}
    assert weights["w0"] == (6, 8) and weights["w2"] == (8, 4) and weights["w4"] == (4, 2)
    rng = np.random.default_rng(3)
    assert_equals_oracle(model, result, [{"X": rng.standard_normal((n, 6)).astype(np.float32)}
                                         for n in (1, 5)])


def test_no_groups_because_shapes_are_lost_names_where():
    # an op from a domain onnx knows nothing of: every shape after it is unknown, so the
    # refusal must say that (not "no Conv, Gemm or MatMul")
    import pytest

    from graphprune import NothingToPruneError

    model = _sklearn_mlp()
    scaler = model.graph.node[0]
    scaler.domain, scaler.op_type = "com.example", "Standardize"
    del scaler.attribute[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(NothingToPruneError) as err:
        prune(model, ratio=0.5, verify=False)
    assert "output shapes of 3 weighted layer(s)" in str(err.value)
    assert "lost at Standardize" in str(err.value) and "com.example" in str(err.value)
