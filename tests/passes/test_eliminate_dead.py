import numpy as np
import onnx
from onnx import helper

from graphprune.passes.eliminate_dead import EliminateDeadNodes
from passes_testlib import (assert_equivalent, feeds_for, init, load, make_model, op_types,
                            rand, run_ort, vi)


def test_dead_branch_and_its_weights_go():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"]),
         helper.make_node("Mul", ["x", "w_dead"], ["d1"]),
         helper.make_node("Sigmoid", ["d1"], ["d2"]),
         helper.make_node("Add", ["d2", "w_dead2"], ["d3"])],
        [vi("x", [2, 3])], [vi("y", [2, 3])],
        [init("w_dead", rand(3)), init("w_dead2", rand(3)), init("w_unused", rand(4))])
    graph = load(model)
    assert EliminateDeadNodes().run(graph)
    assert op_types(graph) == ["Relu"]
    assert graph.weights == {}
    assert_equivalent(model, graph)
    assert EliminateDeadNodes().run(graph) is False


def test_live_nodes_and_output_weights_stay():
    model = make_model(
        [helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1),  # one output used
         helper.make_node("Neg", ["values"], ["y"])],
        [vi("x", [2, 3])], [vi("y", [2, 2]), vi("w_out", [3])],
        [init("k", np.array([2], np.int64)), init("w_out", rand(3))])
    graph = load(model)
    assert EliminateDeadNodes().run(graph) is False
    assert op_types(graph) == ["TopK", "Neg"] and set(graph.weights) == {"k", "w_out"}
    assert_equivalent(model, graph)


def test_weight_read_only_by_subgraph_stays():
    then_g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["t"])], "then", [],
                               [vi("t", [2, 3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [vi("e", [2, 3])])
    model = make_model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [vi("x", [2, 3]), vi("c", [], onnx.TensorProto.BOOL)], [vi("y", [2, 3])],
        [init("w", rand(3))])
    graph = load(model)
    assert EliminateDeadNodes().run(graph) is False and "w" in graph.weights


def test_old_ir_weight_listed_as_input_is_dropped_from_inputs():
    # IR 3 models list every initializer among the graph inputs.
    model = make_model(
        [helper.make_node("Add", ["x", "w"], ["y"]),
         helper.make_node("Mul", ["x", "w_dead"], ["dead"])],
        [vi("x", [2, 3]), vi("w", [3]), vi("w_dead", [3])], [vi("y", [2, 3])],
        [init("w", rand(3)), init("w_dead", rand(3))], opset=8, ir_version=3)
    graph = load(model)
    assert EliminateDeadNodes().run(graph)
    out = graph.to_model()
    assert [v.name for v in out.graph.input] == ["x", "w"]
    onnx.checker.check_model(out, full_check=True)
    feeds = feeds_for(model)
    np.testing.assert_allclose(run_ort(out, feeds)[0], run_ort(model, feeds)[0], atol=1e-6)
