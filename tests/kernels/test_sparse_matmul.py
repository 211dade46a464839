"""graphprune.SparseMatMul / SparseConv (libgraphprune_kernels) against numpy.

The library is built on first use (cmake + a C++ compiler + ONNX Runtime's C API headers, see
kernels/fetch_headers.sh); where that is impossible the tests that need it are skipped with the
reason. Tolerance: |y - ref| <= 1e-4 * |ref| + 1e-4 * max|ref| (relative 1e-4, plus the same
relative to the output's scale for entries that cancel to about zero).
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
from onnx import TensorProto, helper

from graphprune import kernels as gk
from kernels_testlib import (FORMAT_IDS, FORMATS, assert_close, forced_isa, masked, reference,
                             run_sparse, sparse_model)

SHAPES = [(37, 29), (64, 48), (130, 67)]   # K, N: odd and not multiples of any block
ROWS = (1, 2, 3, 7, 16, 64, 130)           # M: covers the row path, half and full vectors, tails


# ---------------------------------------------------------------------------------------------
# Packing (numpy only)


@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("k,n", SHAPES + [(1, 1), (5, 3)])
def test_pack_roundtrip(fmt, block, k, n):
    rng = np.random.default_rng(k * 1000 + n)
    w = masked(rng.standard_normal((k, n)).astype(np.float32), fmt, block)
    sw = gk.pack(w, fmt, block=block, nm=block)
    np.testing.assert_array_equal(gk.unpack(sw), w)
    if fmt == "bsr":
        assert sw.values.shape[1:] == block
        assert sw.row_ptr.shape == (-(-k // block[0]) + 1,)
    if fmt == "nm":
        assert sw.values.shape == (n, -(-k // block[1]), block[0])
        assert sw.row_ptr is None


def test_masks_hit_the_sparsity():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    assert np.count_nonzero(gk.mask_unstructured(w, 0.9)) == round(0.1 * w.size)
    blocks = gk.pack(gk.mask_blocks(w, 0.75, (4, 4)), "bsr", block=(4, 4))
    assert blocks.values.shape[0] == (16 * 24) // 4
    nm = gk.mask_nm(w, 2, 4)
    assert np.all(np.count_nonzero(nm.reshape(16, 4, 96), axis=1) == 2)
    # the largest magnitudes survive
    kept = np.abs(nm.reshape(16, 4, 96)).sum(axis=1)
    best2 = np.sort(np.abs(w.reshape(16, 4, 96)), axis=1)[:, 2:].sum(axis=1)
    np.testing.assert_allclose(kept, best2, rtol=1e-6)


def test_pack_rejects_a_weight_that_is_not_nm_sparse():
    w = np.ones((8, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        gk.pack(w, "nm", nm=(2, 4))
    with pytest.raises(ValueError, match="not supported"):
        gk.pack(w, "bsr", block=(2, 2))


def test_node_shape():
    w = gk.mask_blocks(np.ones((16, 8), dtype=np.float32), 0.5, (4, 1))
    node, inits = gk.make_sparse_matmul_node(w, "a", "b", format="bsr", block=(4, 1),
                                             bias=np.zeros(8), activation="relu")
    assert node.domain == gk.DOMAIN and node.op_type == "SparseMatMul"
    assert list(node.input) == ["a", "b.values", "b.indices", "b.row_ptr", "b.bias"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"k": 16, "n": 8, "format": b"bsr", "block_rows": 4, "block_cols": 1,
                     "activation": b"relu"}
    node, _ = gk.make_sparse_matmul_node(gk.mask_nm(np.ones((8, 4), np.float32)), "a", "b",
                                         format="nm", bias=np.zeros(4))
    assert list(node.input) == ["a", "b.values", "b.indices", "", "b.bias"]


# ---------------------------------------------------------------------------------------------
# The operator


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_sparse_matmul_matches_numpy(library, fmt, block, k, n, activation, threads):
    rng = np.random.default_rng(k * 7 + n)
    w = masked(rng.standard_normal((k, n)).astype(np.float32), fmt, block)
    bias = rng.standard_normal(n).astype(np.float32)
    sess = gk.session(sparse_model(w, fmt, block, bias=bias, activation=activation), threads=threads)
    for m in ROWS:
        x = rng.standard_normal((m, k)).astype(np.float32)
        (y,) = sess.run(None, {"X": x})
        assert y.shape == (m, n) and y.dtype == np.float32
        assert_close(y, reference(x, w, bias, activation))


@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_no_bias_and_leading_dims(library, fmt, block):
    rng = np.random.default_rng(3)
    w = masked(rng.standard_normal((40, 24)).astype(np.float32), fmt, block)
    sw = gk.pack(w, fmt, block=block, nm=block)
    node, inits = gk.make_sparse_matmul_node(sw, "X", "Y")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3, 5, 40])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(gk.DOMAIN, gk.OPSET_VERSION)])
    x = rng.standard_normal((2, 3, 5, 40)).astype(np.float32)
    (y,) = gk.session(model, threads=2).run(None, {"X": x})
    assert y.shape == (2, 3, 5, 24)
    assert_close(y, reference(x, w))


@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_large_k_panels(library, fmt, block):
    """K large enough that the packed X chunk is read panel by panel (AVX2/AVX-512 paths)."""
    rng = np.random.default_rng(11)
    w = masked(rng.standard_normal((4000, 24)).astype(np.float32), fmt, block, sparsity=0.9)
    bias = rng.standard_normal(24).astype(np.float32)
    sess = gk.session(sparse_model(w, fmt, block, bias=bias, activation="relu"), threads=2)
    for m in (5, 70, 130):
        x = rng.standard_normal((m, 4000)).astype(np.float32)
        assert_close(sess.run(None, {"X": x})[0], reference(x, w, bias, "relu"))


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_code_path(library, isa, monkeypatch):
    """The ISA copies give the same results (each one this CPU can run)."""
    rng = np.random.default_rng(5)
    with forced_isa(isa, monkeypatch):
        for fmt, block in FORMATS:
            w = masked(rng.standard_normal((130, 67)).astype(np.float32), fmt, block)
            bias = rng.standard_normal(67).astype(np.float32)
            sess = gk.session(sparse_model(w, fmt, block, bias=bias, activation="gelu"), threads=2)
            for m in (1, 3, 7, 16, 33, 130):
                x = rng.standard_normal((m, 130)).astype(np.float32)
                assert_close(sess.run(None, {"X": x})[0], reference(x, w, bias, "gelu"))


erf = np.vectorize(math.erf)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("block", [(4, 1), (8, 1)], ids=["4x1", "8x1"])
def test_column_blocks_outer_products(library, block, isa, monkeypatch):
    """4x1 / 8x1 with up to one vector of rows take the outer-product path, tile of output
    columns by tile (128 to 512 columns a tile): several tiles, a last partial one, a tile
    with no block at all, K not a multiple of the block, bias + residual + gelu, 1 and 2
    threads, every M from the row path's end to past one vector."""
    rng = np.random.default_rng(17)
    k, n = 130, 1100  # 8 tiles of 144 columns, the last one 92 wide
    w = masked(rng.standard_normal((k, n)).astype(np.float32), "bsr", block, sparsity=0.8)
    w[:, 144:288] = 0.0  # the second tile is empty
    bias = rng.standard_normal(n).astype(np.float32)
    with forced_isa(isa, monkeypatch):
        node, inits = gk.make_sparse_matmul_node(w, "X", "Y", format="bsr", block=block,
                                                 bias=bias, activation="gelu", residual="R")
        for threads in (1, 2):
            for m in range(3, 18):
                x = rng.standard_normal((m, k)).astype(np.float32)
                r = rng.standard_normal((m, n)).astype(np.float32)
                got = run_sparse(node, inits, {"X": x, "R": r}, threads)
                pre = reference(x, w, bias) + r
                assert_close(got, 0.5 * pre * (1.0 + erf(pre / math.sqrt(2.0))))


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_gelu_over_the_whole_float_range(library, isa, monkeypatch):
    """The fused gelu from -60 to 60 (through an identity weight, so the pre-activations are
    exactly x): within 1e-4 relative of x/2 erfc(-x/sqrt 2) (erfc: no cancellation in the
    negative tail) down to 1e-30, and below 1e-30 in the far negative tail, where the kernel
    clamps erfc's argument so that exp(-z^2) never turns denormal. Rows: the scalar row path
    and whole vectors."""
    x = np.linspace(-60.0, 60.0, 7 * 64, dtype=np.float32).reshape(7, 64)
    w = np.eye(64, dtype=np.float32)
    x64 = x.astype(np.float64)
    want = 0.5 * x64 * np.vectorize(math.erfc)(-x64 / math.sqrt(2.0))
    with forced_isa(isa, monkeypatch):
        sess = gk.session(sparse_model(w, "csr", (1, 1), activation="gelu"), threads=2)
        for rows in (1, 3, 7):
            got = sess.run(None, {"X": x[:rows]})[0].astype(np.float64)
            tiny = np.abs(want[:rows]) < 1e-30
            assert np.all(np.abs(got[tiny]) < 1e-30)
            np.testing.assert_allclose(got[~tiny], want[:rows][~tiny], rtol=1e-4)


def test_int64_indices_and_runtime_weights(library):
    """int64 indices; weights fed as graph inputs (packed on every run, not at load)."""
    rng = np.random.default_rng(9)
    w = gk.mask_blocks(rng.standard_normal((45, 30)).astype(np.float32), 0.6, (4, 4))
    sw = gk.pack(w, "bsr", block=(4, 4), index_dtype=np.int64)
    node, _ = gk.make_sparse_matmul_node(sw, "X", "Y", prefix="w")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", 45]),
         helper.make_tensor_value_info("w.values", TensorProto.FLOAT, list(sw.values.shape)),
         helper.make_tensor_value_info("w.indices", TensorProto.INT64, list(sw.indices.shape)),
         helper.make_tensor_value_info("w.row_ptr", TensorProto.INT64, list(sw.row_ptr.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", 30])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(gk.DOMAIN, gk.OPSET_VERSION)])
    sess = gk.session(model, threads=2)
    x = rng.standard_normal((9, 45)).astype(np.float32)
    (y,) = sess.run(None, {"X": x, "w.values": sw.values, "w.indices": sw.indices, "w.row_ptr": sw.row_ptr})
    assert_close(y, reference(x, w))


@pytest.mark.parametrize("fmt,block", [("bsr", (4, 1)), ("csr", (1, 1)), ("bsr", (1, 4))])
def test_sparse_conv_1x1(library, fmt, block):
    rng = np.random.default_rng(4)
    cin, cout = 36, 22
    w = masked(rng.standard_normal((cin, cout)).astype(np.float32), fmt, block)  # = conv_w[:, :, 0, 0].T
    bias = rng.standard_normal(cout).astype(np.float32)
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", format=fmt, block=block, bias=bias,
                                             activation="relu", conv=True)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", cin, "H", "W"])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(gk.DOMAIN, gk.OPSET_VERSION)])
    sess = gk.session(model, threads=2)
    for shape in [(2, cin, 5, 7), (1, cin, 1, 1), (3, cin, 9, 13)]:
        x = rng.standard_normal(shape).astype(np.float32)
        (y,) = sess.run(None, {"X": x})
        ref = reference(np.moveaxis(x, 1, -1), w, bias, "relu")
        assert y.shape == (shape[0], cout, shape[2], shape[3])
        assert_close(y, np.moveaxis(ref, -1, 1))


def test_bad_weights_fail_with_a_message(library):
    w = gk.mask_blocks(np.ones((16, 8), dtype=np.float32), 0.5, (4, 1))
    sw = gk.pack(w, "bsr", block=(4, 1))
    sw.indices = sw.indices.copy()
    sw.indices[0] = 99
    with pytest.raises(Exception, match=r"indices\[0\] = 99 is outside"):
        gk.session(gk.make_sparse_matmul_model(sw))
    model = gk.make_sparse_matmul_model(w, format="bsr", block=(4, 1))
    next(a for a in model.graph.node[0].attribute if a.name == "block_cols").i = 3
    with pytest.raises(Exception, match="4x3 is not supported"):
        gk.session(model)


def test_library_path_without_headers(tmp_path, monkeypatch):
    """No usable ONNX Runtime headers: a KernelsUnavailable that says so (nothing is built)."""
    empty = tmp_path / "include"
    empty.mkdir()
    monkeypatch.setenv("GRAPHPRUNE_ORT_INCLUDE", str(empty))
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(gk.KernelsUnavailable) as info:
        gk.library_path()
    msg = str(info.value)
    assert "GRAPHPRUNE_ORT_INCLUDE" in msg or "cmake" in msg or "compiler" in msg
    if "GRAPHPRUNE_ORT_INCLUDE" in msg:
        assert "onnxruntime_c_api.h" in msg
    assert not list((tmp_path / "cache").rglob(gk.LIBRARY_NAME))


def test_register_refuses_an_old_runtime(library):
    """RegisterCustomOps with a runtime whose OrtApiBase has no API 21: an error status with a
    message (made through the newest API the runtime has), never a crash."""
    lib = ctypes.CDLL(library)
    created = []

    CreateStatus = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)
    GetApi = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)
    GetVersion = ctypes.CFUNCTYPE(ctypes.c_void_p)
    version_text = ctypes.create_string_buffer(b"1.16.3")

    @CreateStatus
    def create_status(code, msg):
        created.append((code, msg.decode()))
        return 0x1234

    fake_api = (ctypes.c_void_p * 8)(ctypes.cast(create_status, ctypes.c_void_p).value)

    class OrtApiBase(ctypes.Structure):
        _fields_ = [("GetApi", GetApi), ("GetVersionString", GetVersion)]

    @GetApi
    def get_api_old(version):
        return ctypes.addressof(fake_api) if version <= 16 else 0

    @GetApi
    def get_api_none(version):
        return 0

    version = GetVersion(lambda: ctypes.addressof(version_text))
    register = lib.RegisterCustomOps
    register.restype = ctypes.c_void_p
    register.argtypes = [ctypes.c_void_p, ctypes.POINTER(OrtApiBase)]

    base = OrtApiBase(get_api_old, version)
    assert register(None, ctypes.byref(base)) == 0x1234
    assert len(created) == 1
    assert "1.21 or newer" in created[0][1] and "1.16.3" in created[0][1]

    base = OrtApiBase(get_api_none, version)
    assert register(None, ctypes.byref(base)) is None  # nothing to report with: no crash either
