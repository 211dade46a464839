"""Sparse ONNX Runtime operators (custom-op domain ``graphprune``), CPU.

``SparseMatMul`` runs ``Y = act(X @ W + bias)`` and ``SparseConv`` a group-1 convolution on NCHW
(1x1 directly, k x k / strided / padded through im2col) with ``W`` stored block-sparse (BSR 1x4,
4x1, 4x4, 8x1), unstructured (CSR) or N:M (2:4); ``SparseConvChain`` / ``SparseMatMulChain`` are a
SparseConv and the pointwise one that reads its output, or two SparseMatMul, in one node
(``make_sparse_chain_node``), so that output is multiplied again while in cache; ``SoftmaxNanToZero`` is the Softmax -> IsNaN -> Where
guard torch writes after attention softmaxes, in one pass. The operators live in a C++ library that ``pip install .``
builds into the package; an editable install (or one whose build failed) builds it from
``kernels/`` on first use::

    from graphprune import kernels
    W = kernels.mask_blocks(W, 0.9, (4, 1))
    model = kernels.make_sparse_matmul_model(W, format="bsr", block=(4, 1))
    sess = kernels.session(model, threads=2)

    Wm = kernels.mask_blocks(kernels.conv_weight_matrix(conv_w), 0.9, (4, 1))  # [C*kh*kw, O]
    node, inits = kernels.make_sparse_conv_node(
        kernels.conv_weight_from_matrix(Wm, conv_w.shape[2:]), "x", "y", pads=[1, 1, 1, 1])

``python -m graphprune.kernels build`` builds it ahead of time.

CUDA (opt-in, needs nvcc): :func:`build_cuda` builds ``libgraphprune_kernels_cuda.so``, a
``SparseMatMul`` for ONNX Runtime's CUDAExecutionProvider with the same inputs and attributes;
``session(model, cuda=True)`` registers it (it brings the CPU operators along). Compiled, but not
yet run on a GPU in this project.
"""

from ._build import (LIBRARY_NAME, KernelsUnavailable, build, cache_root, find_cmake,
                     find_headers, how_to_load, isa, library_path, session, session_options,
                     shipped_library, source_dir, source_hash)
from .pack import (ACTIVATIONS, BLOCK_SHAPES, DOMAIN, FORMATS, OPSET_VERSION, SparseWeight,
                   chain_blocker, conv_attributes, conv_output_shape, conv_weight_from_matrix, conv_weight_matrix,
                   make_sparse_chain_node, make_sparse_conv_model, make_sparse_conv_node,
                   make_sparse_matmul_model,
                   make_sparse_matmul_node, mask_blocks, mask_nm, mask_unstructured, pack, unpack)

__all__ = [
    "ACTIVATIONS", "BLOCK_SHAPES", "DOMAIN", "FORMATS", "LIBRARY_NAME", "OPSET_VERSION",
    "KernelsUnavailable", "SparseWeight", "build", "cache_root", "chain_blocker", "conv_attributes",
    "conv_output_shape", "conv_weight_from_matrix", "conv_weight_matrix", "find_cmake",
    "find_headers", "how_to_load", "isa", "library_path", "make_sparse_chain_node",
    "make_sparse_conv_model",
    "make_sparse_conv_node",
    "make_sparse_matmul_model", "make_sparse_matmul_node", "mask_blocks", "mask_nm",
    "mask_unstructured", "pack", "session", "session_options", "shipped_library", "source_dir",
    "source_hash", "unpack",
]

from ._build import (CUDA_LIBRARY_NAME, build_cuda, cuda_library_path, cuda_source_hash,  # noqa: E402
                     find_nvcc)

__all__ += ["CUDA_LIBRARY_NAME", "build_cuda", "cuda_library_path", "cuda_source_hash", "find_nvcc"]
