"""The pipeline, front to back: load → canonicalize → analyze → score → plan → apply → verify.

Data flows one way; each stage lives in its own module and this one only wires them together.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from .analysis import Analysis, analyze
from .budget import Budget
from .sensitivity import Sensitivity
from .sparsity import DEFAULT_PATTERN, SparsifyConfig, SparsityReport, sparsify_graph, \
    uses_sparse_ops
from .errors import GraphpruneError, NothingToPruneError, UnsafeResultError, UsageError
from .io import check_structure, load_model, load_split, save_graph
from .ir import Graph
from .metrics import count_macs, count_params
from .policy import Plan, PolicyConfig, make_plan
from .scoring import make_criterion
from .surgery import apply_plan
from .verify import Fidelity, compare, reference_run, session

# Kept channel counts are rounded for ONNX Runtime's CPU kernels by default: "auto" rounds to
# the block of its NCHWc conv kernels on this CPU (16 floats with AVX-512F, 8 with AVX2), each
# Concat input / Split output on its own, a grouped conv's per-group count to whole blocks, and
# never splits a one-block group (policy.Rounding). Counts off the block pad the kernels' work,
# take convs, pools and concats out of the blocked layout (reorder nodes around them) or send a
# conv reading < 16 channels to a slow path (bench/latency measures the choice; README,
# "Benchmarks"). An int N rounds every count to multiples of N instead.
DEFAULT_ROUND_TO = "auto"

ModelLike = str | os.PathLike | onnx.ModelProto
_SPARSE_DOMAIN = "graphprune"  # graphprune.kernels.DOMAIN, without importing the kernels
_CHECK_EMBED_LIMIT = 4096  # weights above this size are declared, not copied, for the checker
Progress = Callable[[str], None]


@dataclass
class Report:
    """What happened, for people (`summary()`) and programs (`to_dict()`)."""

    source: str
    groups_found: int = 0
    groups_pruned: int = 0
    frozen: list[tuple[str, str]] = field(default_factory=list)  # (group, reason)
    skipped: dict[str, str] = field(default_factory=dict)
    passes: list[str] = field(default_factory=list)
    params_before: int = 0
    params_cleaned: int = 0  # after the clean-up passes, before any channel is removed
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    fidelity: Fidelity | None = None
    approximate: list[str] = field(default_factory=list)  # pruned across a normalisation
    seconds: dict[str, float] = field(default_factory=dict)
    criterion: str = ""  # the criterion that chose the channels (the plan's, when replayed)
    criterion_note: str = ""  # where the criterion fell back to another (bn_scale -> l2)
    calibration: str = ""  # where statistics came from: the --calib data, or "" for none
    calibration_samples: int = 0  # calibration samples run through the model
    compensation: str = ""  # "" (off), or what compensation used
    compensated: list[dict] = field(default_factory=list)  # one entry per consumer updated
    sparsity: "SparsityReport | None" = None  # the --sparsity pass, when it ran
    requantized: int = 0  # QDQ weights written back as integers
    left_float: list[str] = field(default_factory=list)  # QDQ weights not requantized

    @property
    def param_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def pruning_param_ratio(self) -> float:
        """params_after over the cleaned-up count: what pruning alone did. Clean-up can take a
        large share (an exporter's duplicate weights, folded BatchNorms), and a figure that
        counted it would overstate what pruning removed."""
        return self.params_after / self.params_cleaned if self.params_cleaned else self.param_ratio

    @property
    def mac_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.sparsity is not None:
            data["sparsity"] = self.sparsity.to_dict()
        data["param_ratio"], data["mac_ratio"] = self.param_ratio, self.mac_ratio
        data["pruning_param_ratio"] = self.pruning_param_ratio
        return data

    def summary(self) -> str:
        channels = self.sparsity is None or self.groups_found > 0  # else: only --sparsity ran
        lines = [
            f"groups: {self.groups_found} found, {self.groups_pruned} pruned, "
            f"{len(self.frozen)} frozen, {len(self.skipped)} excluded" if channels else "",
            f"params: {self.params_before:,} -> {self.params_after:,} "
            f"(x{self.param_ratio:.3f}{self._cleanup_share()})",
            f"MACs:   {self.macs_before:,} -> {self.macs_after:,} (x{self.mac_ratio:.3f})",
            f"clean-up: {', '.join(self.passes)}" if self.passes else "",
        ]
        if self.criterion:
            data = (f", calibration: {self.calibration_samples} samples from {self.calibration}"
                    if self.calibration_samples else
                    f", data-free statistics: {self.calibration}" if self.calibration else "")
            note = f" ({self.criterion_note})" if self.criterion_note else ""
            lines.append(f"criterion: {self.criterion}{note}{data}")
        if self.compensation:
            from .compensation import Compensated, summarize

            done = summarize([Compensated(**c) for c in self.compensated])
            lines.append(f"compensation ({self.compensation}): {done}")
        resized = "" if self.fidelity is None or not self.fidelity.resized else (
            f"{self.fidelity.resized} output(s) whose size depends on the data (a detector's "
            f"count of detections) changed size, so they were not compared")
        if self.fidelity is not None and self.fidelity.elements == 0:
            lines.append(f"output vs original: not compared: {resized}; check the pruned model "
                         f"on real inputs" if resized else
                         "output vs original: not compared: every output was empty on the "
                         "random inputs (a detector finds nothing in noise); check the pruned "
                         "model on real inputs")
        elif self.fidelity is not None:
            f = self.fidelity
            top1 = "" if f.top1_agreement is None else f", top-1 agreement {f.top1_agreement:.2f}"
            lines.append(f"output vs original: max abs diff {f.max_abs_error:.4g} "
                         f"(relative {f.relative_error:.4g}), cosine {f.cosine:.4f}{top1}" +
                         (f"; {resized}" if resized else ""))
        if self.sparsity is not None:
            lines.append(self.sparsity.summary())
        if self.requantized or self.left_float:
            left = "" if not self.left_float else (
                f"; {len(self.left_float)} left float, their values off the quantization grid "
                f"now (e.g. '{self.left_float[0]}')")
            lines.append(f"quantized: {self.requantized} weight(s) written back as integers "
                         f"with the kept channels' scales{left}")
        if self.approximate:
            lines.append(f"approximate: {len(self.approximate)} pruned group(s) pass through a "
                         f"normalisation over the pruned channels (--prune-hidden); the output "
                         f"difference above is the price")
        kinds: dict[str, list[str]] = {}  # reasons alike but for the names they quote
        for _, reason in self.frozen:
            kinds.setdefault(re.sub(r"'[^']*'", "'…'", reason), []).append(reason)
        for kind, examples in sorted(kinds.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:8]:
            shown = examples[0] if len(examples) == 1 else f"{kind} (e.g. {examples[0]})"
            lines.append(f"  frozen x{len(examples)}: {shown}")
        if len(kinds) > 8:
            lines.append(f"  ... and {len(kinds) - 8} more kinds of reason (see --report)")
        return "\n".join(line for line in lines if line)

    def _cleanup_share(self) -> str:
        """How the parameter change splits between clean-up and pruning, where clean-up
        changed the count at all."""
        if not self.params_cleaned or self.params_cleaned == self.params_before:
            return ""
        return (f"; clean-up alone -> {self.params_cleaned:,}, then pruning "
                f"x{self.pruning_param_ratio:.3f}")


class PruneResult:
    """The pruned model, the plan that made it and the report.

    The model is kept in graphprune's IR; `model` builds the ModelProto on first use, while
    `write` streams the weights to disk without that copy."""

    def __init__(self, graph: Graph, plan: Plan, report: Report):
        self.graph, self.plan, self.report = graph, plan, report
        self._model: onnx.ModelProto | None = None

    @property
    def model(self) -> onnx.ModelProto:
        if self._model is None:
            self._model = self.graph.to_model()
        return self._model


def load_graph(model: ModelLike) -> tuple[onnx.ModelProto, Graph]:
    """Load into the IR. Returns the model's interface (inputs, outputs, opsets; no weights
    when we loaded the file ourselves, so a large model is not held twice) and the graph."""
    owned = not isinstance(model, onnx.ModelProto)
    if owned:
        proto, weights = load_split(model)
        graph = Graph.from_model(proto, weights)
        del weights
    else:
        proto, graph = model, Graph.from_model(model)
    source = str(model) if owned else "<model>"
    check_structure(graph.to_model(embed_limit=_CHECK_EMBED_LIMIT), source)
    graph.infer_shapes()
    return (graph.model if owned else proto), graph


def canonicalize(graph: Graph) -> list[str]:
    """Run the canonicalizing passes, then bind dynamic dims for the analysis that follows."""
    from .passes import run_passes

    # Bound shapes let constant folding resolve shape arithmetic of legacy exports; the
    # folding pass never folds a stand-in itself (Graph.static_dims).
    graph.infer_shapes(bind_dynamic=True)
    changed = run_passes(graph)
    _name_unnamed_nodes(graph)
    graph.infer_shapes(bind_dynamic=True)
    return changed


def _name_unnamed_nodes(graph: Graph) -> None:
    """Give every unnamed node a unique name: coupling rules key their fixups by node name, so
    two unnamed Reshapes would otherwise share one fixup (and reports could not name them)."""
    unnamed = [node for node in graph.nodes if not node.name]
    if not unnamed:
        return
    taken = set(graph.weights) | {o for n in graph.nodes for o in n.output} | \
        {n.name for n in graph.nodes}
    for node in unnamed:
        base = name = f"{node.op_type}_{node.output[0] if node.output else ''}"
        k = 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        node.name = name
        taken.add(name)


def analyze_model(model: ModelLike) -> tuple[Graph, Analysis]:
    """The canonical graph and its channel groups, without pruning anything."""
    _, graph = load_graph(model)
    canonicalize(graph)
    return graph, analyze(graph)


def prune(model: ModelLike, ratio: float = 0.4, *, criterion: str = "l2",
          round_to: int | str = DEFAULT_ROUND_TO, exclude: tuple[str, ...] = (),
          plan: Plan | None = None, verify: bool = True, seed: int = 0,
          head_ratio: float | None = None, budget: Budget | None = None,
          prune_hidden: bool = False,
          progress: Progress | None = None, calib=None,
          compensate: bool = False, sparse: SparsifyConfig | None = None) -> PruneResult:
    """Prune coupled channels of an ONNX model.

    `ratio` is the fraction of channels removed from every prunable group, `head_ratio` the
    fraction of attention heads (default: `ratio`); `budget` replaces the per-group ratio by a
    model-wide target (see budget.Budget); `plan` replays a saved plan instead of scoring.
    `prune_hidden` also prunes channels that a LayerNorm/RMSNorm normalises (a transformer's
    hidden size): approximate, since the norm's statistics change; the report counts them. Raises NothingToPruneError when no group can be pruned
    safely and UnsafeResultError when the result fails verification.

    `calib` is calibration data: a folder or file of .npy/.npz arrays or images, arrays in
    memory, or a calibration.CalibrationSet (which also sets the image preprocessing). Its
    statistics feed the data-aware criteria (`activation` needs them; `obs` uses them) and
    compensation. `compensate` folds the removed channels' contribution into the consumers
    (bias; with `calib` also a least-squares re-fit; see compensation.py) before surgery.

    `sparse` then masks the remaining weights to a sparsity pattern and moves the nodes where
    graphprune's sparse operators measure faster onto them (see sparsity.py); `ratio=0` with
    `sparse` only sparsifies. The result then needs graphprune.kernels to run.
    """
    say = progress or (lambda _msg: None)
    clock = _Clock()
    config = PolicyConfig(ratio=ratio, round_to=round_to, exclude=tuple(exclude),
                          head_ratio=head_ratio, budget=budget)
    chooser = make_criterion(criterion, seed)
    source = str(model) if not isinstance(model, onnx.ModelProto) else "<model>"
    report = Report(source=source)

    reference = None
    if verify:  # before loading, so its session and our IR never share the memory peak
        say("running the input model in ONNX Runtime")
        reference = _run_reference(model, source, seed)
        clock.lap(report, "reference")  # the first half of verification
    say(f"loading {source}")
    interface, graph = load_graph(model)
    loaded_weights = set(graph.weights)
    report.params_before = count_params(graph)
    clock.lap(report, "load")

    say("canonicalizing")
    report.passes = canonicalize(graph)
    report.params_cleaned = count_params(graph)
    report.macs_before = count_macs(graph)  # canonical shapes are complete; MACs unchanged
    clock.lap(report, "canonicalize")

    channels = not (sparse is not None and ratio == 0 and plan is None and budget is None)
    if not channels:
        return _sparsify_only(graph, interface, loaded_weights, report, reference, sparse,
                              source, clock, say, calib)
    say("analyzing channel dependencies")
    graph.options["prune_hidden"] = prune_hidden
    analysis = analyze(graph)
    report.groups_found = len(analysis.groups)
    report.frozen = [(g.key, g.frozen) for g in analysis.frozen]
    if not analysis.prunable and plan is None:
        raise NothingToPruneError(f"{source}: no channel group can be pruned safely; the model "
                                  f"is left as it is ({_top_reason(analysis, graph)})")
    clock.lap(report, "analyze")

    say("planning")
    # --- calibration hook (begin): data-aware criteria and compensation plug in here ---
    from .calibration import as_calibration, collect_stats, data_free_stats
    from .scoring import DATA_CRITERIA, STATS_CRITERIA

    scoring = plan is None
    if calib is None and scoring and criterion in DATA_CRITERIA:
        raise UsageError(f"criterion '{criterion}' needs calibration data: pass --calib PATH "
                         f"(a folder of .npy/.npz arrays or images)")
    stats = None
    wants_stats = compensate or (scoring and criterion in STATS_CRITERIA)
    if calib is not None:
        say("collecting calibration statistics")
        calib_set = as_calibration(calib)
        stats = collect_stats(graph, analysis, calib_set,
                              gram=compensate or (scoring and criterion == "obs"), progress=say)
        report.calibration, report.calibration_samples = calib_set.label, stats.samples
        clock.lap(report, "calibrate")
    elif wants_stats:
        stats = data_free_stats(graph, analysis, model)
        report.calibration = stats.source if stats.tensors else ""
    if stats is not None and scoring and criterion in STATS_CRITERIA:
        chooser = make_criterion(criterion, seed, stats=stats)
    if plan is None:
        plan = make_plan(analysis, graph, chooser, config)
    report.criterion = plan.criterion
    if getattr(chooser, "fallbacks", 0) and plan.criterion == "bn_scale":
        report.criterion_note = (f"l2 for {chooser.fallbacks} group(s) without a BatchNorm to "
                                 f"read: none in the graph there, or the exporter folded it")
    if compensate:
        from .compensation import compensate as compensate_weights

        say("compensating removed channels")
        done = compensate_weights(graph, analysis, plan, stats)
        report.compensated = [c.to_dict() for c in done]
        report.compensation = (
            "least squares + bias, calibration data" if stats is not None and not stats.data_free
            else "bias, folded BatchNorm statistics" if stats is not None and stats.tensors
            else "data-free, but the model has no BatchNorm statistics to use; pass --calib")
    # --- calibration hook (end) ---
    report.skipped = dict(plan.skipped)
    clock.lap(report, "plan")

    say(f"pruning {len(plan.groups)} groups")
    report.groups_pruned = apply_plan(graph, analysis, plan)
    _requantize(graph, report)
    pruned_keys = {g.key for g in plan.groups}
    report.approximate = sorted(g.key for g in analysis.groups
                                if "approximate" in g.tags and g.key in pruned_keys)
    graph.reindex()
    try:
        graph.infer_shapes(strict=True)  # also drops the analysis' stand-ins for dynamic dims
    except Exception as err:  # a rule produced an inconsistent graph: never write it
        raise UnsafeResultError(f"{source}: the pruned graph is inconsistent ({err}); nothing "
                                f"was written. Use --exclude on the nodes named to skip them") from None
    try:
        check_structure(graph.to_model(embed_limit=_CHECK_EMBED_LIMIT), source)
    except GraphpruneError as err:
        raise UnsafeResultError(f"the pruned graph fails onnx.checker ({err}); nothing was "
                                f"written") from None
    shell = graph.to_model(embed_limit=-1)
    graph.infer_shapes(bind_dynamic=True)
    report.params_after, report.macs_after = count_params(graph), count_macs(graph)
    clock.lap(report, "apply")

    _check_interface(interface, shell, loaded_weights | graph.weights.keys(), source)
    if sparse is not None:
        _sparsify(graph, report, sparse, clock, say, calib)
    return _verified(PruneResult(graph, plan, report), reference, source, clock, say, "pruned")


def sparsify(model: ModelLike, sparsity: float = 0.9, pattern: str = DEFAULT_PATTERN, *,
             verify: bool = True, seed: int = 0, progress: Progress | None = None,
             calib=None, **options) -> PruneResult:
    """Only the sparsity pass: `prune(model, ratio=0, sparse=SparsifyConfig(...))`. `options`
    are SparsifyConfig's other fields (batch, dims, threads, min_speedup, measure, exclude,
    criterion); `calib` is calibration data for `criterion="activation"`."""
    config = SparsifyConfig(sparsity=sparsity, pattern=pattern, **options)
    return prune(model, ratio=0.0, sparse=config, verify=verify, seed=seed, progress=progress,
                 calib=calib)


def _sparsify(graph: Graph, report: Report, config: SparsifyConfig, clock: "_Clock",
              say: Progress, calib=None) -> None:
    from .kernels import KernelsUnavailable

    say(f"sparsifying ({config.pattern}, {config.sparsity:g})")
    try:
        report.sparsity = sparsify_graph(graph, config, progress=say, calib=calib)
    except KernelsUnavailable as err:
        raise UsageError(f"--sparsity needs graphprune's sparse-operator library, which is "
                         f"not available: {_first_line(err)}") from None
    clock.lap(report, "sparsify")


def _sparsify_only(graph: Graph, interface, loaded_weights, report: Report, reference,
                   config: SparsifyConfig, source: str, clock: "_Clock",
                   say: Progress, calib=None) -> PruneResult:
    """The pipeline without channel pruning: canonical graph -> sparsity pass -> verify."""
    _requantize(graph, report)  # a QDQ model keeps its integer weights (the sparse kernels
    # take float weights: its layers stay dense)
    report.params_after, report.macs_after = count_params(graph), report.macs_before
    _check_interface(interface, graph.to_model(embed_limit=-1),
                     loaded_weights | graph.weights.keys(), source)
    _sparsify(graph, report, config, clock, say, calib)
    empty = Plan(criterion="", ratio=0.0, round_to=1, groups=[])
    return _verified(PruneResult(graph, empty, report), reference, source, clock, say, "sparse")


def _requantize(graph: Graph, report: Report) -> None:
    """A QDQ model's weights go back to the integers they were (see quantization.py)."""
    if graph.quantized:
        from .quantization import requantize

        report.requantized, report.left_float = requantize(graph)


def _verified(result: PruneResult, reference, source: str, clock: "_Clock", say: Progress,
              what: str) -> PruneResult:
    """The result, with its fidelity against the input model when there is a reference run."""
    if reference is not None:
        say(f"running the {what} model in ONNX Runtime")
        result.report.fidelity = _check_candidate(result.graph, *reference, source)
        clock.lap(result.report, "verify")
    return result


def sensitivity(model: ModelLike, ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5), *,
                criterion: str = "l2", round_to: int = 1, seed: int = 0,
                progress: Progress | None = None) -> "Sensitivity":
    """Output error of pruning each group alone at each ratio (see sensitivity.py)."""
    from .sensitivity import measure
    from .verify import random_inputs

    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise UsageError(f"--ratios must be numbers in (0, 1), got {list(ratios)}")
    interface, graph = load_graph(model)
    canonicalize(graph)
    analysis = analyze(graph)
    if not analysis.prunable:
        raise NothingToPruneError(f"{model}: no channel group can be pruned safely "
                                  f"({_top_reason(analysis, graph)})")
    feeds = random_inputs(interface, seed)
    return measure(graph, analysis, make_criterion(criterion, seed), list(ratios), feeds,
                   round_to, progress)


def write(result: PruneResult, path: str | os.PathLike, source: str | None = None) -> Path:
    """Write a pruned model atomically (never over the input file); weights over 2 GB go to
    `<path>.data` beside it."""
    shell, weights = result.graph.split()
    return save_graph(shell, weights, path, protect=source)


def _run_reference(model: ModelLike, source: str, seed: int):
    """Outputs of the input model on seeded random inputs."""
    from .kernels import KernelsUnavailable, how_to_load

    target = str(model) if not isinstance(model, onnx.ModelProto) else model
    try:
        try:
            sess = session(target)
        except Exception as err:  # an input that already uses our sparse operators
            if f"{_SPARSE_DOMAIN}:" not in str(err):
                raise
            ops = re.findall(rf"{_SPARSE_DOMAIN}:(\w+)", str(err))
            try:
                sess = session(target, custom_ops=True)
            except KernelsUnavailable as missing:
                raise UsageError(f"{source}: {how_to_load(ops, 'the model')}; the library is "
                                 f"not available here ({_first_line(missing)})") from None
        return reference_run(sess, seed)
    except UsageError:
        raise
    except Exception as err:
        if not isinstance(model, onnx.ModelProto):
            load_model(model)  # a load problem gets its own, clearer message
        raise UsageError(f"{source}: ONNX Runtime cannot run the input model "
                         f"({_first_line(err)}); use --no-verify to prune without the "
                         f"check") from None


def _check_candidate(graph: Graph, feeds, expected, source: str) -> Fidelity:
    """Run the pruned model from a temporary file (ONNX Runtime reads it; no protobuf copy)."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="graphprune-") as tmp:
            shell, weights = graph.split()
            path = save_graph(shell, weights, Path(tmp) / "candidate.onnx")
            got = session(str(path), custom_ops=uses_sparse_ops(graph)).run(None, feeds)
    except Exception as err:
        raise UnsafeResultError(f"{source}: the pruned model does not run in ONNX Runtime "
                                f"({_first_line(err)}); nothing was written") from None
    declared = [_declared_dims(o) for o in graph.model.graph.output]
    for a, b, dims in zip(expected, got, declared):
        data_sized = dims is not None and len(dims) == a.ndim == b.ndim and all(
            x == y or not isinstance(d, int) for x, y, d in zip(a.shape, b.shape, dims))
        if a.shape != b.shape and not data_sized:
            raise UnsafeResultError(f"{source}: pruned output shape {b.shape} differs from "
                                    f"{a.shape}; nothing was written")
    return compare(expected, got, _classifier_outputs(graph, declared))


def _declared_dims(value_info: onnx.ValueInfoProto) -> list | None:
    """A graph input's or output's declared dims: ints, dim_param names, None where unset."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
            (d.dim_param or None) for d in t.shape.dim]


def _classifier_outputs(graph: Graph, declared: list) -> list[bool]:
    """Outputs shaped [batch, classes], whose top-1 agreement means something: the first
    dim is declared like the first input's (the same size or the same name). A detector's
    boxes [detections, 4] are not."""
    inputs = [v for v in graph.model.graph.input if v.name not in graph.weights]
    batch = _declared_dims(inputs[0]) if inputs else None
    first = batch[0] if batch else None
    return [dims is not None and len(dims) == 2 and first is not None and dims[0] == first
            for dims in declared]


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__


def _check_interface(original: onnx.ModelProto, result: onnx.ModelProto, weights: set[str],
                     source: str) -> None:
    """Graph inputs and outputs keep their names, types and shapes (invariant 3). `weights`
    are the weight names before and after: IR < 4 models also list those among the inputs."""
    def interface(m):
        own = {t.name for t in m.graph.initializer}
        return [(v.name, v.type.SerializeToString()) for v in list(m.graph.input) +
                list(m.graph.output) if v.name not in weights and v.name not in own]

    if interface(original) != interface(result):
        raise UnsafeResultError(f"{source}: pruning would change the model's inputs or outputs; "
                                f"nothing was written")


# Operators of quantized models (ONNX's QOperator form, ONNX Runtime's contrib ops).
_QUANTIZED_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
                  "DynamicQuantizeMatMul", "MatMulNBits", "MatMulIntegerToFloat", "QAttention"}


def _quantized_reason(graph: Graph) -> str | None:
    """Why a quantized model has nothing to prune: its weights are integers, not float."""
    ops = sorted({n.op_type for n in graph.nodes if n.op_type in _QUANTIZED_OPS})
    if not ops:  # QDQ models (DequantizeLinear before the weights) prune; these ops do not
        return None
    return (f"its weights are quantized into operators that compute on integers "
            f"({', '.join(ops)}); graphprune prunes float, fp16 and QDQ-quantized weights: "
            "prune the float model (or a QDQ export), then quantize the result")


def _top_reason(analysis: Analysis, graph: Graph | None = None) -> str:
    quantized = _quantized_reason(graph) if graph is not None else None
    if quantized and not analysis.prunable:
        return quantized
    if not analysis.groups:
        return _no_groups_reason(graph)
    reasons: dict[str, int] = {}
    for g in analysis.frozen:
        reasons[g.frozen] = reasons.get(g.frozen, 0) + 1
    reason = max(reasons, key=reasons.get)
    return f"most common reason: {reason}"


def _no_groups_reason(graph: Graph | None) -> str:
    """Why no channel group exists: no weighted layer at all, or weighted layers whose shapes
    ONNX shape inference could not follow (then the first op it lost them at is named)."""
    weighted = [n for n in (graph.nodes if graph is not None else [])
                if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1
                and graph.const(n.input[1]) is not None]
    unknown = [n for n in weighted if graph.shape(n.output[0]) is None]
    if not unknown:
        return "it has no Conv, Gemm or MatMul with constant weights"
    lost = next((n for n in graph.nodes if n.output and graph.shape(n.output[0]) is None and
                 all(graph.shape(i) is not None for i in n.input if i)), None)
    where = f" (they are lost at {lost.op_type} '{lost.name or lost.output[0]}'" + (
        f", domain {lost.domain}" if lost is not None and lost.domain else "") + ")" \
        if lost is not None else ""
    return (f"the output shapes of {len(unknown)} weighted layer(s), e.g. {unknown[0].op_type} "
            f"'{unknown[0].name or unknown[0].output[0]}', are unknown to ONNX shape "
            f"inference{where}")


class _Clock:
    def __init__(self):
        self.t = time.perf_counter()

    def lap(self, report: Report, name: str) -> None:
        now = time.perf_counter()
        report.seconds[name] = round(now - self.t, 4)
        self.t = now
