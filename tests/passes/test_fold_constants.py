import numpy as np
import onnx
from onnx import helper

from graphprune.passes.fold_constants import FoldConstants
from passes_testlib import assert_equivalent, init, load, make_model, op_types, rand, vi

I64 = onnx.TensorProto.INT64


def _shape_chain(batch):
    """Reshape(x, Concat(Gather(Shape(x), 0), [-1])): the usual flatten export."""
    return make_model(
        [helper.make_node("Constant", [], ["idx"], value_int=0),
         helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Gather", ["s", "idx"], ["n"], axis=0),
         helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
         helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
         helper.make_node("Reshape", ["x", "target"], ["y"])],
        [vi("x", [batch, 3, 4])], [vi("y", [batch, 12])],
        [init("axes", np.array([0], np.int64)), init("minus1", np.array([-1], np.int64))])


def test_static_shape_chain_folds_to_plain_reshape():
    model = _shape_chain(2)
    graph = load(model)
    assert FoldConstants().run(graph)
    assert op_types(graph) == ["Reshape"]
    target = graph.weights[graph.nodes[0].input[1]]
    assert target.dtype == np.int64 and target.tolist() == [2, -1]
    assert set(graph.weights) == {graph.nodes[0].input[1]}  # chain inputs were dropped
    assert_equivalent(model, graph)
    assert FoldConstants().run(graph) is False


def test_dynamic_batch_shape_is_not_folded():
    model = _shape_chain("N")
    graph = load(model)
    assert FoldConstants().run(graph) is False
    assert "Shape" in op_types(graph)
    assert_equivalent(model, graph, batch=5)


def test_shape_start_end():
    model = make_model(
        [helper.make_node("Shape", ["x"], ["s1"], start=1),
         helper.make_node("Shape", ["x"], ["s2"], start=-2, end=-1),
         helper.make_node("Shape", ["x"], ["s3"], start=0, end=10),
         helper.make_node("Concat", ["s1", "s2", "s3"], ["y"], axis=0)],
        [vi("x", [2, 3, 4])], [vi("y", [6], I64)], opset=15)
    graph = load(model)
    assert FoldConstants().run(graph)
    assert graph.nodes == [] and graph.weights["y"].tolist() == [3, 4, 3, 2, 3, 4]
    assert_equivalent(model, graph)  # a folded graph output is an initializer


def test_constant_arithmetic_keeps_dtypes():
    model = make_model(
        [helper.make_node("Constant", [], ["c"], value=init("cv", rand(3))),
         helper.make_node("Mul", ["c", "w"], ["cw"]),
         helper.make_node("Cast", ["cw"], ["cw16"], to=onnx.TensorProto.FLOAT16),
         helper.make_node("Cast", ["cw16"], ["cw32"], to=onnx.TensorProto.FLOAT),
         helper.make_node("Cast", ["k"], ["k32"], to=onnx.TensorProto.INT32),
         helper.make_node("Add", ["k32", "k32"], ["k2"]),
         helper.make_node("Cast", ["k2"], ["kf"], to=onnx.TensorProto.FLOAT),
         helper.make_node("Add", ["x", "cw32"], ["a"]),
         helper.make_node("Add", ["a", "kf"], ["y"])],
        [vi("x", [2, 3])], [vi("y", [2, 3])],
        [init("w", rand(3)), init("k", np.array([1, 2, 3], np.int64))])
    graph = load(model)
    assert FoldConstants().run(graph)
    assert op_types(graph) == ["Add", "Add"]
    assert graph.weights[graph.nodes[0].input[1]].dtype == np.float32
    assert_equivalent(model, graph)


def test_constant_of_shape_and_range_fold():
    model = make_model(
        [helper.make_node("ConstantOfShape", ["shape"], ["ones"],
                          value=init("v", np.array([1.5], np.float32))),
         helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
         helper.make_node("Add", ["x", "ones"], ["a"]),
         helper.make_node("Add", ["a", "r"], ["y"])],
        [vi("x", [2, 3])], [vi("y", [2, 3])],
        [init("shape", np.array([2, 3], np.int64)), init("start", np.array(0, np.float32)),
         init("limit", np.array(3, np.float32)), init("delta", np.array(1, np.float32))])
    graph = load(model)
    assert FoldConstants().run(graph)
    assert op_types(graph) == ["Add", "Add"]
    assert_equivalent(model, graph)


def test_random_and_too_large_nodes_are_left():
    model = make_model(
        [helper.make_node("RandomNormal", [], ["noise"], shape=[2, 3]),
         helper.make_node("ConstantOfShape", ["big_shape"], ["big"]),
         helper.make_node("ReduceSum", ["big"], ["bsum"], keepdims=0),
         helper.make_node("Add", ["x", "noise"], ["a"]),
         helper.make_node("Add", ["a", "bsum"], ["y"])],
        [vi("x", [2, 3])], [vi("y", [2, 3])],
        [init("big_shape", np.array([1000, 1001], np.int64))])
    graph = load(model)
    assert FoldConstants().run(graph) is False
    assert op_types(graph) == ["RandomNormal", "ConstantOfShape", "ReduceSum", "Add", "Add"]
    graph = load(model)
    assert FoldConstants(max_elements=2_000_000).run(graph)
    assert op_types(graph) == ["RandomNormal", "Add", "Add"]


def test_weight_preprocessing_folds_whatever_the_weight_size_but_growth_is_capped():
    """NF-ResNet standardizes its conv weights in the graph: a result no larger than its
    input weight folds even past the cap; an Expand that would grow past it does not."""
    w = np.random.default_rng(0).standard_normal((1200, 1000)).astype(np.float32)
    model = make_model(
        [helper.make_node("ReduceMean", ["w"], ["mean"], axes=[1], keepdims=1),
         helper.make_node("Sub", ["w", "mean"], ["centered"]),
         helper.make_node("Expand", ["row", "big_shape"], ["grown"]),
         helper.make_node("ReduceSum", ["grown"], ["gsum"], keepdims=0),
         helper.make_node("MatMul", ["x", "centered"], ["h"]),
         helper.make_node("Add", ["h", "gsum"], ["y"])],
        [vi("x", [2, 1200])], [vi("y", [2, 1000])],
        [init("w", w), init("row", np.ones((1, 1000), np.float32)),
         init("big_shape", np.array([1500, 1000], np.int64))])
    graph = load(model)
    assert FoldConstants().run(graph)
    assert op_types(graph) == ["Expand", "ReduceSum", "MatMul", "Add"]
    assert_equivalent(model, graph)


def test_dequantize_of_weight_is_kept():
    model = make_model(
        [helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["w"]),
         helper.make_node("Add", ["x", "w"], ["y"])],
        [vi("x", [2, 3])], [vi("y", [2, 3])],
        [init("wq", np.array([1, -2, 3], np.int8)), init("s", np.float32(0.1)),
         init("zp", np.int8(0))])
    graph = load(model)
    assert FoldConstants().run(graph) is False
    assert op_types(graph) == ["DequantizeLinear", "Add"]


def test_evaluation_error_leaves_node():
    # A reshape that cannot be evaluated: the pass must leave it rather than raise. Built
    # without the checker, whose shape inference would reject it.
    bad = helper.make_graph(
        [helper.make_node("Reshape", ["w", "bad"], ["r"]),
         helper.make_node("Add", ["x", "r"], ["y"])],
        "bad", [vi("x", [4])], [vi("y", None)],
        [init("w", rand(6)), init("bad", np.array([4], np.int64))])
    graph = load(helper.make_model(bad, opset_imports=[helper.make_opsetid("", 17)]))
    assert FoldConstants().run(graph) is False
    assert op_types(graph) == ["Reshape", "Add"]
