"""DeepSparse 1.8 as a benchmark baseline, run from a virtual environment of its own.

DeepSparse (Neural Magic, end-of-life; the 1.8 wheels are for CPython 3.8-3.11, x86 AVX2+/ARM)
cannot share graphprune's environment: it pins ``onnx<1.15`` and (through sparsezoo)
``numpy<2``.  So ``ensure_venv`` builds a separate venv with python3.11 and
``run_deepsparse`` times a model there by running ``_deepsparse_runner.py`` in a subprocess.

What DeepSparse 1.8 accepts (its engine embeds an onnxruntime that loads the graph first and
runs whatever DeepSparse's own compiler does not take):

* ONNX IR version <= 9 and ai.onnx opset <= 19, and no kernel for opset-19 Reshape.
  ``run_deepsparse`` hands it a compatible copy when it can: IR 10 is restamped 9 (when no
  4-bit types are used) and an opset-19+ graph goes through ``onnx.version_converter`` down to
  18 here, in the main environment, whose onnx knows the newer opsets.  torch's dynamo
  exporter writes IR 10 / opset 20, and e.g. its ``Gelu`` has no older form, so such a graph
  is refused with that reason.  Legacy exports (``dynamo=False``, opset 17, IR 8) load as-is.
* Static shapes.  The engine sets axis 0 to ``batch_size`` itself (a fixed or a symbolic
  batch axis both work: resnet18 exported either way compiles 100 %), but with any other
  symbolic axis left (BERT's ``seq``) it compiles 0 % and runs all of it in the onnxruntime
  fallback.  The runner fixes every input shape (axis 0 = batch, other symbolic axes from
  ``dims``) in a temporary copy; DeepSparse's own ``input_shapes=`` would rewrite the
  caller's file in place.
* Some ops DeepSparse's compiler rejects, leaving them (or, for a single-subgraph model, all
  of it) to the fallback: ReduceMean over two axes (the dynamo export of ResNet's global
  pooling: 0 % compiled; the legacy export's GlobalAveragePool is fine), Gather with
  non-scalar indices on a runtime input (BERT's embedding look-up: ~87 % compiled).  The
  result's ``fraction_of_supported_ops`` says how much ran in DeepSparse; below
  ``min_supported`` (default 1 %) the run is refused, with DeepSparse's own diagnosis.

Timing on a shared machine: another busy process on the same cores stretches DeepSparse's
times far more than onnxruntime's (seen here: resnet18 at batch 1 on 2 cores, 8 ms quiet,
25-250 ms with another benchmark running; BERT-base 67 ms -> 600-1500 ms).  Measure when the machine
is idle and prefer ``min_ms`` to ``median_ms`` when it is not.

Measured here (AMD EPYC, AVX-512 VNNI, 2 cores, quiet; fp32; 90 % = smallest magnitudes of each
Conv/MatMul/Gemm weight zeroed, ``magnitude_sparsify``), median ms dense -> 90 % sparse:
resnet18 224x224 batch 1: 8.0 -> 9.6 (slower), batch 16: 86 -> 40; BERT-base seq 128 batch 1:
67 -> 30-38, batch 16: 920 -> 315.

    py = ensure_venv()
    r = run_deepsparse("model.onnx", 16, threads=2, dims={"seq": 128})
    r["median_ms"], r["engine"]

``python bench/_deepsparse.py MODEL.onnx [--batch-size B] [--dim seq=128] [--sparsify 0.9]``
does the same from the shell (``--sparsify`` first zeroes that fraction of every Conv / MatMul /
Gemm weight, smallest magnitudes first, to show DeepSparse's sparse kernels at work).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RUNNER = Path(__file__).resolve().with_name("_deepsparse_runner.py")

# deepsparse 1.8's own metadata already says onnx<1.15 and (sparsezoo) numpy<2; they are
# repeated so that a resolver change cannot pull an onnx/numpy the engine's python code
# cannot import.  Python must be <3.12 (Requires-Python of the 1.8 wheels).
PINS = ("deepsparse==1.8.*", "numpy>=1.21,<2", "onnx>=1.13,<1.15")
MAX_IR_VERSION = 9
# Its loader takes opset 19, but it lacks kernels for some opset-19 ops (Reshape-19), so newer
# graphs are converted down to 18.
MAX_OPSET = 18
_STAMP = ".graphprune-deepsparse"
# Keep DeepSparse / sparsezoo from trying to reach their analytics endpoint.
_ENV = {"NM_DISABLE_ANALYTICS": "1"}


class DeepSparseUnavailable(RuntimeError):
    """DeepSparse could not be installed, imported or made to run the model."""


def _log(msg: str) -> None:
    print(f"[deepsparse] {msg}", file=sys.stderr, flush=True)


def default_venv_path() -> Path:
    env = os.environ.get("GRAPHPRUNE_DEEPSPARSE_VENV")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "graphprune" / "deepsparse-venv"


def _base_python() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    for name in ("python3.11", "/usr/bin/python3.11"):
        found = shutil.which(name)
        if found:
            return found
    raise DeepSparseUnavailable("DeepSparse 1.8 needs CPython <= 3.11 and no python3.11 was found "
                                "on PATH")


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env.update(_ENV)
    return env


def _tail(text: str, n: int = 25) -> str:
    # pip here prints one "Location ... is ignored" warning per package for the local
    # mirrors; they bury the real error.
    lines = [ln for ln in text.splitlines() if ln.strip() and "is ignored: it is neither" not in ln]
    return "\n".join(lines[-n:])


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _check_import(py: Path) -> str:
    """deepsparse's version inside the venv; raises DeepSparseUnavailable if it won't import
    (the import also loads the engine library and checks the CPU: AVX2 or better on x86)."""
    code = "import deepsparse, numpy, onnx; print(deepsparse.__version__)"
    proc = subprocess.run([str(py), "-I", "-c", code], check=False, capture_output=True, text=True,
                          env=_child_env(), timeout=300)
    if proc.returncode != 0:
        raise DeepSparseUnavailable(f"deepsparse does not import in {py}:\n"
                                    f"{_tail(proc.stderr + proc.stdout)}")
    return proc.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_venv(path: str | os.PathLike | None = None) -> Path:
    """Python of a venv with DeepSparse 1.8 in it, creating and filling the venv if needed.

    ``path`` defaults to ``$GRAPHPRUNE_DEEPSPARSE_VENV`` or ``~/.cache/graphprune/
    deepsparse-venv``.  A stamp file records a finished install, so later calls are cheap.
    """
    venv = Path(path).expanduser() if path else default_venv_path()
    py = _venv_python(venv)
    stamp = venv / _STAMP
    want = " ".join(PINS)
    if py.exists() and stamp.exists() and stamp.read_text().splitlines()[:1] == [want]:
        return py
    with _locked(venv):
        if py.exists() and stamp.exists() and stamp.read_text().splitlines()[:1] == [want]:
            return py  # another process finished it while we waited
        if not py.exists():
            base = _base_python()
            _log(f"creating venv {venv} with {base}")
            proc = subprocess.run([base, "-m", "venv", str(venv)], check=False, capture_output=True,
                                  text=True, env=_child_env())
            if proc.returncode != 0:
                raise DeepSparseUnavailable(f"could not create venv {venv}:\n"
                                            f"{_tail(proc.stderr + proc.stdout)}")
        _log(f"pip install {want} into {venv} (takes a minute)")
        proc = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check",
                               "--no-input", *PINS], check=False, capture_output=True,
                              text=True, env=_child_env())
        if proc.returncode != 0:
            raise DeepSparseUnavailable(f"pip install {want} failed (exit {proc.returncode}):\n"
                                        f"{_tail(proc.stdout + proc.stderr)}")
        version = _check_import(py)
        freeze = subprocess.run([str(py), "-m", "pip", "freeze", "--disable-pip-version-check"],
                                check=False, capture_output=True, text=True,
                                env=_child_env()).stdout
        stamp.write_text(want + "\n" + freeze)
        _log(f"deepsparse {version} ready in {venv}")
    return py


# ---------------------------------------------------------------------------- model files

def _external_locations(model) -> set[str]:
    from onnx.external_data_helper import uses_external_data

    locs = set()
    for t in model.graph.initializer:
        if uses_external_data(t):
            locs.update(e.value for e in t.external_data if e.key == "location")
    return locs


def _save_beside(model, src: Path, dst_dir: Path) -> Path:
    """Save graph-only `model` into dst_dir, linking src's external-data files next to it."""
    import onnx

    for loc in _external_locations(model):
        target = dst_dir / loc
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src.resolve().parent / loc, target)
    dst = dst_dir / src.name
    onnx.save(model, str(dst))
    return dst


def compat_problem(model) -> tuple[bool, bool]:
    """(IR too new, opset too new) for DeepSparse 1.8."""
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    return model.ir_version > MAX_IR_VERSION, opset > MAX_OPSET


def compatible_copy(onnx_path: str | os.PathLike, tmpdir: str | os.PathLike) -> Path:
    """`onnx_path` itself if DeepSparse 1.8 can load it, else a down-stamped/converted copy
    in tmpdir.  Raises DeepSparseUnavailable when no opset-19 form exists."""
    import onnx

    src = Path(onnx_path)
    model = onnx.load(str(src), load_external_data=False)
    ir_new, opset_new = compat_problem(model)
    if not (ir_new or opset_new):
        return src
    if opset_new:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, MAX_OPSET)
        except Exception as exc:  # noqa: BLE001 - onnx raises bare RuntimeError/assertion text
            raise DeepSparseUnavailable(
                f"{src.name}: opset {max(o.version for o in model.opset_import)} graph cannot "
                f"be converted to opset {MAX_OPSET} for DeepSparse 1.8: "
                f"{str(exc).strip().splitlines()[-1]}. Export with opset <= {MAX_OPSET} (e.g. "
                f"torch.onnx.export(..., dynamo=False, opset_version=17))") from None
    if model.ir_version > MAX_IR_VERSION:
        four_bit = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
        if any(t.data_type in four_bit for t in model.graph.initializer):
            raise DeepSparseUnavailable(f"{src.name}: 4-bit tensors need ONNX IR 10; "
                                        f"DeepSparse 1.8 loads IR <= {MAX_IR_VERSION}")
        model.ir_version = MAX_IR_VERSION
    return _save_beside(model, src, Path(tmpdir))


def magnitude_sparsify(src: str | os.PathLike, dst: str | os.PathLike,
                       sparsity: float = 0.9) -> dict:
    """Copy `src` to `dst` with the smallest-magnitude `sparsity` fraction of every Conv /
    ConvTranspose / MatMul / Gemm weight initializer set to zero (per tensor, unstructured).
    Returns {"tensors": n, "zeroed": count, "total": count}.  Weights stay in dst's own file
    (or beside it as ``<name>.data`` when over 1.5 GB)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    weight_inputs = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}
    names = set()
    for node in model.graph.node:
        for i in weight_inputs.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] in inits:
                names.add(node.input[i])
    zeroed = total = 0
    for name in sorted(names):
        t = inits[name]
        w = numpy_helper.to_array(t)
        if w.ndim < 2 or not np.issubdtype(w.dtype, np.floating):
            continue
        k = round(sparsity * w.size)
        if k == 0:
            continue
        flat = np.abs(w).ravel()
        cut = np.partition(flat, k - 1)[k - 1]
        mask = np.abs(w) <= cut
        # Ties at the threshold: zero exactly k entries.
        if mask.sum() > k:
            idx = np.argsort(flat, kind="stable")[:k]
            mask = np.zeros(w.size, dtype=bool)
            mask[idx] = True
            mask = mask.reshape(w.shape)
        w = np.where(mask, np.zeros((), w.dtype), w)
        t.CopyFrom(numpy_helper.from_array(w, name))
        zeroed += int(mask.sum())
        total += w.size
    big = bool(_external_locations(onnx.load(str(src), load_external_data=False))) or \
        model.ByteSize() > 1_500_000_000
    dst = Path(dst)
    if big:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))
    return {"tensors": len(names), "zeroed": zeroed, "total": total}


# ---------------------------------------------------------------------------- running

def _diagnose(cmd: list[str], timeout: float) -> list[str]:
    """DeepSparse's own words on what it could not compile: the runner again, compile only,
    with the engine's diagnose logging on."""
    cmd = [c for c in cmd]
    cmd[cmd.index("--warmup") + 1] = "0"
    cmd[cmd.index("--runs") + 1] = "0"
    try:
        proc = subprocess.run(cmd + ["--diagnose"], check=False, capture_output=True, text=True,
                              env=_child_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return []
    keep = []
    for line in proc.stderr.splitlines():
        line = line.strip()
        text = line.split("] ", 1)[-1] if line.startswith("[nm_ort") else line
        wanted = (line.startswith("Message:") or "Unsupported" in text or "FAILED" in text
                  or ("supports" in text and "% of the network" in text))
        if wanted and text not in keep:
            keep.append(text)
    return keep[:12]


def run_deepsparse(onnx_path: str | os.PathLike, batch_size: int, *, threads: int = 2,
                   warmup: int = 5, runs: int = 20, dims: dict[str, int] | None = None,
                   timeout: float = 900, venv: str | os.PathLike | None = None,
                   min_supported: float = 0.01, diagnose: bool = False) -> dict:
    """Time `onnx_path` in DeepSparse at `batch_size` on `threads` cores.

    Returns {"median_ms", "min_ms", "runs" (ms each), "engine" ("deepsparse 1.8.0"),
    "num_cores", "batch_size", "input_shapes", "fraction_of_supported_ops", "isa",
    "compile_s"}.  ``dims`` gives values to dynamic axes other than the batch (by the axis's
    dim_param name, e.g. {"seq": 128}, or "input:axis").  Raises DeepSparseUnavailable with the
    reason when the engine cannot be installed, refuses or fails on the model, or compiles less
    than ``min_supported`` of it (the rest would be timing its onnxruntime fallback).  With
    ``diagnose``, a partly compiled model's result also gets "unsupported": DeepSparse's lines
    on what it left out (one more compile).
    """
    py = ensure_venv(venv)
    with tempfile.TemporaryDirectory(prefix="gp-deepsparse-") as tmp:
        path = compatible_copy(onnx_path, tmp)
        cmd = [str(py), "-I", str(RUNNER), str(path), "--batch-size", str(batch_size),
               "--threads", str(threads), "--warmup", str(warmup), "--runs", str(runs)]
        for name, value in (dims or {}).items():
            cmd += ["--dim", f"{name}={int(value)}"]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_child_env(),
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeepSparseUnavailable(f"{Path(onnx_path).name}: DeepSparse run timed out "
                                        f"after {timeout:.0f} s") from None
        result = None
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith("{"):
                try:
                    result = json.loads(line)
                except json.JSONDecodeError:
                    continue
                break
        where = f"{Path(onnx_path).name} at batch {batch_size}"
        if result is None or "error" in result or proc.returncode != 0:
            reason = (result or {}).get("error") or f"runner exited {proc.returncode}"
            if result is None:  # a crash: the engine's last words are on stderr
                reason += "\n" + _tail(proc.stderr, 12)
            raise DeepSparseUnavailable(f"{where}: {reason}")
        fraction = result.get("fraction_of_supported_ops", 1.0)
        if fraction < min_supported:
            why = "\n".join(_diagnose(cmd, timeout))
            raise DeepSparseUnavailable(f"{where}: DeepSparse compiled only {fraction:.0%} of the "
                                        f"model (the rest runs in its onnxruntime fallback):\n"
                                        f"{why}")
        if diagnose and fraction < 1.0:
            result["unsupported"] = _diagnose(cmd, timeout)
    return result


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Time an ONNX model in DeepSparse 1.8 (own venv).")
    ap.add_argument("model")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--sparsify", type=float, default=None, metavar="FRACTION",
                    help="zero this fraction of each Conv/MatMul/Gemm weight first")
    args = ap.parse_args(argv)
    dims = {}
    for item in args.dim:
        name, _, value = item.rpartition("=")
        dims[name] = int(value)
    with tempfile.TemporaryDirectory(prefix="gp-deepsparse-") as tmp:
        model = args.model
        if args.sparsify is not None:
            model = str(Path(tmp) / Path(args.model).name)
            info = magnitude_sparsify(args.model, model, args.sparsify)
            _log(f"zeroed {info['zeroed']}/{info['total']} weights in {info['tensors']} tensors")
        try:
            r = run_deepsparse(model, args.batch_size, threads=args.threads, warmup=args.warmup,
                               runs=args.runs, dims=dims)
        except DeepSparseUnavailable as exc:
            print(f"DeepSparse unavailable: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
