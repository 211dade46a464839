#!/usr/bin/env bash
# One command: create .venv, install graphprune, prune the bundled example.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
.venv/bin/graphprune models/examples/resnet_bottleneck.onnx --ratio 0.4 \
    -o resnet_bottleneck.pruned.onnx --save-plan resnet_bottleneck.plan.json
echo "graphprune is installed in .venv (activate with: source .venv/bin/activate)"
