"""Issue 3, item 2: transformers from every exporter prune 40 % of heads and FFN channels
into valid models equal to the mask oracle."""
import numpy as np
import onnx
import pytest

from graphprune import prune
from graphprune.api import analyze_model
from graphprune.verify import run
from models import transformer_zoo as tz
from oracle_testlib import masked_reference

pytestmark = pytest.mark.zoo

CASES = [(n, e) for n in tz.TRANSFORMER_MODELS for e in ("dynamo", "legacy")]


@pytest.mark.parametrize("name,exporter", CASES)
def test_transformer_prunes_heads_and_ffn(name, exporter):
    path = tz.default_cache_dir() / f"{name}.{exporter}.onnx"
    if not path.exists():
        pytest.importorskip("transformers")
    path = tz.transformer_model(name, exporter)
    result = prune(path, ratio=0.4, head_ratio=0.4)
    onnx.checker.check_model(result.model, full_check=True)
    _, analysis = analyze_model(path)
    pruned = {g.key for g in result.plan.groups}
    heads = [g for g in analysis.prunable if "heads" in g.tags and g.key in pruned]
    ffn = [g for g in analysis.prunable if "heads" not in g.tags and g.key in pruned]
    assert heads, "no attention-head group was pruned"
    assert ffn, "no FFN group was pruned"
    assert result.report.mac_ratio < 0.8

    feeds = tz.model_inputs(name, batch=2, seq=16)
    for want, have in zip(run(masked_reference(path, result.plan), feeds),
                          run(result.model, feeds)):
        assert want.shape == have.shape
        assert float(np.abs(want - have).max()) <= 1e-4 * max(1.0, float(np.abs(want).max()))
