"""Parameter and MAC reduction of every zoo model at one ratio (channels and attention heads):
the tables the core and transformer issues ask for.

    python bench/zoo_reduction.py [--ratio 0.4] [--round-to auto|N]

"params removed" compares the written model with the input file; "by pruning alone" compares
it with the input after the clean-up passes (folded BatchNorms, an exporter's duplicate
weights), so that clean-up is not counted as pruning.

Writes bench/results/zoo_reduction.json and .md; prints the table. Figures are measured, never
stored: rerun after any change to the rules.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts bench/ last: its kernels.py hid the one transformers needs)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import graphprune  # noqa: E402
from graphprune.policy import Rounding, parse_round_to  # noqa: E402
from models import hf_architectures, timm_models, torchvision_detection  # noqa: E402
from models import keras_exports, torchvision_tasks  # noqa: E402
from models import torch_attention  # noqa: E402
from models import transformer_zoo as tz  # noqa: E402
from models import zoo  # noqa: E402


def _cases(scratch: Path):
    for name in zoo.LIGHT_MODELS:
        yield f"onnx-light/{name}", lambda name=name: zoo.light_model(name)
    for name in zoo.TORCHVISION_MODELS:
        for exporter in zoo.EXPORTERS:
            yield f"{name} ({exporter})", lambda n=name, e=exporter: zoo.torchvision_model(n, e)
    for name in zoo.EXTRA_TORCHVISION_MODELS + zoo.ATTENTION_TORCHVISION_MODELS:
        yield f"{name} (legacy)", lambda n=name: zoo.torchvision_model(n, "legacy")
    for name in torch_attention.TORCH_ATTENTION_MODELS:  # small: exported afresh, seconds
        for exporter in zoo.EXPORTERS:
            yield (f"torch/{name} ({exporter})", lambda n=name, e=exporter:
                   torch_attention.export(n, e, scratch / f"{n}.{e}.onnx"))
    for name in torchvision_tasks.TASK_MODELS:  # segmentation and video
        yield (f"{name} (legacy)", lambda n=name:
               torchvision_tasks.export(n, scratch / f"task.{n}.onnx"))
    for name in torchvision_detection.DETECTION_MODELS:  # Faster R-CNN, whole
        yield (f"{name} (legacy)", lambda n=name:
               torchvision_detection.export(n, scratch / f"det.{n}.onnx"))
    for name in timm_models.TIMM_MODELS:
        yield (f"timm/{name} (legacy)", lambda n=name:
               timm_models.export(n, scratch / f"timm.{n}.onnx"))
    for name in hf_architectures.ARCHITECTURES:  # tiny Hugging Face configurations
        yield (f"hf/{name} (legacy)", lambda n=name:
               hf_architectures.export(n, "legacy", scratch / f"hf.{n}.onnx"))
    for name in keras_exports.FIXTURES:  # TensorFlow's exporter (files in models/examples)
        yield f"tf2onnx/{name}", lambda n=name: str(keras_exports.path(n))
    for name in zoo.WHEEL_MODELS:  # trained models shipped in PyPI wheels (paddle2onnx, YOLOv8n)
        yield f"wheel/{name}", lambda name=name: str(zoo.wheel_model(name))
    for name in tz.TRANSFORMER_MODELS:
        for exporter in zoo.EXPORTERS:
            yield f"{name} ({exporter})", lambda n=name, e=exporter: tz.transformer_model(n, e)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--round-to", type=parse_round_to, default=graphprune.DEFAULT_ROUND_TO)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    rows = []
    scratch = tempfile.TemporaryDirectory(prefix="zoo_reduction.")
    for label, load in _cases(Path(scratch.name)):
        start = time.perf_counter()
        try:
            rep = graphprune.prune(load(), ratio=args.ratio, round_to=args.round_to,
                                   head_ratio=args.ratio).report
        except graphprune.GraphpruneError as err:
            rows.append({"model": label, "error": str(err)})
            print(f"{label}: error: {err}", file=sys.stderr, flush=True)
            continue
        reasons = sorted({re.sub(r"'[^']*'", "'…'", why) for _, why in rep.frozen
                          if "graph input or output" not in why})
        rows.append({"model": label, "params_before": rep.params_before,
                     "params_cleaned": rep.params_cleaned, "params_after": rep.params_after,
                     "param_reduction": 1 - rep.param_ratio,
                     "pruning_param_reduction": 1 - rep.pruning_param_ratio,
                     "mac_reduction": 1 - rep.mac_ratio, "groups": rep.groups_found,
                     "pruned": rep.groups_pruned, "cosine": rep.fidelity.cosine,
                     "seconds": time.perf_counter() - start, "frozen_reasons": reasons})
        print(f"{label}: {1 - rep.param_ratio:.1%} of parameters removed",
              file=sys.stderr, flush=True)  # progress: the whole run takes minutes
    scratch.cleanup()
    rounding = Rounding.of(args.round_to).label  # auto:<block> where auto
    lines = [f"ratio {args.ratio}, round-to {rounding}", "",
             "| model | params before | params removed | by pruning alone | MACs removed | "
             "groups pruned/found | frozen for (besides the output layer) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | | | | | error: {r['error']} |")
            continue
        why = "; ".join(w[:70] for w in r["frozen_reasons"][:2]) or "-"
        lines.append(f"| {r['model']} | {r['params_before']:,} | {r['param_reduction']:.1%} | "
                     f"{r['pruning_param_reduction']:.1%} | {r['mac_reduction']:.1%} | "
                     f"{r['pruned']}/{r['groups']} | {why} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo_reduction.json").write_text(json.dumps(
        {"ratio": args.ratio, "round_to": rounding, "rows": rows}, indent=1))
    (args.out / "zoo_reduction.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
