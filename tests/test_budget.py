"""Global budgets: model-wide targets are met and groups are capped."""
import pytest

from graphprune import prune
from graphprune.budget import Budget
from models.blocks import BLOCKS


@pytest.mark.parametrize("target", ["macs", "params"])
@pytest.mark.parametrize("name", ["resnet_bottleneck", "mobilenet_v2", "densenet"])
def test_target_is_met(name, target):
    result = prune(BLOCKS[name](0), budget=Budget(target, 0.6), round_to=1)
    rep = result.report
    achieved = rep.mac_ratio if target == "macs" else rep.param_ratio
    assert 0.5 <= achieved <= 0.62, rep.summary()


def test_cap_limits_every_group():
    result = prune(BLOCKS["resnet_bottleneck"](0), budget=Budget("channels", 0.3, 0.5),
                   round_to=1, verify=False)
    for g in result.plan.groups:
        assert len(g.keep) >= g.size - int(g.size * 0.5)


def test_global_ranking_takes_dead_channels_first():
    """Zero 70 % of one layer's channels (filters and readers): a 20 % global budget removes
    them all, while a per-group ratio would take 20 % there too."""
    from onnx import numpy_helper

    model = BLOCKS["resnet_bottleneck"](0)
    inits = {t.name: t for t in model.graph.initializer}
    conv1, conv2 = (next(n for n in model.graph.node if n.name == f"layer1.0.conv{i}")
                    for i in (1, 2))
    w1, w2 = (numpy_helper.to_array(inits[c.input[1]]).copy() for c in (conv1, conv2))
    dead = int(0.7 * w1.shape[0])
    w1[:dead] = 0
    w2[:, :dead] = 0
    for conv, w in ((conv1, w1), (conv2, w2)):
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(w, conv.input[1]))
    result = prune(model, budget=Budget("channels", 0.8, 0.9), round_to=1, verify=False)
    group = next(g for g in result.plan.groups if "layer1.0.bn1:1" in g.members)
    assert not set(range(dead)) & set(group.keep)
