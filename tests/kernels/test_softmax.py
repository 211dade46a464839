"""SoftmaxNanToZero: Softmax over the last axis, then NaN -> 0, in one pass. Checked against
ONNX Runtime's own Softmax -> IsNaN -> Where(isnan, 0, .) on ordinary rows, rows with -inf
entries (masked attention scores), rows that are all -inf, hold a NaN or a +inf (all zeros
then), at row lengths below, at and off the vector widths, on 1 and 2 threads, every ISA."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import kernels as gk
from kernels_testlib import forced_isa

pytestmark = pytest.mark.usefixtures("library")


def _model(nodes, inits=(), sparse=False):
    graph = helper.make_graph(list(nodes), "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializer=list(inits))
    ops = [helper.make_opsetid("", 17)]
    if sparse:
        ops.append(helper.make_opsetid(gk.DOMAIN, gk.OPSET_VERSION))
    return helper.make_model(graph, opset_imports=ops)


def _reference(x):
    nodes = [helper.make_node("Softmax", ["X"], ["S"], axis=-1),
             helper.make_node("IsNaN", ["S"], ["N"]),
             helper.make_node("Where", ["N", "Z", "S"], ["Y"])]
    model = _model(nodes, [numpy_helper.from_array(np.zeros((), np.float32), "Z")])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def _fused(x, threads=2, **attrs):
    node = helper.make_node("SoftmaxNanToZero", ["X"], ["Y"], domain=gk.DOMAIN, **attrs)
    return gk.session(_model([node], sparse=True), threads=threads).run(None, {"X": x})[0]


def _scores(d, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 7, d)) * 4).astype(np.float32)
    x[0, 1, ::3] = -np.inf                 # masked positions
    x[0, 2, :] = -np.inf                   # a fully masked row: NaN in Softmax -> zeros
    x[1, 3, d // 2] = np.nan               # NaN anywhere: the whole row is NaN -> zeros
    x[1, 4, 0] = np.inf                    # +inf: inf - inf = NaN -> zeros
    x[2, 5, :] += np.float32(3e4)          # large but finite: max-subtracted, still exact
    x[2, 6, : d - 1] = np.finfo(np.float32).min  # HF's mask value, all but one position
    return x


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("d", [1, 5, 8, 16, 37, 128, 130])
def test_softmax_nan_to_zero_matches_onnx_runtime(d, threads):
    x = _scores(d)
    want = _reference(x)
    got = _fused(x, threads)
    assert got.shape == x.shape and got.dtype == np.float32
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (got[0, 2] == 0).all() and (got[1, 3] == 0).all() and (got[1, 4] == 0).all()
    if d > 1:
        assert (got[0, 1, ::3] == 0).all(), "exp(-inf) must be exactly 0"
        np.testing.assert_allclose(got[0, 0].sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_softmax_nan_to_zero_every_isa(isa, monkeypatch):
    with forced_isa(isa, monkeypatch):
        for d in (3, 64, 131):
            x = _scores(d, seed=d)
            np.testing.assert_allclose(_fused(x), _reference(x), rtol=1e-5, atol=1e-6)


def test_softmax_nan_to_zero_large_input_many_tasks():
    x = (np.random.default_rng(4).standard_normal((16, 12, 128, 128)) * 3).astype(np.float32)
    np.testing.assert_allclose(_fused(x), _reference(x), rtol=1e-5, atol=1e-6)


def test_softmax_nan_to_zero_refuses_another_axis():
    with pytest.raises(Exception, match="last axis"):
        _fused(_scores(8), axis=1)


def _reference_biased(x, b):
    """ONNX Runtime's Add -> Softmax -> IsNaN -> Where (what SoftmaxNanToZero(X, B) replaces)."""
    nodes = [helper.make_node("Add", ["X", "B"], ["A"]),
             helper.make_node("Softmax", ["A"], ["S"], axis=-1),
             helper.make_node("IsNaN", ["S"], ["N"]),
             helper.make_node("Where", ["N", "Z", "S"], ["Y"])]
    model = _model(nodes, [numpy_helper.from_array(np.zeros((), np.float32), "Z")])
    model.graph.input.append(helper.make_tensor_value_info("B", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x, "B": b})[0]


def _fused_biased(x, b, threads=2):
    node = helper.make_node("SoftmaxNanToZero", ["X", "B"], ["Y"], domain=gk.DOMAIN)
    model = _model([node], sparse=True)
    model.graph.input.append(helper.make_tensor_value_info("B", TensorProto.FLOAT, None))
    return gk.session(model, threads=threads).run(None, {"X": x, "B": b})[0]


# bias shapes against X [3, 7, d]: a padding mask [3, 1, d], per row [3, 7, 1], a full one,
# one row for all, a scalar, and the rank-4 attention forms against X [2, 3, 5, d]
BIASES = [((3, 7), (3, 1, "d")), ((3, 7), (3, 7, 1)), ((3, 7), (3, 7, "d")), ((3, 7), ("d",)),
          ((3, 7), ()), ((2, 3, 5), (2, 1, 1, "d")), ((2, 3, 5), (2, 1, 5, "d")),
          ((2, 3, 5), (1, 3, 1, 1))]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("d", [1, 16, 37, 128])
@pytest.mark.parametrize("rows,bshape", BIASES, ids=[str(b) for b in BIASES])
def test_softmax_with_a_broadcast_bias(rows, bshape, d, threads):
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((*rows, d)) * 4).astype(np.float32)
    shape = tuple(d if v == "d" else v for v in bshape)
    b = np.asarray(rng.standard_normal(shape) * 2, dtype=np.float32)
    if b.ndim and b.shape[-1] == d and d > 2:
        b[..., ::3] = np.finfo(np.float32).min  # HF's additive mask value
    np.testing.assert_allclose(_fused_biased(x, b, threads), _reference_biased(x, b),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_softmax_bias_every_isa(isa, monkeypatch):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((2, 4, 3, 131)) * 3).astype(np.float32)
    b = np.where(rng.random((2, 1, 1, 131)) < 0.3, -np.inf, 0.0).astype(np.float32)
    b[1, ..., :] = -np.inf  # every position of the second sequence masked: zeros, not NaN
    with forced_isa(isa, monkeypatch):
        got = _fused_biased(x, b)
    np.testing.assert_allclose(got, _reference_biased(x, b), rtol=1e-5, atol=1e-6)
    assert (got[1] == 0).all()


def test_softmax_refuses_a_bias_that_does_not_broadcast():
    x = np.zeros((2, 3, 8), np.float32)
    with pytest.raises(Exception, match=r"bias \[2, 8\] must be float and broadcast to X"):
        _fused_biased(x, np.zeros((2, 8), np.float32))
