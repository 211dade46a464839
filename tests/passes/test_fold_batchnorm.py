import numpy as np
import onnx
import pytest
from onnx import helper

from graphprune.passes.fold_batchnorm import FoldBatchNorm
from passes_testlib import assert_equivalent, init, load, make_model, op_types, rand, vi


def _bn(x, y, c, prefix="bn", extra_outputs=(), **attrs):
    node = helper.make_node("BatchNormalization", [x] + [f"{prefix}.{p}" for p in
                            ("gamma", "beta", "mean", "var")], [y, *extra_outputs],
                            epsilon=1e-3, **attrs)
    gamma = rand(c)
    gamma[0] = -gamma[0]  # bn_scales must hold |gamma|
    inits = [init(f"{prefix}.gamma", gamma), init(f"{prefix}.beta", rand(c)),
             init(f"{prefix}.mean", rand(c)), init(f"{prefix}.var", rand(c, positive=True))]
    return node, inits


def _assert_folded(model, n_bn=1):
    graph = load(model)
    assert FoldBatchNorm().run(graph)
    assert "BatchNormalization" not in op_types(graph)
    assert len(graph.bn_scales) == n_bn
    gammas = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for bn in (n for n in model.graph.node if n.op_type == "BatchNormalization"):
        scale = graph.bn_scales[bn.output[0]]
        assert scale.dtype == np.float32
        np.testing.assert_array_equal(scale, np.abs(gammas[bn.input[1]]))
    # No BN parameter survives, nor an original weight nothing reads any more.
    assert not any(name.startswith("bn") for name in graph.weights)
    assert_equivalent(model, graph)
    assert FoldBatchNorm().run(graph) is False
    return graph


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("opset,attrs", [(9, {}), (14, {"training_mode": 0}), (15, {}),
                                         (17, {})])
def test_conv_bn(bias, opset, attrs):
    bn, bn_inits = _bn("c", "y", 4, **attrs)
    inits = [init("W", rand(4, 3, 3, 3))] + ([init("B", rand(4))] if bias else []) + bn_inits
    model = make_model(
        [helper.make_node("Conv", ["x", "W"] + (["B"] if bias else []), ["c"], pads=[1] * 4),
         bn], [vi("x", [2, 3, 5, 5])], [vi("y", [2, 4, 5, 5])], inits, opset=opset)
    graph = _assert_folded(model)
    conv = graph.nodes[0]
    assert list(conv.output) == ["y"] and len(conv.input) == 3
    assert "W" not in graph.weights


@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose_grouped_bn(bias):
    # Cin=4, group=2, Cout/group=3 -> Cout=6
    bn, bn_inits = _bn("c", "y", 6)
    inits = [init("W", rand(4, 3, 2, 2))] + ([init("B", rand(6))] if bias else []) + bn_inits
    model = make_model(
        [helper.make_node("ConvTranspose", ["x", "W"] + (["B"] if bias else []), ["c"],
                          group=2, strides=[2, 2]), bn],
        [vi("x", [2, 4, 3, 3])], [vi("y", [2, 6, 6, 6])], inits)
    _assert_folded(model)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (), (1,), (5,), (1, 5)])
def test_gemm_bn(trans_b, c_shape):
    bn, bn_inits = _bn("g", "y", 5)
    inits = [init("B", rand(5, 3) if trans_b else rand(3, 5))] + bn_inits
    inputs = ["x", "B"]
    if c_shape is not None:
        inits.append(init("C", rand(*c_shape)))
        inputs.append("C")
    model = make_model(
        [helper.make_node("Gemm", inputs, ["g"], transB=trans_b, alpha=0.7, beta=1.3), bn],
        [vi("x", [2, 3])], [vi("y", [2, 5])], inits)
    graph = _assert_folded(model)
    gemm = graph.nodes[0]
    assert graph.weights[gemm.input[2]].shape == (5,)


def test_gemm_with_per_row_bias_is_left():
    bn, bn_inits = _bn("g", "y", 5)
    model = make_model(
        [helper.make_node("Gemm", ["x", "B", "C"], ["g"]), bn],
        [vi("x", [2, 3])], [vi("y", [2, 5])],
        [init("B", rand(3, 5)), init("C", rand(2, 5))] + bn_inits)
    graph = load(model)
    assert FoldBatchNorm().run(graph) is False and not graph.bn_scales


def test_shared_weight_is_not_mutated():
    bn1, i1 = _bn("c1", "y1", 4, prefix="bn1")
    bn2, i2 = _bn("c2", "y2", 4, prefix="bn2")
    model = make_model(
        [helper.make_node("Conv", ["x", "W"], ["c1"]), bn1,
         helper.make_node("Conv", ["x", "W"], ["c2"]), bn2,
         helper.make_node("Conv", ["x", "W"], ["y3"])],            # reads W unfolded
        [vi("x", [1, 3, 4, 4])], [vi(n, [1, 4, 2, 2]) for n in ("y1", "y2", "y3")],
        [init("W", rand(4, 3, 3, 3))] + i1 + i2)
    w_before = onnx.numpy_helper.to_array(model.graph.initializer[0]).copy()
    graph = _assert_folded(model, n_bn=2)
    w1, w2, w3 = (n.input[1] for n in graph.nodes)
    assert len({w1, w2, w3}) == 3 and w3 == "W"
    np.testing.assert_array_equal(graph.weights["W"], w_before)


def test_bn_chain_folds_into_one_conv():
    bn1, i1 = _bn("c", "b1", 4, prefix="bn1")
    bn2, i2 = _bn("b1", "y", 4, prefix="bn2")
    model = make_model(
        [helper.make_node("Conv", ["x", "W"], ["c"]), bn1, bn2],
        [vi("x", [1, 3, 4, 4])], [vi("y", [1, 4, 2, 2])], [init("W", rand(4, 3, 3, 3))] + i1 + i2)
    graph = _assert_folded(model, n_bn=2)
    assert op_types(graph) == ["Conv"]


def _unfoldable(nodes, outputs, inits, **kw):
    model = make_model(nodes, [vi("x", [1, 3, 4, 4])], outputs, inits, **kw)
    graph = load(model)
    assert FoldBatchNorm().run(graph) is False
    assert "BatchNormalization" in op_types(graph) and not graph.bn_scales
    return model, graph


def test_bn_after_concat_is_left():
    bn, inits = _bn("cat", "y", 6)
    model, graph = _unfoldable(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Concat", ["x", "r"], ["cat"], axis=1), bn],
        [vi("y", [1, 6, 4, 4])], inits)
    assert_equivalent(model, graph)


def test_conv_with_other_consumer_or_graph_output_is_left():
    bn, inits = _bn("c", "y", 4)
    _unfoldable([helper.make_node("Conv", ["x", "W"], ["c"]), bn,
                 helper.make_node("Relu", ["c"], ["r"])],
                [vi("y", [1, 4, 2, 2]), vi("r", [1, 4, 2, 2])],
                [init("W", rand(4, 3, 3, 3))] + inits)
    _unfoldable([helper.make_node("Conv", ["x", "W"], ["c"]), bn],
                [vi("y", [1, 4, 2, 2]), vi("c", [1, 4, 2, 2])],
                [init("W", rand(4, 3, 3, 3))] + inits)


def test_training_mode_or_dynamic_params_are_left():
    bn, inits = _bn("c", "y", 4, extra_outputs=("rm", "rv"), training_mode=1)
    _unfoldable([helper.make_node("Conv", ["x", "W"], ["c"]), bn],
                [vi("y", [1, 4, 2, 2])], [init("W", rand(4, 3, 3, 3))] + inits, opset=15)
    bn, inits = _bn("c", "y", 4)
    model = make_model([helper.make_node("Conv", ["x", "W"], ["c"]), bn],
                       [vi("x", [1, 3, 4, 4]), vi("bn.gamma", [4])], [vi("y", [1, 4, 2, 2])],
                       [init("W", rand(4, 3, 3, 3))] + inits[1:])
    graph = load(model)
    assert FoldBatchNorm().run(graph) is False


def test_opset9_bn_with_statistics_outputs_is_training_and_left():
    # Opsets 7-13 have no training_mode: listing the statistics outputs selects training.
    bn, inits = _bn("c", "y", 4, extra_outputs=("m", "v", "sm", "sv"))
    model = make_model([helper.make_node("Conv", ["x", "W"], ["c"]), bn],
                       [vi("x", [1, 3, 4, 4])], [vi("y", [1, 4, 2, 2])],
                       [init("W", rand(4, 3, 3, 3))] + inits, opset=9)
    graph = load(model)
    assert FoldBatchNorm().run(graph) is False


def test_replaced_weight_is_freed_before_the_next_fold(monkeypatch):
    """Each conv's old weight goes as soon as its BN is folded, so a model is never held
    twice over during the sweep (a shared weight stays while another node reads it)."""
    import weakref

    from graphprune.passes import fold_batchnorm

    bn1, i1 = _bn("c1", "b1", 4, prefix="bn1")
    bn2, i2 = _bn("c2", "b2", 4, prefix="bn2")
    bn3, i3 = _bn("c3", "b3", 4, prefix="bn3")
    model = make_model(
        [helper.make_node("Conv", ["x", "W1"], ["c1"]), bn1,
         helper.make_node("Conv", ["b1", "W2"], ["c2"]), bn2,
         helper.make_node("Conv", ["b2", "W2"], ["c3"]), bn3],  # W2 read by two convs
        [vi("x", [1, 4, 5, 5])], [vi("b3", [1, 4, 5, 5])],
        [init("W1", rand(4, 4, 1, 1)), init("W2", rand(4, 4, 1, 1)), *i1, *i2, *i3])
    graph = load(model)
    originals = {name: weakref.ref(graph.weights[name]) for name in ("W1", "W2")}
    alive_at_fold = []
    fold = fold_batchnorm._fold

    def recording_fold(g, node, bn):
        alive_at_fold.append({n for n, ref in originals.items() if ref() is not None})
        return fold(g, node, bn)

    monkeypatch.setattr(fold_batchnorm, "_fold", recording_fold)
    assert FoldBatchNorm().run(graph)
    assert alive_at_fold == [{"W1", "W2"}, {"W2"}, {"W2"}]
    assert "W1" not in graph.weights and "W2" not in graph.weights
    assert_equivalent(model, graph)
