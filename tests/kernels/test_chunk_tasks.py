"""Problems of many chunks (>= 8 blocks of MB rows or pixels): each task packs one chunk and
multiplies every column on it (compute.cpp, kChunkTaskMin), with and without K panels (the
accumulator ranges) and for all three layouts, against ONNX Runtime's dense ops."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from graphprune import kernels as gk
from kernels_testlib import (FORMAT_IDS, FORMATS, assert_close, fmt_kwargs, masked,
                             masked_conv_weight, run_dense, run_sparse)

pytestmark = pytest.mark.usefixtures("library")


# (C, O, kernel, pads, strides, batch, H, W): pixels far beyond 8 chunks; C*kh*kw = 1800 > 384
# KiB of packed chunk at 64 pixels, so "3x3-panels" also runs K panel by panel. im2col prefetches
# its input channel block by channel block ahead, into the next chunk near a chunk's end; with
# 7 channels (fewer than that distance) the next chunk whole. An even width (W = 2 Wo) takes the
# stride-2 phase im2col. "-tail": an image's last chunk holds few pixels (12x11 = 2 x 64 + 4,
# 12x7 = 64 + 20 at 16-float vectors; 4 x 32 + 4 and 2 x 32 + 20 at 8), so it is packed and
# multiplied narrower; at batch 22 (66 chunks or more) a task takes two chunks or more, and with
# an odd number of chunks per image some task goes on from the narrow one to a full one of the
# next image, at full width again.
CONVS = {"1x1": (24, 19, (1, 1), (0, 0, 0, 0), (1, 1), 2, 33, 31),
         "3x3": (7, 10, (3, 3), (1, 1, 1, 1), (1, 1), 3, 25, 27),
         "3x3-panels": (200, 9, (3, 3), (1, 1, 1, 1), (1, 1), 1, 30, 29),
         "3x3-stride2": (37, 11, (3, 3), (1, 0, 1, 1), (2, 2), 3, 45, 47),
         "3x3-stride2-even": (37, 11, (3, 3), (1, 1, 1, 1), (2, 2), 3, 45, 46),
         "3x3-tail": (12, 10, (3, 3), (1, 1, 1, 1), (1, 1), 22, 12, 11),
         "1x1-tail": (16, 9, (1, 1), (0, 0, 0, 0), (1, 1), 9, 12, 7)}


@pytest.mark.parametrize("conv", sorted(CONVS))
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_conv_of_many_chunks(fmt, block, conv):
    c, o, kernel, pads, strides, batch, h, w = CONVS[conv]
    rng = np.random.default_rng(11)
    cw = masked_conv_weight(rng, o, c, kernel, fmt, block)
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    ho = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    r = rng.standard_normal((batch, o, ho, wo)).astype(np.float32)
    attrs = {"kernel_shape": list(kernel), "pads": list(pads), "strides": list(strides)}
    node, inits = gk.make_sparse_conv_node(cw, "X", "Y", residual="R", **attrs,
                                           **fmt_kwargs(fmt, block))
    want = run_dense([helper.make_node("Conv", ["X", "W"], ["Z"], **attrs),
                      helper.make_node("Add", ["Z", "R"], ["Y"])],
                     [numpy_helper.from_array(cw, "W")], {"X": x, "R": r})
    assert_close(run_sparse(node, inits, {"X": x, "R": r}), want.astype(np.float64))


# 993 rows: 16 chunks of 64 (32 at 8-float vectors), the last one partial; 1030 and 1042 rows
# leave 6 and 18 rows for the last one, which is then multiplied one or two vectors wide.
@pytest.mark.parametrize("rows", [(3, 331), (2, 515), (2, 521)], ids=["993", "1030", "1042"])
@pytest.mark.parametrize("k", [40, 1600])  # one K panel, several
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_matmul_of_many_chunks(fmt, block, k, rows):
    rng = np.random.default_rng(5)
    w = masked(rng.standard_normal((k, 21)).astype(np.float32), fmt, block)
    x = rng.standard_normal((*rows, k)).astype(np.float32)
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", activation="relu", **fmt_kwargs(fmt, block))
    want = np.maximum(x.astype(np.float64) @ w.astype(np.float64), 0.0)
    assert_close(run_sparse(node, inits, {"X": x}), want)


@pytest.mark.parametrize("rows", [5, 40])
@pytest.mark.parametrize("block", [(4, 1), (8, 1)], ids=["bsr4x1", "bsr8x1"])
def test_column_blocks_over_k_panels(block, rows):
    """4x1 / 8x1 MatMul with a long K: chunks of 40 rows are read K panel by K panel, summing
    into per-task accumulators (the interleaved layout is only used for K up to 1024)."""
    rng = np.random.default_rng(9)
    k = 6503  # not a multiple of the block: the last block is partly padding
    w = masked(rng.standard_normal((k, 21)).astype(np.float32), "bsr", block, 0.9)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    node, inits = gk.make_sparse_matmul_node(w, "X", "Y", format="bsr", block=block)
    assert_close(run_sparse(node, inits, {"X": x}), x.astype(np.float64) @ w.astype(np.float64))
