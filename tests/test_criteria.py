"""Importance criteria on tiny graphs whose right answer is known by construction, and the
calibration input path (arrays, images, bad input)."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import UsageError, prune
from graphprune.api import analyze_model
from graphprune.calibration import CalibrationSet, collect_stats, data_free_stats, \
    _gaussian_moments, model_inputs
from graphprune.scoring import CRITERIA, FPGM, lamp_scores, make_criterion

DATA_FREE = ("l1", "l2", "bn_scale", "lamp", "fpgm", "obs")


def _model(w1, w2, *, bn=None, b1=None, x_channels=None, size=8, relu=True):
    """input [N, C, size, size] -> Conv1 3x3 (-> BN) (-> Relu) -> Conv2 3x3 -> output."""
    c_mid, c_in = w1.shape[:2]
    inits = [numpy_helper.from_array(w1.astype(np.float32), "w1"),
             numpy_helper.from_array(w2.astype(np.float32), "w2")]
    conv1_in = ["input", "w1"]
    if b1 is not None:
        inits.append(numpy_helper.from_array(b1.astype(np.float32), "b1"))
        conv1_in.append("b1")
    pads = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Conv", conv1_in, ["c1"], name="conv1", **pads)]
    t = "c1"
    if bn is not None:
        gamma, beta, mean, var = bn
        for n, v in zip(("g", "b", "m", "v"), (gamma, beta, mean, var)):
            inits.append(numpy_helper.from_array(np.asarray(v, np.float32), f"bn.{n}"))
        nodes.append(helper.make_node("BatchNormalization", [t, "bn.g", "bn.b", "bn.m", "bn.v"],
                                      ["bn1"], name="bn1", epsilon=1e-5))
        t = "bn1"
    if relu:
        nodes.append(helper.make_node("Relu", [t], ["r1"], name="relu1"))
        t = "r1"
    nodes.append(helper.make_node("Conv", [t, "w2"], ["output"], name="conv2", **pads))
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c_in, size, size])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", w2.shape[0], size, size])
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _removed(result) -> set[int]:
    (gp,) = result.plan.groups
    return set(range(gp.size)) - set(gp.keep)


def _zero_channel_model(bn: bool):
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.3, (4, 8, 3, 3))
    w1[5] = 0.0
    w2[:, 5] = 0.0
    if not bn:
        return _model(w1, w2, b1=np.zeros(8))
    gamma = rng.uniform(0.5, 1.5, 8)
    beta = rng.uniform(-0.2, 0.2, 8)
    gamma[5] = beta[5] = 0.0
    return _model(w1, w2, bn=(gamma, beta, rng.uniform(-.1, .1, 8), rng.uniform(.5, 1.5, 8)))


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("criterion", DATA_FREE)
def test_zero_channel_goes_first_data_free(criterion, bn):
    result = prune(_zero_channel_model(bn), ratio=1 / 8, round_to=1, criterion=criterion)
    assert _removed(result) == {5}
    assert result.report.criterion == criterion


@pytest.mark.parametrize("criterion", ["obs", "activation", "l2"])
def test_zero_channel_goes_first_with_calibration(criterion):
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    result = prune(_zero_channel_model(True), ratio=1 / 8, round_to=1, criterion=criterion,
                   calib=x)
    assert _removed(result) == {5}
    assert result.report.calibration_samples == 16
    assert "16 samples" in result.report.summary()


def test_random_is_not_magnitude():
    removed = {min(_removed(prune(_zero_channel_model(False), ratio=1 / 8, round_to=1,
                                  criterion="random", seed=s))) for s in range(6)}
    assert len(removed) > 1


def test_fpgm_removes_one_of_two_identical_filters():
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((27, 27)))
    w1 = q[:8].reshape(8, 3, 3, 3) * 2.0  # equal norms, all pairwise distances equal...
    w1[6] = w1[2]  # ...except one duplicated filter
    w2 = rng.normal(0, 0.3, (4, 8, 3, 3))
    one = prune(_model(w1, w2, b1=np.zeros(8)), ratio=1 / 8, round_to=1, criterion="fpgm")
    assert _removed(one) in ({2}, {6})
    two = prune(_model(w1, w2, b1=np.zeros(8)), ratio=2 / 8, round_to=1, criterion="fpgm")
    assert len(_removed(two) & {2, 6}) == 1  # the copy goes, the original stays


def test_fpgm_duplicate_survives_random_projection():
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 64, 3, 3))  # 576 values per filter: projected to 256
    w1 /= np.linalg.norm(w1.reshape(8, -1), axis=1)[:, None, None, None]
    w1[7] = w1[1]
    w2 = rng.normal(0, 0.3, (4, 8, 3, 3))
    model = _model(w1, w2, b1=np.zeros(8))
    graph, analysis = analyze_model(model)
    (group,) = analysis.prunable
    assert FPGM().features(group, graph).shape == (8, 256)
    result = prune(model, ratio=1 / 8, round_to=1, criterion="fpgm")
    assert _removed(result) in ({1}, {7})


def test_activation_removes_dead_channel_with_large_weights():
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.3, (4, 8, 3, 3))
    w1[3] = -5.0 * np.abs(rng.normal(1, 0.1, (3, 3, 3)))  # large, and negative on x >= 0
    w2[:, 3] = 3.0
    model = _model(w1, w2, b1=np.zeros(8))
    x = rng.uniform(0, 1, (32, 3, 8, 8)).astype(np.float32)  # channel 3 is always relu(<0)
    assert 3 not in _removed(prune(model, ratio=1 / 8, round_to=1, criterion="l2"))
    assert _removed(prune(model, ratio=1 / 8, round_to=1, criterion="activation",
                          calib=x)) == {3}


def test_lamp_is_l2_ranking_on_a_common_scale():
    s = np.array([4.0, 1.0, 9.0, 1.0, 0.0])
    lamp = lamp_scores(s)
    assert lamp[2] == pytest.approx(1.0)
    assert lamp[0] == pytest.approx(4 / 13) and lamp[1] == lamp[3] == pytest.approx(1 / 15)
    assert lamp[4] == 0.0
    assert list(np.argsort(lamp, kind="stable")) == list(np.argsort(s, kind="stable"))
    model = _zero_channel_model(False)
    a = prune(model, ratio=0.5, round_to=1, criterion="lamp").plan.groups[0].keep
    b = prune(model, ratio=0.5, round_to=1, criterion="l2").plan.groups[0].keep
    assert a == b


def test_every_criterion_has_the_same_interface():
    graph, analysis = analyze_model(_zero_channel_model(True))
    x = np.random.default_rng(5).standard_normal((8, 3, 8, 8)).astype(np.float32)
    stats = collect_stats(graph, analysis, CalibrationSet(x))
    for name in CRITERIA:
        crit = make_criterion(name, 0, stats=stats)
        for group in analysis.prunable:
            scores = crit.score(group, graph)
            assert scores.shape == (group.units,) and np.isfinite(scores).all(), name
            assert crit.name == name


def test_activation_without_calibration_is_a_usage_error():
    with pytest.raises(UsageError, match="--calib"):
        prune(_zero_channel_model(False), criterion="activation")


def test_data_free_moments_match_closed_form():
    from math import erf, exp, pi, sqrt

    mu, sigma = np.array([0.3, -0.5, 0.0, 0.7]), np.array([1.0, 0.4, 2.0, 0.0])
    mean, sq = _gaussian_moments(mu, sigma, lambda z: np.maximum(z, 0))
    for m, s, got, got_sq in zip(mu, sigma, mean, sq):
        if s == 0:
            assert got == pytest.approx(max(m, 0)) and got_sq == pytest.approx(max(m, 0) ** 2)
            continue
        a = m / s
        cdf, pdf = 0.5 * (1 + erf(a / sqrt(2))), exp(-a * a / 2) / sqrt(2 * pi)
        assert got == pytest.approx(m * cdf + s * pdf, rel=1e-4)
        assert got_sq == pytest.approx((m * m + s * s) * cdf + m * s * pdf, rel=1e-4)


def test_data_free_stats_follow_bn_through_relu():
    graph, analysis = analyze_model(_zero_channel_model(True))
    stats = data_free_stats(graph, analysis, _zero_channel_model(True))
    (ts,) = stats.tensors.values()
    assert ts.mean[5] == 0.0 and ts.second_moment[5] == 0.0
    assert (ts.mean[np.arange(8) != 5] > 0).all()


def test_collected_stats_are_exact():
    model = _zero_channel_model(False)
    graph, analysis = analyze_model(model)
    x = np.random.default_rng(6).standard_normal((20, 3, 8, 8)).astype(np.float32)
    stats = collect_stats(graph, analysis, CalibrationSet(x, batch_size=6))  # 6+6+6+2
    (name, ts), = stats.tensors.items()
    from graphprune.verify import session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    act = session(m).run([name], {"input": x})[0].astype(np.float64)
    rows = act.transpose(0, 2, 3, 1).reshape(-1, 8)
    assert stats.samples == 20 and ts.count == rows.shape[0]
    np.testing.assert_allclose(ts.mean, rows.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ts.gram, rows.T @ rows, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- calibration files
def test_calibration_folder_of_npy_npz_and_images(tmp_path):
    from PIL import Image

    model = _zero_channel_model(False)
    graph, _ = analyze_model(model)
    specs = model_inputs(graph)
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(7)
    np.save(folder / "a.npy", rng.standard_normal((5, 3, 8, 8)).astype(np.float32))
    np.save(folder / "b.npy", rng.standard_normal((3, 8, 8)).astype(np.float32))  # one sample
    np.savez(folder / "c.npz", input=rng.standard_normal((4, 3, 8, 8)))
    Image.fromarray(np.full((12, 10, 3), 128, np.uint8)).save(folder / "d.png")
    (folder / "notes.txt").write_text("ignored")
    cal = CalibrationSet(folder, preprocess="unit", batch_size=4)
    batches = [b for b, _ in cal.batches(specs)]
    assert sum(len(b["input"]) for b in batches) == 11
    assert all(b["input"].dtype == np.float32 and b["input"].shape[1:] == (3, 8, 8)
               for b in batches)
    np.testing.assert_allclose(batches[-1]["input"][-1], 128 / 255, rtol=1e-6)
    imagenet = next(CalibrationSet(folder / "d.png").batches(specs))[0]["input"][0]
    np.testing.assert_allclose(imagenet[:, 0, 0], (128 / 255 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-5)
    raw = next(CalibrationSet(folder / "d.png", preprocess="raw").batches(specs))[0]["input"]
    assert raw.max() == pytest.approx(128)
    result = prune(model, ratio=0.25, criterion="activation",
                   calib=CalibrationSet(folder, preprocess="unit"))
    assert result.report.calibration_samples == 11


def _cli(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "graphprune.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def calib_dir(tmp_path):
    onnx.save(_zero_channel_model(False), tmp_path / "net.onnx")
    rng = np.random.default_rng(8)
    for name in ("good", "wrongshape", "corrupt", "empty", "badkey", "imgs"):
        (tmp_path / name).mkdir()
    np.save(tmp_path / "good" / "x.npy", rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    np.save(tmp_path / "wrongshape" / "x.npy", np.zeros((4, 5, 8, 8), np.float32))
    (tmp_path / "corrupt" / "x.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "empty" / "readme.txt").write_text("nothing here")
    np.savez(tmp_path / "badkey" / "x.npz", a=np.zeros((2, 3, 8, 8)), b=np.zeros((2, 3, 8, 8)))
    (tmp_path / "imgs" / "x.png").write_bytes(b"not a png at all")
    return tmp_path


BAD_CALIB = {
    "missing": (["--calib", "nope"], "nope"),
    "wrong shape": (["--calib", "wrongshape"], "x.npy"),
    "corrupt npy": (["--calib", "corrupt"], "x.npy"),
    "no usable files": (["--calib", "empty"], "empty"),
    "npz without the input": (["--calib", "badkey"], "x.npz"),
    "unreadable image": (["--calib", "imgs"], "x.png"),
    "activation without calib": (["--criterion", "activation"], "--calib"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALIB))
def test_bad_calibration_input_fails_cleanly(case, calib_dir):
    extra, needle = BAD_CALIB[case]
    code, out, err = _cli("net.onnx", *extra, "-o", "out.onnx", cwd=calib_dir)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err
    assert not (calib_dir / "out.onnx").exists()


def test_cli_calibrated_compensated_prune(calib_dir):
    code, out, err = _cli("net.onnx", "--criterion", "activation", "--calib", "good",
                          "--compensate", "--ratio", "0.25", "-o", "out.onnx", cwd=calib_dir)
    assert code == 0, err
    assert "criterion: activation, calibration: 4 samples" in out
    assert "compensation (least squares + bias" in out
    assert (calib_dir / "out.onnx").exists()
