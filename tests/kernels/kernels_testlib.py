"""What the kernel tests share: the formats, a float64 numpy reference, masking by format, the
one-node model builders and runners and the comparison tolerance (the `library` fixture is in
conftest.py)."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphprune import kernels as gk

FORMATS = [("bsr", (1, 4)), ("bsr", (4, 1)), ("bsr", (4, 4)), ("bsr", (8, 1)),
           ("csr", (1, 1)), ("nm", (2, 4))]
FORMAT_IDS = ["bsr1x4", "bsr4x1", "bsr4x4", "bsr8x1", "csr", "nm2:4"]

_erf = np.vectorize(math.erf)


def _select_isa() -> None:
    """The library reads GRAPHPRUNE_KERNELS_ISA when a session registers it."""
    gk.session(gk.make_sparse_matmul_model(np.eye(4, dtype=np.float32), format="csr"))


@contextlib.contextmanager
def forced_isa(isa, monkeypatch):
    """Runs the body on the library's `isa` copy (skipped where this CPU lacks it), then goes
    back to the best copy, also when the body fails."""
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_ISA", isa)
    try:
        try:
            _select_isa()
        except gk.KernelsUnavailable as exc:
            assert "not available on this CPU" in str(exc)
            pytest.skip(f"{isa} not supported by this CPU")
        assert gk.isa() == isa
        yield
    finally:
        monkeypatch.delenv("GRAPHPRUNE_KERNELS_ISA")
        _select_isa()


def reference(x, w, bias=None, activation="none"):
    """act(x @ w + bias) in float64."""
    y = x.astype(np.float64) @ w.astype(np.float64)
    if bias is not None:
        y = y + bias.astype(np.float64)
    if activation == "relu":
        y = np.maximum(y, 0.0)
    elif activation == "gelu":
        y = 0.5 * y * (1.0 + _erf(y / math.sqrt(2.0)))
    return y


def assert_close(y, ref):
    """float32 output of the reference's shape, within 1e-4 relative (and 1e-4 of its scale)."""
    assert y.shape == ref.shape and y.dtype == np.float32
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * max(scale, 1e-30))


def masked(w, fmt, block, sparsity=0.7):
    """`w` zeroed to the format's pattern (N:M takes its own sparsity)."""
    if fmt == "bsr":
        return gk.mask_blocks(w, sparsity, block)
    if fmt == "csr":
        return gk.mask_unstructured(w, sparsity)
    return gk.mask_nm(w, *block)


def sparse_model(w, fmt, block, **kwargs):
    """A one-node SparseMatMul model of the dense `w` packed in `fmt`."""
    if fmt == "nm":
        return gk.make_sparse_matmul_model(w, format="nm", nm=block, **kwargs)
    return gk.make_sparse_matmul_model(w, format=fmt, block=block, **kwargs)


def fmt_kwargs(fmt, block):
    """The builders' keyword arguments for a (format, block) pair of FORMATS."""
    return {"format": fmt, "nm": block} if fmt == "nm" else {"format": fmt, "block": block}


def masked_conv_weight(rng, o, c, kernel, fmt, block, sparsity=0.7):
    """A random ONNX Conv weight [O, C, *kernel], masked on its matrix [C*kh*kw, O]."""
    cw = rng.standard_normal((o, c, *kernel)).astype(np.float32)
    return gk.conv_weight_from_matrix(masked(gk.conv_weight_matrix(cw), fmt, block, sparsity),
                                      kernel)


def graph_model(nodes, inits, feeds, outputs=("Y",), sparse=True):
    """A model of `nodes`, every feed a float graph input, `outputs` its outputs; `sparse`:
    with graphprune's operator domain imported."""
    graph = helper.make_graph(
        list(nodes), "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in feeds],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        initializer=list(inits))
    domains = [helper.make_opsetid(gk.DOMAIN, gk.OPSET_VERSION)] if sparse else []
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *domains])


def run_dense(nodes, inits, feeds):
    """Output Y of ONNX Runtime's own ops `nodes` (the reference), every feed a graph input."""
    model = graph_model(nodes, inits, feeds, sparse=False)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def run_sparse(node, inits, feeds, threads=2):
    """Output Y of one graphprune node, every feed a graph input, the library registered."""
    model = graph_model([node], inits, feeds)
    return gk.session(model, threads=threads).run(None, feeds)[0]
