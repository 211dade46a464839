"""torch's own attention modules, exported: the forms torch users ship that the hand-built
blocks in models/attention.py do not cover.

* ``encoder`` / ``encoder_seq_first``: a two-layer ``nn.TransformerEncoder`` (batch first or
  sequence first). ``nn.MultiheadAttention`` packs Q, K, V into one projection, separates it
  with Reshape / Unsqueeze / Transpose / Squeeze / Gather and folds the heads into the batch
  axis (``view(S, B * H, D)``).
* ``decoder``: an ``nn.TransformerDecoderLayer``, self-attention plus cross-attention whose
  packed projection holds only K and V (two blocks); inputs ``tgt`` and ``memory``.
* ``timm_block``: timm's ViT attention, Q, K, V ``unbind``-ed from one reshaped, permuted
  projection (a Split, or one Slice per block, then Squeeze).

``export(name, exporter, dest)`` writes one of them (weights drawn with a fixed seed: an
untrained TransformerEncoder clones one layer, the exporter would share the identical weights)
with a dynamic batch axis; ``feeds(name, batch, rng)`` gives matching inputs. torch is imported
lazily. torchvision's ViT, Swin and MaxViT live in models/zoo.py
(``ATTENTION_TORCHVISION_MODELS``).
"""
from __future__ import annotations

import contextlib

import numpy as np

from models.exporting import export_checked

HIDDEN, HEADS, SEQ, MEMORY_SEQ = 64, 8, 7, 9

# name -> (input names, the batch axis of each input and of the output)
TORCH_ATTENTION_MODELS = {
    "encoder": (("input",), 0),
    "encoder_seq_first": (("input",), 1),
    "decoder": (("tgt", "memory"), 0),
    "timm_block": (("input",), 0),
}


def _modules():
    """The module classes, defined on first use so that importing this file needs no torch."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, batch_first: bool):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(HIDDEN, HEADS, 2 * HIDDEN, dropout=0.0,
                                                     batch_first=batch_first)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(HIDDEN, 10)

        def forward(self, x):
            return self.head(self.encoder(x))

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = torch.nn.TransformerDecoderLayer(HIDDEN, HEADS, 2 * HIDDEN,
                                                            dropout=0.0, batch_first=True)
            self.head = torch.nn.Linear(HIDDEN, 10)

        def forward(self, tgt, memory):
            return self.head(self.decoder(tgt, memory))

    class TimmBlock(torch.nn.Module):
        def __init__(self, dim=HIDDEN, heads=HEADS):
            super().__init__()
            self.heads = heads
            self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
            self.fc1, self.fc2 = torch.nn.Linear(dim, 2 * dim), torch.nn.Linear(2 * dim, dim)
            self.head = torch.nn.Linear(dim, 10)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
            x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
            x = x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))
            return self.head(x)

    return {"encoder": lambda: Encoder(batch_first=True),
            "encoder_seq_first": lambda: Encoder(batch_first=False),
            "decoder": Decoder, "timm_block": TimmBlock}


def _check_name(name: str) -> None:
    if name not in TORCH_ATTENTION_MODELS:
        raise ValueError(f"unknown torch attention model {name!r}; choose from "
                         f"{tuple(TORCH_ATTENTION_MODELS)}")


def feeds(name: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 inputs for `name` with `batch` rows on its batch axis."""
    _check_name(name)
    inputs, batch_axis = TORCH_ATTENTION_MODELS[name]
    lengths = {"input": SEQ, "tgt": SEQ - 2, "memory": MEMORY_SEQ}
    return {i: np.moveaxis(rng.standard_normal((batch, lengths[i], HIDDEN)).astype(np.float32),
                           0, batch_axis) for i in inputs}


@contextlib.contextmanager
def mha_fast_path_off():
    """torch's fused multi-head attention has no ONNX export (the legacy exporter fails on
    ``aten::_native_multi_head_attention`` in eval mode): export with it off."""
    import torch

    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def export(name: str, exporter: str, dest) -> str:
    """Export `name` with the "legacy" or "dynamo" exporter into `dest` and check it against
    torch at batch 3; returns the path."""
    import torch

    _check_name(name)
    torch.manual_seed(0)
    model = _modules()[name]().eval()
    for p in model.parameters():  # the encoder's layers are clones: make them differ
        torch.nn.init.normal_(p, std=0.1)
    inputs, batch_axis = TORCH_ATTENTION_MODELS[name]
    with mha_fast_path_off():
        return export_checked(model, feeds(name, 2, np.random.default_rng(0)),
                              feeds(name, 3, np.random.default_rng(5)), dest,
                              f"torch attention {name}", exporter,
                              {i: {batch_axis: "batch"} for i in (*inputs, "output")})
