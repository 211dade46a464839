"""The residual input of SparseConv / SparseMatMul: Y = act(X (*) W + bias + residual), the
shortcut Add of a ResNet block fused into the kernel's epilogue. Checked against ONNX Runtime's
dense Conv / MatMul followed by Add and Relu, on every path that writes Y: the 1x1 conv
(channel layout), im2col (k x k), the M-vectorised row layout and the small-M row path."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from graphprune import kernels as gk
from kernels_testlib import (FORMAT_IDS, FORMATS, assert_close, fmt_kwargs, forced_isa, masked,
                             masked_conv_weight, run_dense, run_sparse)

pytestmark = pytest.mark.usefixtures("library")


CONVS = {"1x1": ((1, 1), (0, 0, 0, 0), (2, 13, 9, 11)),
         "3x3p1": ((3, 3), (1, 1, 1, 1), (3, 6, 10, 9))}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("conv", sorted(CONVS))
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_conv_residual(fmt, block, conv, threads):
    kernel, pads, x_shape = CONVS[conv]
    rng = np.random.default_rng(7)
    c, o = x_shape[1], 11
    cw = masked_conv_weight(rng, o, c, kernel, fmt, block)
    bias = rng.standard_normal(o).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    r = rng.standard_normal((x_shape[0], o, *x_shape[2:])).astype(np.float32)
    attrs = {"kernel_shape": list(kernel), "pads": list(pads)}
    want = run_dense(
        [helper.make_node("Conv", ["X", "W", "B"], ["Z"], **attrs),
         helper.make_node("Add", ["Z", "R"], ["S"]), helper.make_node("Relu", ["S"], ["Y"])],
        [numpy_helper.from_array(cw, "W"), numpy_helper.from_array(bias, "B")], {"X": x, "R": r})
    node, inits = gk.make_sparse_conv_node(cw, "X", "Y", bias=bias, activation="relu",
                                           residual="R", **attrs, **fmt_kwargs(fmt, block))
    got = run_sparse(node, inits, {"X": x, "R": r}, threads)
    assert_close(got, want.astype(np.float64))
    assert not np.allclose(want, run_sparse(*gk.make_sparse_conv_node(
        cw, "X", "Y", bias=bias, activation="relu", **attrs, **fmt_kwargs(fmt, block)),
        {"X": x}, threads), atol=1e-3), "the residual must change the result"


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("fmt,block", [("bsr", (1, 4)), ("csr", (1, 1))], ids=["bsr1x4", "csr"])
@pytest.mark.parametrize("hw", [(128, 130), (129, 131)], ids=["rows-aligned", "rows-unaligned"])
def test_large_conv_output_streamed(fmt, block, hw, isa, monkeypatch):
    """An output of >= 16 MiB is written with streaming stores (AVX2 and AVX-512 copies): whole
    chunks on vector-aligned channel rows, the rest (unaligned rows, the last chunk of each
    image) as usual. Both must give the same Y, with the residual and the activation."""
    with forced_isa(isa, monkeypatch):
        rng = np.random.default_rng(11)
        c, o = 8, 128
        x = rng.standard_normal((2, c, *hw)).astype(np.float32)
        assert x.shape[0] * o * hw[0] * hw[1] * 4 >= 16 << 20
        cw = masked_conv_weight(rng, o, c, (1, 1), fmt, block, sparsity=0.5)
        bias = rng.standard_normal(o).astype(np.float32)
        r = rng.standard_normal((2, o, *hw)).astype(np.float32)
        node, inits = gk.make_sparse_conv_node(cw, "X", "Y", bias=bias, activation="relu",
                                               residual="R", **fmt_kwargs(fmt, block))
        got = run_sparse(node, inits, {"X": x, "R": r}, 2)
        w64 = cw[:, :, 0, 0].astype(np.float64)
        want = np.einsum("oc,bchw->bohw", w64, x) + bias[None, :, None, None] + r
        assert_close(got, np.maximum(want, 0.0))


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("fmt,block", [("bsr", (1, 4)), ("csr", (1, 1))], ids=["bsr1x4", "csr"])
@pytest.mark.parametrize("n", [2048, 2008], ids=["rows-aligned", "rows-unaligned"])
def test_large_matmul_output_streamed(fmt, block, n, isa, monkeypatch):
    """MatMul with Y of >= 16 MiB: the transposed tiles go out with streaming stores where a row
    of Y is vector-aligned, the partial last chunk and last tile as usual."""
    with forced_isa(isa, monkeypatch):
        rng = np.random.default_rng(12)
        rows, k = 2100, 24
        assert rows * n * 4 >= 16 << 20
        w = masked(rng.standard_normal((k, n)).astype(np.float32), fmt, block, 0.5)
        x = rng.standard_normal((rows, k)).astype(np.float32)
        r = rng.standard_normal((rows, n)).astype(np.float32)
        node, inits = gk.make_sparse_matmul_node(w, "X", "Y", residual="R", **fmt_kwargs(fmt, block))
        got = run_sparse(node, inits, {"X": x, "R": r}, 2)
        assert_close(got, x.astype(np.float64) @ w.astype(np.float64) + r)


@pytest.mark.parametrize("rows", [1, 37])  # the small-M row path and the vectorised tiles
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_matmul_residual(fmt, block, rows):
    rng = np.random.default_rng(3)
    k, n = 19, 22
    w = masked(rng.standard_normal((k, n)).astype(np.float32), fmt, block)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    r = rng.standard_normal((rows, n)).astype(np.float32)
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", residual="R", **fmt_kwargs(fmt, block))
    got = run_sparse(node, inits, {"X": x, "R": r}, 2)
    assert_close(got, x.astype(np.float64) @ w.astype(np.float64) + r)


def test_residual_of_the_wrong_shape_is_refused():
    w = gk.mask_blocks(np.ones((8, 8), np.float32), 0.5, (1, 4))
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", residual="R")
    with pytest.raises(Exception, match="residual must be float and shaped like Y"):
        run_sparse(node, inits, {"X": np.ones((2, 8), np.float32),
                                  "R": np.ones((2, 7), np.float32)}, 1)
