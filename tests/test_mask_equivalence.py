"""Invariant 2: the pruned model equals the original with the removed channels zeroed.

The oracle masks the *original* (canonical) graph: every weight entry that makes or reads a
removed channel is set to zero. If analysis missed a coupling, surgery mis-sliced a weight or a
fix-up left a stale shape constant, the pruned model fails to run or its outputs differ.
"""
import numpy as np
import pytest

from graphprune import prune
from graphprune.api import analyze_model
from graphprune.verify import random_inputs, run
from models.attention import ATTENTION_BLOCKS
from models.blocks import BLOCKS
from oracle_testlib import masked_reference


@pytest.mark.parametrize("criterion", ["l2", "random"])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_pruned_equals_masked_original(name, criterion):
    model = BLOCKS[name](0)
    result = prune(model, ratio=0.4, criterion=criterion, round_to=1, verify=False)
    assert result.report.groups_pruned > 0
    assert result.report.params_after < 0.8 * result.report.params_before

    masked = masked_reference(model, result.plan)
    feeds = random_inputs(model, seed=1)
    expected, got, original = run(masked, feeds), run(result.model, feeds), run(model, feeds)
    for want, have, orig in zip(expected, got, original):
        assert have.shape == want.shape == orig.shape
        scale = max(1.0, float(np.abs(want).max()))
        assert float(np.abs(want - have).max()) <= 1e-4 * scale
    # the oracle must have removed something, or the comparison above proves nothing
    assert any(not np.allclose(w, o, atol=1e-3) for w, o in zip(expected, original))


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_ratio_zero_keeps_outputs(name):
    """Invariant 1: an empty plan changes nothing but the canonical form."""
    model = BLOCKS[name](0)
    result = prune(model, ratio=0.0, round_to=1)
    assert result.plan.groups == []
    assert result.report.fidelity.relative_error <= 1e-5


@pytest.mark.parametrize("name", sorted(ATTENTION_BLOCKS))
def test_attention_blocks_prune_heads_and_ffn_exactly(name):
    """Whole heads (GQA: whole KV groups with their query heads) and FFN channels."""
    model = ATTENTION_BLOCKS[name](0)
    result = prune(model, ratio=0.4, head_ratio=0.5, round_to=1, verify=False)
    _, analysis = analyze_model(model)
    heads = [g for g in analysis.prunable if "heads" in g.tags]
    if name != "swiglu_ffn":
        assert heads, "the attention heads must form a prunable group"
        planned = {g.key: g for g in result.plan.groups}
        for g in heads:
            assert len(planned[g.key].keep) == g.units - int(g.units * 0.5)
    assert result.report.params_after < 0.75 * result.report.params_before

    masked = masked_reference(model, result.plan)
    feeds = random_inputs(model, seed=1)
    for want, have in zip(run(masked, feeds), run(result.model, feeds)):
        assert have.shape == want.shape
        assert float(np.abs(want - have).max()) <= 1e-4 * max(1.0, float(np.abs(want).max()))
