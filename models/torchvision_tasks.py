"""torchvision models for tasks other than classification: semantic segmentation (ASPP with an
image-pooling branch resized back at run time, LR-ASPP) and video (3-D convolutions,
(2+1)-D factorized ones). Exported on the spot with the legacy exporter (dynamic batch),
random init plus seeded noise, checked against torch; the output is the segmentation map
("out") or the clip logits. torch is imported lazily.
"""
from __future__ import annotations

import numpy as np

from models.exporting import add_noise, export_checked

# name -> input shape without the batch axis
TASK_MODELS = {
    "lraspp_mobilenet_v3_large": (3, 224, 224),
    "deeplabv3_mobilenet_v3_large": (3, 224, 224),
    "r3d_18": (3, 8, 112, 112),
    "r2plus1d_18": (3, 8, 112, 112),
}


def _check_name(name: str) -> None:
    if name not in TASK_MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {tuple(TASK_MODELS)}")


def feeds(name: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    _check_name(name)
    return {"input": rng.standard_normal((batch, *TASK_MODELS[name])).astype(np.float32)}


def _build(name: str):
    import torch
    import torchvision

    class MainOutput(torch.nn.Module):
        """Segmentation models return a dict; keep its "out" map."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            return y["out"] if isinstance(y, dict) else y

    torch.manual_seed(0)
    kwargs = {"weights": None}
    if name.startswith(("lraspp", "deeplab")):
        kwargs.update(weights_backbone=None, aux_loss=False)
    model = MainOutput(torchvision.models.get_model(name, **kwargs)).eval()
    add_noise(model)
    return model


def export(name: str, dest) -> str:
    """Export `name` into `dest` and check it against torch at batch 3; returns the path."""
    _check_name(name)
    return export_checked(_build(name), feeds(name, 2, np.random.default_rng(0)),
                          feeds(name, 3, np.random.default_rng(5)), dest, f"torchvision {name}")
