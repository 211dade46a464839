"""Sparsity: mask weights to a pattern and move the nodes where it pays onto our sparse ops.

ONNX Runtime densifies sparse weights, so zeros alone buy nothing. This pass
 1. finds the MatMul / Gemm / Conv nodes with a constant weight that graphprune's operators can
    run (Conv: 2-D, group 1), with the bias Add, a Conv's shortcut Add and the Relu/Gelu
    that follow them fused in;
 2. masks each weight to the pattern (`4x1`, `1x4`, `4x4`, `8x1` blocks of the [K, N] weight,
    `2:4`/`4:8` N:M along K, or `unstructured`), weakest blocks first by L2 magnitude;
 3. times the dense node and the sparse op on this machine for every distinct shape
    (costmodel.py) and rewrites a node only when the sparse op is measurably faster;
    the others keep their dense, unmasked weights and the report says why.
The rewritten model needs graphprune's custom-op library to run (graphprune.kernels).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .coupling import attr
from .errors import UsageError
from .ir import Graph

Progress = Callable[[str], None]

BLOCK_PATTERNS = ("1x4", "4x1", "4x4", "8x1")
PATTERNS = BLOCK_PATTERNS + ("2:4", "4:8", "unstructured")
DEFAULT_PATTERN = "1x4"
DEFAULT_MIN_SPEEDUP = 1.1  # measured timings are noisy: a node must win clearly to move
DEFAULT_SEQUENCE = 128  # stand-in for dynamic dims other than the batch, when timing
METADATA_KEY = "graphprune.custom_ops"  # model metadata: which library the model needs


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern of the [K, N] weight (K: input features, N: outputs)."""

    text: str
    format: str  # graphprune.kernels format: bsr | csr | nm
    block: tuple[int, int] = (1, 1)  # bsr: rows along K x columns along N
    nm: tuple[int, int] = (2, 4)

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        t = text.strip().lower()
        if t in ("unstructured", "csr"):
            return cls("unstructured", "csr")
        if t in BLOCK_PATTERNS:
            r, c = (int(v) for v in t.split("x"))
            return cls(t, "bsr", block=(r, c))
        m = re.fullmatch(r"(\d+):(\d+)", t)
        if m and 1 <= int(m.group(1)) < int(m.group(2)) <= 64:
            return cls(t, "nm", nm=(int(m.group(1)), int(m.group(2))))
        raise UsageError(f"--pattern {text!r}: use one of {', '.join(PATTERNS)} "
                         f"(blocks are rows along the input features x columns along the "
                         f"outputs; N:M keeps N of every M weights along the input)")

    def sparsity(self, requested: float) -> float:
        """N:M fixes its own sparsity (1 - N/M); the others take the requested one."""
        return 1.0 - self.nm[0] / self.nm[1] if self.format == "nm" else requested

    def mask(self, w_kn: np.ndarray, sparsity: float,
             input_norms: np.ndarray | None = None) -> np.ndarray:
        """`w_kn` with the weakest blocks zeroed: by magnitude, or with `input_norms` (‖X_k‖
        over calibration data, one per row K) by |W|·‖X‖, Wanda's activation-aware score."""
        from .kernels import mask_blocks, mask_nm, mask_unstructured

        scores = w_kn if input_norms is None else w_kn * input_norms[:, None].astype(np.float32)
        if self.format == "bsr":
            kept = mask_blocks(scores, sparsity, self.block)
        elif self.format == "nm":
            kept = mask_nm(scores, *self.nm)
        else:
            kept = mask_unstructured(scores, sparsity)
        return kept if input_norms is None else np.where(kept != 0, w_kn, np.float32(0))


@dataclass
class Candidate:
    """One node the sparse ops can run, with the epilogue fused into it."""

    node: onnx.NodeProto
    op: str  # MatMul | Gemm | Conv
    x: str  # activation input
    weight: str  # the initializer masked
    w_kn: np.ndarray  # the weight as [K, N]
    bias: np.ndarray | None
    activation: str  # none | relu | gelu
    absorbed: list[onnx.NodeProto]  # bias Add / activation nodes folded in
    output: str  # what the rewritten node writes
    conv: dict | None = None  # Conv: kernel_shape, strides, pads, dilations
    residual: str | None = None  # Conv -> Add(this) -> act: the shortcut added in the kernel

    def signature(self, x_shape: tuple) -> str:
        k, n = self.w_kn.shape
        conv = "" if self.conv is None else "|" + ",".join(
            f"{a}={tuple(v)}" for a, v in sorted(self.conv.items()))
        return (f"{self.op}|x={tuple(x_shape)}|k={k}|n={n}|bias={self.bias is not None}"
                f"|res={self.residual is not None}|act={self.activation}{conv}")


@dataclass
class NodeDecision:
    node: str
    op: str
    shape: str  # "M x K x N" (MatMul) or the Conv's input and kernel
    decision: str  # "sparse" or "dense"
    reason: str = ""
    dense_ms: float | None = None
    sparse_ms: float | None = None
    speedup: float | None = None
    weights: int = 0
    zeros: int = 0


@dataclass
class SparsityReport:
    pattern: str = ""
    sparsity: float = 0.0
    batch: int = 1
    dims: dict = field(default_factory=dict)
    threads: int = 2
    min_speedup: float = DEFAULT_MIN_SPEEDUP
    measured: bool = True
    timings_run: int = 0  # shapes timed now (the rest came from the cost-model cache)
    nodes: list[NodeDecision] = field(default_factory=list)
    ineligible: dict[str, str] = field(default_factory=dict)  # node -> why not a candidate
    model_dense_ms: float | None = None  # the whole model, at the timing shapes
    model_sparse_ms: float | None = None
    chained: list[list[str]] = field(default_factory=list)  # [first, second] node pairs
    softmax_guards: list[str] = field(default_factory=list)  # Softmax nodes fused with their guard
    softmax_masks: list[str] = field(default_factory=list)  # ... and with the mask Add before them
    head_layouts: list[str] = field(default_factory=list)  # sparse nodes that absorbed transposes
    scales_folded: list[str] = field(default_factory=list)  # sparse nodes that absorbed a scalar Mul

    @property
    def rewritten(self) -> list[NodeDecision]:
        return [d for d in self.nodes if d.decision == "sparse"]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["rewritten_nodes"] = len(self.rewritten)
        return data

    def summary(self) -> str:
        sparse = self.rewritten
        zeros = sum(d.zeros for d in sparse)
        total = sum(d.weights for d in sparse)
        dense_ms = sum(d.dense_ms or 0.0 for d in sparse)
        sparse_ms = sum(d.sparse_ms or 0.0 for d in sparse)
        if sparse:
            lines = [f"sparsity: {len(sparse)} of {len(self.nodes)} candidate nodes moved to "
                     f"graphprune sparse ops ({self.pattern}, {self.sparsity:.0%} of their "
                     f"{total:,} weights zero: {zeros:,})"]
        else:
            lines = [f"sparsity: none of the {len(self.nodes)} candidate nodes moved to "
                     f"graphprune sparse ops ({self.pattern}, {self.sparsity:.0%}): their "
                     f"weights are left dense"]
        if self.measured and sparse:
            lines.append(f"  measured at batch {self.batch}, {self.threads} threads: those nodes "
                         f"{dense_ms:.3f} ms dense -> {sparse_ms:.3f} ms sparse "
                         f"(x{sparse_ms / dense_ms:.2f})" if dense_ms else "")
        if self.model_dense_ms and self.model_sparse_ms:
            lines.append(f"  whole model: {self.model_dense_ms:.2f} ms dense -> "
                         f"{self.model_sparse_ms:.2f} ms with the sparse ops "
                         f"(x{self.model_sparse_ms / self.model_dense_ms:.2f})")
        if self.chained:
            lines.append(f"  {len(self.chained)} sparse nodes chained onto the one whose "
                         f"output they read (SparseConvChain / SparseMatMulChain)")
        if self.softmax_guards:
            lines.append(f"  {len(self.softmax_guards)} Softmax -> IsNaN -> Where guards fused "
                         f"into one pass (SoftmaxNanToZero)" +
                         (f", {len(self.softmax_masks)} with the mask Add before them"
                          if self.softmax_masks else ""))
        if self.head_layouts:
            lines.append(f"  {len(self.head_layouts)} sparse MatMuls write or read attention "
                         f"heads themselves (their Reshape -> Transpose removed)")
        if self.scales_folded:
            lines.append(f"  {len(self.scales_folded)} scalar Muls after sparse MatMuls folded "
                         f"into their weights")
        kept = [d for d in self.nodes if d.decision == "dense"]
        reasons: dict[str, int] = {}  # by kind: the figures in parentheses differ per node
        for d in kept:
            kind = d.reason.split(" (")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:4]:
            lines.append(f"  kept dense x{count}: {reason}")
        if self.ineligible:
            lines.append(f"  not eligible: {len(self.ineligible)} MatMul/Gemm/Conv nodes "
                         f"(e.g. {next(iter(self.ineligible.items()))[1]})")
        return "\n".join(line for line in lines if line)


@dataclass
class SparsifyConfig:
    sparsity: float = 0.9
    pattern: str = DEFAULT_PATTERN
    batch: int = 1  # the batch the timings use
    dims: dict = field(default_factory=dict)  # dynamic dim name -> value for timing
    threads: int = 2
    min_speedup: float = DEFAULT_MIN_SPEEDUP
    measure: bool = True  # False: rewrite every candidate without timing
    exclude: tuple[str, ...] = ()
    use_cache: bool = True
    criterion: str = "magnitude"  # or "activation": |W|·‖X‖ over calibration data
    model_check: bool = True  # with measure: time the whole model too, back off if not faster
    # Chain each pointwise sparse conv onto the sparse conv whose output it reads, and a sparse
    # MatMul onto the one before it (SparseConvChain, SparseMatMulChain): that output is
    # multiplied again while in cache, not read back.
    chain: bool = True
    # Softmax -> IsNaN -> Where(isnan, 0, softmax) (torch's guard after attention softmaxes)
    # becomes one SoftmaxNanToZero node, where the model needs the library anyway.
    fuse_softmax_guard: bool = True
    # A sparse MatMul whose output is split into attention heads (Reshape -> Transpose) writes
    # them in that layout itself, and one whose input is merged from heads reads them (see
    # sparse_heads.py). CPU only: the CUDA SparseMatMul refuses such nodes.
    fuse_heads: bool = True


CRITERIA = ("magnitude", "activation")


# --------------------------------------------------------------------------------------------
# candidates


def find_candidates(graph: Graph, exclude: tuple[str, ...] = ()
                    ) -> tuple[list[Candidate], dict[str, str]]:
    """Nodes the sparse ops can run, and for the other MatMul/Gemm/Conv nodes the reason."""
    outputs = set(graph.output_names)
    found, ineligible = [], {}
    taken: set[int] = set()  # nodes already absorbed: Add(conv_a, conv_b) fuses into one of them
    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        name = node.name or node.output[0]
        if name in exclude or any(t in exclude for t in list(node.input) + list(node.output)):
            ineligible[name] = "excluded"
            continue
        made = _candidate(graph, node, outputs, taken)
        if isinstance(made, str):
            ineligible[name] = made
            continue
        taken.update(id(n) for n in made.absorbed)
        found.append(made)
    return found, ineligible


def _candidate(graph: Graph, node: onnx.NodeProto, outputs: set[str],
               taken: set[int] = frozenset()) -> Candidate | str:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w = graph.const(node.input[1]) if len(node.input) > 1 else None
    maker = graph.producer(node.input[1]) if len(node.input) > 1 else None
    if w is None and maker is not None and maker.op_type == "DequantizeLinear":
        return "a quantized (QDQ) weight: the sparse ops take float32 weights"
    if w is None or node.input[0] in graph.weights:
        return "the weight is not a constant (or both operands are)"
    if w.dtype != np.float32:
        return f"weight type {w.dtype} (the sparse ops are float32)"
    bias, conv = None, None
    if node.op_type == "MatMul":
        if w.ndim != 2:
            return f"weight of rank {w.ndim} (a batched MatMul)"
        if (graph.rank(node.input[0]) or 0) < 2:
            return "input of rank < 2"
        w_kn = w
    elif node.op_type == "Gemm":
        if attrs.get("transA", 0):
            return "transA=1"
        w_kn = (w.T if attrs.get("transB", 0) else w) * np.float32(attrs.get("alpha", 1.0))
        if len(node.input) > 2 and node.input[2]:
            c = graph.const(node.input[2])
            if c is None or c.size not in (1, w_kn.shape[1]):
                return "the bias C is not a constant of size N"
            bias = np.broadcast_to(c.reshape(-1) * np.float32(attrs.get("beta", 1.0)),
                                   (w_kn.shape[1],)).astype(np.float32)
    else:  # Conv
        if w.ndim != 4:
            return f"a {w.ndim - 2}-D convolution (the sparse op is 2-D)"
        if attrs.get("group", 1) != 1:
            return f"group={attrs['group']} (the sparse op needs group 1)"
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
            return "auto_pad SAME_* (export with explicit pads)"
        kh, kw = w.shape[2:]
        conv = {"kernel_shape": [int(kh), int(kw)],
                "strides": [int(v) for v in attrs.get("strides", [1, 1])],
                "pads": [int(v) for v in attrs.get("pads", [0, 0, 0, 0])],
                "dilations": [int(v) for v in attrs.get("dilations", [1, 1])]}
        w_kn = w.reshape(w.shape[0], -1).T
        if len(node.input) > 2 and node.input[2]:
            bias = graph.const(node.input[2])
            if bias is None:
                return "the bias is not a constant"
    absorbed: list[onnx.NodeProto] = []
    out = node.output[0]
    n = w_kn.shape[1]
    nxt = _sole_consumer(graph, out, outputs)
    if node.op_type == "MatMul" and nxt is not None and nxt.op_type == "Add" and not nxt.domain:
        other = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
        c = graph.const(other)
        if c is not None and c.size == n and c.shape[-1:] == (n,) and \
                len(c.shape) <= (graph.rank(out) or 0):
            bias = c.reshape(-1).astype(np.float32)
            absorbed.append(nxt)
            out = nxt.output[0]
            nxt = _sole_consumer(graph, out, outputs)
    residual = _residual(graph, node, nxt, out) if id(nxt) not in taken else None
    if residual is not None:
        absorbed.append(nxt)
        out = nxt.output[0]
        nxt = _sole_consumer(graph, out, outputs)
    activation = "none"
    if nxt is not None and _activation(nxt):
        activation = _activation(nxt)
        absorbed.append(nxt)
        out = nxt.output[0]
    elif (gelu := _erf_gelu(graph, out, outputs)) is not None:
        activation = "gelu"
        absorbed.extend(gelu)
        out = gelu[-1].output[0]
    return Candidate(node=node, op=node.op_type, x=node.input[0], weight=node.input[1],
                     w_kn=np.ascontiguousarray(w_kn, dtype=np.float32),
                     bias=None if bias is None else np.asarray(bias, np.float32).reshape(-1),
                     activation=activation, absorbed=absorbed, output=out, conv=conv,
                     residual=residual)


def _residual(graph: Graph, node: onnx.NodeProto, nxt: onnx.NodeProto | None,
              out: str) -> str | None:
    """The shortcut of Conv -> Add(shortcut): another activation of exactly the conv output's
    shape (a ResNet block's end), which the sparse conv adds in its epilogue instead of a
    separate Add over the whole tensor. MatMul keeps its Add: added in the sparse MatMul's
    epilogue, BERT-base's 24 shortcuts (9.9 ms of a 534-ms run at batch 16 as ONNX Runtime
    Adds) made the model no faster (4x4, one thread: 683 / 673 ms kept apart, 722 / 686 ms
    fused; tried 2026-12-06)."""
    if node.op_type != "Conv" or nxt is None or nxt.op_type != "Add" or nxt.domain:
        return None
    other = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
    shape = graph.shape(out)
    if other == out or graph.const(other) is not None or shape is None or None in shape:
        return None
    if graph.shape(other) != shape or graph.dtypes.get(other) != TensorProto.FLOAT:
        return None
    return other


def _sole_consumer(graph: Graph, tensor: str, outputs: set[str]) -> onnx.NodeProto | None:
    users = graph.consumers(tensor)
    if tensor in outputs or len(users) != 1:
        return None
    return users[0]


def _erf_gelu(graph: Graph, x: str, outputs: set[str]) -> list[onnx.NodeProto] | None:
    """The nodes of gelu(x) = x * 0.5 * (1 + erf(x / sqrt 2)) as exporters below opset 20 write
    it (PyTorch: Div, Erf, Add, Mul, Mul; 0.5 applied first or last, x / sqrt 2 as a Mul by
    1 / sqrt 2 too), last node last; None unless every inner tensor has one consumer. Left
    alone, ONNX Runtime fuses them into its own Gelu after the sparse op (BERT-base at batch
    16: 12 of them, about 20 ms); fused, the op's epilogue does that work in about the same
    time (measured even), with 60 fewer nodes in the file."""
    users = graph.consumers(x)
    if x in outputs or len(users) != 2:
        return None

    def scalar(node: onnx.NodeProto, value: float) -> str | None:
        """The other operand of a binary node whose constant operand is `value`."""
        for i, j in ((0, 1), (1, 0)):
            c = graph.const(node.input[j])
            if c is not None and c.size == 1 and \
                    abs(float(c.reshape(-1)[0]) - value) <= 1e-4 * abs(value):
                return node.input[i]
        return None

    def plain(node, op):
        return node is not None and node.op_type == op and node.domain in ("", "ai.onnx")

    for scale, other in ((users[0], users[1]), (users[1], users[0])):
        if not ((plain(scale, "Div") and scale.input[0] == x and scalar(scale, 2 ** 0.5) == x) or
                (plain(scale, "Mul") and scalar(scale, 2 ** -0.5) == x)):
            continue
        erf = _sole_consumer(graph, scale.output[0], outputs)
        if not plain(erf, "Erf"):
            continue
        one = _sole_consumer(graph, erf.output[0], outputs)
        if not plain(one, "Add") or scalar(one, 1.0) != erf.output[0]:
            continue
        if not plain(other, "Mul"):
            continue
        last = _sole_consumer(graph, other.output[0], outputs)
        if not plain(last, "Mul"):
            continue
        if sorted(other.input) == sorted([x, one.output[0]]) and \
                scalar(last, 0.5) == other.output[0]:  # (x * (1 + erf)) * 0.5
            return [scale, erf, one, other, last]
        if scalar(other, 0.5) == x and \
                sorted(last.input) == sorted([other.output[0], one.output[0]]):  # (x/2) (1 + erf)
            return [scale, erf, one, other, last]
    return None


def _activation(node: onnx.NodeProto) -> str:
    if node.op_type == "Relu" and node.domain in ("", "ai.onnx"):
        return "relu"
    if node.op_type == "Gelu":
        approx = next((helper.get_attribute_value(a) for a in node.attribute
                       if a.name == "approximate"), b"none")
        if node.domain == "com.microsoft" or approx in (b"none", "none"):
            return "gelu"
    return ""


# --------------------------------------------------------------------------------------------
# timing shapes


def timing_shapes(graph: Graph, batch: int, dims: dict[str, int]) -> dict[str, tuple]:
    """Shapes of every tensor with the dynamic dims set to the timing values: `dims` by name,
    otherwise `batch` for a dim first seen on an input's first axis and DEFAULT_SEQUENCE for
    the others. Read from the analysis' bound shapes: each stand-in is a distinct prime, so a
    dim that is a product of them (a flattened batch x sequence) factors back."""
    if not graph.bound:
        graph.infer_shapes(bind_dynamic=True)
    # A dim that stood in as prime x scale (image height/width) maps its prime to value / scale,
    # so that H/4 = 8 x prime comes back as value / 4.
    values = {prime: max(1, dims.get(name, batch if axis == 0 else DEFAULT_SEQUENCE) // scale)
              for prime, (name, axis, scale) in graph.dynamic_symbols().items()}
    out = {}
    for tensor, shape in graph.shapes.items():
        axes = graph.dynamic.get(tensor, frozenset())
        out[tensor] = tuple(_rebind(d, values) if i in axes else d
                            for i, d in enumerate(shape))
    return out


def _rebind(dim: int | None, values: dict[int, int]) -> int | None:
    """A dim built from stand-in primes, with each prime replaced by its timing value."""
    if not dim:
        return None
    result = 1
    for prime, value in values.items():
        while dim % prime == 0:
            dim //= prime
            result *= value
    return result * dim if result != 1 or dim == 1 else None


# --------------------------------------------------------------------------------------------
# the pass


def input_norms(graph: Graph, candidates: list[Candidate], calib,
                progress: Progress | None = None) -> dict[str, np.ndarray]:
    """‖X_k‖ per weight row K of every candidate, measured on calibration data (a Conv's
    input channel norm repeats over its kernel window)."""
    from .calibration import as_calibration, collect_stats

    axes = {c.x: (1 if c.conv is not None else graph.rank(c.x) - 1) for c in candidates}
    stats = collect_stats(graph, None, as_calibration(calib), gram=False, tensors=axes,
                          progress=progress)
    norms = {}
    for c in candidates:
        per_channel = stats.get(c.x).norms()
        window = c.w_kn.shape[0] // per_channel.size
        norms[c.x] = np.repeat(per_channel, window)
    return norms


def _check_criterion(config: SparsifyConfig, calib) -> None:
    if config.criterion not in CRITERIA:
        raise UsageError(f"--sparse-criterion {config.criterion!r}: use {' or '.join(CRITERIA)}")
    if config.criterion == "activation" and calib is None:
        raise UsageError("--sparse-criterion activation needs calibration data: pass --calib "
                         "PATH (a folder of .npy/.npz arrays or images)")


def sparsify_graph(graph: Graph, config: SparsifyConfig,
                   progress: Progress | None = None, calib=None) -> SparsityReport:
    """Mask and rewrite `graph` in place; returns what was done per node. `calib`
    (calibration data) feeds the `activation` criterion."""
    say = progress or (lambda _msg: None)
    pattern = Pattern.parse(config.pattern)
    sparsity = pattern.sparsity(config.sparsity)
    if not 0.0 < sparsity < 1.0:
        raise UsageError(f"--sparsity {config.sparsity}: must be between 0 and 1 (exclusive)")
    report = SparsityReport(pattern=pattern.text, sparsity=sparsity, batch=config.batch,
                            dims=dict(config.dims), threads=config.threads,
                            min_speedup=config.min_speedup, measured=config.measure)
    _check_criterion(config, calib)
    candidates, report.ineligible = find_candidates(graph, config.exclude)
    if not candidates:
        return report
    norms = input_norms(graph, candidates, calib, say) if config.criterion == "activation" \
        else {}
    shapes = timing_shapes(graph, config.batch, config.dims) if config.measure else {}
    cost = None
    if config.measure:
        from .costmodel import CostModel

        cost = CostModel(threads=config.threads, use_cache=config.use_cache)
    rewrites = []
    for i, cand in enumerate(candidates):
        name = cand.node.name or cand.node.output[0]
        masked = pattern.mask(cand.w_kn, sparsity, norms.get(cand.x))
        node, inits = _sparse_node(graph, cand, masked, pattern, name)
        decision = NodeDecision(node=name, op=cand.op, shape=_shape_text(cand),
                                decision="sparse", weights=int(masked.size),
                                zeros=int(masked.size - np.count_nonzero(masked)))
        if cost is not None:
            x_shape = shapes.get(cand.x)
            if x_shape is None or any(not d for d in x_shape):
                decision.decision, decision.reason = "dense", "input shape unknown, cannot time it"
                report.nodes.append(decision)
                continue
            say(f"timing {name} ({i + 1}/{len(candidates)})")
            timing = _time(cost, cand, masked, node, inits, x_shape, pattern, sparsity)
            decision.dense_ms, decision.sparse_ms = round(timing.dense_ms, 5), round(
                timing.sparse_ms, 5)
            decision.speedup = round(timing.speedup, 3)
            decision.shape = _shape_text(cand, x_shape)
            if timing.speedup < config.min_speedup:
                decision.decision = "dense"
                decision.reason = (f"sparse op not fast enough at this shape (measured "
                                   f"{timing.speedup:.2f}x, needs >= {config.min_speedup:g}x)")
        report.nodes.append(decision)
        if decision.decision == "sparse":
            rewrites.append((cand, node, inits))
    report.timings_run = cost.measured if cost is not None else 0
    if cost is not None and config.model_check and rewrites:
        rewrites = _check_whole_model(graph, rewrites, report, config, say)
    _rewrite(graph, rewrites)
    if config.chain:
        report.chained = chain_sparse_nodes(graph)
    if config.fuse_softmax_guard and rewrites:
        report.softmax_guards, report.softmax_masks = fuse_softmax_guards(graph)
    if rewrites:
        _fuse_heads(graph, report, config.fuse_heads)
    return report


def _fuse_heads(graph: Graph, report: SparsityReport, heads: bool) -> None:
    """fuse_head_layouts (if `heads`) and fold_scalar_scales, then the shape computations only
    the removed Reshapes read and the weights the scaled copies replaced."""
    from .passes.eliminate_dead import EliminateDeadNodes
    from .sparse_heads import fold_scalar_scales, fuse_head_layouts

    report.head_layouts = fuse_head_layouts(graph) if heads else []
    report.scales_folded = fold_scalar_scales(graph)
    if report.head_layouts or report.scales_folded:
        EliminateDeadNodes().run(graph)


MODEL_CHECK_ROUNDS = 4


def _check_whole_model(graph: Graph, rewrites: list, report: SparsityReport,
                       config: SparsifyConfig, say: Progress) -> list:
    """Per-node timings miss what happens between nodes: our operators read NCHW, so between
    ONNX Runtime's blocked-layout convs they add reorders, and a chain of individually faster
    nodes can make a slower model. So the whole model is timed, dense and rewritten; while the
    rewritten one is not faster, the half of the moved nodes with the smallest per-node margin
    go back to dense (their weights unmasked). Returns the rewrites to keep."""
    decisions = {d.node: d for d in report.nodes}

    def name(r):
        return r[0].node.name or r[0].node.output[0]

    feeds = _timing_feeds(graph, config)
    say("timing the whole model, dense")
    dense_ms = _time_model(graph, [], feeds, config.threads)
    keep = sorted(rewrites, key=lambda r: -(decisions[name(r)].speedup or 0.0))
    sparse_ms = None
    for round_no in range(MODEL_CHECK_ROUNDS):
        say(f"timing the whole model with {len(keep)} sparse nodes")
        sparse_ms = _time_model(graph, keep, feeds, config.threads)
        if sparse_ms < dense_ms:
            break
        cut = len(keep) // 2 if round_no < MODEL_CHECK_ROUNDS - 1 else 0
        for r in keep[cut:]:
            d = decisions[name(r)]
            d.decision = "dense"
            d.reason = (f"the whole model measured slower with it (x{sparse_ms / dense_ms:.2f} "
                        f"of dense with {len(keep)} sparse nodes); smallest per-node margins "
                        f"go back first")
        keep = keep[:cut]
        if not keep:
            sparse_ms = None
            break
    report.model_dense_ms = round(dense_ms, 4)
    report.model_sparse_ms = None if sparse_ms is None else round(sparse_ms, 4)
    order = {id(r[0].node): i for i, r in enumerate(rewrites)}
    return sorted(keep, key=lambda r: order[id(r[0].node)])


def _timing_feeds(graph: Graph, config: SparsifyConfig) -> dict[str, np.ndarray]:
    """Inputs at the timing shapes: floats random, integer ids zero, masks one."""
    from onnx import helper as onnx_helper

    rng = np.random.default_rng(0)
    feeds = {}
    for vi in graph.model.graph.input:
        if vi.name in graph.weights:
            continue
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
                config.dims.get(d.dim_param, config.batch if axis == 0 else DEFAULT_SEQUENCE)
                for axis, d in enumerate(t.shape.dim)]
        dtype = onnx_helper.tensor_dtype_to_np_dtype(t.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        elif "mask" in vi.name.lower():
            feeds[vi.name] = np.ones(dims, dtype)
        else:
            feeds[vi.name] = np.zeros(dims, dtype)
    return feeds


def _time_model(graph: Graph, rewrites: list, feeds: dict, threads: int) -> float:
    """Median ms of the graph with `rewrites` applied (the graph itself is left untouched)."""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    from .costmodel import median_ms
    from .io import save_graph
    from .kernels import session_options

    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    trial = dataclasses.replace(graph, model=model, nodes=list(graph.nodes),
                                weights=dict(graph.weights))
    _rewrite(trial, rewrites)
    with tempfile.TemporaryDirectory(prefix="graphprune-time-") as tmp:
        shell, weights = trial.split()
        path = save_graph(shell, weights, Path(tmp) / "trial.onnx")
        so = session_options(threads)
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        best = min(median_ms(lambda: sess.run(None, feeds), 5, 0.5) for _ in range(2))
    return best


def _sparse_node(graph: Graph, cand: Candidate, masked: np.ndarray, pattern: Pattern, name: str):
    from .kernels import make_sparse_matmul_node, pack

    base = graph.unique_name(f"{name}.sparse")
    if cand.conv is not None and not _is_pointwise(cand.conv):
        from .kernels import make_sparse_conv_node

        o = masked.shape[1]
        weight = masked.T.reshape((o,) + graph.weights[cand.weight].shape[1:])
        return make_sparse_conv_node(weight, cand.x, cand.output, name=base, prefix=base,
                                     format=pattern.format, block=pattern.block, nm=pattern.nm,
                                     bias=cand.bias, activation=cand.activation,
                                     residual=cand.residual, **cand.conv)
    sw = pack(masked, format=pattern.format, block=pattern.block, nm=pattern.nm)
    return make_sparse_matmul_node(sw, cand.x, cand.output, name=base, prefix=base,
                                   bias=cand.bias, activation=cand.activation,
                                   conv=cand.conv is not None, residual=cand.residual)


def _is_pointwise(conv: dict) -> bool:
    return (conv["kernel_shape"] == [1, 1] and conv["strides"] == [1, 1]
            and not any(conv["pads"]))


def _time(cost, cand: Candidate, masked: np.ndarray, node, inits, x_shape, pattern: Pattern,
          sparsity: float):
    from .costmodel import dense_node_model, sparse_node_model

    from .kernels import conv_output_shape

    rng = np.random.default_rng(0)
    if cand.conv is None:  # leading dims are rows: time X as [M, K]
        rows = int(np.prod(x_shape[:-1]))
        x_shape = (rows, x_shape[-1])
        y_shape = (rows, cand.w_kn.shape[1])
        dense = dense_node_model("MatMul", x_shape, cand.w_kn, cand.bias, cand.activation,
                                 residual=cand.residual is not None)
    else:
        w = cand.w_kn.T.reshape((cand.w_kn.shape[1], x_shape[1]) + tuple(cand.conv["kernel_shape"]))
        y_shape = tuple(conv_output_shape(x_shape, cand.w_kn.shape[1], cand.conv))
        dense = dense_node_model("Conv", x_shape, w, cand.bias, cand.activation, cand.conv,
                                 residual=cand.residual is not None)
    sparse = sparse_node_model(node, inits, x_shape)
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    if cand.residual is not None:
        feeds["R"] = rng.standard_normal(y_shape).astype(np.float32)
    key = f"{cand.signature(x_shape)}|{pattern.text}|s={sparsity:.3f}"
    return cost.measure(key, dense, sparse, feeds)


def _shape_text(cand: Candidate, x_shape: tuple | None = None) -> str:
    k, n = cand.w_kn.shape
    if cand.conv is not None:
        kh, kw = cand.conv["kernel_shape"]
        x = "x".join(str(d) for d in x_shape) if x_shape else "?"
        return f"{x} * {n}x{k // (kh * kw)}x{kh}x{kw}"
    rows = "?" if x_shape is None else str(int(np.prod(x_shape[:-1])))
    return f"{rows} x {k} x {n}"


def _rewrite(graph: Graph, rewrites) -> None:
    from .kernels import DOMAIN, OPSET_VERSION
    from .passes.base import add_weight

    if not rewrites:
        return
    # The sparse node takes the place of the last node it absorbs: a fused shortcut may be
    # computed after the conv it joins (a ResNet downsample branch), never after that Add.
    anchor = {id(c.absorbed[-1] if c.absorbed else c.node): node for c, node, _ in rewrites}
    drop = {id(n) for c, _, _ in rewrites for n in [c.node, *c.absorbed]}
    graph.nodes = [anchor[id(n)] if id(n) in anchor else n for n in graph.nodes
                   if id(n) in anchor or id(n) not in drop]
    for _, _, inits in rewrites:
        for t in inits:
            add_weight(graph, t.name, numpy_helper.to_array(t))
    if not any(o.domain == DOMAIN for o in graph.model.opset_import):
        graph.model.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    _note_library(graph)
    graph.reindex()
    _drop_unused_weights(graph)


def chain_sparse_nodes(graph: Graph) -> list[list[str]]:
    """Chains each sparse node onto the one whose output it reads, where the kernel can take
    both at once (see kernels.chain_blocker; one per producer, in graph order): the chain node
    takes the producer's place and writes both outputs, the first only if another node reads
    it. In a ResNet bottleneck that is each block's last 1x1 conv (with its shortcut) and the
    next block's first one, in a transformer's MLP the two MatMuls; otherwise the second reads
    the whole first output back from memory at large batches. Returns the [first, second]
    node-name pairs."""
    from .kernels import DOMAIN, chain_blocker, make_sparse_chain_node

    outputs = set(graph.output_names)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    fused: dict[int, onnx.NodeProto] = {}  # id(first) -> chain node
    absorbed: set[int] = set()
    pairs = []
    for node in graph.nodes:
        if id(node) in absorbed or node.domain != DOMAIN or \
                node.op_type not in ("SparseConv", "SparseMatMul"):
            continue
        users = readers.get(node.output[0], [])
        for second in users:
            if id(second) in absorbed or id(second) in fused or second is node:
                continue
            # Z is now made where the first node was: the second's other inputs must exist.
            if all(t in graph.weights for t in second.input[1:] if t) and \
                    chain_blocker(node, second) is None:
                keep = len(users) > 1 or node.output[0] in outputs
                name = graph.unique_name(f"{node.name or node.output[0]}.chain")
                fused[id(node)] = make_sparse_chain_node(node, second, name=name, keep_first=keep)
                absorbed.add(id(second))
                pairs.append([node.name or node.output[0], second.name or second.output[0]])
                break
    if not pairs:
        return []
    graph.nodes = [fused.get(id(n), n) for n in graph.nodes if id(n) not in absorbed]
    _note_library(graph)
    graph.reindex()
    return pairs


def fuse_softmax_guards(graph: Graph) -> tuple[list[str], list[str]]:
    """Softmax over the last axis -> IsNaN -> Where(isnan, 0, softmax), the guard torch's
    exporter writes after the softmax of scaled_dot_product_attention, becomes one
    SoftmaxNanToZero node (graphprune's library): one pass over the attention scores instead
    of three, and ONNX Runtime's Where over a tensor that size was the slowest of them. By
    hand, BERT-base at batch 16 with 90 % unstructured weights: Where, IsNaN and Softmax took
    52 of 578 ms of node time; the two models alternating, 532-554 against 566-626 ms; equal
    outputs to 6e-7 relative. Only where the Softmax
    output feeds exactly that IsNaN and Where, and the IsNaN only the Where. An attention
    mask's Add just before the Softmax goes in too (see _mask_add). Returns the fused Softmax
    nodes' names, and those of them that took their mask Add."""
    from .kernels import DOMAIN

    outputs = set(graph.output_names)
    replace: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    with_mask: set[int] = set()
    for node in graph.nodes:
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        out = node.output[0]
        if graph.dtypes.get(node.input[0]) != TensorProto.FLOAT or out in outputs:
            continue
        rank = graph.rank(node.input[0])
        axis = attr(node, "axis", -1 if graph.opset >= 13 else 1)
        if not (axis == -1 or (rank is not None and axis == rank - 1)):
            continue
        users = graph.consumers(out)
        isnan = next((u for u in users if u.op_type == "IsNaN" and not u.domain), None)
        where = next((u for u in users if u.op_type == "Where" and not u.domain), None)
        if isnan is None or where is None or len(users) != 2 or isnan.output[0] in outputs:
            continue
        if graph.consumers(isnan.output[0]) != [where] or list(where.input[::2]) != [
                isnan.output[0], out]:
            continue
        zero = graph.const(where.input[1])
        if zero is None or zero.size != 1 or float(zero.reshape(-1)[0]) != 0.0:
            continue
        inputs = [node.input[0]]
        mask = _mask_add(graph, node, outputs)
        if mask is not None:
            add, scores, bias = mask
            inputs = [scores, bias]
            drop.add(id(add))
            with_mask.add(id(node))
        replace[id(node)] = helper.make_node(
            "SoftmaxNanToZero", inputs, [where.output[0]],
            name=graph.unique_name(f"{node.name or out}.nan_to_zero"), domain=DOMAIN)
        drop.update((id(isnan), id(where)))
    if not replace:
        return [], []
    names = [n.name or n.output[0] for n in graph.nodes if id(n) in replace]
    masked = [n.name or n.output[0] for n in graph.nodes if id(n) in with_mask]
    graph.nodes = [replace.get(id(n), n) for n in graph.nodes if id(n) not in drop]
    _note_library(graph)
    graph.reindex()
    _drop_unused_weights(graph)
    return names, masked


def _mask_add(graph: Graph, softmax: onnx.NodeProto, outputs: set[str]):
    """(Add, scores, bias) when the Softmax reads Add(scores, bias) and nothing else reads that
    sum: scores shaped like the sum, bias (float) broadcasting to it along axes of size 1 (an
    attention mask [B, 1, 1 or S, S]). SoftmaxNanToZero then adds the bias row by row instead
    of a pass over the whole score tensor. Else None."""
    total = softmax.input[0]
    add = graph.producer(total)
    if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx") or \
            _sole_consumer(graph, total, outputs) is not softmax:
        return None
    shape = graph.shape(total)
    if shape is None or None in shape or len(shape) > 9:  # the kernel takes 8 row axes at most
        return None
    for scores, bias in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        if graph.shape(scores) != shape or graph.dtypes.get(bias) != TensorProto.FLOAT:
            continue
        bs = graph.shape(bias)
        if bs is None or len(bs) > len(shape) or None in bs:
            continue
        if all(b in (1, s) for b, s in zip(reversed(bs), reversed(shape))):
            return add, scores, bias
    return None


def _drop_unused_weights(graph: Graph) -> None:
    """Removes the dense weights a rewrite replaced (and, in IR < 4 models, their graph-input
    entries, which would otherwise become required inputs)."""
    from .passes.base import drop_unused_weights

    drop_unused_weights(graph, list(graph.weights))


def _note_library(graph: Graph) -> None:
    """Says in the file which operators it needs and how to load them (Netron shows it)."""
    from .kernels import DOMAIN, how_to_load

    ops = sorted({n.op_type for n in graph.nodes if n.domain == DOMAIN})
    for entry in list(graph.model.metadata_props):
        if entry.key == METADATA_KEY:
            graph.model.metadata_props.remove(entry)
    graph.model.metadata_props.add(key=METADATA_KEY, value=how_to_load(ops))


def uses_sparse_ops(model: onnx.ModelProto | Graph) -> bool:
    """Whether a model needs graphprune's custom-op library to run."""
    from .kernels import DOMAIN

    nodes = model.nodes if isinstance(model, Graph) else model.graph.node
    return any(n.domain == DOMAIN for n in nodes)


def mask_graph(graph: Graph, config: SparsifyConfig, calib=None) -> int:
    """Mask every candidate's weight in place, keeping the dense ops: the zero-weight model a
    runtime that exploits sparsity itself (DeepSparse) or an accuracy measurement reads.
    Returns the number of weights masked."""
    pattern = Pattern.parse(config.pattern)
    sparsity = pattern.sparsity(config.sparsity)
    _check_criterion(config, calib)
    candidates, _ = find_candidates(graph, config.exclude)
    norms = input_norms(graph, candidates, calib) if config.criterion == "activation" else {}
    done = 0
    for cand in candidates:
        masked = pattern.mask(cand.w_kn, sparsity, norms.get(cand.x))
        _store_masked(graph, cand, masked)
        done += 1
    return done


def _store_masked(graph: Graph, cand: Candidate, masked: np.ndarray) -> None:
    """Write a masked [K, N] weight back in the node's own layout, under a new name when other
    nodes share the original."""
    original = graph.weights[cand.weight]
    attrs = {a.name: helper.get_attribute_value(a) for a in cand.node.attribute}
    if cand.op == "Conv":
        value = masked.T.reshape(original.shape)
    elif cand.op == "Gemm":
        alpha = np.float32(attrs.get("alpha", 1.0))
        value = (masked.T if attrs.get("transB", 0) else masked) / (alpha if alpha else 1)
    else:
        value = masked
    value = np.ascontiguousarray(value, dtype=original.dtype)
    if len(graph.consumers(cand.weight)) > 1:
        name = graph.unique_name(f"{cand.weight}.masked")
        cand.node.input[1] = name
        graph.weights[name] = value
        graph.reindex()
    else:
        graph.weights[cand.weight] = value


def masked_reference(graph: Graph, report: SparsityReport, config: SparsifyConfig,
                     calib=None) -> None:
    """Mask, in a dense graph, exactly the nodes `report` moved to sparse ops: the model whose
    outputs the sparse one must reproduce (tests)."""
    pattern = Pattern.parse(config.pattern)
    sparsity = pattern.sparsity(config.sparsity)
    moved = {d.node for d in report.rewritten}
    candidates, _ = find_candidates(graph, config.exclude)
    norms = input_norms(graph, candidates, calib) if config.criterion == "activation" else {}
    for cand in candidates:
        if (cand.node.name or cand.node.output[0]) in moved:
            _store_masked(graph, cand, pattern.mask(cand.w_kn, sparsity, norms.get(cand.x)))
