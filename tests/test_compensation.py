"""Compensation on tiny graphs where the exact answer is known: a removed channel that is a
linear combination of kept ones is re-fitted away; a constant channel goes into the bias."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import prune
from graphprune.api import analyze_model, canonicalize, load_graph
from graphprune.analysis import analyze
from graphprune.calibration import CalibrationSet, collect_stats, data_free_stats
from graphprune.compensation import compensate
from graphprune.policy import GroupPlan, Plan
from graphprune.surgery import apply_plan
from graphprune.verify import session
from models.blocks import BLOCKS


def _onnx(nodes, inits, in_shape, out_shape):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()]
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model, x):
    return session(model).run(None, {"input": x})[0]


def _plan_removing(model, removed):
    graph, analysis = analyze_model(model)
    (group,) = analysis.prunable
    keep = [u for u in range(group.units) if u not in removed]
    return Plan("manual", 0.0, 1, [GroupPlan(group.key, group.units, keep)])


def _compensated(model, plan, calib, damp):
    """load → canonicalize → analyze → stats → compensate → apply, by hand (to set damp)."""
    _, graph = load_graph(model)
    canonicalize(graph)
    analysis = analyze(graph)
    stats = (collect_stats(graph, analysis, CalibrationSet(calib)) if calib is not None
             else data_free_stats(graph, analysis, model))
    done = compensate(graph, analysis, plan, stats, damp=damp)
    apply_plan(graph, analysis, plan)
    graph.reindex()
    return graph.to_model(), done


def _linear_combination_model():
    """Conv1 1x1 (3 -> 4, linear) whose channel 3 = 0.5 c0 - 2 c1 + c2 -> Conv2 3x3 pad 1."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1, (4, 3, 1, 1))
    b1 = rng.normal(0, 0.5, 4)
    coef = np.array([0.5, -2.0, 1.0])
    w1[3] = np.tensordot(coef, w1[:3], axes=1)
    b1[3] = coef @ b1[:3]
    w2 = rng.normal(0, 0.5, (5, 4, 3, 3))
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1",
                              kernel_shape=[1, 1]),
             helper.make_node("Conv", ["c1", "w2"], ["output"], name="conv2",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    return _onnx(nodes, {"w1": w1, "b1": b1, "w2": w2}, ["N", 3, 6, 6], ["N", 5, 6, 6])


def test_least_squares_undoes_removing_a_linear_combination():
    model = _linear_combination_model()
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    test = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    plan = _plan_removing(model, {3})
    pruned, done = _compensated(model, plan, calib, damp=0.0)
    assert [(d.node, d.removed, d.refit) for d in done] == [("conv2", 1, True)]
    assert done[0].bias == "created"  # conv2 had no bias: the (zero) shift still makes one
    np.testing.assert_allclose(_run(pruned, test), _run(model, test), atol=1e-4)
    # without compensation the same plan moves the output a lot
    plain = prune(model, plan=plan, verify=False).model
    assert np.abs(_run(plain, test) - _run(model, test)).max() > 0.1


def test_default_damping_stays_close():
    model = _linear_combination_model()
    rng = np.random.default_rng(2)
    calib = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    test = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    result = prune(model, plan=_plan_removing(model, {3}), calib=calib, compensate=True)
    ref = _run(model, test)
    err = np.abs(_run(result.model, test) - ref).max() / np.abs(ref).max()
    assert err < 0.02
    assert result.report.compensated[0]["refit"]
    assert "least squares" in result.report.summary()


def _constant_channel_conv(with_bias: bool):
    """Conv1 3x3 -> BN (channel 2: gamma 0, beta 0.7: a constant) -> Relu -> Conv2 1x1."""
    rng = np.random.default_rng(3)
    gamma = rng.uniform(0.5, 1.5, 4)
    beta = rng.uniform(-0.3, 0.3, 4)
    gamma[2], beta[2] = 0.0, 0.7
    inits = {"w1": rng.normal(0, 0.5, (4, 3, 3, 3)), "g": gamma, "b": beta,
             "m": rng.uniform(-.1, .1, 4), "v": rng.uniform(.5, 1.5, 4),
             "w2": rng.normal(0, 0.5, (5, 4, 1, 1))}
    conv2_in = ["r1", "w2"]
    if with_bias:
        inits["b2"] = rng.normal(0, 0.1, 5)
        conv2_in.append("b2")
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["bn1"],
                              name="bn1"),
             helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
             helper.make_node("Conv", conv2_in, ["output"], name="conv2", kernel_shape=[1, 1])]
    return _onnx(nodes, inits, ["N", 3, 6, 6], ["N", 5, 6, 6])


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("calibrated", [False, True])
def test_bias_compensation_restores_a_constant_channel(calibrated, with_bias):
    model = _constant_channel_conv(with_bias)
    rng = np.random.default_rng(4)
    test = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    calib = rng.standard_normal((8, 3, 6, 6)).astype(np.float32) if calibrated else None
    result = prune(model, plan=_plan_removing(model, {2}), calib=calib, compensate=True)
    np.testing.assert_allclose(_run(result.model, test), _run(model, test), atol=1e-5)
    (entry,) = result.report.compensated
    assert entry["bias"] == ("updated" if with_bias else "created")
    assert entry["refit"] == calibrated
    assert ("folded BatchNorm" in result.report.compensation) != calibrated
    plain = prune(model, plan=_plan_removing(model, {2}), verify=False).model
    assert np.abs(_run(plain, test) - _run(model, test)).max() > 0.05


def _constant_channel_mlp(op: str):
    """x -> MatMul/Gemm (6 -> 4, unit 2 constant 0.5 after Relu) -> Relu -> MatMul/Gemm."""
    rng = np.random.default_rng(5)
    w1, b1, w2 = rng.normal(0, 1, (6, 4)), rng.normal(0, 0.3, 4), rng.normal(0, 1, (4, 3))
    w1[:, 2], b1[2] = 0.0, 0.5
    inits = {"w1": w1, "b1": b1, "w2": w2}
    if op == "MatMul":
        nodes = [helper.make_node("MatMul", ["input", "w1"], ["m1"], name="mm1"),
                 helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
                 helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
                 helper.make_node("MatMul", ["r1", "w2"], ["output"], name="mm2")]
    else:
        nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["a1"], name="gemm1"),
                 helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
                 helper.make_node("Gemm", ["r1", "w2"], ["output"], name="gemm2", alpha=1.5)]
    return _onnx(nodes, inits, ["N", 6], ["N", 3])


@pytest.mark.parametrize("op,how", [("MatMul", "add inserted"), ("Gemm", "created")])
def test_bias_created_for_matmul_and_gemm(op, how):
    model = _constant_channel_mlp(op)
    rng = np.random.default_rng(6)
    calib, test = (rng.standard_normal((n, 6)).astype(np.float32) for n in (32, 5))
    result = prune(model, plan=_plan_removing(model, {2}), calib=calib, compensate=True)
    np.testing.assert_allclose(_run(result.model, test), _run(model, test), atol=1e-5)
    assert result.report.compensated[0]["bias"] == how
    onnx.checker.check_model(result.model)


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("calibrated", [False, True])
def test_compensated_blocks_prune_and_verify(name, calibrated):
    """Created biases follow their layer's own pruning; grouped convs are left alone."""
    model = BLOCKS[name](0)
    graph, _ = analyze_model(model)
    from graphprune.calibration import model_inputs

    calib = None
    if calibrated:
        rng = np.random.default_rng(7)
        calib = {s.name: rng.standard_normal([4] + [d or 1 for d in s.shape[1:]]).astype(
            s.dtype) for s in model_inputs(graph)}
    result = prune(model, ratio=0.4, calib=calib, compensate=True)
    assert result.report.compensation
    onnx.checker.check_model(result.model)
    for entry in result.report.compensated:
        assert entry["removed"] > 0


def test_nothing_to_compensate_without_statistics():
    """A model without BatchNorm and without --calib: data-free compensation finds no means."""
    model = _linear_combination_model()
    result = prune(model, plan=_plan_removing(model, {3}), compensate=True)
    assert result.report.compensated == []
    assert "nothing compensated" in result.report.summary()
    assert "pass --calib" in result.report.summary()
