"""The Python API end to end: loading forms, options, plans, determinism, never harming input."""
import hashlib

import numpy as np
import onnx
import pytest

import graphprune
from graphprune import Plan, UsageError, prune, write
from graphprune.policy import kept_count
from models.blocks import BLOCKS, as_old_ir, save_with_external_data, with_constant_nodes


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_external_data_model_prunes_and_input_is_untouched(tmp_path):
    src = tmp_path / "ext.onnx"
    save_with_external_data(BLOCKS["resnet_basic"](0), src)
    hashes = {p.name: _sha(p) for p in tmp_path.iterdir()}
    result = prune(src, ratio=0.5)
    out = write(result, tmp_path / "out.onnx", source=src)
    assert {p.name: _sha(p) for p in tmp_path.iterdir() if p.name in hashes} == hashes
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert result.report.param_ratio < 0.7
    assert not list(tmp_path.glob("*.tmp"))


def test_constant_node_weights_prune_like_initializers():
    plain = prune(BLOCKS["resnet_basic"](0), ratio=0.5, verify=False)
    constants = prune(with_constant_nodes(BLOCKS["resnet_basic"](0)), ratio=0.5, verify=False)
    assert constants.report.params_after == plain.report.params_after
    assert [g.keep for g in constants.plan.groups] == [g.keep for g in plain.plan.groups]


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_old_ir_model_prunes(name):
    # IR 3 files also declare every initializer as a graph input: weights over the load
    # check's embed limit were declared twice there, and weights added since loading (folded
    # biases, rewritten shape constants) were not declared, or refused as new inputs.
    model = as_old_ir(BLOCKS[name](0))
    result = prune(model, ratio=0.4)
    onnx.checker.check_model(result.model, full_check=True)
    weights = {t.name for t in result.model.graph.initializer}
    assert weights <= {v.name for v in result.model.graph.input}
    loaded = {t.name for t in model.graph.initializer}
    assert [v for v in result.model.graph.input if v.name not in weights] == [
        v for v in model.graph.input if v.name not in loaded]
    assert result.report.params_after < result.report.params_before


def test_same_input_gives_same_bytes():
    a = prune(BLOCKS["mobilenet_v3"](0), ratio=0.4).model.SerializeToString()
    b = prune(BLOCKS["mobilenet_v3"](0), ratio=0.4).model.SerializeToString()
    assert a == b


def test_caller_model_is_not_modified():
    model = BLOCKS["densenet"](0)
    before = model.SerializeToString()
    prune(model, ratio=0.4)
    assert model.SerializeToString() == before


def test_exclude_keeps_named_layer_whole():
    model = BLOCKS["resnet_basic"](0)
    full = prune(model, ratio=0.5, round_to=1, verify=False)
    key = full.plan.groups[0].key
    tensor = key.rsplit(":", 1)[0]
    excluded = prune(model, ratio=0.5, round_to=1, exclude=(tensor,), verify=False)
    assert key not in {g.key for g in excluded.plan.groups}
    assert key in excluded.report.skipped
    assert excluded.report.params_after > full.report.params_after


def test_round_to_gives_multiples():
    result = prune(BLOCKS["resnet_bottleneck"](0), ratio=0.3, round_to=8, verify=False)
    for g in result.plan.groups:
        assert len(g.keep) % 8 == 0 or g.size <= 8


@pytest.mark.parametrize("n,ratio,round_to,expected", [
    (64, 0.4, 1, 39), (64, 0.4, 8, 40), (64, 0.4, 16, 32), (10, 0.99, 1, 1), (8, 0.5, 16, 4),
    (7, 0.0, 8, 7)])
def test_kept_count(n, ratio, round_to, expected):
    assert kept_count(n, ratio, round_to) == expected


def test_plan_round_trip_and_mismatch():
    result = prune(BLOCKS["resnet_basic"](0), ratio=0.4)
    plan = Plan.from_json(result.plan.to_json())
    replay = prune(BLOCKS["resnet_basic"](0), plan=plan)
    assert replay.model.SerializeToString() == result.model.SerializeToString()
    with pytest.raises(UsageError, match="does not match"):
        prune(BLOCKS["densenet"](0), plan=plan)
    with pytest.raises(UsageError, match="not a graphprune plan"):
        Plan.from_json("[1, 2]")


def test_bn_scale_criterion_keeps_largest_gamma():
    """Folded BN |gamma| decides: shrink one BN's gamma on some channels; they must go first."""
    model = BLOCKS["resnet_basic"](0)
    bn = next(n for n in model.graph.node if n.name == "layer1.0.bn1")
    inits = {t.name: t for t in model.graph.initializer}
    scale = onnx.numpy_helper.to_array(inits[bn.input[1]]).copy()
    scale[:4] = 1e-4  # the four weakest by BN scale, whatever their filters' magnitude
    inits[bn.input[1]].CopyFrom(onnx.numpy_helper.from_array(scale, bn.input[1]))
    result = prune(model, ratio=0.2, criterion="bn_scale", round_to=1, verify=False)
    group = next(g for g in result.plan.groups if f"{bn.output[0]}:1" in g.members)
    assert len(group.keep) == group.size - 4
    assert not set(range(4)) & set(group.keep)


def test_unknown_criterion_and_bad_ratio():
    with pytest.raises(UsageError, match="criterion"):
        prune(BLOCKS["resnet_basic"](0), criterion="nope")
    with pytest.raises(UsageError, match="ratio"):
        prune(BLOCKS["resnet_basic"](0), ratio=1.0)


def test_public_api_is_small():
    assert set(graphprune.__all__) >= {"prune", "write", "analyze_model", "Plan", "PruneResult"}
    assert graphprune.__version__


def test_bn_scale_says_where_it_fell_back_to_l2():
    """Groups with no BatchNorm (a Gemm head) are scored by L2, and the report says so."""
    with_bn = prune(BLOCKS["resnet_basic"](0), ratio=0.4, criterion="bn_scale", verify=False)
    head = prune(BLOCKS["flatten_gemm"](0), ratio=0.4, criterion="bn_scale", verify=False)
    graph, analysis = graphprune.analyze_model(BLOCKS["flatten_gemm"](0))
    without_bn = sum(not any(t in graph.bn_scales for t, _ in g.spaces)
                     for g in analysis.prunable)
    assert with_bn.report.criterion_note == ""
    assert head.report.criterion == "bn_scale" and without_bn >= 1
    assert head.report.criterion_note.startswith(f"l2 for {without_bn} group")
    assert f"l2 for {without_bn} group" in head.report.summary()


def test_summary_names_the_clean_up_passes_that_changed_the_graph():
    result = prune(BLOCKS["resnet_basic"](0), ratio=0.5, verify=False)
    assert "fold_batchnorm" in result.report.passes
    line = next(x for x in result.report.summary().splitlines() if x.startswith("clean-up: "))
    assert line.split(": ", 1)[1].split(", ") == result.report.passes


def _thresholded_detector(threshold: float, scores_output: bool = False) -> onnx.ModelProto:
    """Conv -> Relu -> Conv scores, then the positions above `threshold` as [k, 4] detections:
    a detector's output whose size depends on the data."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "W2"),
             numpy_helper.from_array(np.array(threshold, np.float32), "threshold")]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "W2"], ["scores"]),
             helper.make_node("Greater", ["scores", "threshold"], ["hit"]),
             helper.make_node("NonZero", ["hit"], ["where"]),
             helper.make_node("Transpose", ["where"], ["detections"], perm=[1, 0])]
    outputs = [helper.make_tensor_value_info("detections", onnx.TensorProto.INT64, ["k", 4])]
    if scores_output:
        outputs.append(helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT,
                                                     [1, 4, 8, 8]))
    return helper.make_model(helper.make_graph(
        nodes, "detector",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        outputs, inits), opset_imports=[helper.make_opsetid("", 17)])


def test_empty_outputs_are_reported_as_not_compared():
    """A detector finds nothing in random noise: its outputs are empty, and "max abs diff 0,
    cosine 1" would claim a check that never happened."""
    report = prune(_thresholded_detector(1e6), ratio=0.5, round_to=1).report
    assert report.groups_pruned == 1 and report.fidelity.elements == 0
    assert "not compared: every output was empty" in report.summary()
    assert "cosine" not in report.summary()


def test_detections_that_change_in_number_are_counted_not_refused():
    """Pruning changes the scores, so a data-sized output (detections above a threshold) may
    come out with another count: that is no broken model; it is reported as not compared,
    and the outputs of fixed size are still compared."""
    from graphprune.verify import reference_run, run, session

    model = _thresholded_detector(0.0, scores_output=True)
    result = prune(model, ratio=0.5, round_to=1)
    feeds, (before, _) = reference_run(session(model))
    after = run(result.model, feeds)[0]
    assert before.shape[0] != after.shape[0]  # the case this test is about
    fidelity = result.report.fidelity
    assert fidelity.resized == 1 and fidelity.elements == 4 * 8 * 8
    assert fidelity.top1_agreement is None  # neither output is [batch, classes]
    summary = result.report.summary()
    assert "cosine" in summary and "1 output(s) whose size depends on the data" in summary


def test_report_separates_clean_up_from_pruning():
    # Conv (no bias) -> BatchNormalization folds into Conv with a bias: 4 C parameters become C
    model = BLOCKS["resnet_basic"](0)
    weights = {t.name: t for t in model.graph.initializer}
    bn_channels = sum(weights[n.input[1]].dims[0] for n in model.graph.node
                      if n.op_type == "BatchNormalization")
    report = prune(model, ratio=0.4, verify=False).report
    assert report.params_cleaned == report.params_before - 3 * bn_channels
    assert report.pruning_param_ratio == report.params_after / report.params_cleaned
    assert report.pruning_param_ratio > report.param_ratio
    assert f"clean-up alone -> {report.params_cleaned:,}" in report.summary()
    assert report.to_dict()["pruning_param_ratio"] == report.pruning_param_ratio

    # a model already cleaned up: the summary has nothing to split
    again = prune(prune(model, ratio=0.4, verify=False).model, ratio=0.4, verify=False).report
    assert again.params_cleaned == again.params_before
    assert again.pruning_param_ratio == again.param_ratio
    assert "clean-up alone" not in again.summary()


def test_top1_agreement_only_for_batch_by_classes_outputs():
    from graphprune.verify import compare

    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    swapped = logits[:, ::-1].copy()
    assert compare([logits], [swapped]).top1_agreement == 0.5
    assert compare([logits], [swapped], classifier=[False]).top1_agreement is None
    # a classifier block: output [1, 10] declared like the input's first dim, so top-1 counts;
    # the detector's [k, 4] boxes (checked above) do not
    assert prune(BLOCKS["resnet_basic"](0), ratio=0.4).report.fidelity.top1_agreement \
        is not None
