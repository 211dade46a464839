"""Bad input gets one clear `error:` line, a non-zero exit, no traceback and no file written."""
import os
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper

from models.blocks import BLOCKS


def _cli(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "graphprune.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def workdir(tmp_path):
    onnx.save(BLOCKS["resnet_basic"](0), tmp_path / "net.onnx")
    return tmp_path


def _relu_only(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)


def _integer_ops(path):
    """ConvInteger on quantized activations and weights: a model quantized into operators that
    compute on integers (QDQ models, with DequantizeLinear before float ops, prune)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    inits = [helper.make_tensor("xs", TensorProto.FLOAT, [], [0.05]),
             helper.make_tensor("xz", TensorProto.UINT8, [], [128]),
             helper.make_tensor("wq", TensorProto.UINT8, [8, 4, 1, 1], [1, 2, 3, 4] * 8),
             helper.make_tensor("w2q", TensorProto.UINT8, [4, 8, 1, 1], [2, 1, 1, 3] * 8)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q1"),
             helper.make_node("ConvInteger", ["xq", "wq", "xz"], ["h"], name="conv1"),
             helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT, name="cast1"),
             helper.make_node("QuantizeLinear", ["hf", "xs", "xz"], ["hq"], name="q2"),
             helper.make_node("ConvInteger", ["hq", "w2q", "xz"], ["h2"], name="conv2"),
             helper.make_node("Cast", ["h2"], ["y"], to=TensorProto.FLOAT, name="cast2")]
    g = helper.make_graph(nodes, "integer_ops", [x], [y], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)


CASES = {
    "missing file": (["missing.onnx"], 3, "no such file"),
    "corrupt file": (["corrupt.onnx"], 3, "not an ONNX model"),
    "not onnx": (["notes.onnx"], 3, "not an ONNX model"),
    "directory": (["adir"], 3, "is a directory"),
    "bad ratio": (["net.onnx", "--ratio", "1.5"], 2, "--ratio"),
    "negative ratio": (["net.onnx", "--ratio", "-0.1"], 2, "--ratio"),
    "unknown criterion": (["net.onnx", "--criterion", "magic"], 2, "--criterion"),
    "nothing prunable": (["relu.onnx"], 4, "no channel group can be pruned"),
    "integer-operator model": (["intops.onnx"], 4, "prune the float model (or a QDQ export)"),
    "missing output dir": (["net.onnx", "-o", "nodir/out.onnx"], 2, "does not exist"),
    "overwrite input": (["net.onnx", "-o", "net.onnx"], 2, "refusing to overwrite"),
    "bad plan": (["net.onnx", "--plan", "plan.json", "-o", "out.onnx"], 2, "not a graphprune plan"),
    "missing plan": (["net.onnx", "--plan", "nope.json", "-o", "out.onnx"], 2, "no such file"),
    "truncated model": (["truncated.onnx"], 3, "not an ONNX model"),
    "missing external data": (["ext.onnx"], 3, "external weight data"),
    "sensitivity without target": (["net.onnx", "--sensitivity", "plan.json"], 2,
                                   "needs a model-wide target"),
    "both targets": (["net.onnx", "--target-flops", "0.5", "--target-params", "0.5"], 2,
                     "exclude each other"),
    "bad sensitivity ratios": (["sensitivity", "net.onnx", "--ratios", "a,b"], 2, "--ratios"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_cleanly(case, workdir):
    args, code, needle = CASES[case]
    (workdir / "corrupt.onnx").write_bytes(b"\x08\x07\x12\xff\xff\xff garbage")
    (workdir / "notes.onnx").write_text("hello, this is not a model\n")
    (workdir / "adir").mkdir()
    (workdir / "plan.json").write_text("{not json")
    data = (workdir / "net.onnx").read_bytes()
    (workdir / "truncated.onnx").write_bytes(data[: len(data) // 2])
    from models.blocks import save_with_external_data
    save_with_external_data(BLOCKS["resnet_basic"](0), workdir / "ext.onnx")
    for f in workdir.glob("ext.onnx.*"):
        f.unlink()
    _relu_only(workdir / "relu.onnx")
    _integer_ops(workdir / "intops.onnx")
    before = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}

    rc, out, err = _cli(*args, cwd=workdir)

    assert rc == code, (rc, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert needle in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and (lines[-1].startswith("error:") or lines[-1].startswith("Error:"))
    after = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
    assert after == before, "a failed run must not write or modify any file"


def test_successful_run_writes_model_and_plan(workdir):
    rc, out, err = _cli("net.onnx", "--ratio", "0.5", "-o", "out.onnx", "--save-plan",
                        "plan.json", "--report", "report.json", cwd=workdir)
    assert rc == 0, err
    assert "groups:" in out and "params:" in out
    model = onnx.load(workdir / "out.onnx")
    onnx.checker.check_model(model, full_check=True)
    # replaying the saved plan gives the same bytes (invariant 5 and plan round trip)
    rc, _, err = _cli("net.onnx", "--plan", "plan.json", "-o", "replay.onnx", cwd=workdir)
    assert rc == 0, err
    assert (workdir / "replay.onnx").read_bytes() == (workdir / "out.onnx").read_bytes()
    assert not [p for p in os.listdir(workdir) if p.endswith(".tmp")]
    # written like any new file (mkstemp's temporaries are 0600: a serving process running as
    # another user could not read the model)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("out.onnx", "plan.json", "report.json", "replay.onnx"):
        assert (workdir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def _cli_with_bug(args, cwd, debug=False):
    """The CLI with prune() replaced by one that fails the way a graphprune bug would."""
    code = ("import sys, graphprune.cli as cli\n"
            "def boom(*a, **k): raise KeyError('a tensor the analysis forgot')\n"
            "cli.prune = boom\n"
            "sys.argv = ['graphprune', *sys.argv[1:]]\n"
            "cli.main()\n")
    env = dict(os.environ)
    env.pop("GRAPHPRUNE_DEBUG", None)
    if debug:
        env["GRAPHPRUNE_DEBUG"] = "1"
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def test_internal_error_is_one_line_and_writes_nothing(workdir):
    before = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
    rc, out, err = _cli_with_bug(["net.onnx", "-o", "out.onnx"], workdir)
    assert rc == 70, (rc, out, err)
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: internal error (KeyError")
    assert "GRAPHPRUNE_DEBUG=1" in lines[-1] and "nothing was written" in lines[-1]
    assert {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()} == before

    rc, _, err = _cli_with_bug(["net.onnx", "-o", "out.onnx"], workdir, debug=True)
    assert rc != 0 and "Traceback" in err and "a tensor the analysis forgot" in err
