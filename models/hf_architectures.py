"""Many Hugging Face architectures in tiny random configurations, exported on the spot.

models/transformer_zoo.py holds a few transformers at a realistic size, cached; this file is the
breadth: 34 architectures (encoders, decoder-only LLMs with GQA, multi-query attention, ALiBi,
parallel blocks, vision transformers, hierarchical and convolutional hybrids, speech encoders),
each small enough (hidden 128 or less, two layers) to export in seconds with either torch
exporter. ``export(name, exporter, dest)`` writes one with dynamic batch (and sequence) axes
and checks it against torch in ONNX Runtime; ``feeds(name, batch, seq, rng)`` gives inputs.
Every parameter gets small seeded noise on top of transformers' initialisation (zero biases,
unit norms) so that no two weights are equal, as in a trained model. torch and transformers
are imported lazily.
"""
from __future__ import annotations

import os

import numpy as np

from models.exporting import add_noise, export_checked

VOCAB = 1000
IMAGE = 64
MEL_BINS, MEL_FRAMES = 16, 100


def _text(cls_name, cfg_name, model_kwargs=None, **cfg):
    return "text", cls_name, cfg_name, model_kwargs or {}, cfg


def _image(cls_name, cfg_name, model_kwargs=None, **cfg):
    return "image", cls_name, cfg_name, model_kwargs or {}, cfg


_BERTLIKE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=256)
_DECODER = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, use_cache=False)
_NO_POOLER = {"add_pooling_layer": False}

# name -> (input kind, model class, config class, model kwargs, config kwargs)
ARCHITECTURES = {
    "roberta": _text("RobertaModel", "RobertaConfig", _NO_POOLER, **_BERTLIKE),
    "albert": _text("AlbertModel", "AlbertConfig", _NO_POOLER, embedding_size=64, **_BERTLIKE),
    "electra": _text("ElectraModel", "ElectraConfig", embedding_size=64, **_BERTLIKE),
    "deberta_v2": _text("DebertaV2Model", "DebertaV2Config", **_BERTLIKE),
    "mpnet": _text("MPNetModel", "MPNetConfig", _NO_POOLER, **_BERTLIKE),
    "xlm_roberta": _text("XLMRobertaModel", "XLMRobertaConfig", _NO_POOLER, **_BERTLIKE),
    "mobilebert": _text("MobileBertModel", "MobileBertConfig", _NO_POOLER,
                        num_hidden_layers=2),
    "squeezebert": _text("SqueezeBertModel", "SqueezeBertConfig", embedding_size=128,
                         **_BERTLIKE),
    "convbert": _text("ConvBertModel", "ConvBertConfig", embedding_size=128, **_BERTLIKE),
    "t5_encoder": _text("T5EncoderModel", "T5Config", d_model=128, d_kv=32, d_ff=256,
                        num_layers=2, num_heads=4),
    "bart_encoder": _text("BartModel.encoder", "BartConfig", d_model=128, encoder_layers=2,
                          decoder_layers=1, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256),
    "clip_text": _text("CLIPTextModel", "CLIPTextConfig", hidden_size=128,
                       intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
    "mistral": _text("MistralModel", "MistralConfig", num_key_value_heads=2, **_DECODER),
    "qwen2": _text("Qwen2Model", "Qwen2Config", num_key_value_heads=2, **_DECODER),
    "llama_mqa": _text("LlamaModel", "LlamaConfig", num_key_value_heads=1, **_DECODER),
    "gemma": _text("GemmaModel", "GemmaConfig", num_key_value_heads=1, head_dim=32,
                   **_DECODER),
    "phi": _text("PhiModel", "PhiConfig", **_DECODER),
    "gpt_neox": _text("GPTNeoXModel", "GPTNeoXConfig", **_DECODER),
    "falcon": _text("FalconModel", "FalconConfig", hidden_size=128, num_hidden_layers=2,
                    num_attention_heads=4, use_cache=False),
    "opt": _text("OPTModel", "OPTConfig", hidden_size=128, ffn_dim=256, num_hidden_layers=2,
                 num_attention_heads=4, word_embed_proj_dim=128, use_cache=False),
    "bloom": _text("BloomModel", "BloomConfig", hidden_size=128, n_layer=2, n_head=4,
                   use_cache=False),
    "gptj": _text("GPTJModel", "GPTJConfig", n_embd=128, n_layer=2, n_head=4, rotary_dim=16,
                  use_cache=False),
    "clip_vision": _image("CLIPVisionModel", "CLIPVisionConfig", hidden_size=128,
                          intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          image_size=IMAGE, patch_size=16),
    "deit": _image("DeiTModel", "DeiTConfig", _NO_POOLER, image_size=IMAGE, patch_size=16,
                   **_BERTLIKE),
    "beit": _image("BeitModel", "BeitConfig", _NO_POOLER, image_size=IMAGE, patch_size=16,
                   use_relative_position_bias=True, **_BERTLIKE),
    "dinov2": _image("Dinov2Model", "Dinov2Config", hidden_size=128, num_hidden_layers=2,
                     num_attention_heads=4, image_size=IMAGE, patch_size=16),
    "swin": _image("SwinModel", "SwinConfig", image_size=IMAGE, patch_size=4, embed_dim=32,
                   depths=[2, 2], num_heads=[2, 4], window_size=4),
    "convnext": _image("ConvNextModel", "ConvNextConfig", hidden_sizes=[32, 64, 128, 256],
                       depths=[1, 1, 2, 1], image_size=IMAGE),
    "segformer": _image("SegformerModel", "SegformerConfig", hidden_sizes=[32, 64, 128, 256],
                        depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 4, 8],
                        decoder_hidden_size=64),
    "mobilevit": _image("MobileViTModel", "MobileViTConfig", {"expand_output": False},
                        image_size=IMAGE),
    "levit": _image("LevitModel", "LevitConfig", image_size=IMAGE),
    "poolformer": _image("PoolFormerModel", "PoolFormerConfig",
                         hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1]),
    "wav2vec2": ("audio", "Wav2Vec2Model", "Wav2Vec2Config", {},
                 dict(conv_dim=(64, 64), conv_stride=(5, 2), conv_kernel=(10, 3),
                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                      **_BERTLIKE)),
    "whisper_encoder": ("mel", "WhisperModel.encoder", "WhisperConfig", {},
                        dict(d_model=128, encoder_layers=2, decoder_layers=1,
                             encoder_attention_heads=4, decoder_attention_heads=4,
                             encoder_ffn_dim=256, decoder_ffn_dim=256, num_mel_bins=MEL_BINS,
                             max_source_positions=MEL_FRAMES // 2, pad_token_id=0,
                             bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)),
}

_INPUTS = {"text": ("input_ids", "attention_mask"), "image": ("pixel_values",),
           "audio": ("input_values",), "mel": ("input_features",)}


def _check_name(name: str) -> None:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {tuple(ARCHITECTURES)}")


def feeds(name: str, batch: int, seq: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs for `name`: token ids with the first row right-padded by 3, images, raw audio
    (400 + seq samples) or a mel spectrogram; `seq` only matters for text and audio."""
    _check_name(name)
    kind = ARCHITECTURES[name][0]
    if kind == "text":
        mask = np.ones((batch, seq), np.int64)
        mask[0, seq - 3:] = 0
        return {"input_ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int64),
                "attention_mask": mask}
    if kind == "image":
        pixels = rng.standard_normal((batch, 3, IMAGE, IMAGE))
        return {"pixel_values": pixels.astype(np.float32)}
    if kind == "audio":
        return {"input_values": rng.standard_normal((batch, 400 + seq)).astype(np.float32)}
    mel = rng.standard_normal((batch, MEL_BINS, MEL_FRAMES))
    return {"input_features": mel.astype(np.float32)}


def build(name: str):
    """The torch module of `name` (eval mode, seeded)."""
    import torch

    _check_name(name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    kind, cls_name, cfg_name, model_kwargs, cfg = ARCHITECTURES[name]
    if kind == "text":
        cfg = {"vocab_size": VOCAB, **cfg}
    torch.manual_seed(0)
    cls_name, _, part = cls_name.partition(".")
    model = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**cfg),
                                            **model_kwargs)
    model = getattr(model, part) if part else model
    add_noise(model)
    return model.eval()


def _wrapped(model, kind: str):
    """A module with named positional inputs (the dynamo exporter maps dynamic axes by
    argument name) returning the last hidden state alone."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        @staticmethod
        def pick(out):
            return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    class Text(Wrapped):
        def forward(self, input_ids, attention_mask):
            return self.pick(self.m(input_ids=input_ids, attention_mask=attention_mask))

    class Image(Wrapped):
        def forward(self, pixel_values):
            return self.pick(self.m(pixel_values=pixel_values))

    class Audio(Wrapped):
        def forward(self, input_values):
            return self.pick(self.m(input_values=input_values))

    class Mel(Wrapped):
        def forward(self, input_features):
            return self.pick(self.m(input_features=input_features))

    return {"text": Text, "image": Image, "audio": Audio, "mel": Mel}[kind]().eval()


def export(name: str, exporter: str, dest) -> str:
    """Export `name` with the "legacy" or "dynamo" exporter into `dest` and check it against
    torch on inputs of another batch and length than the export's; returns the path."""
    _check_name(name)
    kind = ARCHITECTURES[name][0]
    axes = {0: "batch", 1: "seq"} if kind in ("text", "audio") else {0: "batch"}
    return export_checked(_wrapped(build(name), kind),
                          feeds(name, 2, 12, np.random.default_rng(0)),
                          feeds(name, 3, 16, np.random.default_rng(5)), dest, name, exporter,
                          {n: dict(axes) for n in (*_INPUTS[kind], "output")})
