"""graphprune.SparseConv with k x k kernels, strides, pads and dilations (im2col path) against
ONNX Runtime's own dense Conv on the masked dense weight.

The library is built on first use (see test_sparse_matmul.py); where that is impossible the tests
that need it are skipped with the reason. Tolerance: |y - ref| <= 1e-4 * |ref| + 1e-4 * max|ref|.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import kernels as gk
from kernels_testlib import (FORMAT_IDS, FORMATS, assert_close, fmt_kwargs, forced_isa,
                             masked_conv_weight)


# (C, O, kernel, strides, pads [top, left, bottom, right], dilations, H, W): C and O are not
# multiples of the blocks, most H, W odd.
CONFIGS = {
    "3x3s1p1": (6, 13, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 9, 11),
    "3x3s2p1": (5, 9, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 11, 13),
    "1x1s2": (13, 10, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 9, 9),
    "7x7s2p3": (3, 11, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 19, 17),
    "3x3d2p2": (5, 7, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 13, 10),
    "3x2-odd": (7, 6, (3, 2), (2, 1), (1, 0, 0, 1), (1, 2), 10, 9),
    # stride 1 with the output as wide as the input (the kernels' linear im2col): pads on one side
    # only, and a kernel wider than the image
    "3x3-same-asym": (6, 9, (3, 3), (1, 1), (0, 2, 2, 0), (1, 1), 12, 21),
    "1x5-wider": (4, 6, (1, 5), (1, 1), (0, 2, 0, 2), (1, 1), 7, 3),
    # stride 2 with an even width W = 2 Wo (the kernels' phase im2col: even and odd columns
    # apart): ResNet's 3x3 pad 1 and 7x7 pad 3, a pad on one side only, an odd height, a
    # dilated 3x3 (every tap in one column phase); its 1x1 downsample keeps the run path
    "3x3s2-even": (6, 9, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 12, 14),
    "7x7s2-even": (3, 10, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 17, 18),
    "1x1s2-even": (9, 7, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 10, 12),
    "3x3s2-asym": (5, 6, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 11, 16),
    "3x3s2d2": (4, 5, (3, 3), (2, 2), (2, 2, 2, 2), (2, 2), 9, 10),
}


def dense_session(cw, bias, activation, kernel, strides, pads, dilations):
    """ONNX Runtime's Conv (+ Relu) on the dense weight: the reference."""
    inputs = ["X", "W"] + (["B"] if bias is not None else [])
    conv_out = "Z" if activation == "relu" else "Y"
    nodes = [helper.make_node("Conv", inputs, [conv_out], kernel_shape=list(kernel),
                              strides=list(strides), pads=list(pads), dilations=list(dilations))]
    if activation == "relu":
        nodes.append(helper.make_node("Relu", ["Z"], ["Y"]))
    inits = [numpy_helper.from_array(cw, "W")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "B"))
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def model_with(node, inits, x_shape=None):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(gk.DOMAIN, gk.OPSET_VERSION)])


# ---------------------------------------------------------------------------------------------
# Python side (numpy / onnx only)


def test_conv_weight_matrix_roundtrip():
    cw = np.arange(5 * 3 * 2 * 4, dtype=np.float32).reshape(5, 3, 2, 4)
    wm = gk.conv_weight_matrix(cw)
    assert wm.shape == (3 * 2 * 4, 5)
    # row k = (c, i, j) row-major, column o
    assert wm[(2 * 2 + 1) * 4 + 3, 4] == cw[4, 2, 1, 3]
    np.testing.assert_array_equal(gk.conv_weight_from_matrix(wm, (2, 4)), cw)
    with pytest.raises(ValueError, match="Conv weight"):
        gk.conv_weight_matrix(np.ones((3, 4), np.float32))


def test_conv_node_attributes():
    rng = np.random.default_rng(0)
    cw = masked_conv_weight(rng, 8, 4, (3, 3), "bsr", (4, 1))
    node, _ = gk.make_sparse_conv_node(cw, "a", "b", bias=np.zeros(8), activation="relu",
                                       strides=2, pads=[1, 1, 0, 0])
    assert node.domain == gk.DOMAIN and node.op_type == "SparseConv"
    assert list(node.input) == ["a", "b.values", "b.indices", "b.row_ptr", "b.bias"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"k": 36, "n": 8, "format": b"bsr", "block_rows": 4, "block_cols": 1,
                     "activation": b"relu", "kernel_shape": [3, 3], "strides": [2, 2],
                     "pads": [1, 1, 0, 0], "dilations": [1, 1]}
    sw = gk.pack(gk.conv_weight_matrix(cw), "csr")
    node, _ = gk.make_sparse_conv_node(sw, "a", "b", kernel_shape=(3, 3))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["kernel_shape"] == [3, 3] and attrs["k"] == 36
    with pytest.raises(ValueError, match="group 1"):
        gk.make_sparse_conv_node(cw, "a", "b", group=2)
    with pytest.raises(ValueError, match="pads must have 4"):
        gk.make_sparse_conv_node(cw, "a", "b", pads=[1, 1, 1])
    with pytest.raises(ValueError, match="does not match"):
        gk.make_sparse_conv_node(cw, "a", "b", kernel_shape=(1, 1))
    with pytest.raises(ValueError, match="not C\\*kh\\*kw"):
        gk.make_sparse_conv_node(sw, "a", "b", kernel_shape=(5, 5))


def test_conv_model_shapes():
    cw = np.ones((6, 3, 7, 7), np.float32)
    m = gk.make_sparse_conv_model(cw, format="csr", input_shape=[1, 3, 224, 224], strides=2, pads=3)
    dims = [d.dim_value or d.dim_param for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 6, 112, 112]
    m = gk.make_sparse_conv_model(cw, format="csr", strides=2, pads=3)
    dims = [d.dim_value or d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["B", 3, "H", "W"]


# ---------------------------------------------------------------------------------------------
# The operator against ORT's Conv


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bias,activation", [(True, "relu"), (False, "none")], ids=["bias-relu", "plain"])
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_sparse_conv_matches_ort_conv(library, config, fmt, block, bias, activation, threads):
    c, o, kernel, strides, pads, dilations, h, w = CONFIGS[config]
    rng = np.random.default_rng(zlib.crc32(f"{config} {fmt} {block}".encode()))
    cw = masked_conv_weight(rng, o, c, kernel, fmt, block)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    model = gk.make_sparse_conv_model(cw, bias=b, activation=activation, strides=strides, pads=pads,
                                      dilations=dilations, **fmt_kwargs(fmt, block))
    sess = gk.session(model, threads=threads)
    ref = dense_session(cw, b, activation, kernel, strides, pads, dilations)
    for batch in (1, 3):
        x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
        assert_close(sess.run(None, {"X": x})[0], ref.run(None, {"X": x})[0])


@pytest.mark.parametrize("fmt,block", [("bsr", (4, 1)), ("bsr", (1, 4)), ("csr", (1, 1))],
                         ids=["bsr4x1", "bsr1x4", "csr"])
def test_dynamic_input_sizes(library, fmt, block):
    """One session, many input sizes: tiny outputs (half-width vectors, 1 pixel), inputs smaller
    than the kernel (only padding around), wide and tall images."""
    rng = np.random.default_rng(1)
    cw = masked_conv_weight(rng, 10, 6, (3, 3), fmt, block)
    b = rng.standard_normal(10).astype(np.float32)
    model = gk.make_sparse_conv_model(cw, bias=b, activation="relu", strides=2, pads=1,
                                      **fmt_kwargs(fmt, block))
    sess = gk.session(model, threads=2)
    ref = dense_session(cw, b, "relu", (3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
    for shape in [(1, 6, 1, 1), (2, 6, 2, 3), (1, 6, 4, 4), (1, 6, 5, 31), (2, 6, 40, 3), (1, 6, 17, 19)]:
        x = rng.standard_normal(shape).astype(np.float32)
        assert_close(sess.run(None, {"X": x})[0], ref.run(None, {"X": x})[0])


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_short_last_chunks(library, fmt, block, kernel):
    """An image's last chunk of pixels holding one or two vectors' worth (14x14 = 3 x 64 + 4,
    10x8 = 64 + 16, 12x7 = 64 + 20 at 16-float vectors) is packed and multiplied narrower, in
    its full-size slot among the chunks packed at once; the chunks after it start where they
    would have."""
    rng = np.random.default_rng(21)
    cw = masked_conv_weight(rng, 11, 9, (kernel, kernel), fmt, block)
    b = rng.standard_normal(11).astype(np.float32)
    pads = (kernel // 2,) * 4
    model = gk.make_sparse_conv_model(cw, bias=b, activation="relu", pads=pads,
                                      **fmt_kwargs(fmt, block))
    ref = dense_session(cw, b, "relu", (kernel, kernel), (1, 1), pads, (1, 1))
    for threads in (1, 2):
        sess = gk.session(model, threads=threads)
        for shape in [(1, 9, 14, 14), (2, 9, 10, 8), (3, 9, 12, 7)]:
            x = rng.standard_normal(shape).astype(np.float32)
            assert_close(sess.run(None, {"X": x})[0], ref.run(None, {"X": x})[0])


@pytest.mark.parametrize("fmt,block", [("bsr", (4, 4)), ("csr", (1, 1))], ids=["bsr4x4", "csr"])
def test_large_images_run_in_waves(library, fmt, block):
    """More im2col chunks than one wave of scratch holds (several waves per image and batch)."""
    rng = np.random.default_rng(2)
    cw = masked_conv_weight(rng, 20, 64, (3, 3), fmt, block, sparsity=0.8)
    model = gk.make_sparse_conv_model(cw, pads=1, **fmt_kwargs(fmt, block))
    sess = gk.session(model, threads=2)
    ref = dense_session(cw, None, "none", (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    x = rng.standard_normal((2, 64, 40, 41)).astype(np.float32)
    assert_close(sess.run(None, {"X": x})[0], ref.run(None, {"X": x})[0])


@pytest.mark.parametrize("fmt,block", [("bsr", (4, 1)), ("bsr", (1, 4)), ("nm", (2, 4))],
                         ids=["bsr4x1", "bsr1x4", "nm2:4"])
def test_large_k_panels(library, fmt, block):
    """K = C*9 large enough that each im2col chunk is read panel by panel."""
    rng = np.random.default_rng(3)
    cw = masked_conv_weight(rng, 24, 192, (3, 3), fmt, block, sparsity=0.85)
    b = rng.standard_normal(24).astype(np.float32)
    model = gk.make_sparse_conv_model(cw, bias=b, activation="relu", pads=1, **fmt_kwargs(fmt, block))
    sess = gk.session(model, threads=2)
    ref = dense_session(cw, b, "relu", (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    for shape in [(1, 192, 9, 9), (2, 192, 3, 5)]:
        x = rng.standard_normal(shape).astype(np.float32)
        assert_close(sess.run(None, {"X": x})[0], ref.run(None, {"X": x})[0])


def test_pointwise_keeps_the_direct_path(library):
    """1x1 / stride 1 / no pads through make_sparse_conv_node: the same results as the legacy
    1x1 node (make_sparse_matmul_node(conv=True)) and as ORT's Conv."""
    rng = np.random.default_rng(4)
    cw = masked_conv_weight(rng, 22, 36, (1, 1), "bsr", (4, 1))
    b = rng.standard_normal(22).astype(np.float32)
    node, inits = gk.make_sparse_conv_node(cw, "X", "Y", bias=b, activation="relu")
    legacy, legacy_inits = gk.make_sparse_matmul_node(gk.conv_weight_matrix(cw), "X", "Y", bias=b,
                                                      activation="relu", conv=True)
    new = gk.session(model_with(node, inits), threads=2)
    old = gk.session(model_with(legacy, legacy_inits), threads=2)
    ref = dense_session(cw, b, "relu", (1, 1), (1, 1), (0, 0, 0, 0), (1, 1))
    for shape in [(2, 36, 5, 7), (1, 36, 1, 1), (3, 36, 9, 13)]:
        x = rng.standard_normal(shape).astype(np.float32)
        y = new.run(None, {"X": x})[0]
        np.testing.assert_array_equal(y, old.run(None, {"X": x})[0])
        assert_close(y, ref.run(None, {"X": x})[0])


def test_conv_1d(library):
    rng = np.random.default_rng(5)
    cw = masked_conv_weight(rng, 9, 5, (3,), "bsr", (4, 1))
    model = gk.make_sparse_conv_model(cw, strides=[2], pads=[1, 2], dilations=[2])
    sess = gk.session(model, threads=2)
    ref = dense_session(cw, None, "none", (3,), (2,), (1, 2), (2,))
    for shape in [(1, 5, 17), (3, 5, 4)]:
        x = rng.standard_normal(shape).astype(np.float32)
        assert_close(sess.run(None, {"X": x})[0], ref.run(None, {"X": x})[0])


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_code_path(library, isa, monkeypatch):
    """The im2col packing of every ISA copy this CPU can run: stride 2 (runs, strided copies
    with masked tails) and stride 1 as wide as the input (one clipped run per channel and tap)."""
    rng = np.random.default_rng(6)
    with forced_isa(isa, monkeypatch):
        for (fmt, block), stride in [(fb, s) for fb in FORMATS for s in (2, 1)]:
            cw = masked_conv_weight(rng, 11, 5, (3, 3), fmt, block)
            b = rng.standard_normal(11).astype(np.float32)
            model = gk.make_sparse_conv_model(cw, bias=b, activation="relu", strides=stride, pads=1,
                                              **fmt_kwargs(fmt, block))
            sess = gk.session(model, threads=2)
            ref = dense_session(cw, b, "relu", (3, 3), (stride, stride), (1, 1, 1, 1), (1, 1))
            for shape in [(1, 5, 3, 3), (2, 5, 9, 14), (1, 5, 23, 21)]:
                x = rng.standard_normal(shape).astype(np.float32)
                assert_close(sess.run(None, {"X": x})[0], ref.run(None, {"X": x})[0])


def test_runtime_weights(library):
    """Weights fed as graph inputs (packed on every run) with a 3x3 kernel."""
    rng = np.random.default_rng(7)
    cw = masked_conv_weight(rng, 6, 4, (3, 3), "bsr", (4, 4))
    sw = gk.pack(gk.conv_weight_matrix(cw), "bsr", block=(4, 4))
    node, _ = gk.make_sparse_conv_node(sw, "X", "Y", kernel_shape=(3, 3), pads=1, prefix="w")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("w.values", TensorProto.FLOAT, list(sw.values.shape)),
         helper.make_tensor_value_info("w.indices", TensorProto.INT32, list(sw.indices.shape)),
         helper.make_tensor_value_info("w.row_ptr", TensorProto.INT32, list(sw.row_ptr.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(gk.DOMAIN, gk.OPSET_VERSION)])
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    (y,) = gk.session(model, threads=2).run(
        None, {"X": x, "w.values": sw.values, "w.indices": sw.indices, "w.row_ptr": sw.row_ptr})
    ref = dense_session(cw, None, "none", (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    assert_close(y, ref.run(None, {"X": x})[0])


# ---------------------------------------------------------------------------------------------
# Invalid attributes and inputs: an ORT error naming the node, never a crash


def _conv_node(**overrides):
    cw = masked_conv_weight(np.random.default_rng(8), 8, 4, (3, 3), "bsr", (4, 1))
    node, inits = gk.make_sparse_conv_node(cw, "X", "Y", name="conv_under_test", pads=1)
    for key, value in overrides.items():
        for a in list(node.attribute):
            if a.name == key:
                node.attribute.remove(a)
        if value is not None:
            node.attribute.append(helper.make_attribute(key, value))
    return model_with(node, inits)


@pytest.mark.parametrize("overrides,message", [
    ({"group": 2}, "group=2 is not supported"),
    ({"pads": [1, 1, 1]}, r"pads \[1, 1, 1\] must have 4 entries"),
    ({"strides": [1, 1, 1]}, r"strides \[1, 1, 1\] must have 2 entries"),
    ({"kernel_shape": [1, 1, 1]}, "1-D and 2-D"),
    ({"kernel_shape": [3]}, r"strides \[1, 1\] must have 1 entries"),
    ({"kernel_shape": [5, 5]}, "k=36 is not a multiple of kernel_shape's kh\\*kw=25"),
    ({"dilations": [0, 1]}, "dilations .* must be >= 1"),
    ({"auto_pad": "SAME_UPPER"}, "auto_pad=SAME_UPPER is not supported"),
], ids=["group", "pads", "strides", "rank3", "kernel", "kernel-k", "dilation", "auto_pad"])
def test_bad_attributes_fail_at_session_creation(library, overrides, message):
    with pytest.raises(Exception, match=message) as info:
        gk.session(_conv_node(**overrides))
    assert "conv_under_test" in str(info.value)


def test_bad_inputs_fail_at_run_time(library):
    sess = gk.session(_conv_node(), threads=2)
    sess.run(None, {"X": np.zeros((1, 4, 5, 5), np.float32)})
    cases = [((1, 5, 5, 5), "has C=5 channels, but k=36 = C\\*kh\\*kw needs C=4"),
             ((1, 4, 5), "must be \\[batch, C, H, W\\]"),
             ((1, 4, 5, 5, 5), "must be \\[batch, C, H, W\\]")]
    for shape, message in cases:
        with pytest.raises(Exception, match=message) as info:
            sess.run(None, {"X": np.zeros(shape, np.float32)})
        assert "conv_under_test" in str(info.value)
    # a dilated kernel larger than the padded input
    sess = gk.session(_conv_node(dilations=[4, 4]), threads=1)
    with pytest.raises(Exception, match="smaller than the \\(dilated\\) kernel") as info:
        sess.run(None, {"X": np.zeros((1, 4, 3, 3), np.float32)})
    assert "conv_under_test" in str(info.value)
