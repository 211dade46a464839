import numpy as np
import onnx
from onnx import helper

from graphprune.passes.remove_identity import RemoveIdentity
from passes_testlib import assert_equivalent, init, load, make_model, op_types, rand, vi

F = onnx.TensorProto.FLOAT


def _run(model):
    graph = load(model)
    changed = RemoveIdentity().run(graph)
    return graph, changed


def test_identity_chain_is_removed():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("Identity", ["a"], ["b"]),
         helper.make_node("Identity", ["b"], ["c"]),
         helper.make_node("Add", ["c", "b"], ["y"])],
        [vi("x", [2, 3])], [vi("y", [2, 3])])
    graph, changed = _run(model)
    assert changed and op_types(graph) == ["Relu", "Add"]
    assert list(graph.nodes[1].input) == ["a", "a"]
    assert_equivalent(model, graph)
    assert RemoveIdentity().run(graph) is False


def test_identity_to_graph_output_renames_producer():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("Identity", ["a"], ["b"]),
         helper.make_node("Identity", ["b"], ["y"])],
        [vi("x", [2, 3])], [vi("y", [2, 3])])
    graph, changed = _run(model)
    assert changed and op_types(graph) == ["Relu"]
    assert list(graph.nodes[0].output) == ["y"]
    assert_equivalent(model, graph)


def test_identity_to_graph_output_kept_when_input_not_private():
    model = make_model(
        [helper.make_node("Identity", ["x"], ["y0"]),           # graph input -> output
         helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("Identity", ["a"], ["y1"]),           # `a` also read elsewhere
         helper.make_node("Neg", ["a"], ["y2"]),
         helper.make_node("Identity", ["y2"], ["y3"]),          # input is itself an output
         helper.make_node("Identity", ["w"], ["y4"])],          # input is a weight
        [vi("x", [2, 3])], [vi(n, [2, 3]) for n in ("y0", "y1", "y2", "y3", "y4")],
        [init("w", rand(2, 3))])
    graph, changed = _run(model)
    assert not changed
    assert op_types(graph).count("Identity") == 4
    assert_equivalent(model, graph)


def test_identity_of_weight_and_input_rewired():
    model = make_model(
        [helper.make_node("Identity", ["w"], ["wi"]),
         helper.make_node("Identity", ["x"], ["xi"]),
         helper.make_node("Mul", ["xi", "wi"], ["y"])],
        [vi("x", [2, 3])], [vi("y", [2, 3])], [init("w", rand(3))])
    graph, changed = _run(model)
    assert changed and op_types(graph) == ["Mul"]
    assert list(graph.nodes[0].input) == ["x", "w"]
    assert_equivalent(model, graph)


def test_dropout_forms():
    model = make_model(
        [helper.make_node("Dropout", ["x", "ratio"], ["a", "mask"]),         # mask unused
         helper.make_node("Dropout", ["a", "ratio", "off"], ["b"]),          # training off
         helper.make_node("Dropout", ["b", "ratio", "on"], ["c"]),           # training on: kept
         helper.make_node("Dropout", ["c"], ["d", "mask2"]),                 # mask used: kept
         helper.make_node("Cast", ["mask2"], ["m"], to=F),
         helper.make_node("Add", ["d", "m"], ["y"])],
        [vi("x", [2, 3])], [vi("y", [2, 3])],
        [init("ratio", np.array(0.5, np.float32)), init("off", np.array(False)),
         init("on", np.array(True))])
    graph, changed = _run(model)
    assert changed and op_types(graph) == ["Dropout", "Dropout", "Cast", "Add"]
    assert graph.nodes[0].input[0] == "x"
    assert "off" not in graph.weights  # its only reader is gone
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)


def test_dropout_old_opset_to_graph_output():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("Dropout", ["a"], ["y", "mask"], ratio=0.3)],
        [vi("x", [2, 3])], [vi("y", [2, 3])], opset=10)
    graph, changed = _run(model)
    assert changed and op_types(graph) == ["Relu"]
    assert_equivalent(model, graph)


def test_identity_captured_by_subgraph_is_renamed():
    then_g = helper.make_graph([helper.make_node("Neg", ["b"], ["t"])], "then", [],
                               [vi("t", [2, 3])])
    else_g = helper.make_graph([helper.make_node("Abs", ["b"], ["e"])], "else", [],
                               [vi("e", [2, 3])])
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("Identity", ["a"], ["b"]),
         helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["cond"]),
         helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
        [vi("x", [2, 3])], [vi("y", [2, 3])], [init("zero", np.array(0, np.float32))])
    graph, changed = _run(model)
    assert changed and "Identity" not in op_types(graph)
    assert_equivalent(model, graph)
