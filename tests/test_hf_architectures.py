"""34 Hugging Face architectures (models/hf_architectures.py), tiny and random, exported by both
torch exporters: each prunes at ratio 0.4 / head ratio 0.4 into a model that passes the full
checker and equals the mask oracle at two batch sizes and sequence lengths other than the
export's; attention heads prune wherever the architecture has heads a rule can follow, and
at least the floor of parameters goes (set a few points under what was measured)."""
import numpy as np
import onnx
import pytest

from graphprune import prune
from graphprune.api import analyze_model
from models import hf_architectures as hf
from oracle_testlib import assert_equals_oracle

pytestmark = pytest.mark.zoo
pytest.importorskip("transformers")

# Heads stay: SqueezeBERT's and ConvBERT's attention runs through Conv1d / span convolutions,
# ConvNeXt and PoolFormer have none.
NO_HEADS = {"squeezebert", "convbert", "convnext", "poolformer"}
# Parameters removed at least (default 0.20).
FLOORS = {"opt": 0.15, "squeezebert": 0.04, "convbert": 0.08}


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", list(hf.ARCHITECTURES))
def test_architecture_prunes_to_the_mask_oracle(tmp_path, name, exporter):
    path = hf.export(name, exporter, tmp_path / f"{name}.onnx")
    result = prune(path, ratio=0.4, head_ratio=0.4)
    onnx.checker.check_model(result.model, full_check=True)
    report = result.report
    assert report.groups_pruned > 0, report.summary()
    assert 1 - report.pruning_param_ratio >= FLOORS.get(name, 0.20), report.summary()
    _, analysis = analyze_model(path)
    planned = {g.key for g in result.plan.groups}
    heads = [g for g in analysis.prunable if "heads" in g.tags and g.key in planned]
    assert bool(heads) == (name not in NO_HEADS), report.summary()
    assert_equals_oracle(path, result, [hf.feeds(name, batch, seq, np.random.default_rng(batch))
                                        for batch, seq in ((1, 9), (3, 16))])
