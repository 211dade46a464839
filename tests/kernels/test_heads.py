"""SparseMatMul's attention-head layouts (heads_in, heads_out, heads_out_layout) against numpy:
Y written as [B, H, S, D] or [B, H, D, S], X read as [B, H, S, D], for every format, on the
row path (M <= 2), the outer-product path (4x1 / 8x1, one vector of rows), waves of chunks
and chunk tasks (M >= 8 chunks), with sequences that do not fill whole chunks, heads narrower
than a store tile and every code path of the library."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from graphprune import kernels as gk
from kernels_testlib import (FORMAT_IDS, FORMATS, assert_close, fmt_kwargs, forced_isa, masked,
                             reference, run_sparse)

# (batch, seq): rows M = B * S from the row path to chunk tasks; 37 and 130 leave chunks that
# span two sequences.
ROWS = [(1, 1), (1, 2), (2, 7), (2, 37), (3, 64), (5, 130)]
HEADS = [(3, 16), (5, 7)]  # (H, D): D = 7 puts a head boundary inside a 16-column store tile


def head_node(w, fmt, block, bias=None, activation="none", **heads):
    """A SparseMatMul X -> Y of the masked `w` with the given head attributes."""
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", bias=bias, activation=activation,
                                             **fmt_kwargs(fmt, block))
    node.attribute.extend(helper.make_attribute(k, v) for k, v in heads.items())
    return node, inits


def split_heads(y, heads, layout):
    """numpy's Reshape [B, S, H, D] -> Transpose of y [B, S, N] (what heads_out replaces)."""
    b, s, n = y.shape
    y4 = y.reshape(b, s, heads, n // heads)
    return y4.transpose(0, 2, 1, 3) if layout == "bhsd" else y4.transpose(0, 2, 3, 1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["bhsd", "bhds"])
@pytest.mark.parametrize("h,d", HEADS)
@pytest.mark.parametrize("b,s", ROWS)
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_heads_out(library, fmt, block, b, s, h, d, layout, threads):
    rng = np.random.default_rng(b * 1000 + s)
    k, n = 40, h * d
    w = masked(rng.standard_normal((k, n)).astype(np.float32), fmt, block)
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((b, s, k)).astype(np.float32)
    node, inits = head_node(w, fmt, block, bias, "relu", heads_out=h, heads_out_layout=layout)
    y = run_sparse(node, inits, {"X": x}, threads=threads)
    assert_close(y, split_heads(reference(x, w, bias, "relu"), h, layout))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("h,d", HEADS)
@pytest.mark.parametrize("b,s", ROWS)
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_heads_in(library, fmt, block, b, s, h, d, threads):
    rng = np.random.default_rng(b * 1000 + s + 1)
    k, n = h * d, 29
    w = masked(rng.standard_normal((k, n)).astype(np.float32), fmt, block)
    x = rng.standard_normal((b, h, s, d)).astype(np.float32)  # an attention output's heads
    node, inits = head_node(w, fmt, block, heads_in=h)
    y = run_sparse(node, inits, {"X": x}, threads=threads)
    assert_close(y, reference(x.transpose(0, 2, 1, 3).reshape(b, s, k), w))


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("fmt,block", [("csr", (1, 1)), ("bsr", (4, 4)), ("bsr", (8, 1))],
                         ids=["csr", "bsr4x4", "bsr8x1"])
def test_both_sides_on_every_code_path(library, fmt, block, isa, monkeypatch):
    rng = np.random.default_rng(5)
    h, d, n = 4, 16, 48
    w = masked(rng.standard_normal((h * d, n)).astype(np.float32), fmt, block)
    with forced_isa(isa, monkeypatch):
        for b, s in [(1, 1), (1, 9), (2, 37), (9, 64)]:
            x = rng.standard_normal((b, h, s, d)).astype(np.float32)
            node, inits = head_node(w, fmt, block, heads_in=h, heads_out=3,
                                    heads_out_layout="bhds")
            y = run_sparse(node, inits, {"X": x})
            merged = x.transpose(0, 2, 1, 3).reshape(b, s, h * d)
            assert_close(y, split_heads(reference(merged, w), 3, "bhds"))


def _session_error(node, inits, feeds) -> str:
    """ONNX Runtime's error (at session creation or run) for a one-node model."""
    with pytest.raises(Exception) as err:
        run_sparse(node, inits, feeds)
    return str(err.value)


@pytest.mark.parametrize("heads,expected", [
    ({"heads_out": 5}, "heads_out=5 must divide n=12"),
    ({"heads_in": 7}, "heads_in=7 must divide k=8"),
    ({"heads_out": 3, "heads_out_layout": "bshd"}, "must be 'bhsd' or 'bhds'"),
    ({"heads_out_layout": "bhds"}, "heads_out_layout needs heads_out"),
])
def test_bad_head_attributes_are_named(library, heads, expected):
    w = np.ones((8, 12), np.float32)
    node, inits = head_node(w, "csr", (1, 1), **heads)
    assert expected in _session_error(node, inits, {"X": np.ones((1, 2, 8), np.float32)})


def test_wrong_input_shapes_are_named(library):
    w = np.ones((8, 12), np.float32)
    node, inits = head_node(w, "csr", (1, 1), heads_out=3)
    msg = _session_error(node, inits, {"X": np.ones((2, 8), np.float32)})
    assert "must be [batch, seq, k = 8] for heads_out" in msg
    node, inits = head_node(w, "csr", (1, 1), heads_in=2)
    msg = _session_error(node, inits, {"X": np.ones((1, 3, 2, 4), np.float32)})
    assert "must be [batch, heads_in = 2, seq, 4]" in msg


def test_no_residual_with_heads_out(library):
    w = np.ones((8, 12), np.float32)
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", format="csr", residual="R")
    node.attribute.append(helper.make_attribute("heads_out", 3))
    msg = _session_error(node, inits, {"X": np.ones((1, 2, 8), np.float32),
                                       "R": np.ones((1, 3, 2, 4), np.float32)})
    assert "residual input cannot be combined with heads_out" in msg
