"""torch's own attention, exported: nn.TransformerEncoder (batch first or not) and
nn.TransformerDecoderLayer (self- and cross-attention), timm-style attention (``unbind``), all
with both exporters (models/torch_attention.py), and torchvision's ViT-B/16, Swin-T and
MaxViT-T (legacy exporter, models/zoo.py). nn.MultiheadAttention packs Q, K, V into one
projection separated by Reshape/Gather and folds the heads into the batch axis; Swin reshapes
its packed projection into (3, heads, head size), timm unbinds it; MaxViT multiplies with
Einsum. Heads must prune (groups tagged "heads") into models equal to the mask oracle at two
batch sizes."""
import numpy as np
import onnx
import pytest

from graphprune import prune
from graphprune.api import analyze_model
from models import torch_attention, zoo
from oracle_testlib import assert_equals_oracle

pytestmark = pytest.mark.zoo
torch = pytest.importorskip("torch")


def _check(path: str, inputs: list, floor: float):
    result = prune(path, ratio=0.4, head_ratio=0.4)
    onnx.checker.check_model(result.model, full_check=True)
    _, analysis = analyze_model(path)
    pruned = {g.key for g in result.plan.groups}
    heads = [g for g in analysis.prunable if "heads" in g.tags and g.key in pruned]
    assert heads, result.report.summary()
    assert 1 - result.report.pruning_param_ratio >= floor, result.report.summary()
    assert_equals_oracle(path, result, [x if isinstance(x, dict) else {"input": x}
                                        for x in inputs])
    return heads


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name,head_groups", [
    ("encoder", 2), ("encoder_seq_first", 2),  # both layers' heads
    ("decoder", 2),  # self- and cross-attention heads
    ("timm_block", 1)])
def test_torch_attention_heads_prune(tmp_path, name, head_groups, exporter):
    path = torch_attention.export(name, exporter, tmp_path / f"{name}.onnx")
    rng = np.random.default_rng(1)
    inputs = [torch_attention.feeds(name, b, rng) for b in (1, 3)]
    assert len(_check(path, inputs, floor=0.30)) == head_groups


@pytest.mark.parametrize("name,floor", [("vit_b_16", 0.35), ("swin_t", 0.30),
                                        ("maxvit_t", 0.38)])
def test_torchvision_attention_models_prune_heads(name, floor):
    pytest.importorskip("torchvision")
    path = str(zoo.torchvision_model(name, "legacy"))
    rng = np.random.default_rng(2)
    _check(path, [rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in (1, 2)],
           floor)
