#!/usr/bin/env bash
# One command: create .venv, install graphprune, prune the bundled example.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
# graphprune's sparse ONNX Runtime operators (--sparsity): C++ library built with cmake and the
# ONNX Runtime C API headers (fetched from Debian's libonnxruntime-dev; see kernels/README.md).
# Pruning works without it, so a failed build only warns; it is retried on first use.
if ! .venv/bin/python -m graphprune.kernels build; then
    echo "warning: the sparse-operator library did not build (needs cmake and a C++ compiler:" \
         "apt-get install cmake g++); --sparsity will not be available" >&2
fi
.venv/bin/graphprune models/examples/resnet_bottleneck.onnx --ratio 0.4 \
    -o resnet_bottleneck.pruned.onnx --save-plan resnet_bottleneck.plan.json
echo "graphprune is installed in .venv (activate with: source .venv/bin/activate)"
