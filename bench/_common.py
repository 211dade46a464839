"""Shared helpers for the bench/ scripts: machine info, one-measurement-per-subprocess, results.

Every measurement runs in a fresh Python process so that its peak RSS (``ru_maxrss``) belongs to
that run alone and no import cache, allocator arena or warmed-up kernel leaks from one run into
the next.  The child prints one JSON line (via ``emit``); the parent collects it with
``run_child``.  ``write_results`` puts the JSON (with ``machine_info()``) and the markdown table
side by side under ``bench/results/`` so a result file always says where it was measured.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _bench_dir_last() -> None:
    """A script run as ``python bench/X.py`` has bench/ on sys.path ahead of site-packages, so
    bench/kernels.py hides the PyPI ``kernels`` package that transformers (5.x) imports while it
    builds a model: the BERT export then failed with an ImportError. bench/ stays importable,
    only last."""
    here = str(Path(__file__).resolve().parent)
    for entry in list(sys.path):
        if entry and os.path.abspath(entry) == here:
            sys.path.remove(entry)
            sys.path.append(entry)


_bench_dir_last()

_MARK = "@@BENCH_JSON@@ "

# Prepended to every child's code.  Memory helpers read the kernel's figures, not Python's,
# because most of the memory in question (protobuf, onnxruntime, torch) lives in C++.
CHILD_PRELUDE = f'''
import json as _json, os as _os, resource as _resource, sys as _sys
_sys.path.insert(0, {str(REPO_ROOT)!r})

def rss_mb():
    """Resident set size now, MiB (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _os.sysconf("SC_PAGE_SIZE") / 2**20

def peak_mb():
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    return _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss / 1024

def hwm_mb():
    """Peak RSS of this process's own address space, MiB (VmHWM, /proc/self/status).

    Unlike ru_maxrss, VmHWM starts afresh at exec: ru_maxrss of a child also counts the RSS its
    parent had when it forked, so a big parent inflates every child's ru_maxrss.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None

def emit(obj):
    """Hand the result to the parent: one marked JSON line on stdout."""
    _sys.stdout.write({_MARK!r} + _json.dumps(obj, default=str) + "\\n")
    _sys.stdout.flush()
'''

_PACKAGES = ("graphprune", "onnx", "onnxruntime", "onnxscript", "torch", "torchvision",
             "torch-pruning", "numpy", "protobuf")


def machine_info() -> dict:
    """Where and with what the numbers were measured (the machine is shared, so load too)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    git = {}
    try:
        git["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, text=True,
                                       capture_output=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, text=True,
                                capture_output=True, timeout=10).stdout
        git["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "nproc": os.cpu_count(),
        "nproc_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gib": mem_gib,
        "loadavg_1_5_15": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git": git,
    }


def run_child(code: str, timeout: float) -> dict:
    """Run ``code`` in a fresh ``python -c`` and return the dict it passed to ``emit``.

    The code sees ``rss_mb()``, ``peak_mb()`` (ru_maxrss), ``hwm_mb()`` (VmHWM) and ``emit(obj)``
    (see CHILD_PRELUDE) and the repo root on sys.path.  Keep the calling process small: a child's
    ru_maxrss is at least the parent's RSS at fork time (compare with ``hwm_mb()``).  Always returns a dict with ``ok`` and ``child_wall_s``; when the child
    crashes, times out or emits nothing, ``ok`` is False and ``error`` says why (with the tail of
    its stderr), so one bad run never stops a benchmark.
    """
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD_PRELUDE + code], text=True,
                              capture_output=True, timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or "")[-2000:] if isinstance(exc.stderr, str) else ""
        return {"ok": False, "error": f"timed out after {timeout:.0f} s",
                "stderr_tail": tail, "child_wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            result = json.loads(line[len(_MARK):])
    if result is None:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"ok": False, "error": f"exit {proc.returncode}: " + (lines[-1] if lines else
                                                                     "no output"),
                "stderr_tail": proc.stderr[-2000:], "child_wall_s": wall}
    result.setdefault("ok", proc.returncode == 0)
    result["child_wall_s"] = wall
    if proc.returncode != 0 and result["ok"]:
        result["ok"], result["error"] = False, f"exit {proc.returncode} after emitting"
    return result


def write_results(name: str, rows: list, table_md: str, out_dir: str | os.PathLike | None = None,
                  extra: dict | None = None) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` (machine info + rows + extra) and ``<out>/<name>.md``; print the table."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine_info(), **(extra or {}), "rows": rows}
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    md_path.write_text(table_md.rstrip() + "\n")
    print(table_md)
    return json_path, md_path


def model_feeds(path, batch: int, seq: int = 128, seed: int = 0) -> dict:
    """Random inputs for the model file at `path` (its weights are not read): a dynamic dim
    is `batch` on axis 0 and `seq` elsewhere; float inputs standard normal, integer inputs
    token ids in [0, 1000), except an attention mask (ones) and token type ids (zeros)."""
    import numpy as np
    import onnx

    rng = np.random.default_rng(seed)
    model = onnx.load(str(path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in weights:
            continue
        tensor = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
                (batch if axis == 0 else seq) for axis, d in enumerate(tensor.shape.dim)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        elif "mask" in vi.name:
            feeds[vi.name] = np.ones(dims, dtype)
        elif "type" in vi.name:
            feeds[vi.name] = np.zeros(dims, dtype)
        else:
            feeds[vi.name] = rng.integers(0, 1000, dims).astype(dtype)
    return feeds
