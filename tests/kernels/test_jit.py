"""The machine code the library writes per unstructured weight (kernels/src/jit.cpp) against
float64 numpy, on CPUs with AVX-512F: MatMul with bias, activations and a residual, row counts
that leave a partial last chunk, K long enough to move the code's row window many times, groups
of 30 output columns that do not divide N (and all-zero ones), attention-head layouts whose heads
cut through a group, SparseConv (im2col and 1x1) and the fused MatMul chain, 1 and 2 threads.
Each case also checks that the generated code did run (the library counts its calls), and
that with GRAPHPRUNE_KERNELS_JIT=0, or with too few non-zeros per column, it does not."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from onnx import helper, numpy_helper

from graphprune import kernels as gk
from kernels_testlib import assert_close, graph_model, reference, run_dense

pytestmark = pytest.mark.usefixtures("library")


@pytest.fixture(autouse=True)
def avx512_only():
    if gk.isa() != "avx512":
        pytest.skip("the generated code is for AVX-512F CPUs only")


def jit_calls() -> int:
    fn = ctypes.CDLL(gk.library_path()).graphprune_kernels_jit_calls
    fn.restype = ctypes.c_int64
    return fn()


def run(nodes, inits, feeds, threads=2, outputs=("Y",)):
    """The outputs and whether the generated code ran (the weights are packed, and their code
    written, when the session is created: GRAPHPRUNE_KERNELS_JIT is read then)."""
    before = jit_calls()
    out = gk.session(graph_model(nodes, inits, feeds, outputs), threads=threads).run(None, feeds)
    return out, jit_calls() > before


def unstructured(rng, k, n, sparsity=0.8):
    return gk.mask_unstructured(rng.standard_normal((k, n)).astype(np.float32), sparsity)


# (rows, K, N): one chunk of 16 rows; a partial last chunk (17 = 16 + 1, 130 = 8 x 16 + 2); K of
# 3000 moves the code's 128-row window about 24 times per group; N = 30 one whole group, 31 and
# 97 leave groups of 1 and 7 columns.
MATMULS = [((16,), 400, 31), ((17,), 777, 61), ((2, 65), 1000, 97), ((3, 300), 3000, 30)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
@pytest.mark.parametrize("rows,k,n", MATMULS, ids=["16", "17", "130", "900-k3000"])
def test_matmul(rows, k, n, activation, threads):
    rng = np.random.default_rng(k + n)
    w = unstructured(rng, k, n)
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((*rows, k)).astype(np.float32)
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", bias=bias, activation=activation,
                                             format="csr", block=(1, 1))
    (y,), ran = run([node], inits, {"X": x}, threads)
    assert ran
    assert_close(y, reference(x, w, bias, activation))


def test_matmul_residual_nm_and_empty_groups():
    """A residual added before the activation, an N:M weight (also 1x1 blocks inside) and a
    weight whose second group of 30 columns is all zero (its code only zeroes and stores)."""
    rng = np.random.default_rng(3)
    k, n = 520, 75
    w = gk.mask_nm(rng.standard_normal((k, n)).astype(np.float32), 2, 4)
    w[:, 30:60] = 0.0
    x = rng.standard_normal((200, k)).astype(np.float32)
    r = rng.standard_normal((200, n)).astype(np.float32)
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", format="nm", nm=(2, 4),
                                             activation="relu", residual="R")
    (y,), ran = run([node], inits, {"X": x, "R": r})
    assert ran
    assert_close(y, np.maximum(reference(x, w) + r, 0.0))


# (H, D): D = 16 and 7 put head boundaries inside every group of 30 columns; D = 64 every other.
@pytest.mark.parametrize("layout", ["bhsd", "bhds"])
@pytest.mark.parametrize("h,d", [(4, 16), (9, 7), (3, 64)])
def test_heads_out(h, d, layout):
    rng = np.random.default_rng(h * d)
    b, s, k, n = 3, 45, 400, h * d
    w = unstructured(rng, k, n)
    x = rng.standard_normal((b, s, k)).astype(np.float32)
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", format="csr", block=(1, 1))
    node.attribute.extend([helper.make_attribute("heads_out", h),
                           helper.make_attribute("heads_out_layout", layout)])
    (y,), ran = run([node], inits, {"X": x})
    assert ran
    y4 = reference(x, w).reshape(b, s, h, d)
    assert_close(y, y4.transpose(0, 2, 1, 3) if layout == "bhsd" else y4.transpose(0, 2, 3, 1))


def test_heads_in():
    rng = np.random.default_rng(9)
    b, s, h, d, n = 2, 70, 6, 64, 50
    w = unstructured(rng, h * d, n)
    x = rng.standard_normal((b, h, s, d)).astype(np.float32)
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", format="csr", block=(1, 1))
    node.attribute.append(helper.make_attribute("heads_in", h))
    (y,), ran = run([node], inits, {"X": x})
    assert ran
    assert_close(y, reference(x.transpose(0, 2, 1, 3).reshape(b, s, h * d), w))


# (C, O, kernel, pads, strides, H, W): 15 x 15 = 225 pixels = 14 x 16 + 1 per image.
CONVS = {"3x3": (40, 70, (3, 3), (1, 1, 1, 1), (1, 1), 15, 15),
         "3x3-stride2": (48, 31, (3, 3), (1, 1, 1, 1), (2, 2), 29, 30),
         "1x1": (400, 45, (1, 1), (0, 0, 0, 0), (1, 1), 15, 15)}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("conv", sorted(CONVS))
def test_conv(conv, threads):
    c, o, kernel, pads, strides, h, wd = CONVS[conv]
    rng = np.random.default_rng(c + o)
    wm = unstructured(rng, c * kernel[0] * kernel[1], o)
    cw = gk.conv_weight_from_matrix(wm, kernel)
    x = rng.standard_normal((2, c, h, wd)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    attrs = {"kernel_shape": list(kernel), "pads": list(pads), "strides": list(strides)}
    node, inits = gk.make_sparse_conv_node(cw, "X", "Y", bias=bias, activation="relu",
                                           format="csr", block=(1, 1), **attrs)
    (y,), ran = run([node], inits, {"X": x}, threads)
    assert ran
    want = run_dense([helper.make_node("Conv", ["X", "W", "B"], ["Y"], **attrs)],
                     [numpy_helper.from_array(cw, "W"), numpy_helper.from_array(bias, "B")],
                     {"X": x})
    assert_close(y, np.maximum(want, 0.0).astype(np.float64))


def test_matmul_chain():
    """SparseMatMulChain with both weights generated: the first's chunk of Y, still in cache, is
    the second's packed chunk."""
    rng = np.random.default_rng(21)
    k, n, n2 = 400, 350, 90
    w1, w2 = unstructured(rng, k, n), unstructured(rng, n, n2)
    x = rng.standard_normal((2, 150, k)).astype(np.float32)
    first, i1 = gk.make_sparse_matmul_node(w1, "X", "Y", activation="gelu", prefix="a",
                                           format="csr", block=(1, 1))
    second, i2 = gk.make_sparse_matmul_node(w2, "Y", "Z", prefix="b", format="csr", block=(1, 1))
    chain = gk.make_sparse_chain_node(first, second)
    (y, z), ran = run([chain], i1 + i2, {"X": x}, outputs=("Y", "Z"))
    assert ran
    want_y = reference(x, w1, activation="gelu")
    assert_close(y, want_y)
    assert_close(z, want_y @ w2.astype(np.float64))


def test_switched_off_by_the_environment(monkeypatch):
    rng = np.random.default_rng(4)
    w = unstructured(rng, 600, 40)
    x = rng.standard_normal((100, 600)).astype(np.float32)
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", format="csr", block=(1, 1))
    (with_code,), ran = run([node], inits, {"X": x})
    assert ran
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_JIT", "0")
    (without,), ran = run([node], inits, {"X": x})
    assert not ran
    assert_close(with_code, without.astype(np.float64))
    assert_close(without, reference(x, w))


@pytest.mark.parametrize("rows,k,n,sparsity", [(200, 300, 50, 0.9), (8, 600, 50, 0.8),
                                                (64, 2048, 2048, 0.5)],
                         ids=["few-nonzeros-per-column", "fewer-than-16-rows", "code-too-large"])
def test_not_used_where_it_would_not_pay(rows, k, n, sparsity):
    """Below 64 non-zeros per output column on average, with fewer rows than one vector, or where
    the code would exceed 6 MiB (2 M non-zeros: about 14 MiB), the column kernel multiplies
    (bench/kernels.py: 64->256 1x1 on 56x56 at 90 % lost 20 % with the generated code,
    4096x4096 at 90 % a third)."""
    rng = np.random.default_rng(6)
    w = unstructured(rng, k, n, sparsity)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", format="csr", block=(1, 1))
    (y,), ran = run([node], inits, {"X": x})
    assert not ran
    assert_close(y, reference(x, w))
