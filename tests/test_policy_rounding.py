"""Rounding of kept channel counts: `--round-to N` and `--round-to auto` (the default).

Behaviour only (no timing): which counts the plans keep for concat segments, grouped convs and
one-block groups, how `auto` resolves and is recorded, and that the results stay exact.
"""
import subprocess
import sys

import numpy as np
import onnx
import pytest

import graphprune
from graphprune import Plan, UsageError, prune
from graphprune.api import analyze_model
from graphprune.policy import (Rounding, kept_count, nchwc_block, parse_round_to)
from graphprune.verify import random_inputs, run
from models.blocks import BLOCKS, _Graph
from oracle_testlib import masked_reference


def _conv_channels(model: onnx.ModelProto) -> dict[str, tuple[int, int, int]]:
    """Conv name -> (output channels, input channels per group, group)."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            w = dims[node.input[1]]
            out[node.name] = (w[0], w[1], group)
    return out


def _concat_net(seed=0):
    """Two branches of 32 and 48 channels meet in a Concat: one group, two segments."""
    g = _Graph(seed)
    x = g.cba("input", 8, 24, 3, "stem")
    a = g.cba(x, 24, 32, 1, "a")
    b = g.cba(x, 24, 48, 3, "b")
    y = g.op("Concat", [a, b], "cat", axis=1)
    y = g.cba(y, 80, 32, 1, "mix")
    g.head(y, 32)
    return g.build("concat_net", [1, 8, 8, 8], ["output"])


def _grouped_net(width: int, seed=0):
    """1x1 -> 3x3 grouped (4 groups of width/4) -> 1x1, as in ResNeXt/RegNet."""
    g = _Graph(seed)
    x = g.cba("input", 8, 32, 3, "stem")
    y = g.cba(x, 32, width, 1, "b", conv="conv1", bn="bn1", act_name="relu1")
    y = g.cba(y, width, width, 3, "b", 1, 4, conv="conv2", bn="bn2", act_name="relu2")
    y = g.cba(y, width, 32, 1, "b", conv="conv3", bn="bn3", act_name="relu3")
    g.head(y, 32)
    return g.build("grouped_net", [1, 8, 8, 8], ["output"])


def _one_block_net(seed=0):
    """A 16-channel stem feeding a wider layer: a group of exactly one 16-channel block."""
    g = _Graph(seed)
    x = g.cba("input", 3, 16, 3, "stem")
    y = g.cba(x, 16, 64, 1, "expand")
    g.head(y, 64)
    return g.build("one_block", [1, 3, 8, 8], ["output"])


def _assert_exact(model, result):
    """The pruned model equals the original with the removed channels' readers zeroed."""
    feeds = random_inputs(model, seed=1)
    for want, have in zip(run(masked_reference(model, result.plan), feeds),
                          run(result.model, feeds)):
        assert have.shape == want.shape
        assert float(np.abs(want - have).max()) <= 1e-4 * max(1.0, float(np.abs(want).max()))


# --- parsing and resolution -------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("auto", "auto"), ("AUTO", "auto"), ("auto:8", "auto:8"), (8, 8), ("16", 16), (1, 1)])
def test_parse_round_to_accepts(value, expected):
    assert parse_round_to(value) == expected


@pytest.mark.parametrize("value", [0, "0", -3, 2.5, True, None, "x", "auto:", "auto:0", "8x"])
def test_parse_round_to_rejects(value):
    with pytest.raises(UsageError, match="--round-to"):
        parse_round_to(value)


def test_auto_is_the_default_and_resolves_to_this_cpus_nchwc_block():
    assert graphprune.DEFAULT_ROUND_TO == "auto"
    assert nchwc_block() in (8, 16)
    assert Rounding.of("auto") == Rounding(nchwc_block(), kernel=True)
    assert Rounding.of("auto:16") == Rounding(16, kernel=True)
    assert Rounding.of(8) == Rounding(8, kernel=False)
    with open("/proc/cpuinfo") as f:
        flags = next((line.split() for line in f if line.startswith("flags")), [])
    if "avx512f" in flags:
        assert nchwc_block() == 16
    elif "avx2" in flags:
        assert nchwc_block() == 8


def test_kept_count_floor_keeps_a_one_block_group_whole():
    assert kept_count(16, 0.4, 16) == 10                # not larger than round_to: unrounded
    assert kept_count(16, 0.4, 16, floor=True) == 16    # auto: one block stays one block
    assert kept_count(32, 0.4, 16, floor=True) == 16
    assert kept_count(12, 0.4, 16, floor=True) == 8     # smaller than a block: unrounded


# --- what the plans keep ----------------------------------------------------------------------

@pytest.mark.parametrize("round_to", [8, 16, "auto:16", "auto:8"])
def test_every_concat_input_is_rounded(round_to):
    model = _concat_net()
    result = prune(model, ratio=0.4, round_to=round_to, verify=False)
    step = Rounding.of(round_to).step
    convs = _conv_channels(result.model)
    a, b = convs["a.conv"][0], convs["b.conv"][0]
    assert a % step == 0 and b % step == 0, (a, b)
    assert convs["mix.conv"][1] == a + b
    assert abs((a + b) - 0.6 * 80) <= step                 # the group's budget, within a step
    _assert_exact(model, result)


def test_round_to_one_leaves_concat_inputs_unrounded():
    result = prune(_concat_net(), ratio=0.4, round_to=1, verify=False)
    convs = _conv_channels(result.model)
    assert convs["a.conv"][0] + convs["b.conv"][0] == 80 - int(80 * 0.4)


@pytest.mark.parametrize("width, kept", [(128, (96, 32, 3)), (64, (48, 16, 3))])
def test_grouped_convs_lose_whole_groups(width, kept):
    """4 conv groups of 32 or of 16 (RegNetX's width): 40 % removes one whole group, so each
    kept group keeps its width (ONNX Runtime's blocked layout needs 16 per group) and the
    grouped conv's work falls with its group count."""
    model = _grouped_net(width)
    for round_to in ("auto:16", 8, 1):
        result = prune(model, ratio=0.4, round_to=round_to, verify=False)
        convs = _conv_channels(result.model)
        assert convs["b.conv2"] == kept
        assert convs["b.conv1"][0] == kept[0] and convs["b.conv3"][1] == kept[0]
        _assert_exact(model, result)


def test_whole_groups_meeting_an_equal_count_grouped_conv_fall_back_to_equal_counts():
    """AlexNet's conv4 (384 -> 384, 2 groups) feeds conv5 (384 -> 256, 2 groups): conv4 could
    lose a whole group, but conv5 needs the same count kept in each of its input groups. The
    analysis sees the conflict and keeps equal counts per group in both."""
    g = _Graph(0)
    x = g.cba("input", 8, 32, 3, "stem")
    y = g.cba(x, 32, 64, 1, "p", conv="conv", bn="bn", act_name="relu")
    y = g.cba(y, 64, 64, 3, "q", 1, 2, conv="conv", bn="bn", act_name="relu")
    y = g.cba(y, 64, 32, 3, "r", 1, 2, conv="conv", bn="bn", act_name="relu")
    g.head(y, 32)
    model = g.build("alexnet_like", [1, 8, 8, 8], ["output"])
    _, analysis = analyze_model(model)
    assert not [grp.frozen for grp in analysis.groups if grp.frozen and "conflict" in grp.frozen]
    result = prune(model, ratio=0.4, round_to=1, verify=False)
    convs = _conv_channels(result.model)
    assert convs["q.conv"][2] == 2 and convs["q.conv"][0] < 64  # both groups kept, shrunk
    _assert_exact(model, result)


def test_auto_keeps_a_one_block_group_whole():
    model = _one_block_net()
    auto = _conv_channels(prune(model, ratio=0.4, round_to="auto:16", verify=False).model)
    explicit = _conv_channels(prune(model, ratio=0.4, round_to=16, verify=False).model)
    assert auto["stem.conv"][0] == 16 and auto["expand.conv"][0] == 32
    assert explicit["stem.conv"][0] == 10


@pytest.mark.parametrize("name", ["densenet", "grouped_conv", "shufflenet_v2", "yolo_csp"])
def test_auto_plans_are_exact_on_the_synthetic_blocks(name):
    model = BLOCKS[name](0)
    result = prune(model, ratio=0.4, round_to="auto:16", verify=False)
    assert result.report.groups_pruned > 0
    _assert_exact(model, result)


# --- recording and replay ---------------------------------------------------------------------

def test_plan_records_the_resolved_block_and_replays():
    model = _concat_net()
    result = prune(model, ratio=0.4, verify=False)
    assert result.plan.round_to == f"auto:{nchwc_block()}"
    plan = Plan.from_json(result.plan.to_json())
    assert plan.round_to == result.plan.round_to
    replay = prune(model, plan=plan, verify=False)
    assert replay.model.SerializeToString() == result.model.SerializeToString()
    again = prune(model, ratio=0.4, round_to=result.plan.round_to, verify=False)
    assert [g.keep for g in again.plan.groups] == [g.keep for g in result.plan.groups]


def test_cli_takes_auto_and_rejects_junk(tmp_path):
    src = tmp_path / "net.onnx"
    onnx.save(_concat_net(), src)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "graphprune.cli", str(src), "-q",
                               "-o", str(tmp_path / "out.onnx"), *args],
                              capture_output=True, text=True, timeout=300)

    bad = cli("--round-to", "fast")
    assert bad.returncode == 2 and "--round-to" in bad.stderr and "Traceback" not in bad.stderr
    ok = cli("--round-to", "auto:16", "--save-plan", str(tmp_path / "plan.json"))
    assert ok.returncode == 0, ok.stderr
    assert Plan.from_json((tmp_path / "plan.json").read_text()).round_to == "auto:16"
