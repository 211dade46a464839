"""ScatterElements / GatherElements and the run-time shapes around them, as torchvision's Faster
R-CNN exports its multi-level RoIAlign: each feature level's regions are scattered into a
zeros tensor (ConstantOfShape of a shape read off the first level's output), with indices
expanded to a shape read off each level's output. The levels' channels pass through all of it,
so the convs before them prune together, and the pruned model equals the mask oracle."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import NothingToPruneError, prune
from graphprune.api import analyze_model
from graphprune.verify import run
from oracle_testlib import assert_equals_oracle

RNG = np.random.default_rng(5)


class _Builder:
    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, inputs, out, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def dim(self, tensor, axis, name):
        """Unsqueeze(Gather(Shape(tensor), axis)): one entry of a run-time shape vector."""
        shape = self.op("Shape", [tensor], f"{name}.shape")
        picked = self.op("Gather", [shape, self.const(f"{name}.axis", np.int64(axis))],
                         f"{name}.gather")
        return self.op("Unsqueeze", [picked, self.const(f"{name}.unsq", np.array([0]))], name)

    def model(self, inputs, output, shape):
        model = helper.make_model(
            helper.make_graph(self.nodes, "merge", inputs,
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)],
                              self.inits),
            opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model, full_check=True)
        return model


def _multilevel_merge() -> onnx.ModelProto:
    b = _Builder()

    def w(*shape):
        return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    r0 = b.op("Relu", [b.op("Conv", ["x", b.const("W1", w(8, 3, 3, 3))], "c0", pads=[1] * 4)],
              "r0")
    r1 = b.op("Relu", [b.op("Conv", [r0, b.const("W2", w(8, 8, 3, 3))], "c1", pads=[1] * 4,
                            strides=[2, 2])], "r1")
    pooled, picks = [], []
    for k, (feature, scale) in enumerate(((r0, 1.0), (r1, 0.5))):
        hit = b.op("Equal", ["levels", b.const(f"level{k}", np.int64(k))], f"hit{k}")
        rows = b.op("Transpose", [b.op("NonZero", [hit], f"nz{k}")], f"rows{k}")
        pick = b.op("Squeeze", [rows, b.const(f"sq{k}", np.array([1]))], f"pick{k}")
        rois = b.op("Gather", ["rois", pick], f"rois{k}", axis=0)
        image = b.op("Sub", [pick, pick], f"image{k}")  # every region is in image 0
        pooled.append(b.op("RoiAlign", [feature, rois, image], f"pooled{k}", output_height=2,
                           output_width=2, sampling_ratio=2, spatial_scale=scale))
        picks.append(pick)
    # zeros [regions, C, 2, 2], C read off the first level's pooled regions
    shape = b.op("Concat", [b.dim("levels", 0, "n")] + [b.dim(pooled[0], a, f"z{a}")
                                                          for a in (1, 2, 3)], "zshape", axis=0)
    merged = b.op("ConstantOfShape", [shape], "zeros",
                  value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    for k, (pick, regions) in enumerate(zip(picks, pooled)):
        index = b.op("Reshape", [pick, b.const(f"col{k}", np.array([-1, 1, 1, 1]))], f"ix{k}")
        if k == 0:  # torchvision's form: every entry a Gather of a Shape
            target = b.op("Concat", [b.dim(index, 0, f"t{k}.0")] + [
                b.dim(regions, a, f"t{k}.{a}") for a in (1, 2, 3)], f"target{k}", axis=0)
        else:  # [regions, C] sliced off the regions' shape at run time, then literals
            head = b.op("Slice", [b.op("Shape", [regions], f"rshape{k}"),
                                  b.const(f"s0.{k}", np.array([0])),
                                  b.const(f"s1.{k}", np.array([2]))], f"head{k}")
            target = b.op("Concat", [head, b.const(f"hw{k}", np.array([2, 2]))],
                          f"target{k}", axis=0)
        flat = b.op("Reshape", [target, b.const(f"flat{k}", np.array([-1]))], f"tflat{k}")
        ones = b.op("ConstantOfShape", [b.op("Shape", [flat], f"tlen{k}")], f"ones{k}",
                    value=helper.make_tensor("one", TensorProto.INT64, [1], [1]))
        minus = b.op("Mul", [ones, b.const(f"m1.{k}", np.int64(-1))], f"minus{k}")
        guard = b.op("Where", [b.op("Equal", [flat, minus], f"isneg{k}"), ones, flat],
                     f"guard{k}")
        spread = b.op("Expand", [index, guard], f"spread{k}")
        merged = b.op("ScatterElements", [merged, spread, regions], f"merged{k}", axis=0)
    flat = b.op("Flatten", [merged], "features")
    b.op("Gemm", [flat, b.const("W3", w(5, 32))], "y", transB=1)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16]),
              helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["R", 4]),
              helper.make_tensor_value_info("levels", TensorProto.INT64, ["R"])]
    return b.model(inputs, "y", ["R", 5])


def _feeds(regions: int) -> dict:
    corner = RNG.uniform(0, 10, (regions, 2))
    rois = np.concatenate([corner, corner + RNG.uniform(2, 6, (regions, 2))], 1)
    levels = np.arange(regions) % 2
    RNG.shuffle(levels)
    return {"x": RNG.standard_normal((1, 3, 16, 16)).astype(np.float32),
            "rois": rois.astype(np.float32), "levels": levels.astype(np.int64)}


def test_multilevel_roi_merge_prunes_to_the_mask_oracle():
    model = _multilevel_merge()
    result = prune(model, ratio=0.5, round_to=1)
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    # one group: both levels' channels, joined by the scatter, and fc's inputs by 4 per channel
    assert weights["W1"].shape[0] == 4 and weights["W2"].shape[:2] == (4, 4)
    assert weights["W3"].shape == (5, 16)
    outputs = assert_equals_oracle(model, result, [_feeds(6), _feeds(9)])
    assert [o.shape for o in outputs] == [(6, 5), (9, 5)]
    assert float(np.abs(outputs[0]).max()) > 0  # the regions were scattered, not all zeros


def _replaced(model, node_name, **changes) -> onnx.ModelProto:
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    node = next(n for n in edited.graph.node if n.name == node_name)
    for key, value in changes.items():
        for a in node.attribute:
            if a.name == key:
                node.attribute.remove(a)
                break
        node.attribute.append(helper.make_attribute(key, value))
    return edited


def test_scatter_along_the_channel_axis_freezes():
    # the same graph, scattering along axis 1: regions land on other channels
    model = _replaced(_multilevel_merge(), "merged1", axis=1)
    graph, analysis = analyze_model(model)
    reasons = [g.frozen for g in analysis.frozen]
    assert any("ScatterElements 'merged1' indexes axis 1" in r for r in reasons), reasons


def _gather_elements(index_channels: int) -> onnx.ModelProto:
    b = _Builder()
    r = b.op("Relu", [b.op("Conv", ["x", b.const("W1", RNG.standard_normal(
        (6, 3, 1, 1)).astype(np.float32))], "c")], "r")
    index = RNG.integers(0, 5, (1, index_channels, 5, 5)).astype(np.int64)
    picked = b.op("GatherElements", [r, b.const("index", index)], "picked", axis=3)
    b.op("Conv", [picked, b.const("W2", RNG.standard_normal(
        (4, index_channels, 1, 1)).astype(np.float32))], "y")
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])], "y",
                   [1, 4, 5, 5])


def test_gather_elements_passes_channels_of_equal_size():
    model = _gather_elements(6)
    result = prune(model, ratio=0.5, round_to=1)
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert weights["W1"].shape[0] == 3 and weights["W2"].shape[1] == 3
    assert weights[next(n.input[1] for n in result.model.graph.node
                        if n.op_type == "GatherElements")].shape == (1, 3, 5, 5)
    assert_equals_oracle(model, result, [{"x": RNG.standard_normal((1, 3, 5, 5)).astype(
        np.float32)} for _ in range(2)])


def test_gather_elements_with_fewer_index_channels_freezes():
    # indices cover 4 of the 6 channels: channel c of the output is not channel c of a
    # same-size space, so nothing may go
    with pytest.raises(NothingToPruneError, match="differ in size on axis 1"):
        prune(_gather_elements(4), ratio=0.5, round_to=1)
    assert run(_gather_elements(4), {"x": np.ones((1, 3, 5, 5), np.float32)})[0].shape == \
        (1, 4, 5, 5)


def test_constant_of_shape_follows_a_channel_count_read_at_run_time():
    # x.new_ones(x.shape[:2] + (5, 5)) * x: the shape's [N, C] part is sliced off Shape(r)
    # with a dynamic batch, so it stays a run-time value that follows the pruned channels
    b = _Builder()
    r = b.op("Relu", [b.op("Conv", ["x", b.const("W1", RNG.standard_normal(
        (6, 3, 1, 1)).astype(np.float32))], "c")], "r")
    head = b.op("Slice", [b.op("Shape", [r], "rshape"), b.const("s0", np.array([0])),
                          b.const("s1", np.array([2]))], "head")
    shape = b.op("Concat", [head, b.const("hw", np.array([5, 5]))], "shape", axis=0)
    ones = b.op("ConstantOfShape", [shape], "ones",
                value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    gated = b.op("Mul", [r, ones], "gated")
    b.op("Conv", [gated, b.const("W2", RNG.standard_normal((4, 6, 1, 1)).astype(np.float32))],
         "y")
    model = b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
                    "y", ["N", 4, 5, 5])
    result = prune(model, ratio=0.5, round_to=1)
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert weights["W1"].shape[0] == 3 and weights["W2"].shape[1] == 3
    assert_equals_oracle(model, result, [{"x": RNG.standard_normal((n, 3, 5, 5)).astype(
        np.float32)} for n in (1, 3)])
