"""Building and loading libgraphprune_kernels.

The C++ sources live in the repository's ``kernels/`` folder. :func:`build` runs
``kernels/fetch_headers.sh`` (ONNX Runtime's C API headers), CMake and the compiler into
``$GRAPHPRUNE_KERNELS_CACHE`` (default ``~/.cache/graphprune/kernels``)``/<hash of the sources>/``;
:func:`library_path` returns the library, building it on first use.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

LIBRARY_NAME = "libgraphprune_kernels.so"
_SOURCE_GLOBS = ("CMakeLists.txt", "fetch_headers.sh", "src/*.cpp", "src/*.h", "src/*.inc")


class KernelsUnavailable(RuntimeError):
    """The kernel library cannot be built or loaded here; the message says why."""


def source_dir() -> Path:
    """The ``kernels/`` source folder (``$GRAPHPRUNE_KERNELS_SRC`` overrides)."""
    env = os.environ.get("GRAPHPRUNE_KERNELS_SRC")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "kernels"
    if not (path / "CMakeLists.txt").is_file():
        raise KernelsUnavailable(
            f"kernel sources not found at {path} (graphprune must be installed from a source "
            "checkout, e.g. `pip install -e .`, or set GRAPHPRUNE_KERNELS_SRC to the kernels/ folder)")
    return path


def cache_root() -> Path:
    env = os.environ.get("GRAPHPRUNE_KERNELS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graphprune" / "kernels"


def _source_files(src: Path):
    files = set()
    for pattern in _SOURCE_GLOBS:
        files.update(p for p in src.glob(pattern) if p.is_file())
    return sorted(files)


def source_hash(src: Optional[Path] = None) -> str:
    """Hash of the sources and of the settings that change the build."""
    src = src or source_dir()
    h = hashlib.sha256()
    for f in _source_files(src):
        h.update(str(f.relative_to(src)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    for var in ("GRAPHPRUNE_ORT_INCLUDE", "CXX", "CXXFLAGS"):
        h.update(f"{var}={os.environ.get(var, '')}\0".encode())
    return h.hexdigest()[:16]


def _build_dir() -> Path:
    return cache_root() / source_hash()


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def find_headers() -> str:
    """The ONNX Runtime include directory (runs ``kernels/fetch_headers.sh``)."""
    src = source_dir()
    if shutil.which("bash") is None:
        raise KernelsUnavailable("bash is needed to locate the ONNX Runtime headers")
    proc = subprocess.run(["bash", str(src / "fetch_headers.sh")], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise KernelsUnavailable("ONNX Runtime C API headers are unavailable: "
                                 + (_tail(proc.stderr, 10) or f"fetch_headers.sh exited {proc.returncode}"))
    return proc.stdout.strip().splitlines()[-1]


def _compiler() -> Optional[str]:
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx)
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def build(force: bool = False, verbose: bool = False) -> Path:
    """Builds the library (if needed, or always with ``force``) and returns its path.

    Raises :class:`KernelsUnavailable` with the reason when cmake, a C++ compiler or the ONNX
    Runtime headers are missing, or the build fails.
    """
    out_dir = _build_dir()
    lib = out_dir / LIBRARY_NAME
    if lib.is_file() and not force:
        return lib
    src = source_dir()
    cmake = shutil.which("cmake")
    if cmake is None:
        raise KernelsUnavailable("cmake is not installed (pip install cmake, or apt-get install cmake)")
    cxx = _compiler()
    if cxx is None:
        raise KernelsUnavailable("no C++ compiler found (apt-get install g++, or set CXX)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; others wait, then reuse it
        if lib.is_file() and not force:
            return lib
        include = find_headers()
        with tempfile.TemporaryDirectory(prefix="build-", dir=out_dir) as tmp:
            cfg = [cmake, "-S", str(src), "-B", tmp, "-DCMAKE_BUILD_TYPE=Release",
                   f"-DORT_INCLUDE_DIR={include}", f"-DCMAKE_CXX_COMPILER={cxx}"]
            if shutil.which("ninja"):
                cfg += ["-G", "Ninja"]
            log = []
            for cmd in (cfg, [cmake, "--build", tmp, "--parallel", str(os.cpu_count() or 2)]):
                proc = subprocess.run(cmd, capture_output=True, text=True)
                log.append("$ " + " ".join(cmd) + "\n" + proc.stdout + proc.stderr)
                if verbose:
                    print(log[-1])
                if proc.returncode != 0:
                    (out_dir / "build.log").write_text("\n".join(log))
                    raise KernelsUnavailable(
                        f"building the kernels failed ({Path(cmd[0]).name} exited {proc.returncode}; "
                        f"full log in {out_dir / 'build.log'}):\n{_tail(proc.stdout + proc.stderr)}")
            (out_dir / "build.log").write_text("\n".join(log))
            built = Path(tmp) / LIBRARY_NAME
            if not built.is_file():
                raise KernelsUnavailable(f"the build produced no {LIBRARY_NAME}")
            staged = out_dir / (LIBRARY_NAME + ".tmp")
            shutil.copy2(built, staged)
            os.replace(staged, lib)
            (out_dir / "headers.txt").write_text(include + "\n")
    return lib


def library_path(build_if_missing: bool = True) -> str:
    """Path of libgraphprune_kernels.so, built on first use (see :func:`build`)."""
    lib = _build_dir() / LIBRARY_NAME
    if lib.is_file():
        return str(lib)
    if not build_if_missing:
        raise KernelsUnavailable(f"{lib} is not built (python -m graphprune.kernels build)")
    return str(build())


_loaded = {}


def isa() -> str:
    """The code path the library picked on this CPU: ``avx512``, ``avx2`` or ``generic``."""
    path = library_path()
    if path not in _loaded:
        _loaded[path] = ctypes.CDLL(path)
    fn = _loaded[path].graphprune_kernels_isa
    fn.restype = ctypes.c_char_p
    return fn().decode()


def session_options(threads: int = 2):
    """``onnxruntime.SessionOptions`` with the library registered and ``threads`` intra-op
    threads (the kernels split their work over that pool)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        so.register_custom_ops_library(library_path())
    except KernelsUnavailable:
        raise
    except Exception as exc:  # the library refused to register (e.g. an ONNX Runtime too old)
        raise KernelsUnavailable(str(exc)) from exc
    return so


def session(model_or_path, threads: int = 2, options=None, providers=None):
    """An ``onnxruntime.InferenceSession`` for a model (path, bytes or ``onnx.ModelProto``) that
    uses ``graphprune`` operators. ``options``: a SessionOptions to start from (the library is
    registered into it; its thread settings are kept)."""
    import onnxruntime as ort

    if options is None:
        so = session_options(threads)
    else:
        so = options
        so.register_custom_ops_library(library_path())
    model = model_or_path
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    return ort.InferenceSession(model, sess_options=so,
                                providers=providers or ["CPUExecutionProvider"])
