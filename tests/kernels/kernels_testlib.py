"""What the kernel tests share: the formats, a float64 numpy reference, masking by format, the
one-node model builder and the comparison tolerance (the `library` fixture is in conftest.py)."""
from __future__ import annotations

import math

import numpy as np
from graphprune import kernels as gk

FORMATS = [("bsr", (1, 4)), ("bsr", (4, 1)), ("bsr", (4, 4)), ("bsr", (8, 1)),
           ("csr", (1, 1)), ("nm", (2, 4))]
FORMAT_IDS = ["bsr1x4", "bsr4x1", "bsr4x4", "bsr8x1", "csr", "nm2:4"]

_erf = np.vectorize(math.erf)


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
