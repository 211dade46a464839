"""`graphprune export`: a deployment folder that loads and runs from its manifest alone.

The folder of a pruned ResNet block and of a pruned BERT-like attention block is loaded in a
fresh Python process that knows nothing but the folder path; the .ort model runs in ONNX
Runtime; the fp16 model stays within the manifest's tolerance of the fp32 model; the folder
is written atomically and never over a non-empty one without --force.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import export as export_mod
from graphprune.errors import UsageError
from graphprune.export import export, to_fp16
from models.attention import ATTENTION_BLOCKS
from models.blocks import BLOCKS

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"resnet_bottleneck": lambda: BLOCKS["resnet_bottleneck"](0),
          "mha_postnorm": lambda: ATTENTION_BLOCKS["mha_postnorm"](0)}

# What a deployment does, knowing only the folder: read manifest.json, check the files
# against their hashes, load the listed model with onnxruntime, run random inputs of the
# listed shapes and dtypes, and check the outputs against the listed ones.
LOADER = r'''
import hashlib, json, sys
from pathlib import Path
import numpy as np
import onnxruntime as ort

folder = Path(sys.argv[1])
manifest = json.loads((folder / "manifest.json").read_text())
for f in manifest["files"]:
    data = (folder / f["path"]).read_bytes()
    assert len(data) == f["bytes"], f["path"]
    assert hashlib.sha256(data).hexdigest() == f["sha256"], f["path"]
options = ort.SessionOptions()
if manifest.get("custom_ops"):  # the operators' library ships in the folder
    options.register_custom_ops_library(str(folder / manifest["custom_ops"]["library"]))
if manifest["model_format"] == "ort":
    options.add_session_config_entry("session.load_model_format", "ORT")
session = ort.InferenceSession(str(folder / manifest["model"]), options,
                               providers=["CPUExecutionProvider"])
rng = np.random.default_rng(123)
feeds = {}
for i in manifest["inputs"]:
    shape = [d if isinstance(d, int) else 1 for d in i["shape"]]
    dtype = np.dtype(i["dtype"])
    feeds[i["name"]] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                        else np.zeros(shape, dtype))
outputs = session.run([o["name"] for o in manifest["outputs"]], feeds)
for o, value in zip(manifest["outputs"], outputs):
    assert str(value.dtype) == o["dtype"], (o, value.dtype)
    assert all(not isinstance(d, int) or d == n for d, n in zip(o["shape"], value.shape)), o
    assert np.all(np.isfinite(value)), o["name"]
print(json.dumps({"model": manifest["model"], "outputs": [list(v.shape) for v in outputs]}))
'''


def _load_in_fresh_process(folder: Path, cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", LOADER, str(folder)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cli(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "graphprune.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _run(path: Path, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if path.suffix == ".ort":
        opts.add_session_config_entry("session.load_model_format", "ORT")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(
        None, feeds)


def _feeds(manifest: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {i["name"]: rng.standard_normal(i["shape"]).astype(i["dtype"])
            for i in manifest["inputs"]}


def _relative(ref, got) -> float:
    err = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(ref, got))
    return err / max(float(np.max(np.abs(a))) for a in ref)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each block exported for edge (through the CLI) and for cpu (through the API)."""
    base = tmp_path_factory.mktemp("export")
    out = {}
    for name, build in MODELS.items():
        src = base / f"{name}.onnx"
        onnx.save(build(), src)
        code, stdout, stderr = _cli("export", src, "--target", "edge", "--ratio", "0.5",
                                    "-o", base / f"{name}-edge", cwd=base)
        assert code == 0, stderr
        assert "fp16: kept" in stdout and "wrote" in stdout, stdout
        export(src, base / f"{name}-cpu", target="cpu", prune_options={"ratio": 0.5})
        out[name] = (src, base / f"{name}-edge", base / f"{name}-cpu")
    return out


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("target", ["edge", "cpu"])
def test_folder_runs_from_its_manifest_alone(exported, name, target, tmp_path):
    src, edge, cpu = exported[name]
    folder = edge if target == "edge" else cpu
    moved = tmp_path / "deployed"  # the folder alone, away from the source model
    shutil.copytree(folder, moved)
    result = _load_in_fresh_process(moved, cwd=tmp_path)
    assert result["model"] == ("model.ort" if target == "edge" else "model.onnx")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_manifest_describes_the_folder(exported, name):
    src, edge, cpu = exported[name]
    for folder in (edge, cpu):
        m = _manifest(folder)
        listed = {f["path"] for f in m["files"]}
        assert listed | {"manifest.json"} == {p.name for p in folder.iterdir()}
        for f in m["files"]:
            data = (folder / f["path"]).read_bytes()
            assert f["bytes"] == len(data)
            assert f["sha256"] == hashlib.sha256(data).hexdigest()
        model = onnx.load(str(folder / "model.onnx"))
        assert m["opset"]["ai.onnx"] == 18
        ops = {n.op_type for n in model.graph.node}
        assert set(m["op_types"]["ai.onnx"]) == ops
        assert ("Conv" if name == "resnet_bottleneck" else "MatMul") in ops
        sess = ort.InferenceSession(str(folder / m["model"]),
                                    providers=["CPUExecutionProvider"])
        assert [i["name"] for i in m["inputs"]] == [i.name for i in sess.get_inputs()]
        assert [o["name"] for o in m["outputs"]] == [o.name for o in sess.get_outputs()]
        assert [i["shape"] for i in m["inputs"]] == [i.shape for i in sess.get_inputs()]
        assert all(i["dtype"] == "float32" for i in m["inputs"] + m["outputs"])
        assert m["pruning"]["params_after"] < m["pruning"]["params_cleaned"] <= \
            m["pruning"]["params_before"]
        assert (folder / "plan.json").is_file()
        readme = (folder / "README.txt").read_text()
        assert m["load"]["python"].splitlines()[4] in readme
        assert "Ort::Session session(env" in m["load"]["cpp"] and "Ort::Session" in readme
        assert str(folder.parent) not in json.dumps(m)  # nothing points at the build folder
    assert _manifest(cpu)["precision"] == "fp32" and _manifest(cpu)["ort_format"] is None
    assert not (cpu / "model.ort").exists()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ort_format_runs_and_lists_its_operators(exported, name):
    src, edge, cpu = exported[name]
    m = _manifest(edge)
    assert m["model"] == "model.ort" and m["model_format"] == "ort"
    config = (edge / "model.required_operators.config").read_text()
    assert "ai.onnx;" in config and str(edge.parent) not in config
    assert m["ort_format"]["required_operators"]["ai.onnx"]
    feeds = _feeds(m, 7)
    got = _run(edge / "model.ort", feeds)
    ref = _run(cpu / "model.onnx", feeds)
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert _relative(ref, got) <= m["fp16"]["tolerance"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fp16_model_is_within_the_stated_tolerance(exported, name):
    src, edge, cpu = exported[name]
    m = _manifest(edge)
    fp16 = m["fp16"]
    assert fp16["requested"] and fp16["kept"] and m["precision"] == "fp16"
    assert fp16["relative_error"] <= fp16["tolerance"] == 1e-2
    model = onnx.load(str(edge / "model.onnx"))
    big = [t for t in model.graph.initializer if np.prod(t.dims) >= 64]
    assert big and all(t.data_type == TensorProto.FLOAT16 for t in big
                       if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16))
    # the same pruning in fp32 (the cpu export), on inputs the export never saw
    assert json.loads((edge / "plan.json").read_text()) == \
        json.loads((cpu / "plan.json").read_text())
    for seed in (11, 12):
        feeds = _feeds(m, seed)
        ref = _run(cpu / "model.onnx", feeds)
        got = _run(edge / "model.onnx", feeds)
        assert all(g.dtype == np.float32 for g in got)  # inputs/outputs keep float32
        assert _relative(ref, got) <= fp16["tolerance"]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("converter", ["builtin", "onnxconverter-common"])
def test_fp16_converters(name, converter, tmp_path):
    """graphprune's own converter (used when onnxconverter-common is not installed) and
    onnxconverter-common's both give a model within the tolerance."""
    if converter == "onnxconverter-common":
        pytest.importorskip("onnxconverter_common.float16",
                            reason="onnxconverter-common is not installed",
                            exc_type=ImportError)
    src = tmp_path / "m.onnx"
    onnx.save(MODELS[name](), src)
    result = export(src, tmp_path / "out", target="cpu", fp16=True, fp16_converter=converter)
    fp16 = result.manifest["fp16"]
    assert fp16["converter"] == converter
    assert fp16["kept"], fp16
    assert fp16["relative_error"] <= fp16["tolerance"]
    assert result.manifest["model"] == "model.onnx"


def test_fp16_outside_the_tolerance_is_not_kept(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(MODELS["resnet_bottleneck"](), src)
    result = export(src, tmp_path / "out", target="edge", fp16_tolerance=1e-9)
    m = result.manifest
    assert m["precision"] == "fp32" and not m["fp16"]["kept"]
    assert "exceeds the tolerance" in m["fp16"]["reason"]
    assert m["fp16"]["relative_error"] > 1e-9
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert all(t.data_type != TensorProto.FLOAT16 for t in model.graph.initializer)
    assert m["check"]["relative_error"] <= 1e-3  # the .ort reproduces the fp32 model
    assert not (tmp_path / "out" / "model.fp16.onnx").exists()


def test_no_prune_exports_the_model_as_it_is(tmp_path):
    src = tmp_path / "m.onnx"
    original = MODELS["resnet_bottleneck"]()
    onnx.save(original, src)
    result = export(src, tmp_path / "out", target="cpu", no_prune=True)
    assert result.manifest["pruning"] is None
    assert not (tmp_path / "out" / "plan.json").exists()
    feeds = _feeds(result.manifest, 3)
    np.testing.assert_allclose(_run(tmp_path / "out" / "model.onnx", feeds)[0],
                               _run(src, feeds)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="--no-prune excludes"):
        export(src, tmp_path / "out2", no_prune=True, prune_options={"ratio": 0.3})
    code, stdout, stderr = _cli("export", src, "--no-prune", "-o", tmp_path / "cli",
                                cwd=tmp_path)
    assert code == 0 and "not pruned (--no-prune)" in stdout, stderr
    assert _manifest(tmp_path / "cli")["pruning"] is None


def test_opset_conversion(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(MODELS["resnet_bottleneck"](), src)
    result = export(src, tmp_path / "out", target="cpu", opset=17)
    assert result.manifest["opset"]["ai.onnx"] == 17
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    _load_in_fresh_process(tmp_path / "out", cwd=tmp_path)
    with pytest.raises(UsageError, match="--opset 99"):
        export(src, tmp_path / "out2", opset=99)


def test_python_snippet_runs_in_the_folder(exported):
    src, edge, cpu = exported["mha_postnorm"]
    snippet = _manifest(edge)["load"]["python"]
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                          cwd=edge, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "output (1, 8, 64) float32" in proc.stdout


def _ort_headers() -> Path | None:
    candidates = [os.environ.get("ORT_INCLUDE_DIR", ""), "/usr/include/onnxruntime",
                  "/usr/local/include/onnxruntime",
                  str(Path.home() / ".cache/graphprune/ort-headers/root/usr/include/onnxruntime")]
    for c in candidates:
        if c and (Path(c) / "onnxruntime_cxx_api.h").is_file():
            return Path(c)
    return None


def test_cpp_snippet_compiles_and_runs(exported, tmp_path):
    """The manifest's C++ snippet against the ONNX Runtime C++ API, linked to the library
    of the installed onnxruntime wheel (skipped without a compiler or the C++ headers)."""
    cxx, headers = shutil.which("g++") or shutil.which("c++"), _ort_headers()
    libs = sorted((Path(ort.__file__).parent / "capi").glob("libonnxruntime.so.*"))
    if not cxx or headers is None or not libs:
        pytest.skip("needs g++, the ONNX Runtime C++ headers (ORT_INCLUDE_DIR) and the "
                    "wheel's libonnxruntime.so")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libonnxruntime.so.1").symlink_to(libs[0])
    src, edge, cpu = exported["resnet_bottleneck"]
    for folder in (edge, cpu):
        (tmp_path / "main.cpp").write_text(_manifest(folder)["load"]["cpp"])
        exe = tmp_path / f"run-{folder.name}"
        build = subprocess.run([cxx, "-std=c++17", f"-I{headers}", str(tmp_path / "main.cpp"),
                                str(lib / "libonnxruntime.so.1"), f"-Wl,-rpath,{lib}", "-o",
                                str(exe)], capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, build.stderr[-3000:]
        run = subprocess.run([str(exe)], capture_output=True, text=True, cwd=folder,
                             timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        assert f"ran {_manifest(folder)['model']}: 1 outputs" in run.stdout


def test_refuses_a_non_empty_folder_unless_forced(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(MODELS["resnet_bottleneck"](), src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, stdout, stderr = _cli("export", src, "-o", out, cwd=tmp_path)
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "not empty" in stderr and "--force" in stderr
    assert (out / "keep.txt").read_text() == "mine"
    code, stdout, stderr = _cli("export", src, "-o", out, "--force", "-q", cwd=tmp_path)
    assert code == 0, stderr
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out"]  # no leftovers
    # an empty folder is fine without --force
    (tmp_path / "empty").mkdir()
    assert _cli("export", src, "-o", tmp_path / "empty", "-q", cwd=tmp_path)[0] == 0
    assert (tmp_path / "empty" / "manifest.json").is_file()


def test_force_never_deletes_the_input_model(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    src = out / "m.onnx"
    onnx.save(MODELS["resnet_bottleneck"](), src)
    code, _, stderr = _cli("export", src, "-o", out, "--force", cwd=tmp_path)
    assert code == 2 and "holds the input model" in stderr and src.is_file()


CLI_ERRORS = {
    "missing model": (["export", "missing.onnx", "-o", "o"], 3, "no such file"),
    "bad target": (["export", "m.onnx", "--target", "gpu"], 2, "--target"),
    "missing parent": (["export", "m.onnx", "-o", "nodir/out"], 2, "does not exist"),
    "file as folder": (["export", "m.onnx", "-o", "m.onnx"], 2, "not a folder"),
    "bad opset": (["export", "m.onnx", "-o", "o", "--opset", "99"], 2, "--opset 99"),
    "nothing to prune": (["export", "relu.onnx", "-o", "o"], 4, "--no-prune"),
    "no-prune with ratio": (["export", "m.onnx", "-o", "o", "--no-prune", "--ratio", "0.3"],
                            2, "--no-prune excludes"),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_export_errors_are_one_line(case, tmp_path):
    args, code, needle = CLI_ERRORS[case]
    onnx.save(MODELS["resnet_bottleneck"](), tmp_path / "m.onnx")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]),
              tmp_path / "relu.onnx")
    before = sorted(p.name for p in tmp_path.iterdir())
    got, stdout, stderr = _cli(*args, cwd=tmp_path)
    assert got == code, (stdout, stderr)
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in stderr and "Traceback" not in stdout
    if code == 2 and "Usage:" in stderr:  # click's own option check: usage, then the error
        assert lines[-1].startswith("Error:"), stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert needle in lines[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temps


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    onnx.save(MODELS["resnet_bottleneck"](), src)

    def broken(work, custom_ops=False):
        raise export_mod.GraphpruneError("simulated conversion failure")

    monkeypatch.setattr(export_mod, "_convert_to_ort", broken)
    with pytest.raises(export_mod.GraphpruneError, match="simulated"):
        export(src, tmp_path / "out", target="edge")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_same_input_gives_identical_models(tmp_path):
    """model.onnx, the plan and the operator list are byte-identical run to run (ONNX
    Runtime's ORT format writer itself is not: it orders some tables differently)."""
    src = tmp_path / "m.onnx"
    onnx.save(MODELS["mha_postnorm"](), src)
    a = export(src, tmp_path / "a", target="edge").manifest
    b = export(src, tmp_path / "b", target="edge").manifest
    stable = ("model.onnx", "plan.json", "model.required_operators.config")
    assert [f for f in a["files"] if f["path"] in stable] == \
        [f for f in b["files"] if f["path"] in stable]


# --- the builtin fp16 converter on what it must leave in fp32 --------------------------------

def _shape_arithmetic_model() -> onnx.ModelProto:
    """y = Resize(Reshape(x @ W, Cast(Floor(Cast(Shape(x)) * 1.0)))); scales stay float."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W")
    one = numpy_helper.from_array(np.ones(3, np.float32), "one")
    big = numpy_helper.from_array(np.array([1e6, 1e-9, -3.0, 0.0], np.float32), "big")
    roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    scales = numpy_helper.from_array(np.array([1, 1, 2], np.float32), "scales")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sf", "one"], ["sm"]),
        helper.make_node("Floor", ["sm"], ["fl"]),
        helper.make_node("Cast", ["fl"], ["si"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["h", "si"], ["r"]),
        helper.make_node("Resize", ["r", "roi", "scales"], ["y"], mode="nearest"),
        helper.make_node("ReduceSum", ["big"], ["z"], keepdims=1),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [1, 4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
                          [w, one, big, roi, scales])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_builtin_fp16_keeps_shape_arithmetic_and_fixed_float_inputs_in_fp32():
    model = _shape_arithmetic_model()
    m16 = to_fp16(model)
    onnx.checker.check_model(m16)
    inits = {t.name: t for t in m16.graph.initializer}
    assert inits["W"].data_type == TensorProto.FLOAT16
    assert inits["one"].data_type == TensorProto.FLOAT  # multiplies integers cast to float
    assert inits["scales"].data_type == TensorProto.FLOAT  # Resize's scales are float only
    big = numpy_helper.to_array(inits["big"])
    assert big.dtype == np.float16
    assert big[0] == np.float16(65504) and big[1] > 0 and big[3] == 0  # clamped, tiny kept
    inferred = onnx.shape_inference.infer_shapes(m16, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert types["sm"] == TensorProto.FLOAT and types["h"] == TensorProto.FLOAT16
    assert [o.type.tensor_type.elem_type for o in m16.graph.output] == [TensorProto.FLOAT] * 2
    assert m16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 4, 8)).astype(np.float32)}
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    got = ort.InferenceSession(m16.SerializeToString()).run(None, feeds)
    assert got[0].dtype == np.float32 and got[0].shape == ref[0].shape
    assert _relative([ref[0]], [got[0]]) < 1e-2


def test_builtin_fp16_refuses_subgraphs():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    g = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=then)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(export_mod.Fp16Unsupported, match="subgraphs"):
        to_fp16(model)


def test_external_data_models(tmp_path, monkeypatch):
    """Models over 2 GB keep their weights in model.onnx.data (simulated: every model is
    treated as large); the ORT format cannot hold them and says so."""
    import graphprune.io

    monkeypatch.setattr(graphprune.io, "needs_external_data", lambda weights: True)
    src = tmp_path / "m.onnx"
    onnx.save(MODELS["resnet_bottleneck"](), src)
    result = export(src, tmp_path / "out", target="cpu", fp16=True)
    m = result.manifest
    assert m["external_data"] and m["fp16"]["kept"]
    assert "model.onnx.data" in {f["path"] for f in m["files"]}
    model = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False)
    assert {e.value for t in model.graph.initializer for e in t.external_data
            if e.key == "location"} == {"model.onnx.data"}
    _load_in_fresh_process(tmp_path / "out", cwd=tmp_path)
    with pytest.raises(UsageError, match="ORT format cannot hold"):
        export(src, tmp_path / "edge", target="edge")
    assert not (tmp_path / "edge").exists()
