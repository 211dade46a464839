"""Packing dense weights into the initializers of the ``graphprune`` sparse operators.

``SparseMatMul(X[..., K], values, indices, row_ptr?, bias?) -> Y[..., N]`` computes
``Y = act(X @ W + bias)`` with ``W [K, N]`` stored sparse in one of three formats
(attributes ``k``, ``n``, ``format``, ``block_rows``, ``block_cols``, ``nm_n``, ``nm_m``,
``activation``):

``bsr``
    scipy's block-sparse-row form of ``W``: blocks of ``block_rows`` (along K) x ``block_cols``
    (along N), one of 1x4, 4x1, 4x4, 8x1. ``values [nnzb, br, bc]`` float, ``indices [nnzb]`` the
    block column of each block, ``row_ptr [ceil(K/br) + 1]``. Blocks that overhang K or N hold
    zeros there.
``csr``
    scipy's CSR of ``W`` (bsr with 1x1 blocks): ``values [nnz]``, ``indices [nnz]`` the column n,
    ``row_ptr [K + 1]``.
``nm``
    ``nm_n``:``nm_m`` (2:4 by default) along K for every output column: ``W^T [N, K]`` is split
    into groups of m consecutive k (the last one padded with zeros) and each group keeps n entries:
    ``values [N, G, n]`` float and ``indices [N, G, n]`` the absolute k of each kept weight
    (sorted within a group). No ``row_ptr``.

``indices`` and ``row_ptr`` are int32 or int64. ``SparseConv(X[B, C, H, W], ...) -> Y[B, N, Ho, Wo]``
takes the same inputs for a convolution on NCHW (group 1; ONNX Conv's ``kernel_shape``,
``strides``, ``pads``, ``dilations`` attributes) with ``W = conv_weight.reshape(N, -1).T``, i.e.
``K = C*kh*kw`` ordered (c, i, j) (see :func:`conv_weight_matrix`, :func:`make_sparse_conv_node`).
The kernel repacks whatever it gets into its own layout once, when the session is created (the
weights are initializers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

DOMAIN = "graphprune"
OPSET_VERSION = 1
FORMATS = ("bsr", "csr", "nm")
BLOCK_SHAPES = ((1, 4), (4, 1), (4, 4), (8, 1))
ACTIVATIONS = ("none", "relu", "gelu")


@dataclass
class SparseWeight:
    """A weight ``W [k, n]`` in one of the operator's formats (see the module docstring)."""

    format: str
    k: int
    n: int
    values: np.ndarray
    indices: np.ndarray
    row_ptr: Optional[np.ndarray] = None
    block: Tuple[int, int] = (1, 1)
    nm: Tuple[int, int] = (2, 4)

    def attributes(self) -> dict:
        attrs = {"k": int(self.k), "n": int(self.n), "format": self.format}
        if self.format == "bsr":
            attrs["block_rows"], attrs["block_cols"] = int(self.block[0]), int(self.block[1])
        if self.format == "nm":
            attrs["nm_n"], attrs["nm_m"] = int(self.nm[0]), int(self.nm[1])
        return attrs

    @property
    def stored(self) -> int:
        """Number of stored weight values (including zeros inside kept blocks)."""
        return int(self.values.size)

    @property
    def density(self) -> float:
        return self.stored / float(self.k * self.n)


def _check_2d(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"W must be 2-D [K, N], got shape {w.shape}")
    return w.astype(np.float32, copy=False)


def _check_block(block: Sequence[int], allow_1x1: bool = True) -> Tuple[int, int]:
    br, bc = (int(block[0]), int(block[1]))
    if (br, bc) not in BLOCK_SHAPES and not (allow_1x1 and (br, bc) == (1, 1)):
        raise ValueError(f"block {br}x{bc} is not supported; use one of "
                         + ", ".join(f"{r}x{c}" for r, c in BLOCK_SHAPES))
    return br, bc


def _blocks(w: np.ndarray, br: int, bc: int) -> np.ndarray:
    """W [K, N] zero-padded to block multiples, as [Kb, Nb, br, bc]."""
    k, n = w.shape
    kb, nb = -(-k // br), -(-n // bc)
    padded = np.zeros((kb * br, nb * bc), dtype=np.float32)
    padded[:k, :n] = w
    return padded.reshape(kb, br, nb, bc).transpose(0, 2, 1, 3)


# --------------------------------------------------------------------------------------------
# pack / unpack


def pack(w: np.ndarray, format: str = "bsr", block: Sequence[int] = (4, 1),
         nm: Sequence[int] = (2, 4), index_dtype=np.int32) -> SparseWeight:
    """Packs a dense ``W [K, N]`` (already masked) into the operator's initializers.

    ``bsr`` keeps every block with a non-zero, ``csr`` every non-zero. ``nm`` needs ``W`` to be
    N:M sparse along K (at most n non-zeros in each group of m, see :func:`mask_nm`); a group
    with fewer keeps explicit zeros.
    """
    w = _check_2d(w)
    k, n = w.shape
    index_dtype = np.dtype(index_dtype)
    if index_dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise ValueError("index_dtype must be int32 or int64")
    if format in ("bsr", "csr"):
        br, bc = (1, 1) if format == "csr" else _check_block(block)
        blocks = _blocks(w, br, bc)                      # [Kb, Nb, br, bc]
        keep = np.any(blocks != 0, axis=(2, 3))          # [Kb, Nb]
        rows, cols = np.nonzero(keep)                    # row-major order: sorted by row, col
        row_ptr = np.zeros(keep.shape[0] + 1, dtype=index_dtype)
        np.cumsum(keep.sum(axis=1), out=row_ptr[1:])
        values = np.ascontiguousarray(blocks[rows, cols])  # [nnzb, br, bc]
        if format == "csr":
            values = values.reshape(-1)
        return SparseWeight(format, k, n, values.astype(np.float32),
                            cols.astype(index_dtype), row_ptr, block=(br, bc))
    if format == "nm":
        nk, m = int(nm[0]), int(nm[1])
        if not (1 <= nk <= m):
            raise ValueError(f"nm pattern {nk}:{m} is not valid")
        g = -(-k // m)
        wt = np.zeros((n, g * m), dtype=np.float32)
        wt[:, :k] = w.T
        groups = wt.reshape(n, g, m)
        counts = np.count_nonzero(groups, axis=2)
        if counts.max(initial=0) > nk:
            j, gi = np.argwhere(counts > nk)[0]
            raise ValueError(f"W is not {nk}:{m} sparse along K: output column {j}, rows "
                             f"{gi * m}..{gi * m + m - 1} hold {counts[j, gi]} non-zeros "
                             f"(mask it with mask_nm first)")
        # Keep the nk largest magnitudes (all non-zeros, then zeros), sorted by position.
        order = np.argsort(-np.abs(groups), axis=2, kind="stable")[:, :, :nk]
        order.sort(axis=2)
        values = np.take_along_axis(groups, order, axis=2)
        indices = order + (np.arange(g) * m)[None, :, None]
        return SparseWeight("nm", k, n, np.ascontiguousarray(values, dtype=np.float32),
                            np.ascontiguousarray(indices.astype(index_dtype)), None, nm=(nk, m))
    raise ValueError(f"format {format!r} is not one of {', '.join(FORMATS)}")


def unpack(sw: SparseWeight) -> np.ndarray:
    """The dense ``W [k, n]`` a :class:`SparseWeight` stands for."""
    k, n = sw.k, sw.n
    if sw.format in ("bsr", "csr"):
        br, bc = (1, 1) if sw.format == "csr" else sw.block
        kb, nb = -(-k // br), -(-n // bc)
        out = np.zeros((kb, nb, br, bc), dtype=np.float32)
        row_ptr = np.asarray(sw.row_ptr, dtype=np.int64)
        rows = np.repeat(np.arange(kb), np.diff(row_ptr))
        out[rows, np.asarray(sw.indices, dtype=np.int64)] = np.asarray(sw.values).reshape(-1, br, bc)
        return out.transpose(0, 2, 1, 3).reshape(kb * br, nb * bc)[:k, :n].copy()
    if sw.format == "nm":
        nk, m = sw.nm
        g = -(-k // m)
        wt = np.zeros((n, g * m), dtype=np.float32)
        idx = np.asarray(sw.indices, dtype=np.int64).reshape(n, -1)
        np.put_along_axis(wt, idx, np.asarray(sw.values, dtype=np.float32).reshape(n, -1), axis=1)
        return wt[:, :k].T.copy()
    raise ValueError(f"format {sw.format!r} is not one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------
# magnitude masks


def _n_pruned(total: int, sparsity: float) -> int:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return int(round(sparsity * total))


def _smallest(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` smallest scores (ties broken by position)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if count >= scores.size:
        return np.arange(scores.size)
    cut = np.partition(scores, count - 1)[count - 1]
    below = np.flatnonzero(scores < cut)
    ties = np.flatnonzero(scores == cut)[:count - below.size]
    return np.concatenate([below, ties])


def mask_blocks(w: np.ndarray, sparsity: float, block: Sequence[int] = (4, 1)) -> np.ndarray:
    """Zeroes the ``sparsity`` fraction of ``block`` blocks (on the zero-padded grid) with the
    smallest L2 norm. Returns a new array."""
    w = _check_2d(w)
    br, bc = _check_block(block)
    blocks = _blocks(w, br, bc).copy()
    norms = np.sqrt(np.sum(blocks.astype(np.float64) ** 2, axis=(2, 3))).ravel()
    drop = _smallest(norms, _n_pruned(norms.size, sparsity))
    flat = blocks.reshape(-1, br, bc)
    flat[drop] = 0.0
    kb, nb = blocks.shape[:2]
    dense = blocks.transpose(0, 2, 1, 3).reshape(kb * br, nb * bc)
    return dense[:w.shape[0], :w.shape[1]].copy()


def mask_unstructured(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Zeroes the ``sparsity`` fraction of weights with the smallest magnitude."""
    w = _check_2d(w)
    out = w.copy().ravel()
    drop = _smallest(np.abs(out), _n_pruned(out.size, sparsity))
    out[drop] = 0.0
    return out.reshape(w.shape)


def mask_nm(w: np.ndarray, n: int = 2, m: int = 4) -> np.ndarray:
    """Keeps the ``n`` largest magnitudes in every group of ``m`` consecutive rows (along K) of
    each column of ``W [K, N]``; a last, shorter group keeps at most ``n`` too."""
    w = _check_2d(w)
    if not (1 <= n <= m):
        raise ValueError(f"nm pattern {n}:{m} is not valid")
    k, cols = w.shape
    g = -(-k // m)
    wt = np.zeros((cols, g * m), dtype=np.float32)
    wt[:, :k] = w.T
    groups = wt.reshape(cols, g, m)
    # Padding sorts last (magnitude -1) so it is never kept over a real weight.
    mag = np.abs(groups)
    mag.reshape(cols, -1)[:, k:] = -1.0
    order = np.argsort(-mag, axis=2, kind="stable")
    masked = np.zeros_like(groups)
    keep = order[:, :, :n]
    np.put_along_axis(masked, keep, np.take_along_axis(groups, keep, axis=2), axis=2)
    return masked.reshape(cols, -1)[:, :k].T.copy()


# --------------------------------------------------------------------------------------------
# ONNX


def _sparse_node(op_type: str, sw: SparseWeight, input_name: str, output_name: str, *,
                 name: Optional[str], bias, activation: str, prefix: Optional[str],
                 extra_attrs: Optional[dict] = None, residual: Optional[str] = None):
    """The node ``op_type`` (SparseMatMul or SparseConv) on ``sw`` and its initializers;
    ``residual``: a tensor shaped like the output, added before the activation."""
    from onnx import helper, numpy_helper

    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    base = prefix or name or output_name
    inits = [numpy_helper.from_array(np.asarray(sw.values, dtype=np.float32), f"{base}.values"),
             numpy_helper.from_array(np.asarray(sw.indices), f"{base}.indices")]
    inputs = [input_name, f"{base}.values", f"{base}.indices"]
    if sw.row_ptr is not None:
        inits.append(numpy_helper.from_array(np.asarray(sw.row_ptr), f"{base}.row_ptr"))
        inputs.append(f"{base}.row_ptr")
    else:
        inputs.append("")
    if bias is not None:
        b = np.asarray(bias, dtype=np.float32).reshape(-1)
        if b.size != sw.n:
            raise ValueError(f"bias has {b.size} elements, W has n={sw.n} columns")
        inits.append(numpy_helper.from_array(b, f"{base}.bias"))
        inputs.append(f"{base}.bias")
    else:
        inputs.append("")
    inputs.append(residual or "")
    while inputs and inputs[-1] == "":
        inputs.pop()
    attrs = sw.attributes()
    if activation != "none":
        attrs["activation"] = activation
    attrs.update(extra_attrs or {})
    node = helper.make_node(op_type, inputs, [output_name], name=name or f"{base}.sparse",
                            domain=DOMAIN, **attrs)
    return node, inits


def _as_sparse(w, format, block, nm, index_dtype) -> SparseWeight:
    if isinstance(w, SparseWeight):
        return w
    return pack(w, format=format, block=block, nm=nm, index_dtype=index_dtype)


def make_sparse_matmul_node(w, input_name: str, output_name: str, *, name: Optional[str] = None,
                            format: str = "bsr", block: Sequence[int] = (4, 1),
                            nm: Sequence[int] = (2, 4), bias: Optional[np.ndarray] = None,
                            activation: str = "none", conv: bool = False,
                            index_dtype=np.int32, prefix: Optional[str] = None,
                            residual: Optional[str] = None):
    """The ``graphprune.SparseMatMul`` (or, with ``conv``, a 1x1 ``SparseConv``) node computing
    ``act(input @ W + bias + residual)`` and its initializers (``residual``: the name of a
    tensor shaped like the output, or None).

    ``w`` is a dense ``[K, N]`` array (packed with ``format``/``block``/``nm``; mask it first) or
    a :class:`SparseWeight`. Returns ``(node, initializers)``; the model needs the opset import
    ``onnx.helper.make_opsetid(DOMAIN, OPSET_VERSION)``. For convolutions of any kernel size see
    :func:`make_sparse_conv_node`.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    sw = _as_sparse(w, format, block, nm, index_dtype)
    return _sparse_node("SparseConv" if conv else "SparseMatMul", sw, input_name, output_name,
                        name=name, bias=bias, activation=activation, prefix=prefix,
                        residual=residual)


# Attributes two sparse nodes must share to be chained (the second weight has the first's
# format and block shape).
_FORMAT_ATTRS = ("format", "block_rows", "block_cols", "nm_n", "nm_m")
_GEOMETRY_ATTRS = ("kernel_shape", "strides", "pads", "dilations")
_CHAINS = {"SparseConv": "SparseConvChain", "SparseMatMul": "SparseMatMulChain"}


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def chain_blocker(first, second) -> Optional[str]:
    """Why ``second`` cannot be chained onto ``first`` (see :func:`make_sparse_chain_node`),
    or None. Both must be SparseConv (the second pointwise: 1x1, stride 1, no pads) or both
    SparseMatMul (not 4x1 / 8x1 blocks, whose MatMul kernels differ); the second reads the
    first's output, adds no residual, and has the same weight format and block shape."""
    for node in (first, second):
        if node.domain != DOMAIN or node.op_type not in _CHAINS:
            return f"{node.name or node.output[0]} is not a {DOMAIN} SparseConv or SparseMatMul"
    if first.op_type != second.op_type:
        return "one is a SparseConv, the other a SparseMatMul"
    if second.input[0] != first.output[0]:
        return "the second does not read the first's output"
    if len(second.input) > 5 and second.input[5]:
        return "the second adds a residual"
    a1, a2 = _attrs(first), _attrs(second)
    for key in _GEOMETRY_ATTRS:
        if any(v != (0 if key == "pads" else 1) for v in a2.get(key, [])):
            return f"the second is not pointwise ({key}={a2[key]})"
    if any(a1.get(key) != a2.get(key) for key in _FORMAT_ATTRS):
        return "the two weights have different formats or block shapes"
    if first.op_type == "SparseMatMul" and a1.get("block_cols", 1) == 1 and \
            a1.get("block_rows", 1) in (4, 8):
        return "4x1 / 8x1 MatMul blocks run on kernels of their own"
    if a2["k"] != a1["n"]:
        return f"the second's k={a2['k']} is not the first's n={a1['n']}"
    return None


def make_sparse_chain_node(first, second, name: Optional[str] = None, keep_first: bool = True):
    """One node doing the work of two: ``first`` and the ``second`` that reads its output (see
    :func:`chain_blocker`). SparseConv + pointwise SparseConv give ``SparseConvChain``, two
    SparseMatMul give ``SparseMatMulChain``; outputs ``first``'s (left out with
    ``keep_first=False``: then nothing else may read it) and ``second``'s. Each chunk of the
    first's output is multiplied by the second's weight while it is still in cache, instead
    of being read back from memory."""
    from onnx import helper

    why = chain_blocker(first, second)
    if why is not None:
        raise ValueError(f"cannot chain these nodes: {why}")
    inputs = list(first.input) + [""] * (6 - len(first.input))
    weight2 = list(second.input[1:5])  # values, indices, row_ptr, bias
    inputs += weight2 + [""] * (4 - len(weight2))
    while inputs and inputs[-1] == "":
        inputs.pop()
    attrs = _attrs(first)
    a2 = _attrs(second)
    attrs["n2"] = a2["n"]
    act2 = a2.get("activation", b"none")
    act2 = act2.decode() if isinstance(act2, bytes) else act2
    if act2 != "none":
        attrs["activation2"] = act2
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    outputs = [first.output[0] if keep_first else "", second.output[0]]
    return helper.make_node(_CHAINS[first.op_type], inputs, outputs,
                            name=name or f"{first.name or first.output[0]}.chain",
                            domain=DOMAIN, **attrs)


def make_sparse_matmul_model(w, *, rows=None, name: str = "sparse_matmul", **kwargs):
    """A one-node model ``Y = SparseMatMul(X)`` with ``X [rows, K]`` (``rows`` None: a symbolic
    dimension), for tests and benchmarks. ``kwargs`` go to :func:`make_sparse_matmul_node`."""
    from onnx import TensorProto, helper

    sw = w if isinstance(w, SparseWeight) else pack(
        w, format=kwargs.pop("format", "bsr"), block=kwargs.pop("block", (4, 1)),
        nm=kwargs.pop("nm", (2, 4)), index_dtype=kwargs.pop("index_dtype", np.int32))
    node, inits = make_sparse_matmul_node(sw, "X", "Y", name=name, **kwargs)
    m = rows if rows is not None else "M"
    graph = helper.make_graph(
        [node], name,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [m, sw.k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, sw.n])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, OPSET_VERSION)])


# --------------------------------------------------------------------------------------------
# Convolutions


def conv_weight_matrix(conv_weight: np.ndarray) -> np.ndarray:
    """ONNX Conv weight ``[O, C, kh, kw]`` (or ``[O, C, k]``) as SparseConv's ``W [C*kh*kw, O]``
    (rows ordered (c, i, j)): ``conv_weight.reshape(O, -1).T``. Mask this matrix (``mask_*``)."""
    cw = np.asarray(conv_weight)
    if cw.ndim not in (3, 4):
        raise ValueError(f"a Conv weight is [O, C, kh, kw] (or [O, C, k]), got shape {cw.shape}")
    return np.ascontiguousarray(cw.reshape(cw.shape[0], -1).T, dtype=np.float32)


def conv_weight_from_matrix(w: np.ndarray, kernel_shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`conv_weight_matrix`: ``W [C*kh*kw, O]`` back to ``[O, C, *kernel_shape]``."""
    w = _check_2d(w)
    ks = tuple(int(v) for v in kernel_shape)
    taps = int(np.prod(ks))
    if w.shape[0] % taps:
        raise ValueError(f"W has {w.shape[0]} rows, not a multiple of kernel_shape {ks}")
    return np.ascontiguousarray(w.T.reshape(w.shape[1], w.shape[0] // taps, *ks))


def _conv_ints(value, rank: int, what: str, default: int, count: Optional[int] = None) -> list:
    count = count or rank
    if value is None:
        return [default] * count
    if np.isscalar(value):
        return [int(value)] * count
    out = [int(v) for v in value]
    if len(out) != count:
        raise ValueError(f"{what} must have {count} entries for a {rank}-D convolution, got {out}")
    return out


def conv_attributes(rank: int, kernel_shape: Sequence[int], strides=None, pads=None,
                    dilations=None) -> dict:
    """SparseConv's ``kernel_shape``, ``strides``, ``pads``, ``dilations`` (ONNX Conv semantics;
    ``pads`` ``[top, left, bottom, right]`` in 2-D, an int for all four), checked."""
    if rank not in (1, 2):
        raise ValueError(f"SparseConv supports 1-D and 2-D convolutions, not {rank}-D")
    attrs = {"kernel_shape": _conv_ints(kernel_shape, rank, "kernel_shape", 1),
             "strides": _conv_ints(strides, rank, "strides", 1),
             "pads": _conv_ints(pads, rank, "pads", 0, 2 * rank),
             "dilations": _conv_ints(dilations, rank, "dilations", 1)}
    for key, low in (("kernel_shape", 1), ("strides", 1), ("dilations", 1), ("pads", 0)):
        if min(attrs[key]) < low:
            raise ValueError(f"{key} {attrs[key]} must be >= {low}")
    return attrs


def make_sparse_conv_node(conv_weight, input_name: str, output_name: str, *,
                          name: Optional[str] = None, format: str = "bsr",
                          block: Sequence[int] = (4, 1), nm: Sequence[int] = (2, 4),
                          bias: Optional[np.ndarray] = None, activation: str = "none",
                          kernel_shape: Optional[Sequence[int]] = None, strides=None, pads=None,
                          dilations=None, group: int = 1, index_dtype=np.int32,
                          prefix: Optional[str] = None, residual: Optional[str] = None):
    """The ``graphprune.SparseConv`` node computing ``act(Conv(input, conv_weight) + bias +
    residual)`` on NCHW and its initializers (group 1; ``residual``: the name of a tensor shaped
    like the output, e.g. a ResNet block's shortcut, or None).

    ``conv_weight`` is the ONNX Conv weight ``[O, C, kh, kw]`` (``[O, C, k]`` for 1-D; already
    masked: it is packed as ``W = conv_weight.reshape(O, -1).T`` with ``format``/``block``/``nm``,
    see :func:`conv_weight_matrix`), or a :class:`SparseWeight` of that ``W [C*kh*kw, O]`` (then
    ``kernel_shape`` says the kernel; default 1x1). ``strides``, ``pads`` (``[top, left, bottom,
    right]``), ``dilations`` as in ONNX Conv (None: 1 / 0 / 1). 1x1 kernels with stride 1 and no
    pads run the direct path; everything else im2col. Returns ``(node, initializers)``.
    """
    if int(group) != 1:
        raise ValueError(f"SparseConv supports group 1 only, got group={group}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if isinstance(conv_weight, SparseWeight):
        sw = conv_weight
        ks = [1, 1] if kernel_shape is None else [int(v) for v in kernel_shape]
    else:
        cw = np.asarray(conv_weight)
        wm = conv_weight_matrix(cw)
        ks = list(cw.shape[2:])
        if kernel_shape is not None and [int(v) for v in kernel_shape] != ks:
            raise ValueError(f"kernel_shape {list(kernel_shape)} does not match the weight's {ks}")
        sw = pack(wm, format=format, block=block, nm=nm, index_dtype=index_dtype)
    attrs = conv_attributes(len(ks), ks, strides, pads, dilations)
    taps = int(np.prod(attrs["kernel_shape"]))
    if sw.k % taps:
        raise ValueError(f"W has k={sw.k} rows, not C*kh*kw for kernel_shape {attrs['kernel_shape']}")
    return _sparse_node("SparseConv", sw, input_name, output_name, name=name, bias=bias,
                        activation=activation, prefix=prefix, extra_attrs=attrs,
                        residual=residual)


def conv_output_shape(input_shape: Sequence, out_channels: int, attrs: dict) -> list:
    """``[B, O, Ho, Wo]`` of a convolution (``None``/str entries stay symbolic: ``None``)."""
    ks, st, pd, dl = (attrs[k] for k in ("kernel_shape", "strides", "pads", "dilations"))
    rank = len(ks)
    out = [input_shape[0], int(out_channels)]
    for a in range(rank):
        size = input_shape[2 + a]
        if isinstance(size, (int, np.integer)):
            out.append((int(size) + pd[a] + pd[rank + a] - dl[a] * (ks[a] - 1) - 1) // st[a] + 1)
        else:
            out.append(None)
    return out


def make_sparse_conv_model(conv_weight, *, input_shape=None, name: str = "sparse_conv", **kwargs):
    """A one-node model ``Y = SparseConv(X)``, for tests and benchmarks. ``input_shape``
    ``[B, C, H, W]`` with ints or names (None: all spatial and batch dimensions symbolic).
    ``kwargs`` go to :func:`make_sparse_conv_node`."""
    from onnx import TensorProto, helper

    node, inits = make_sparse_conv_node(conv_weight, "X", "Y", name=name, **kwargs)
    attrs = _attrs(node)
    rank = len(attrs["kernel_shape"])
    k, n = attrs["k"], attrs["n"]
    c = k // int(np.prod(attrs["kernel_shape"]))
    if input_shape is None:
        input_shape = ["B", c] + ["H", "W"][2 - rank:]
    input_shape = list(input_shape)
    out = conv_output_shape(input_shape, n, attrs)
    out = [d if d is not None else f"{name}_out{i}" for i, d in enumerate(out)]
    graph = helper.make_graph(
        [node], name,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out)],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, OPSET_VERSION)])
