"""timm's breadth (models/timm_models.py): 30 architectures beyond torchvision, exported with the
legacy exporter, prune at ratio 0.4 / head ratio 0.4 into models that pass the full checker and
equal the mask oracle at batch 1 and 2; heads prune in the attention models whose heads a rule
follows, and at least 25 % of the parameters go (TinyViT 8 %: its attention biases and norms
keep most of its weights)."""
import numpy as np
import onnx
import pytest

from graphprune import prune
from graphprune.api import analyze_model
from models import timm_models
from oracle_testlib import assert_equals_oracle

pytestmark = pytest.mark.zoo
pytest.importorskip("timm")

WITH_HEADS = {"efficientformerv2_s0", "edgenext_xx_small", "pvt_v2_b0", "coat_lite_tiny",
              "xcit_nano_12_p16_224", "cait_xxs24_224", "crossvit_tiny_240", "convit_tiny",
              "levit_128s", "coatnet_nano_rw_224", "tiny_vit_5m_224", "caformer_s18"}
FLOORS = {"tiny_vit_5m_224": 0.08}


@pytest.mark.parametrize("name", list(timm_models.TIMM_MODELS))
def test_timm_model_prunes_to_the_mask_oracle(tmp_path, name):
    path = timm_models.export(name, tmp_path / f"{name}.onnx")
    result = prune(path, ratio=0.4, head_ratio=0.4)
    onnx.checker.check_model(result.model, full_check=True)
    report = result.report
    assert 1 - report.pruning_param_ratio >= FLOORS.get(name, 0.25), report.summary()
    _, analysis = analyze_model(path)
    planned = {g.key for g in result.plan.groups}
    heads = [g for g in analysis.prunable if "heads" in g.tags and g.key in planned]
    assert bool(heads) == (name in WITH_HEADS), report.summary()
    assert_equals_oracle(path, result, [timm_models.feeds(name, batch,
                                                          np.random.default_rng(batch))
                                        for batch in (1, 2)])
