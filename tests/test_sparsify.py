"""The sparsity pass: candidates, masking, the measured keep-dense decision, and that the
rewritten model computes exactly what the masked dense model computes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune import kernels
from graphprune.api import canonicalize, load_graph
from graphprune.cli import main
from graphprune.sparsity import (PATTERNS, Pattern, SparsifyConfig, find_candidates,
                                 masked_reference, uses_sparse_ops)
from graphprune.verify import random_inputs
from models.attention import ATTENTION_BLOCKS
from models.blocks import BLOCKS, as_old_ir


@pytest.fixture(autouse=True)
def _private_cost_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_COSTMODEL_CACHE", str(tmp_path / "costmodel.json"))


def _mlp(seed=0, k=40, hidden=72, n=24, gelu=True) -> onnx.ModelProto:
    """MatMul+Add+Gelu, MatMul+Add+Relu, Gemm(transB) — the fusible epilogues."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((k, hidden)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32),
                                     "w2"),
             numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b2"),
             numpy_helper.from_array(rng.standard_normal((n, hidden)).astype(np.float32), "w3"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b3")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
             helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1.bias"),
             helper.make_node("Gelu" if gelu else "Relu", ["h1b"], ["a1"], name="act1"),
             helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="fc2"),
             helper.make_node("Add", ["b2", "h2"], ["h2b"], name="fc2.bias"),
             helper.make_node("Relu", ["h2b"], ["a2"], name="act2"),
             helper.make_node("ReduceMean", ["a2", "axes"], ["f"], keepdims=0, name="pool"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, alpha=0.5, name="fc3")]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", 5, k])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["batch", n])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _canonical(model):
    _, graph = load_graph(model)
    canonicalize(graph)
    return graph


def _run_dense(model: onnx.ModelProto, feeds):
    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def _sparsify_and_compare(model, config, *, batches=(2,), seed=1, calib=None):
    """Sparsify `model`, mask the same nodes of a dense copy, and check both compute the same
    on random inputs of each batch size. Returns the result and the masked dense graph."""
    result = graphprune.prune(model, ratio=0.0, sparse=config, verify=False, calib=calib)
    assert result.report.sparsity.rewritten and uses_sparse_ops(result.graph)
    reference = _canonical(model)
    masked_reference(reference, result.report.sparsity, config, calib=calib)
    for batch in batches:
        feeds = random_inputs(model, seed=seed + batch, batch=batch)
        _assert_close(kernels.session(result.model, threads=2).run(None, feeds),
                      _run_dense(reference.to_model(), feeds))
    return result, reference


def _assert_close(got, want):
    for a, b in zip(got, want):
        scale = max(float(np.abs(b).max()), 1e-6)
        assert float(np.abs(a - b).max()) <= 1e-4 * scale


# --------------------------------------------------------------------------------------------


def test_pattern_parse():
    assert Pattern.parse("4x1").block == (4, 1) and Pattern.parse("4x1").format == "bsr"
    assert Pattern.parse("2:4").format == "nm" and Pattern.parse("2:4").sparsity(0.9) == 0.5
    assert Pattern.parse("Unstructured").format == "csr"
    for bad in ("3x3", "4:2", "dense", "0:4"):
        with pytest.raises(graphprune.UsageError, match="--pattern"):
            Pattern.parse(bad)


def test_candidates_fuse_bias_and_activation():
    graph = _canonical(_mlp())
    found, ineligible = find_candidates(graph)
    by = {c.node.name: c for c in found}
    assert set(by) == {"fc1", "fc2", "fc3"}, ineligible
    assert by["fc1"].activation == "gelu" and by["fc1"].output == "a1"
    assert by["fc2"].activation == "relu" and by["fc2"].bias is not None  # Add(bias, x) order
    fc3 = by["fc3"]
    w3 = numpy_helper.to_array(_mlp().graph.initializer[4])
    np.testing.assert_allclose(fc3.w_kn, 0.5 * w3.T)  # transB and alpha folded
    assert fc3.activation == "none" and fc3.output == "y"


def _erf_gelu_mlp(half_first: bool, extra_user: bool = False) -> onnx.ModelProto:
    """MatMul + Add + gelu written out with Erf, as exporters below opset 20 write it: either
    (x * (1 + erf(x / sqrt 2))) * 0.5 or (x * 0.5) * (1 + erf(x * (1 / sqrt 2))).
    `extra_user`: the MatMul output also feeds the graph's second output (not fusible)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((40, 64)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(2 ** 0.5, np.float32), "sqrt2"),
             numpy_helper.from_array(np.array(2 ** -0.5, np.float32), "inv_sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Add", ["h", "b"], ["hb"], name="fc.bias")]
    if half_first:
        nodes += [helper.make_node("Mul", ["hb", "inv_sqrt2"], ["s"]),
                  helper.make_node("Erf", ["s"], ["e"]),
                  helper.make_node("Add", ["one", "e"], ["e1"]),
                  helper.make_node("Mul", ["half", "hb"], ["xh"]),
                  helper.make_node("Mul", ["e1", "xh"], ["y"])]
    else:
        nodes += [helper.make_node("Div", ["hb", "sqrt2"], ["s"]),
                  helper.make_node("Erf", ["s"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["e1"]),
                  helper.make_node("Mul", ["hb", "e1"], ["xe"]),
                  helper.make_node("Mul", ["xe", "half"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 64])]
    if extra_user:
        nodes.append(helper.make_node("Identity", ["s"], ["scaled"]))
        outputs.append(helper.make_tensor_value_info("scaled", TensorProto.FLOAT,
                                                     ["batch", 5, 64]))
    graph = helper.make_graph(nodes, "erf_gelu", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", 5, 40])], outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("half_first", [False, True], ids=["half-last", "half-first"])
def test_erf_gelu_is_fused_and_computes_the_same(half_first):
    model = _erf_gelu_mlp(half_first)
    (cand,), _ = find_candidates(_canonical(model))
    assert cand.activation == "gelu" and cand.output == "y" and cand.bias is not None
    assert [n.op_type for n in cand.absorbed] == ["Add", "Mul" if half_first else "Div", "Erf",
                                                  "Add", "Mul", "Mul"]
    config = SparsifyConfig(sparsity=0.8, pattern="unstructured", measure=False)
    result, _ = _sparsify_and_compare(model, config, batches=(1, 3))
    assert [n.op_type for n in result.graph.nodes] == ["SparseMatMul"]


def test_erf_gelu_with_a_shared_inner_tensor_stays_unfused():
    """The scaled input also leaves the graph: the erf nodes must stay, so only the bias fuses."""
    (cand,), _ = find_candidates(_canonical(_erf_gelu_mlp(False, extra_user=True)))
    assert cand.activation == "none" and cand.output == "hb"


def test_grouped_conv_is_not_a_candidate_and_says_why():
    graph = _canonical(BLOCKS["mobilenet_v2"](0))
    _, ineligible = find_candidates(graph)
    assert any("group=" in why for why in ineligible.values())


@pytest.mark.parametrize("pattern", PATTERNS)
def test_sparse_model_equals_masked_dense_mlp(pattern):
    config = SparsifyConfig(sparsity=0.8, pattern=pattern, measure=False)
    result, _ = _sparsify_and_compare(_mlp(), config, batches=(1, 3, 120), seed=0)
    assert len(result.report.sparsity.rewritten) == 3
    # fc1 and fc2 (rows of 5 x batch: 600 at batch 120, the fused path) run as one chain, fc1's
    # output only in cache; 4x1 / 8x1 MatMul blocks keep their own kernels
    chains = [n for n in result.model.graph.node if n.op_type == "SparseMatMulChain"]
    if pattern in ("4x1", "8x1"):
        assert not chains
    else:
        assert len(chains) == 1 and list(chains[0].output) == ["", "a2"]


@pytest.mark.parametrize("name", ["resnet_bottleneck", "flatten_gemm", "yolo_csp"])
@pytest.mark.parametrize("pattern", ["4x1", "unstructured", "2:4"])
def test_sparse_cnn_equals_masked_dense(name, pattern):
    config = SparsifyConfig(sparsity=0.9, pattern=pattern, measure=False)
    _sparsify_and_compare(BLOCKS[name](0), config)


def test_resnet_shortcut_add_is_fused_into_the_sparse_conv():
    """Conv -> Add(shortcut) -> Relu ends every bottleneck: the Add runs in the sparse conv's
    epilogue (one pass over the output instead of three), placed after both producers."""
    model = BLOCKS["resnet_bottleneck"](0)
    adds = sum(n.op_type == "Add" for n in model.graph.node)
    result = graphprune.prune(model, ratio=0.0, sparse=SparsifyConfig(
        sparsity=0.9, pattern="4x1", measure=False))
    fused = [n for n in result.model.graph.node if n.domain == "graphprune"
             and len(n.input) > 5 and n.input[5]]
    assert fused, "no shortcut was fused"
    assert sum(n.op_type == "Add" for n in result.model.graph.node) == adds - len(fused)
    assert all(n.attribute and any(a.name == "activation" and a.s == b"relu" for a in n.attribute)
               for n in fused)
    onnx.checker.check_model(result.model, full_check=True)  # topological order included
    _sparsify_and_compare(model, SparsifyConfig(sparsity=0.9, pattern="4x1", measure=False))


def _conv_then_pointwise(seed=0) -> onnx.ModelProto:
    """3x3 conv + Relu, then two readers of its output: a 1x1 conv + Relu (the chain) and a
    graph output; then a second 1x1 conv reading the first 1x1's output."""
    rng = np.random.default_rng(seed)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["Y"]),
             helper.make_node("Conv", ["Y", "W2", "B2"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["Z"]),
             helper.make_node("Conv", ["Z", "W3"], ["V"])]
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 8, 16, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 32, 16, 16]),
         helper.make_tensor_value_info("V", TensorProto.FLOAT, ["N", 16, 16, 16])],
        initializer=[weight("W1", 32, 8, 3, 3), weight("B1", 32), weight("W2", 24, 32, 1, 1),
                     weight("B2", 24), weight("W3", 16, 24, 1, 1)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("pattern", ["4x4", "unstructured"])
def test_pointwise_conv_is_chained_onto_the_conv_it_reads(pattern):
    """A pointwise sparse conv joins the sparse conv whose output it reads (SparseConvChain):
    one chain per producer, so the 3x3 takes the first 1x1 and the second 1x1 stays on its
    own. The result equals the masked dense model on the fused path (batch 8: many chunks)
    and the two-pass fallback (batch 1), and chain=False leaves the nodes apart."""
    model = _conv_then_pointwise()
    config = SparsifyConfig(sparsity=0.8, pattern=pattern, measure=False)
    result, _ = _sparsify_and_compare(model, config, batches=(1, 8))
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["SparseConvChain", "SparseConv"], ops
    assert len(result.report.sparsity.chained) == 1
    assert "chained onto the one whose output they read" in result.report.sparsity.summary()
    assert "SparseConvChain" in {p.value for p in result.model.metadata_props}.pop()
    onnx.checker.check_model(result.model, full_check=True)
    apart = graphprune.prune(model, ratio=0.0, verify=False, sparse=SparsifyConfig(
        sparsity=0.8, pattern=pattern, measure=False, chain=False))
    assert [n.op_type for n in apart.model.graph.node] == ["SparseConv"] * 3
    assert not apart.report.sparsity.chained


@pytest.mark.parametrize("name", ["resnet_basic", "yolo_csp"])
def test_old_ir_model_lists_the_packed_weights_as_inputs(name):
    # IR 3 files declare every initializer as a graph input too: the packed weights must be
    # declared (the checker requires it) and the replaced dense ones must not become inputs.
    model = as_old_ir(BLOCKS[name](0))
    config = SparsifyConfig(sparsity=0.8, pattern="4x4", measure=False)
    result, _ = _sparsify_and_compare(model, config)
    onnx.checker.check_model(result.model, full_check=True)
    weights = {t.name for t in result.model.graph.initializer}
    inputs = {v.name for v in result.model.graph.input}
    assert weights <= inputs
    assert inputs - weights == {v.name for v in model.graph.input} - {
        t.name for t in model.graph.initializer}


def _softmax_guard_model(mask_shape=None, extra_output: str | None = None,
                         seed: int = 0) -> onnx.ModelProto:
    """X @ W (+ M, an additive mask input of `mask_shape`), then Softmax -> IsNaN ->
    Where(isnan, 0, softmax) as torch's exporter writes it after an attention softmax;
    `extra_output`: an intermediate ("p", the softmax; "sm", the masked sum) that is also a
    graph output."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, 24)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["s"])]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 5, 16])]
    scores = "s"
    if mask_shape is not None:
        nodes.append(helper.make_node("Add", ["M", "s"], ["sm"]))
        inputs.append(helper.make_tensor_value_info("M", TensorProto.FLOAT, mask_shape))
        scores = "sm"
    nodes += [helper.make_node("Softmax", [scores], ["p"], axis=-1),
              helper.make_node("IsNaN", ["p"], ["bad"]),
              helper.make_node("Where", ["bad", "zero", "p"], ["Y"])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 5, 24])
               for name in ("Y", extra_output) if name]
    graph = helper.make_graph(
        nodes, "guard", inputs, outputs,
        initializer=[numpy_helper.from_array(w, "W"),
                     numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_softmax_nan_guard_becomes_one_node():
    """Where the model needs graphprune's library anyway, the guard runs as one
    SoftmaxNanToZero pass; the result equals the masked dense model, and a softmax output
    that something else reads (here a graph output) keeps the three nodes."""
    config = SparsifyConfig(sparsity=0.75, pattern="unstructured", measure=False)
    result, _ = _sparsify_and_compare(_softmax_guard_model(), config, batches=(1, 3))
    assert [n.op_type for n in result.model.graph.node] == ["SparseMatMul", "SoftmaxNanToZero"]
    assert len(result.report.sparsity.softmax_guards) == 1
    assert "zero" not in {i.name for i in result.model.graph.initializer}
    onnx.checker.check_model(result.model, full_check=True)
    kept = graphprune.prune(_softmax_guard_model(extra_output="p"), ratio=0.0, verify=False,
                            sparse=config)
    assert [n.op_type for n in kept.model.graph.node] == ["SparseMatMul", "Softmax", "IsNaN",
                                                          "Where"]
    off = graphprune.prune(_softmax_guard_model(), ratio=0.0, verify=False, sparse=SparsifyConfig(
        sparsity=0.75, pattern="unstructured", measure=False, fuse_softmax_guard=False))
    assert "SoftmaxNanToZero" not in [n.op_type for n in off.model.graph.node]


@pytest.mark.parametrize("mask_shape", [["N", 1, 24], [1, 5, 24], ["N", 5, 1], [24]])
def test_mask_add_joins_the_softmax(mask_shape):
    """The Add of a mask broadcast over the scores becomes SoftmaxNanToZero's second input."""
    config = SparsifyConfig(sparsity=0.75, pattern="unstructured", measure=False)
    result, _ = _sparsify_and_compare(_softmax_guard_model(mask_shape, seed=2), config,
                                      batches=(1, 3))
    nodes = list(result.model.graph.node)
    assert [n.op_type for n in nodes] == ["SparseMatMul", "SoftmaxNanToZero"]
    assert list(nodes[1].input) == [nodes[0].output[0], "M"]
    assert result.report.sparsity.softmax_masks == result.report.sparsity.softmax_guards
    assert "1 with the mask Add before them" in result.report.sparsity.summary()


def test_mask_add_read_elsewhere_stays():
    config = SparsifyConfig(sparsity=0.75, pattern="unstructured", measure=False)
    result, _ = _sparsify_and_compare(_softmax_guard_model(["N", 1, 24], "sm", seed=2),
                                      config, batches=(2,))
    assert [n.op_type for n in result.model.graph.node] == ["SparseMatMul", "Add",
                                                            "SoftmaxNanToZero"]
    assert result.report.sparsity.softmax_masks == []


@pytest.mark.parametrize("name", ["mha_prenorm", "swiglu_ffn"])
def test_sparse_attention_block_equals_masked_dense(name):
    config = SparsifyConfig(sparsity=0.9, pattern="1x4", measure=False)
    _sparsify_and_compare(ATTENTION_BLOCKS[name](0), config)


def test_measured_decision_keeps_slow_nodes_dense():
    model = _mlp()
    strict = SparsifyConfig(sparsity=0.9, pattern="1x4", min_speedup=1e9)
    result = graphprune.prune(model, ratio=0.0, sparse=strict)
    report = result.report.sparsity
    assert not report.rewritten and not uses_sparse_ops(result.graph)
    assert all(d.decision == "dense" and "not fast enough" in d.reason for d in report.nodes)
    assert all(d.dense_ms > 0 and d.sparse_ms > 0 for d in report.nodes)
    assert report.timings_run == 3
    # dense nodes keep their weights untouched: the output is the original's
    assert result.report.fidelity.max_abs_error == 0.0
    again = graphprune.prune(model, ratio=0.0, sparse=SparsifyConfig(
        sparsity=0.9, pattern="1x4", min_speedup=0.0, model_check=False))
    assert again.report.sparsity.timings_run == 0  # served from the cost-model cache
    assert len(again.report.sparsity.rewritten) == 3 and uses_sparse_ops(again.graph)


def test_prune_then_sparsify(tmp_path):
    model = BLOCKS["resnet_bottleneck"](0)
    config = SparsifyConfig(sparsity=0.8, pattern="4x4", measure=False)
    result = graphprune.prune(model, ratio=0.4, sparse=config)
    assert result.report.groups_pruned > 0 and result.report.sparsity.rewritten
    assert result.report.fidelity is not None
    out = graphprune.write(result, tmp_path / "m.onnx")
    written = onnx.load(out)
    onnx.checker.check_model(written)
    assert [o.name for o in written.graph.output] == [o.name for o in model.graph.output]
    assert any(o.domain == kernels.DOMAIN for o in written.opset_import)


def test_cli_sparsity(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_mlp(), src)
    out = tmp_path / "m.sparse.onnx"
    res = CliRunner().invoke(main, [str(src), "--sparsity", "0.9", "--pattern", "4x1",
                                    "--sparse-all", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "sparsity: 3 of 3 candidate nodes" in res.output
    model = onnx.load(out)
    assert sum(n.domain == kernels.DOMAIN for n in model.graph.node) == 3
    feeds = random_inputs(model, batch=2)
    assert kernels.session(str(out)).run(None, feeds)[0].shape == (2, 24)
    assert "groups:" not in res.output.splitlines()[0] or "0 pruned" in res.output


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "0.9", "--pattern", "3x3"], "--pattern '3x3'"),
    (["--sparsity", "1.0"], "--sparsity"),
    (["--pattern", "4x1"], "--pattern needs --sparsity"),
    (["--sparsity", "0.9", "--sparse-dim", "seq"], "--sparse-dim"),
])
def test_cli_sparsity_errors(tmp_path, args, message):
    src = tmp_path / "m.onnx"
    onnx.save(_mlp(), src)
    res = CliRunner().invoke(main, [str(src), *args, "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.onnx").exists()


def test_timing_shapes_bind_named_dims_and_factor_flattened_ones():
    from graphprune.sparsity import _rebind, timing_shapes

    graph = _canonical(_mlp())
    shapes = timing_shapes(graph, batch=4, dims={})
    assert shapes["x"] == (4, 5, 40) and shapes["y"] == (4, 24)
    assert timing_shapes(graph, batch=1, dims={"batch": 16})["y"] == (16, 24)
    assert _rebind(23 * 29 * 2, {23: 1, 29: 128}) == 256  # [batch * seq * 2] flattened
    assert _rebind(24, {23: 1, 29: 128}) is None  # not built from the stand-ins: unknown


def test_html_report_lists_the_sparse_decisions():
    from graphprune.htmlreport import render

    result = graphprune.prune(_mlp(), ratio=0.0, sparse=SparsifyConfig(
        sparsity=0.9, pattern="1x4", min_speedup=1e9))
    page = render(result.report, result.plan)
    assert "Sparse operators: 0 of 3 nodes" in page
    assert "not fast enough" in page and "fc3" in page


def test_activation_criterion_weighs_weights_by_input_norms():
    model = _mlp()
    rng = np.random.default_rng(5)
    scale = np.ones(40, np.float32)
    scale[:8] = 50.0  # a few loud input features: their weights must survive
    calib = [{"x": (rng.standard_normal((4, 5, 40)) * scale).astype(np.float32)}
             for _ in range(3)]
    config = SparsifyConfig(sparsity=0.75, pattern="unstructured", measure=False,
                            criterion="activation")
    result, reference = _sparsify_and_compare(model, config, calib=calib)
    w1 = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "w1")
    kept = reference.weights["w1"] != 0
    assert kept[:8].mean() > 0.9 and kept[8:].mean() < 0.25  # loud rows kept, not by |W|
    plain = _canonical(model)
    masked_reference(plain, result.report.sparsity, SparsifyConfig(
        sparsity=0.75, pattern="unstructured"))
    assert (plain.weights["w1"] != 0)[:8].mean() < 0.5
    np.testing.assert_array_equal(reference.weights["w1"][kept], w1[kept])


def test_activation_criterion_needs_calibration(tmp_path):
    with pytest.raises(graphprune.UsageError, match="calibration"):
        graphprune.prune(_mlp(), ratio=0.0, verify=False, sparse=SparsifyConfig(
            sparsity=0.5, measure=False, criterion="activation"))
    src = tmp_path / "m.onnx"
    onnx.save(_mlp(), src)
    res = CliRunner().invoke(main, [str(src), "--sparsity", "0.5", "--sparse-criterion",
                                    "activation", "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "--calib" in res.output


def test_whole_model_check_backs_off_when_the_model_is_slower(monkeypatch):
    """Faster nodes can make a slower model (layout reorders between them): the whole model is
    timed, and while it is slower the nodes with the smallest margins go back to dense."""
    from graphprune import sparsity as sp

    calls = []

    def fake_time_model(graph, rewrites, feeds, threads):
        calls.append(len(rewrites))
        return 1.0 if not rewrites else 2.0 if len(rewrites) > 1 else 0.5

    monkeypatch.setattr(sp, "_time_model", fake_time_model)
    result = graphprune.prune(_mlp(), ratio=0.0, sparse=SparsifyConfig(
        sparsity=0.9, pattern="1x4", min_speedup=0.0))
    report = result.report.sparsity
    assert calls == [0, 3, 1]  # dense, all three, then the best half (one node)
    assert len(report.rewritten) == 1
    best = max(report.nodes, key=lambda d: d.speedup)
    assert report.rewritten[0].node == best.node
    backed = [d for d in report.nodes if d.decision == "dense"]
    assert len(backed) == 2 and all("whole model measured slower" in d.reason for d in backed)
    assert report.model_dense_ms == 1.0 and report.model_sparse_ms == 0.5
    assert "whole model: 1.00 ms dense -> 0.50 ms" in report.summary()
    assert sum(n.domain == kernels.DOMAIN for n in result.graph.nodes) == 1

    calls.clear()
    monkeypatch.setattr(sp, "_time_model", lambda g, r, f, t: 1.0 if not r else 3.0)
    slow = graphprune.prune(_mlp(), ratio=0.0, sparse=SparsifyConfig(
        sparsity=0.9, pattern="1x4", min_speedup=0.0))
    assert not slow.report.sparsity.rewritten and not uses_sparse_ops(slow.graph)


def test_whole_model_timing_runs_for_real():
    result = graphprune.prune(_mlp(), ratio=0.0, sparse=SparsifyConfig(
        sparsity=0.9, pattern="1x4", min_speedup=0.0))
    report = result.report.sparsity
    assert report.model_dense_ms > 0
    assert report.model_sparse_ms is None or report.model_sparse_ms < report.model_dense_ms
