"""SparseConvChain and SparseMatMulChain: a conv (any SparseConv) and the pointwise SparseConv
that reads its output, or two SparseMatMul, in one node. Where both take the chunk-task path
with the same chunks, each chunk of Y is multiplied by the second weight while still in cache;
elsewhere the two run one after the other. The outputs must equal the two separate nodes' (and
ONNX Runtime's dense convs), on either path, with Y written or left out, for every weight
format (blocks along K pad W2's K with zero rows), each ISA."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from graphprune import kernels as gk
from kernels_testlib import (FORMAT_IDS, FORMATS, assert_close, fmt_kwargs, forced_isa,
                             graph_model, masked_conv_weight)

pytestmark = pytest.mark.usefixtures("library")

# first conv: kernel, pads, X shape. "many" shapes give >= 8 chunks (the fused path) on every
# ISA; "few" falls back to two passes. Where an image's last chunk is short (16 x 17 = 4 x 64 +
# 16, 12 x 11 = 2 x 64 + 4) both ops take it narrower; at batch 22 (66 chunks) a task takes two
# chunks or more, and some go on from a narrow one to the next image's first at full width.
CASES = {
    "1x1-residual-many": ((1, 1), (0, 0, 0, 0), (4, 12, 16, 17), True),
    "1x1-residual-batch22": ((1, 1), (0, 0, 0, 0), (22, 8, 12, 11), True),
    "3x3-many": ((3, 3), (1, 1, 1, 1), (2, 6, 20, 21), False),
    "3x3-few": ((3, 3), (1, 1, 1, 1), (1, 5, 5, 6), False),
}


def _pair(rng, case, fmt, block):
    kernel, pads, x_shape, residual = CASES[case]
    c, o, o2 = x_shape[1], 22, 19  # o: W2's K, not a multiple of 4 or 8 (padded blocks)
    cw = masked_conv_weight(rng, o, c, kernel, fmt, block)
    cw2 = masked_conv_weight(rng, o2, o, (1, 1), fmt, block)
    b1 = rng.standard_normal(o).astype(np.float32)
    b2 = rng.standard_normal(o2).astype(np.float32)
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    attrs = {"kernel_shape": list(kernel), "pads": list(pads)}
    if residual:
        feeds["R"] = rng.standard_normal((x_shape[0], o, *x_shape[2:])).astype(np.float32)
    first, i1 = gk.make_sparse_conv_node(cw, "X", "Y", bias=b1, activation="relu",
                                         residual="R" if residual else None, prefix="a",
                                         **attrs, **fmt_kwargs(fmt, block))
    second, i2 = gk.make_sparse_conv_node(cw2, "Y", "Z", bias=b2, prefix="b",
                                          **fmt_kwargs(fmt, block))
    dense = [helper.make_node("Conv", ["X", "W1", "B1"], ["C1"], **attrs)]
    if residual:
        dense.append(helper.make_node("Add", ["C1", "R"], ["S1"]))
    dense += [helper.make_node("Relu", ["S1" if residual else "C1"], ["Y"]),
              helper.make_node("Conv", ["Y", "W2", "B2"], ["Z"])]
    dense_inits = [numpy_helper.from_array(a, n) for a, n in
                   [(cw, "W1"), (b1, "B1"), (cw2, "W2"), (b2, "B2")]]
    return first, second, i1 + i2, feeds, (dense, dense_inits)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_chain_equals_two_nodes(fmt, block, case, threads):
    rng = np.random.default_rng(3)
    first, second, inits, feeds, (dense, dense_inits) = _pair(rng, case, fmt, block)
    chain = gk.make_sparse_chain_node(first, second)
    assert chain.op_type == "SparseConvChain" and list(chain.output) == ["Y", "Z"]
    got = gk.session(graph_model([chain], inits, feeds, ["Y", "Z"]),
                     threads=threads).run(None, feeds)
    two = gk.session(graph_model([first, second], inits, feeds, ["Y", "Z"]),
                     threads=threads).run(None, feeds)
    import onnxruntime as ort
    want = ort.InferenceSession(graph_model(dense, dense_inits, feeds, ["Y", "Z"], sparse=False)
                                .SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, t, w in zip(got, two, want):
        assert_close(g, t.astype(np.float64))
        assert_close(g, w.astype(np.float64))


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("fmt,block", [("bsr", (4, 4)), ("csr", (1, 1)), ("bsr", (8, 1))],
                         ids=["bsr4x4", "csr", "bsr8x1"])
def test_chain_every_isa(fmt, block, isa, monkeypatch):
    """Each ISA's copy picks its own chunk width; the fused path must hold on all of them."""
    with forced_isa(isa, monkeypatch):
        rng = np.random.default_rng(5)
        first, second, inits, feeds, _ = _pair(rng, "1x1-residual-many", fmt, block)
        chain = gk.make_sparse_chain_node(first, second)
        got = gk.session(graph_model([chain], inits, feeds, ["Y", "Z"])).run(None, feeds)
        two = gk.session(graph_model([first, second], inits, feeds, ["Y", "Z"])).run(None, feeds)
        for g, t in zip(got, two):
            assert_close(g, t.astype(np.float64))


def test_chain_blockers():
    rng = np.random.default_rng(9)
    first, second, _, _, _ = _pair(rng, "3x3-many", "bsr", (4, 4))
    assert gk.chain_blocker(first, second) is None
    three, _ = gk.make_sparse_conv_node(masked_conv_weight(rng, 19, 22, (3, 3), "bsr", (4, 4)),
                                        "Y", "Z", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                        format="bsr", block=(4, 4))
    assert "not pointwise" in gk.chain_blocker(first, three)
    cw2 = masked_conv_weight(rng, 19, 22, (1, 1), "csr", (1, 1))
    other, _ = gk.make_sparse_conv_node(cw2, "Y", "Z", format="csr")
    assert "different formats" in gk.chain_blocker(first, other)
    with_res, _ = gk.make_sparse_conv_node(masked_conv_weight(rng, 22, 22, (1, 1), "bsr", (4, 4)),
                                           "Y", "Z", residual="R", format="bsr", block=(4, 4))
    assert "residual" in gk.chain_blocker(first, with_res)
    assert "does not read" in gk.chain_blocker(first, gk.make_sparse_conv_node(
        masked_conv_weight(rng, 19, 22, (1, 1), "bsr", (4, 4)), "Q", "Z", format="bsr",
        block=(4, 4))[0])
    with pytest.raises(ValueError, match="cannot chain"):
        gk.make_sparse_chain_node(first, with_res)


def test_chain_missing_n2_is_a_clear_error():
    rng = np.random.default_rng(2)
    first, second, inits, feeds, _ = _pair(rng, "3x3-many", "csr", (1, 1))
    chain = gk.make_sparse_chain_node(first, second)
    del chain.attribute[[a.name for a in chain.attribute].index("n2")]
    with pytest.raises(Exception, match="n2"):
        gk.session(graph_model([chain], inits, feeds, ["Y", "Z"]))


@pytest.mark.parametrize("fmt,block", [("bsr", (1, 4)), ("csr", (1, 1))], ids=["bsr1x4", "csr"])
def test_chain_streams_a_large_second_output(fmt, block):
    """Z of >= 16 MiB (Y much smaller) goes out with streaming stores from the chained job;
    the task must fence them too. Both outputs equal the two separate nodes'."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 8, 128, 66)).astype(np.float32)
    cw = masked_conv_weight(rng, 16, 8, (1, 1), fmt, block, sparsity=0.5)
    cw2 = masked_conv_weight(rng, 256, 16, (1, 1), fmt, block, sparsity=0.5)
    assert 2 * 256 * 128 * 66 * 4 >= 16 << 20 > 2 * 16 * 128 * 66 * 4
    first, i1 = gk.make_sparse_conv_node(cw, "X", "Y", activation="relu", prefix="a",
                                         **fmt_kwargs(fmt, block))
    second, i2 = gk.make_sparse_conv_node(cw2, "Y", "Z", prefix="b", **fmt_kwargs(fmt, block))
    feeds = {"X": x}
    chain = gk.make_sparse_chain_node(first, second)
    got = gk.session(graph_model([chain], i1 + i2, feeds, ["Y", "Z"])).run(None, feeds)
    two = gk.session(graph_model([first, second], i1 + i2, feeds, ["Y", "Z"])).run(None, feeds)
    for g, t in zip(got, two):
        assert_close(g, t.astype(np.float64))


MATMUL_FORMATS = [("bsr", (1, 4)), ("bsr", (4, 4)), ("csr", (1, 1)), ("nm", (2, 4))]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("keep_first", [True, False], ids=["Y-kept", "Y-left-out"])
@pytest.mark.parametrize("rows", [(2, 300), (1, 20)], ids=["many-chunks", "few-chunks"])
@pytest.mark.parametrize("fmt,block", MATMUL_FORMATS, ids=["bsr1x4", "bsr4x4", "csr", "nm2:4"])
def test_matmul_chain_equals_two_nodes(fmt, block, rows, keep_first, threads):
    """SparseMatMulChain (a transformer MLP's two MatMuls): Z equals the two nodes' on the
    fused path (many chunks of rows) and the two-pass one (few), with Y written or left out
    (then it only lives in cache, or in a reused buffer on the two-pass path)."""
    from kernels_testlib import masked

    rng = np.random.default_rng(13)
    k, n, n2 = 40, 54, 33  # n: the second's K, off the block sizes
    x = rng.standard_normal((*rows, k)).astype(np.float32)
    w1 = masked(rng.standard_normal((k, n)).astype(np.float32), fmt, block)
    w2 = masked(rng.standard_normal((n, n2)).astype(np.float32), fmt, block)
    b1 = rng.standard_normal(n).astype(np.float32)
    b2 = rng.standard_normal(n2).astype(np.float32)
    first, i1 = gk.make_sparse_matmul_node(w1, "X", "Y", bias=b1, activation="gelu", prefix="a",
                                           **fmt_kwargs(fmt, block))
    second, i2 = gk.make_sparse_matmul_node(w2, "Y", "Z", bias=b2, prefix="b",
                                            **fmt_kwargs(fmt, block))
    feeds = {"X": x}
    chain = gk.make_sparse_chain_node(first, second, keep_first=keep_first)
    assert chain.op_type == "SparseMatMulChain"
    outs = ["Y", "Z"] if keep_first else ["Z"]
    sess = gk.session(graph_model([chain], i1 + i2, feeds, outs), threads=threads)
    got = sess.run(None, feeds)
    two = gk.session(graph_model([first, second], i1 + i2, feeds, outs),
                     threads=threads).run(None, feeds)
    for g, t in zip(got, two):
        assert_close(g, t.astype(np.float64))
    got_again = sess.run(None, feeds)  # reused scratch (the two-pass path's Y) gives the same
    np.testing.assert_array_equal(got_again[-1], got[-1])


def test_conv_chain_with_y_left_out():
    rng = np.random.default_rng(14)
    first, second, inits, feeds, _ = _pair(rng, "3x3-many", "bsr", (4, 4))
    chain = gk.make_sparse_chain_node(first, second, keep_first=False)
    assert list(chain.output) == ["", "Z"]
    got = gk.session(graph_model([chain], inits, feeds, ["Z"])).run(None, feeds)[0]
    want = gk.session(graph_model([first, second], inits, feeds, ["Z"])).run(None, feeds)[0]
    assert_close(got, want.astype(np.float64))


def test_matmul_chain_blockers():
    rng = np.random.default_rng(15)
    w = gk.mask_blocks(rng.standard_normal((16, 16)).astype(np.float32), 0.5, (4, 1))
    a, _ = gk.make_sparse_matmul_node(w, "X", "Y", format="bsr", block=(4, 1))
    b, _ = gk.make_sparse_matmul_node(w, "Y", "Z", format="bsr", block=(4, 1))
    assert "kernels of their own" in gk.chain_blocker(a, b)
    conv, _ = gk.make_sparse_conv_node(w.T.reshape(16, 16, 1, 1), "Y", "Z", format="bsr",
                                       block=(4, 1))
    assert "one is a SparseConv" in gk.chain_blocker(a, conv)
