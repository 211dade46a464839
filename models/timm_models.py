"""timm architectures (random init), exported on the spot: the breadth of vision models people
ship beyond torchvision. Small variants only, so each exports in seconds.

``export(name, dest)`` writes one with the legacy exporter (opset 17, dynamic batch) at its
default input size, after seeded noise on every parameter (no two weights equal, as after
training), and checks it against torch in ONNX Runtime; ``feeds(name, batch, rng)`` gives
inputs. torch and timm are imported lazily.
"""
from __future__ import annotations

import numpy as np

from models.exporting import add_noise, export_checked

# name -> what it brings
TIMM_MODELS = {
    "resnest14d": "split attention (radix softmax, ReduceSum over branches)",
    "skresnet18": "selective kernel attention over two branches",
    "res2net50_14w_8s": "hierarchical Split/Concat inside the bottleneck",
    "regnetz_b16": "RegNetZ with SE and group convs",
    "mobilenetv4_conv_small": "MobileNetV4 universal inverted bottlenecks",
    "ghostnet_100": "ghost modules (cheap depthwise features concatenated)",
    "ghostnetv2_100": "DFC attention (pooled, resized back at run time)",
    "repghostnet_050": "re-parameterizable ghost modules",
    "hgnetv2_b0": "HGNetV2 stem and light aggregation blocks",
    "hrnet_w18_small": "multi-resolution branches fused with Resize",
    "dla34": "deep layer aggregation trees",
    "nf_resnet26": "normalizer-free: weight standardization computed in the graph",
    "mobileone_s0": "MobileOne re-parameterizable branches",
    "mixer_s16_224": "MLP-Mixer: token-mixing MLPs over a transposed axis",
    "resmlp_12_224": "ResMLP: affine layers instead of norms",
    "efficientvit_b0": "EfficientViT (MIT) linear attention",
    "efficientformerv2_s0": "EfficientFormerV2 attention on 4-D maps",
    "fastvit_t8": "FastViT RepMixer",
    "mobilevitv2_050": "MobileViTv2 separable self-attention",
    "edgenext_xx_small": "EdgeNeXt split depthwise transposed attention",
    "pvt_v2_b0": "PVTv2 spatial-reduction attention",
    "coat_lite_tiny": "CoaT conv-attention with relative position encodings",
    "xcit_nano_12_p16_224": "XCiT cross-covariance attention, class attention",
    "cait_xxs24_224": "CaiT talking heads, layer scale, class attention",
    "crossvit_tiny_240": "CrossViT two branches with cross attention",
    "convit_tiny": "ConViT gated positional self-attention",
    "levit_128s": "LeViT attention with BatchNorm over flattened tokens",
    "coatnet_nano_rw_224": "CoAtNet conv stages then relative-position attention",
    "tiny_vit_5m_224": "TinyViT windowed attention with attention biases",
    "caformer_s18": "CAFormer conv mixers then attention",
}


def _check_name(name: str) -> None:
    if name not in TIMM_MODELS:
        raise ValueError(f"unknown timm model {name!r}; choose from {tuple(TIMM_MODELS)}")


def _build(name: str):
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    add_noise(model)
    return model


def input_shape(name: str, batch: int) -> tuple[int, ...]:
    import timm

    _check_name(name)
    config = timm.get_pretrained_cfg(name)
    size = (config.input_size if config is not None else None) or (3, 224, 224)
    return (batch, *size)


def feeds(name: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal(input_shape(name, batch)).astype(np.float32)}


def export(name: str, dest) -> str:
    """Export `name` into `dest` and check it against torch at batch 3; returns the path."""
    _check_name(name)
    return export_checked(_build(name), feeds(name, 2, np.random.default_rng(0)),
                          feeds(name, 3, np.random.default_rng(5)), dest, f"timm {name}")
