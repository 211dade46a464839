"""Export a torch module to ONNX and check it against torch: shared by the zoos that export on
the spot (models/hf_architectures.py, models/timm_models.py, models/torchvision_tasks.py)."""
from __future__ import annotations

import warnings

import numpy as np

TOLERANCE = 1e-3  # ONNX Runtime vs torch, relative to the output's largest value


def export_checked(module, example: dict, check: dict, dest, what: str,
                   exporter: str = "legacy", dynamic_axes: dict | None = None) -> str:
    """Export `module` (called with the inputs of `example`, in order, named by their keys;
    output "output") into `dest`, then run it in ONNX Runtime on `check` (another batch size,
    so a batch baked in shows) and compare with torch. Dynamic axes default to the batch."""
    import torch

    from graphprune.verify import run

    names = list(example)
    axes = dynamic_axes or {n: {0: "batch"} for n in (*names, "output")}
    io = {"input_names": names, "output_names": ["output"], "dynamic_axes": axes}
    args = tuple(torch.from_numpy(v) for v in example.values())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        if exporter == "legacy":
            torch.onnx.export(module, args, str(dest), dynamo=False, opset_version=17, **io)
        elif exporter == "dynamo":
            torch.onnx.export(module, args, dynamo=True, verbose=False, **io).save(str(dest))
        else:
            raise ValueError(f"unknown exporter {exporter!r}; choose legacy or dynamo")
        want = module(*(torch.from_numpy(v) for v in check.values())).numpy()
    (got,) = run(str(dest), check)
    error = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-6))
    if got.shape != want.shape or error > TOLERANCE:
        raise RuntimeError(f"{what} exported by the {exporter} exporter differs from torch "
                           f"(shape {got.shape} vs {want.shape}, relative error {error:.2e})")
    return str(dest)


def add_noise(model, scale: float = 0.02) -> None:
    """Seeded noise on every parameter: no two weights equal (zero biases, unit norms), as
    after training, so exporters do not share one tensor across layers."""
    import torch

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=gen) * scale)
