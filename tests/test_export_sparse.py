"""A model that uses graphprune's sparse operators: the export folder carries the library and
loads from its manifest alone; without the library, loading fails with a message that says how
to load it (the folder's snippet, graphprune's own runs, the model's metadata)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import graphprune
from graphprune import kernels
from graphprune.cli import main
from graphprune.sparsity import METADATA_KEY, SparsifyConfig
from models.blocks import BLOCKS
from tests.test_export import _load_in_fresh_process


@pytest.fixture(autouse=True)
def _private_cost_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_COSTMODEL_CACHE", str(tmp_path / "costmodel.json"))


@pytest.fixture(scope="module")
def sparse_export(tmp_path_factory):
    base = tmp_path_factory.mktemp("sparse-export")
    src = base / "resnet.onnx"
    onnx.save(BLOCKS["resnet_bottleneck"](0), src)
    folders = {}
    for target in ("edge", "cpu"):
        folder = base / f"resnet-{target}"
        res = CliRunner().invoke(main, ["export", str(src), "--target", target, "--ratio", "0.25",
                                        "--sparsity", "0.8", "--pattern", "4x1", "--sparse-all",
                                        "-o", str(folder)])
        assert res.exit_code == 0, res.output
        folders[target] = folder
    return src, folders


@pytest.mark.parametrize("target", ["edge", "cpu"])
def test_sparse_folder_runs_from_its_manifest_alone(sparse_export, target, tmp_path):
    _, folders = sparse_export
    manifest = json.loads((folders[target] / "manifest.json").read_text())
    custom = manifest["custom_ops"]
    assert custom["library"] == kernels.LIBRARY_NAME and "SparseConv" in custom["ops"]
    assert any(f["path"] == kernels.LIBRARY_NAME for f in manifest["files"])
    assert manifest["pruning"]["sparsity"]["sparse_nodes"]
    assert manifest["precision"] == "fp32"  # the sparse ops are fp32: fp16 is not kept
    moved = tmp_path / "deployed"
    shutil.copytree(folders[target], moved)
    assert _load_in_fresh_process(moved, cwd=tmp_path)["model"] == manifest["model"]


def test_ort_operator_config_lists_our_ops(sparse_export):
    _, folders = sparse_export
    config = (folders["edge"] / "model.required_operators.config").read_text()
    assert any(line.startswith(f"{kernels.DOMAIN};1;") and "SparseConv" in line
               for line in config.splitlines())


def test_snippet_without_the_library_says_how_to_load_it(sparse_export, tmp_path):
    _, folders = sparse_export
    folder = tmp_path / "no-library"
    shutil.copytree(folders["cpu"], folder)
    snippet = json.loads((folder / "manifest.json").read_text())["load"]["python"]
    ok = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                        cwd=folder, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    (folder / kernels.LIBRARY_NAME).unlink()
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                          cwd=folder, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert kernels.LIBRARY_NAME in proc.stderr
    assert "register_custom_ops_library" in proc.stderr
    assert "python -m graphprune.kernels build" in proc.stderr


def test_model_metadata_says_how_to_load_it(sparse_export):
    _, folders = sparse_export
    path = folders["cpu"] / "model.onnx"
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert kernels.LIBRARY_NAME in meta[METADATA_KEY]
    assert "register_custom_ops_library" in meta[METADATA_KEY]
    with pytest.raises(Exception, match="graphprune:Sparse"):  # plain ONNX Runtime
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sess = kernels.session(str(path))
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert sess.run(None, {"input": x})[0].shape == (1, 10)


def test_graphprune_runs_a_sparse_input_and_explains_a_missing_library(tmp_path, monkeypatch):
    model = BLOCKS["resnet_bottleneck"](0)
    sparse = graphprune.prune(model, ratio=0.0, sparse=SparsifyConfig(
        sparsity=0.5, pattern="1x4", measure=False), verify=False)
    path = graphprune.write(sparse, tmp_path / "sparse.onnx")
    # graphprune registers the library itself to check a model that already uses it
    again = graphprune.prune(path, ratio=0.0, sparse=SparsifyConfig(
        sparsity=0.5, pattern="1x4", measure=False))
    assert again.report.fidelity is not None

    def unavailable(*_a, **_k):
        raise kernels.KernelsUnavailable("no C++ compiler found")

    monkeypatch.setattr(kernels._build, "library_path", unavailable)
    res = CliRunner().invoke(main, [str(path), "--sparsity", "0.5", "--sparse-all",
                                    "-o", str(tmp_path / "out.onnx")])
    assert res.exit_code == 2, res.output
    assert "register_custom_ops_library" in res.output and "Traceback" not in res.output
    assert "no C++ compiler found" in res.output
    assert not (tmp_path / "out.onnx").exists()
