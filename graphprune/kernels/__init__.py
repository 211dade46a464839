"""Sparse ONNX Runtime operators (custom-op domain ``graphprune``), CPU.

``SparseMatMul`` / ``SparseConv`` (1x1) run ``Y = act(X @ W + bias)`` with ``W`` stored
block-sparse (BSR 1x4, 4x1, 4x4, 8x1), unstructured (CSR) or N:M (2:4). The operators live in a
C++ library built from ``kernels/`` on first use::

    from graphprune import kernels
    W = kernels.mask_blocks(W, 0.9, (4, 1))
    model = kernels.make_sparse_matmul_model(W, format="bsr", block=(4, 1))
    sess = kernels.session(model, threads=2)

``python -m graphprune.kernels build`` builds it ahead of time.
"""

from ._build import (LIBRARY_NAME, KernelsUnavailable, build, cache_root, find_headers, isa,
                     library_path, session, session_options, source_dir, source_hash)
from .pack import (ACTIVATIONS, BLOCK_SHAPES, DOMAIN, FORMATS, OPSET_VERSION, SparseWeight,
                   make_sparse_matmul_model, make_sparse_matmul_node, mask_blocks, mask_nm,
                   mask_unstructured, pack, unpack)

__all__ = [
    "ACTIVATIONS", "BLOCK_SHAPES", "DOMAIN", "FORMATS", "LIBRARY_NAME", "OPSET_VERSION",
    "KernelsUnavailable", "SparseWeight", "build", "cache_root", "find_headers", "isa",
    "library_path", "make_sparse_matmul_model", "make_sparse_matmul_node", "mask_blocks",
    "mask_nm", "mask_unstructured", "pack", "session", "session_options", "source_dir",
    "source_hash", "unpack",
]
