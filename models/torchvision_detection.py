"""torchvision's two-stage detector, exported whole with the legacy exporter: backbone, FPN,
region proposals (NMS), multi-level RoIAlign merged by ScatterElements, the box head and the
post-processing. Random init plus seeded noise, and a score threshold of 0, so that noise
inputs give detections to compare (with the default threshold a random model finds none, and
a check of empty outputs compares nothing). One image [3, H, W] in; boxes, labels, scores out.
torch is imported lazily.
"""
from __future__ import annotations

import warnings

import numpy as np

from models.exporting import TOLERANCE, add_noise

DETECTION_MODELS = {"fasterrcnn_mobilenet_v3_large_320_fpn": 320}  # name -> image size
OUTPUTS = ("boxes", "labels", "scores")


def _check_name(name: str) -> None:
    if name not in DETECTION_MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {tuple(DETECTION_MODELS)}")


def feeds(name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    _check_name(name)
    size = DETECTION_MODELS[name]
    return {"images": rng.random((3, size, size), dtype=np.float32)}


def _build(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                         box_score_thresh=0.0).eval()
    add_noise(model)
    return model


def export(name: str, dest) -> str:
    """Export `name` into `dest`, then check ONNX Runtime against torch on another image (the
    export traces one); returns the path."""
    import torch

    from graphprune.verify import run

    _check_name(name)
    model = _build(name)
    example, check = feeds(name, np.random.default_rng(0)), feeds(name, np.random.default_rng(5))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter
        torch.onnx.export(model, ([torch.from_numpy(example["images"])],), str(dest),
                          dynamo=False, opset_version=17, input_names=["images"],
                          output_names=list(OUTPUTS))
        (want,) = model([torch.from_numpy(check["images"])])
    got = run(str(dest), check)
    for key, value in zip(OUTPUTS, got):
        expected = want[key].numpy()
        scale = max(float(np.abs(expected).max()) if expected.size else 0.0, 1e-6)
        if value.shape != expected.shape or (value.size and float(
                np.abs(value - expected).max()) > TOLERANCE * scale):
            raise RuntimeError(f"torchvision {name} exported by the legacy exporter differs "
                               f"from torch in {key} (shape {value.shape} vs {expected.shape})")
    return str(dest)
