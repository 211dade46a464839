import numpy as np
from onnx import helper

from graphprune.passes import (DEFAULT_PASSES, DequantizeWeights, EliminateDeadNodes,
                               FoldBatchNorm, FoldConstants, Pass, ReduceToGlobalPool,
                               RemoveIdentity, SplitPackedBlocks, UnshareWeights, run_passes)
from passes_testlib import assert_equivalent, init, load, make_model, op_types, rand, vi


def _model():
    """Identity between Conv and BN, BN parameters behind Constant arithmetic, a static shape
    chain for the flatten, a Dropout, and a dead branch: every pass has something to do."""
    return make_model(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Identity", ["c"], ["ci"]),
         helper.make_node("Mul", ["g0", "two"], ["gamma"]),
         helper.make_node("BatchNormalization", ["ci", "gamma", "beta", "mean", "var"], ["b"]),
         helper.make_node("Relu", ["b"], ["r"]),
         helper.make_node("Dropout", ["r"], ["d"]),
         helper.make_node("Shape", ["d"], ["s"]),
         helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
         helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
         helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
         helper.make_node("Reshape", ["d", "target"], ["flat"]),
         helper.make_node("Gemm", ["flat", "fc"], ["y"], transB=1),
         helper.make_node("Sigmoid", ["flat"], ["dead"])],
        [vi("x", [2, 3, 4, 4])], [vi("y", [2, 5])],
        [init("W", rand(4, 3, 3, 3)), init("g0", rand(4)), init("two", np.float32(2)),
         init("beta", rand(4)), init("mean", rand(4)), init("var", rand(4, positive=True)),
         init("zero", np.array(0, np.int64)), init("zero1", np.array([0], np.int64)),
         init("minus1", np.array([-1], np.int64)), init("fc", rand(5, 64))])


def test_default_passes_are_passes():
    assert [type(p) for p in DEFAULT_PASSES] == [RemoveIdentity, DequantizeWeights,
                                                 FoldConstants, FoldBatchNorm,
                                                 ReduceToGlobalPool, SplitPackedBlocks,
                                                 EliminateDeadNodes, UnshareWeights]
    assert all(isinstance(p, Pass) and p.name for p in DEFAULT_PASSES)


def test_run_passes_reaches_fixed_point():
    model = _model()
    graph = load(model)
    names = run_passes(graph)
    assert names == ["remove_identity", "fold_constants", "fold_batchnorm", "eliminate_dead"]
    assert op_types(graph) == ["Conv", "Relu", "Reshape", "Gemm"]
    assert set(graph.bn_scales) == {"b"}
    assert run_passes(graph) == []
    assert_equivalent(model, graph)


def test_run_passes_respects_max_rounds_and_pass_list():
    graph = load(_model())
    assert run_passes(graph, passes=(EliminateDeadNodes(),)) == ["eliminate_dead"]
    assert "Sigmoid" not in op_types(graph) and "Identity" in op_types(graph)
    assert run_passes(graph, max_rounds=0) == []
