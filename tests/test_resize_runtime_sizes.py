"""Resize to a size computed at run time, as `F.interpolate(x, size=feature.shape[-2:])` exports
(DeepLabV3's image pooling branch, LR-ASPP): sizes = Concat(Slice(Shape(x), 0, 2), h, w). The
channel entry is read off x itself, so it follows the pruning; read off another tensor, it
does not, and the channels stay."""
import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphprune import prune
from graphprune.api import analyze_model
from oracle_testlib import assert_equals_oracle

RNG = np.random.default_rng(9)


def _aspp(channels_from: str) -> onnx.ModelProto:
    """x [B, 4, 8, 8] -> conv -> m [B, 8, 8, 8]; m -> global pool -> conv -> p [B, 8, 1, 1]
    -> Resize to m's height and width -> Concat with m -> conv -> y. `channels_from`: the
    tensor whose shape gives the Resize its batch and channel entries ("p" or "m")."""
    def const(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    def conv_w(out, inp, k):
        return (RNG.standard_normal((out, inp, k, k)) / np.sqrt(inp * k * k)).astype(np.float32)

    inits = [const("W1", conv_w(8, 4, 3)), const("W2", conv_w(8, 8, 1)),
             const("W3", conv_w(4, 16, 1)), const("zero", np.array([0], np.int64)),
             const("two", np.array([2], np.int64)), const("four", np.array([4], np.int64))]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["m"]),
             helper.make_node("GlobalAveragePool", ["m"], ["g"]),
             helper.make_node("Conv", ["g", "W2"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["p"]),
             helper.make_node("Shape", [channels_from], ["lead_shape"]),
             helper.make_node("Slice", ["lead_shape", "zero", "two", "zero"], ["lead"]),
             helper.make_node("Shape", ["m"], ["m_shape"]),
             helper.make_node("Slice", ["m_shape", "two", "four", "zero"], ["hw"]),
             helper.make_node("Concat", ["lead", "hw"], ["sizes"], axis=0),
             helper.make_node("Resize", ["p", "", "", "sizes"], ["pu"]),
             helper.make_node("Concat", ["m", "pu"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "W3"], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "aspp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", 4, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", 4, 8, 8])], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _group_of(model, tensor):
    _, analysis = analyze_model(model)
    (group,) = [g for g in analysis.groups if (tensor, 1) in g.spaces]
    return group


def test_resize_sizes_read_off_its_own_input_let_the_channels_prune():
    model = _aspp("p")
    assert _group_of(model, "pu").prunable
    result = prune(model, ratio=0.5, round_to=1)
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    # one group through the Concat: 16 channels, 8 kept, the upsampled branch among the losers
    assert weights["W2"].shape[0] < 8 and weights["W3"].shape[1] == 8
    assert weights["W1"].shape[0] + weights["W2"].shape[0] == 8
    feeds = [{"x": RNG.standard_normal((batch, 4, 8, 8)).astype(np.float32)} for batch in (1, 3)]
    assert_equals_oracle(model, result, feeds, tolerance=1e-5)


def test_resize_sizes_read_off_another_tensor_freeze_the_channels():
    group = _group_of(_aspp("m"), "pu")
    assert not group.prunable and "computed at run time" in group.frozen
