"""UnshareWeights: a deduplicated small constant stops coupling unrelated layers."""
import numpy as np
from onnx import helper

from graphprune.analysis import analyze
from graphprune.ir import Graph
from graphprune.passes import UnshareWeights
from passes_testlib import assert_equivalent, init, make_model, rand, vi


def _two_convs_sharing_bias():
    nodes = [helper.make_node("Conv", ["x", "w1", "b"], ["h"], name="c1"),
             helper.make_node("Relu", ["h"], ["r"], name="r1"),
             helper.make_node("Conv", ["r", "w2", "b"], ["y"], name="c2")]
    inits = [init("w1", rand(8, 3, 1, 1)), init("w2", rand(8, 8, 1, 1)),
             init("b", np.zeros(8, np.float32))]
    return make_model(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", [1, 8, 4, 4])], inits)


def test_shared_zero_bias_is_copied_and_groups_separate():
    model = _two_convs_sharing_bias()
    graph = Graph.from_model(model)
    graph.infer_shapes()
    coupled = analyze(graph)
    assert UnshareWeights().run(graph) is True
    convs = [n for n in graph.nodes if n.op_type == "Conv"]
    assert convs[0].input[2] != convs[1].input[2]
    graph.infer_shapes()
    separate = analyze(graph)
    # before: the shared bias glued c1's output to the (frozen) graph output; after: c1 prunes
    assert not coupled.prunable and len(separate.prunable) == 1
    assert_equivalent(model, graph)
    assert UnshareWeights().run(graph) is False  # fixed point


def test_large_shared_weight_stays_shared():
    x = vi("x", [1, 300])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="m1"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="m2")]
    model = make_model(nodes, [x], [vi("y", [1, 300])], [init("w", rand(300, 300))])
    graph = Graph.from_model(model)
    assert UnshareWeights().run(graph) is False


def test_small_tied_weight_with_distinct_values_stays_shared():
    """ALBERT-style tying: one layer's weights read by every layer. Copying them would make
    the pruned model larger than the original; they stay shared and couple their users."""
    x = vi("x", [1, 16])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="m1"),
             helper.make_node("Relu", ["h"], ["r"], name="r1"),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="m2")]
    model = make_model(nodes, [x], [vi("y", [1, 16])], [init("w", rand(16, 16))])
    graph = Graph.from_model(model)
    assert UnshareWeights().run(graph) is False


def test_shared_empty_weight_is_left_alone():
    nodes = [helper.make_node("Concat", ["x", "e"], ["h"], axis=1, name="c1"),
             helper.make_node("Concat", ["h", "e"], ["y"], axis=1, name="c2")]
    model = make_model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])],
                       [init("e", np.zeros((1, 0), np.float32))])
    graph = Graph.from_model(model)
    assert UnshareWeights().run(graph) is False
