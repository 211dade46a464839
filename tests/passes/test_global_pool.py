import numpy as np
import onnx
import pytest
from onnx import helper

from graphprune.passes.global_pool import ReduceToGlobalPool
from passes_testlib import assert_equivalent, init, load, make_model, op_types, rand, vi

F = onnx.TensorProto.FLOAT


def _run(model):
    graph = load(model)
    graph.infer_shapes()
    changed = ReduceToGlobalPool().run(graph)
    return graph, changed


def _se_block(reduce_node, opset=17, initializers=()):
    """Squeeze-excite: the pooled channel weights scale the conv output (the pool output is
    read by a node, so a rewrite must keep its name and shape)."""
    return make_model(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
         reduce_node,
         helper.make_node("Sigmoid", ["p"], ["s"]),
         helper.make_node("Mul", ["c", "s"], ["y"])],
        [vi("x", [2, 3, 5, 6])], [vi("y", [2, 4, 5, 6])],
        [init("W", rand(4, 3, 3, 3)), *initializers], opset=opset)


@pytest.mark.parametrize("op,pool", [("ReduceMean", "GlobalAveragePool"),
                                     ("ReduceMax", "GlobalMaxPool")])
def test_spatial_reduction_with_axes_attribute_becomes_global_pool(op, pool):
    model = _se_block(helper.make_node(op, ["c"], ["p"], axes=[2, 3]))
    graph, changed = _run(model)
    assert changed and op_types(graph) == ["Conv", pool, "Sigmoid", "Mul"]
    assert_equivalent(model, graph)
    assert ReduceToGlobalPool().run(graph) is False


def test_opset18_axes_input_with_negative_axes():
    model = _se_block(helper.make_node("ReduceMean", ["c", "axes"], ["p"], keepdims=1),
                      opset=18, initializers=[init("axes", np.array([-1, -2], np.int64))])
    graph, changed = _run(model)
    assert changed and op_types(graph) == ["Conv", "GlobalAveragePool", "Sigmoid", "Mul"]
    assert "axes" not in graph.weights  # the axes constant is read by nothing any more
    assert_equivalent(model, graph)


def test_keepdims_0_becomes_pool_and_flatten():
    model = make_model(
        [helper.make_node("Conv", ["x", "W"], ["c"]),
         helper.make_node("ReduceMean", ["c"], ["p"], axes=[3, 2], keepdims=0),
         helper.make_node("Gemm", ["p", "fc"], ["y"], transB=1)],
        [vi("x", [2, 3, 5, 6])], [vi("y", [2, 7])],
        [init("W", rand(4, 3, 1, 1)), init("fc", rand(7, 4))])
    graph, changed = _run(model)
    assert changed and op_types(graph) == ["Conv", "GlobalAveragePool", "Flatten", "Gemm"]
    assert_equivalent(model, graph)


def test_reduction_to_a_graph_output_keeps_its_name():
    model = make_model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3])],
                       [vi("x", [2, 3, 5, 6])], [vi("y", [2, 3, 1, 1])])
    graph, changed = _run(model)
    assert changed and list(graph.nodes[0].output) == ["y"]
    assert_equivalent(model, graph)


@pytest.mark.parametrize("node,shape,out,elem", [
    (helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 2, 3]), [2, 3, 5, 6], [2, 1, 1, 1], F),
    (helper.make_node("ReduceMean", ["x"], ["y"], axes=[2]), [2, 3, 5, 6], [2, 3, 1, 6], F),
    (helper.make_node("ReduceMean", ["x"], ["y"]), [2, 3, 5, 6], [1, 1, 1, 1], F),  # every axis
    (helper.make_node("ReduceMean", ["x"], ["y"], axes=[2]), [2, 3, 5], [2, 3, 1], F),  # rank 3
    (helper.make_node("ReduceMax", ["x"], ["y"], axes=[2, 3]), [2, 3, 5, 6], [2, 3, 1, 1],
     onnx.TensorProto.INT32),                                                  # no int pool
    (helper.make_node("ReduceL2", ["x"], ["y"], axes=[2, 3]), [2, 3, 5, 6], [2, 3, 1, 1], F),
])
def test_other_reductions_stay(node, shape, out, elem):
    model = make_model([node], [vi("x", shape, elem)], [vi("y", out, elem)])
    graph, changed = _run(model)
    assert not changed and op_types(graph) == [node.op_type]


def test_axes_known_only_at_run_time_stay():
    model = make_model([helper.make_node("ReduceMean", ["x", "axes"], ["y"])],
                       [vi("x", [2, 3, 5, 6]), vi("axes", [2], onnx.TensorProto.INT64)],
                       [vi("y", ["a", "b", "c", "d"])], opset=18)
    graph, changed = _run(model)
    assert not changed and op_types(graph) == ["ReduceMean"]
