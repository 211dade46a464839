"""RoiAlign / MaxRoiPool (Faster R-CNN's box head): the feature map's channels pass through to
the pooled regions, so the convs before them prune, and the pruned model equals the mask oracle."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphprune import prune
from graphprune.verify import run
from oracle_testlib import assert_equals_oracle

RNG = np.random.default_rng(3)


def _box_head(op: str) -> onnx.ModelProto:
    def const(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [const("W1", (RNG.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32)),
             const("W2", (RNG.standard_normal((5, 8 * 4 * 4)) / 11).astype(np.float32))]
    if op == "RoiAlign":
        inits += [const("rois", np.array([[0, 0, 8, 8], [4, 2, 15, 12]], np.float32)),
                  const("index", np.array([0, 0], np.int64))]
        pool = helper.make_node("RoiAlign", ["r", "rois", "index"], ["pooled"],
                                output_height=4, output_width=4, sampling_ratio=2)
    else:
        inits.append(const("rois", np.array([[0, 0, 0, 8, 8], [0, 4, 2, 15, 12]], np.float32)))
        pool = helper.make_node("MaxRoiPool", ["r", "rois"], ["pooled"], pooled_shape=[4, 4])
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), pool,
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W2"], ["y"], transB=1)]
    model = helper.make_model(helper.make_graph(
        nodes, "box_head", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                          [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 5])], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("op", ["RoiAlign", "MaxRoiPool"])
def test_channels_pass_through_roi_pooling(op):
    model = _box_head(op)
    result = prune(model, ratio=0.5, round_to=1)
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert weights["W1"].shape[0] == 4 and weights["W2"].shape[1] == 4 * 4 * 4
    feeds = [{"x": RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(2)]
    assert run(result.model, feeds[0])[0].shape == (2, 5)
    assert_equals_oracle(model, result, feeds)
