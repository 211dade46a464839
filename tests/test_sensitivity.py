"""Sensitivity sweep: each figure is the error of really pruning that group alone."""
import numpy as np
import pytest

from graphprune import UsageError, prune
from graphprune.api import sensitivity
from graphprune.budget import Budget
from graphprune.policy import Plan
from graphprune.verify import random_inputs, run
from models.blocks import BLOCKS


def test_curve_matches_real_pruning_of_one_group():
    model = BLOCKS["mobilenet_v2"](0)
    sens = sensitivity(model, (0.25, 0.5))
    full = prune(model, ratio=0.5, round_to=1, verify=False)
    feeds = random_inputs(model, seed=0)
    reference = run(model, feeds)
    for gp in full.plan.groups[:3]:
        alone = Plan(full.plan.criterion, 0.5, 1, [gp])
        got = run(prune(model, plan=alone, verify=False).model, feeds)
        err = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(reference, got)) /
                      sum(np.sum(a ** 2) for a in reference))
        assert sens.errors[gp.key][1] == pytest.approx(err, rel=1e-3, abs=1e-5)


def test_allocation_meets_target():
    model = BLOCKS["resnet_bottleneck"](0)
    sens = sensitivity(model, (0.1, 0.2, 0.3, 0.5, 0.7))
    by_curves = prune(model, budget=Budget("macs", 0.6, 0.8, sensitivity=sens), round_to=1)
    assert by_curves.report.mac_ratio <= 0.62


def test_bad_ratios():
    with pytest.raises(UsageError, match="ratios"):
        sensitivity(BLOCKS["resnet_basic"](0), (0.0, 1.5))
