"""torch's own attention, exported: nn.TransformerEncoder (batch first or not) and
nn.TransformerDecoderLayer (self- and cross-attention), timm-style attention (``unbind``), all
with both exporters, and torchvision's ViT-B/16, Swin-T and MaxViT-T (legacy exporter).
nn.MultiheadAttention packs Q, K, V into one projection separated by Reshape/Gather and folds
the heads into the batch axis; Swin reshapes its packed projection into (3, heads, head
size), timm unbinds it; MaxViT multiplies with Einsum. Heads must prune (groups tagged
"heads") into models equal to the mask oracle at two batch sizes."""
import numpy as np
import onnx
import pytest

from graphprune import prune
from graphprune.api import analyze_model
from graphprune.verify import run
from oracle_testlib import masked_reference

pytestmark = pytest.mark.zoo
torch = pytest.importorskip("torch")


class _Encoder(torch.nn.Module):
    def __init__(self, batch_first: bool):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(64, 8, 128, dropout=0.0, batch_first=batch_first)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.encoder(x))


class _Decoder(torch.nn.Module):
    """Self-attention and cross-attention: the cross one packs only K and V (two blocks)."""

    def __init__(self):
        super().__init__()
        self.decoder = torch.nn.TransformerDecoderLayer(64, 8, 128, dropout=0.0,
                                                        batch_first=True)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, tgt, memory):
        return self.head(self.decoder(tgt, memory))


class _TimmBlock(torch.nn.Module):
    """timm's ViT attention: Q, K, V unbound from one reshaped, permuted projection."""

    def __init__(self, dim=64, heads=8):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.fc1, self.fc2 = torch.nn.Linear(dim, 2 * dim), torch.nn.Linear(2 * dim, dim)
        self.head = torch.nn.Linear(dim, 10)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        return self.head(x)


def _export(model, example, batch_axis: int, exporter: str, dest,
            inputs=("input",)) -> str:
    torch.manual_seed(0)
    for p in model.parameters():  # TransformerEncoder clones one layer: make them differ
        torch.nn.init.normal_(p, std=0.1)
    io = {"input_names": list(inputs), "output_names": ["output"],
          "dynamic_axes": {name: {batch_axis: "batch"} for name in (*inputs, "output")}}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the legacy exporter has no fused MHA op
    try:
        with torch.no_grad():
            if exporter == "legacy":
                torch.onnx.export(model.eval(), example, str(dest), dynamo=False,
                                  opset_version=17, **io)
            else:
                torch.onnx.export(model.eval(), example, dynamo=True, **io).save(str(dest))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return str(dest)


def _check(path: str, inputs: list, floor: float):
    result = prune(path, ratio=0.4, head_ratio=0.4)
    onnx.checker.check_model(result.model, full_check=True)
    _, analysis = analyze_model(path)
    pruned = {g.key for g in result.plan.groups}
    heads = [g for g in analysis.prunable if "heads" in g.tags and g.key in pruned]
    assert heads, result.report.summary()
    assert 1 - result.report.param_ratio >= floor, result.report.summary()
    reference = masked_reference(path, result.plan)
    for x in inputs:
        feeds = x if isinstance(x, dict) else {"input": x}
        (want,), (have,) = run(reference, feeds), run(result.model, feeds)
        assert want.shape == have.shape
        assert float(np.abs(want - have).max()) <= 1e-4 * float(np.abs(want).max())
    return heads


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_heads_prune(tmp_path, batch_first, exporter):
    example = torch.randn(2, 7, 64) if batch_first else torch.randn(7, 2, 64)
    axis = 0 if batch_first else 1
    path = _export(_Encoder(batch_first), (example,), axis, exporter, tmp_path / "enc.onnx")
    rng = np.random.default_rng(1)
    inputs = [np.moveaxis(rng.standard_normal((b, 7, 64)).astype(np.float32), 0, axis)
              for b in (1, 3)]
    assert len(_check(path, inputs, floor=0.30)) == 2  # both layers' heads


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_transformer_decoder_self_and_cross_attention_heads_prune(tmp_path, exporter):
    example = (torch.randn(2, 5, 64), torch.randn(2, 9, 64))
    path = _export(_Decoder(), example, 0, exporter, tmp_path / "dec.onnx",
                   inputs=("tgt", "memory"))
    rng = np.random.default_rng(4)
    inputs = [{"tgt": rng.standard_normal((b, 5, 64)).astype(np.float32),
               "memory": rng.standard_normal((b, 9, 64)).astype(np.float32)} for b in (1, 3)]
    assert len(_check(path, inputs, floor=0.30)) == 2  # self- and cross-attention heads


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_timm_style_unbind_attention_heads_prune(tmp_path, exporter):
    path = _export(_TimmBlock(), (torch.randn(2, 7, 64),), 0, exporter, tmp_path / "t.onnx")
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((b, 7, 64)).astype(np.float32) for b in (1, 3)]
    assert len(_check(path, inputs, floor=0.30)) == 1


@pytest.mark.parametrize("name,floor", [("vit_b_16", 0.35), ("swin_t", 0.30),
                                        ("maxvit_t", 0.38)])
def test_torchvision_attention_models_prune_heads(tmp_path, name, floor):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.get_model(name, weights=None)
    path = _export(model, (torch.randn(1, 3, 224, 224),), 0, "legacy", tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    _check(path, [rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in (1, 2)],
           floor)
