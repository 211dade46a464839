"""Building and loading libgraphprune_kernels.

The C++ sources live in the repository's ``kernels/`` folder; a non-editable install ships a copy
of them (``_sources/``) and the library built by ``pip install`` (``setup.py``), next to this
file. :func:`build` runs ``kernels/fetch_headers.sh`` (ONNX Runtime's C API headers), CMake and
the compiler into ``$GRAPHPRUNE_KERNELS_CACHE`` (default
``~/.cache/graphprune/kernels``)``/<hash of the sources>/``; :func:`library_path` returns the
shipped library, else that one, building it on first use.

Opt-in: :func:`build_cuda` / :func:`cuda_library_path` build ``libgraphprune_kernels_cuda.so``
(``kernels/cuda/``: SparseMatMul for ONNX Runtime's CUDAExecutionProvider) with ``nvcc`` into
``<cache>/cuda-<hash of its sources>/``; never part of the default CPU build.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Optional

LIBRARY_NAME = "libgraphprune_kernels.so"
CUDA_LIBRARY_NAME = "libgraphprune_kernels_cuda.so"
_SOURCE_GLOBS = ("CMakeLists.txt", "fetch_headers.sh", "src/*.cpp", "src/*.h", "src/*.inc")
# The CUDA library: its own folder plus the CPU packer it links (and the top-level CMakeLists).
_CUDA_SOURCE_GLOBS = ("CMakeLists.txt", "fetch_headers.sh", "cuda/CMakeLists.txt", "cuda/*.cpp",
                      "cuda/*.cu", "cuda/*.h", "src/pack.cpp", "src/sparse_matmul.h",
                      "src/kernel_info.cpp", "src/kernel_info.h")
# RegisterCustomOps of the CUDA library adds the CPU library's operators (read from this
# variable) to its "graphprune" domain: ONNX Runtime refuses two domains of one name.
CPU_LIBRARY_ENV = "GRAPHPRUNE_KERNELS_CPU_LIBRARY"
# The installed package: the library ``pip install`` built and the sources it copied live here.
_PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_SOURCES = "_sources"


class KernelsUnavailable(RuntimeError):
    """The kernel library cannot be built or loaded here; the message says why."""


def source_dir() -> Path:
    """The ``kernels/`` source folder: ``$GRAPHPRUNE_KERNELS_SRC``, else the source checkout's
    (editable install), else the copy a non-editable install ships."""
    env = os.environ.get("GRAPHPRUNE_KERNELS_SRC")
    if env:
        path = Path(env)
        if not (path / "CMakeLists.txt").is_file():
            raise KernelsUnavailable(f"GRAPHPRUNE_KERNELS_SRC={env} has no CMakeLists.txt")
        return path
    checkout = _PACKAGE_DIR.parents[1]
    packaged = _PACKAGE_DIR / PACKAGED_SOURCES
    # pyproject.toml tells a checkout from site-packages, which might hold another "kernels".
    if (checkout / "pyproject.toml").is_file() and (checkout / "kernels" / "CMakeLists.txt").is_file():
        return checkout / "kernels"
    if (packaged / "CMakeLists.txt").is_file():
        return packaged
    raise KernelsUnavailable(
        f"kernel sources not found (neither {checkout / 'kernels'} nor {packaged}); reinstall "
        "graphprune (`pip install .` ships them) or set GRAPHPRUNE_KERNELS_SRC to the kernels/ folder")


def cache_root() -> Path:
    env = os.environ.get("GRAPHPRUNE_KERNELS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graphprune" / "kernels"


def _source_files(src: Path, globs=_SOURCE_GLOBS):
    files = set()
    for pattern in globs:
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


def find_nvcc() -> Optional[str]:
    """The CUDA compiler: ``$CUDACXX``, else ``nvcc`` on PATH, else ``/usr/local/cuda/bin/nvcc``;
    None when there is none."""
    env = os.environ.get("CUDACXX")
    if env:
        return shutil.which(env)
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if os.access(default, os.X_OK) else None


def _nvcc_or_raise() -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        raise KernelsUnavailable(
            "no CUDA compiler found (install the CUDA toolkit and put nvcc on PATH, or set CUDACXX)"
            + (f"; CUDACXX={os.environ['CUDACXX']} is not executable" if os.environ.get("CUDACXX") else ""))
    return nvcc


def cuda_source_hash(src: Optional[Path] = None) -> str:
    """Hash of the CUDA library's sources, of the settings that change its build and of the
    CUDA compiler (its ``--version``). Raises :class:`KernelsUnavailable` without nvcc."""
    src = src or source_dir()
    nvcc = _nvcc_or_raise()
    h = hashlib.sha256()
    for f in _source_files(src, _CUDA_SOURCE_GLOBS):
        h.update(str(f.relative_to(src)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    for var in ("GRAPHPRUNE_ORT_INCLUDE", "CXX", "CXXFLAGS", "CUDAFLAGS", "CUDAARCHS", "CUDAHOSTCXX"):
        h.update(f"{var}={os.environ.get(var, '')}\0".encode())
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelsUnavailable(f"{nvcc} --version failed: {exc}") from exc
    h.update(f"nvcc={nvcc}\0{version}\0".encode())
    return h.hexdigest()[:16]


def _cuda_build_dir() -> Path:
    return cache_root() / f"cuda-{cuda_source_hash()}"


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def find_headers(src: Optional[Path] = None) -> str:
    """The ONNX Runtime include directory (runs ``kernels/fetch_headers.sh``)."""
    src = src or source_dir()
    if shutil.which("bash") is None:
        raise KernelsUnavailable("bash is needed to locate the ONNX Runtime headers")
    proc = subprocess.run(["bash", str(src / "fetch_headers.sh")], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise KernelsUnavailable("ONNX Runtime C API headers are unavailable: "
                                 + (_tail(proc.stderr, 10) or f"fetch_headers.sh exited {proc.returncode}"))
    return proc.stdout.strip().splitlines()[-1]


def find_cmake() -> Optional[str]:
    """``cmake`` on PATH, else the one ``pip install cmake`` put next to this Python (a venv that
    is not activated); None when there is none."""
    return shutil.which("cmake") or shutil.which("cmake", path=sysconfig.get_path("scripts"))


def _compiler() -> Optional[str]:
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx)
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cmake_build(out_dir: Path, lib_name: str, target: str, built_rel: str, options, force: bool,
                 verbose: bool, src: Optional[Path] = None) -> Path:
    """Configures ``src`` (default :func:`source_dir`) with ``options`` and builds ``target`` into
    ``out_dir/lib_name`` (one build at a time per folder; ``built_rel``: where the build tree puts
    the library)."""
    lib = out_dir / lib_name
    src = src or source_dir()
    cmake = find_cmake()
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
        include = find_headers(src)
        with tempfile.TemporaryDirectory(prefix="build-", dir=out_dir) as tmp:
            cfg = [cmake, "-S", str(src), "-B", tmp, "-DCMAKE_BUILD_TYPE=Release",
                   f"-DORT_INCLUDE_DIR={include}", f"-DCMAKE_CXX_COMPILER={cxx}", *options]
            if shutil.which("ninja"):
                cfg += ["-G", "Ninja"]
            log = []
            build_cmd = [cmake, "--build", tmp, "--target", target, "--parallel", str(os.cpu_count() or 2)]
            for cmd in (cfg, build_cmd):
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
            built = Path(tmp) / built_rel
            if not built.is_file():
                raise KernelsUnavailable(f"the build produced no {lib_name}")
            staged = out_dir / (lib_name + ".tmp")
            shutil.copy2(built, staged)
            os.replace(staged, lib)
            (out_dir / "headers.txt").write_text(include + "\n")
    return lib


def _cpu_build(out_dir: Path, force: bool, verbose: bool, src: Optional[Path] = None) -> Path:
    return _cmake_build(out_dir, LIBRARY_NAME, "graphprune_kernels", LIBRARY_NAME,
                        ["-DGRAPHPRUNE_CUDA=OFF"], force, verbose, src)


def build_into(out_dir: Path, src: Optional[Path] = None, verbose: bool = False) -> Path:
    """Builds the CPU library from ``src`` into ``out_dir`` (a scratch folder: the build also
    leaves its log and lock there), bypassing the cache; the package build's step (setup.py)."""
    return _cpu_build(Path(out_dir).resolve(), force=True, verbose=verbose, src=src)


def shipped_library() -> Optional[Path]:
    """The library ``pip install`` built into the package, if any; ignored while
    ``$GRAPHPRUNE_KERNELS_SRC`` points at other sources."""
    lib = _PACKAGE_DIR / LIBRARY_NAME
    if os.environ.get("GRAPHPRUNE_KERNELS_SRC") or not lib.is_file():
        return None
    return lib


def build(force: bool = False, verbose: bool = False) -> Path:
    """Builds the library (if needed, or always with ``force``) and returns its path.

    Not needed where the package ships one (:func:`shipped_library`); ``force`` rebuilds into the
    cache all the same, but :func:`library_path` keeps preferring the shipped library.
    Raises :class:`KernelsUnavailable` with the reason when cmake, a C++ compiler or the ONNX
    Runtime headers are missing, or the build fails. CPU only, also where nvcc exists (see
    :func:`build_cuda`).
    """
    shipped = shipped_library()
    if shipped is not None and not force:
        return shipped
    out_dir = _build_dir()
    lib = out_dir / LIBRARY_NAME
    if lib.is_file() and not force:
        return lib
    return _cpu_build(out_dir, force, verbose)


def build_cuda(force: bool = False, verbose: bool = False) -> Path:
    """Builds ``libgraphprune_kernels_cuda.so`` (SparseMatMul for the CUDAExecutionProvider; needs
    nvcc, no GPU) if needed, or always with ``force``, and returns its path. Cached by the hash of
    its sources and compiler like the CPU library. Raises :class:`KernelsUnavailable` when nvcc,
    cmake, a C++ compiler or the ONNX Runtime headers are missing, or the build fails."""
    nvcc = _nvcc_or_raise()
    out_dir = _cuda_build_dir()
    lib = out_dir / CUDA_LIBRARY_NAME
    if lib.is_file() and not force:
        return lib
    return _cmake_build(out_dir, CUDA_LIBRARY_NAME, "graphprune_kernels_cuda",
                        f"cuda/{CUDA_LIBRARY_NAME}",
                        ["-DGRAPHPRUNE_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}"], force, verbose)


def cuda_library_path(build_if_missing: bool = True) -> str:
    """Path of libgraphprune_kernels_cuda.so, built on first use (see :func:`build_cuda`)."""
    lib = _cuda_build_dir() / CUDA_LIBRARY_NAME
    if lib.is_file():
        return str(lib)
    if not build_if_missing:
        raise KernelsUnavailable(f"{lib} is not built (python -m graphprune.kernels build --cuda)")
    return str(build_cuda())


def library_path(build_if_missing: bool = True) -> str:
    """Path of libgraphprune_kernels.so: the one shipped in the package, else the cache's, built
    on first use (see :func:`build`)."""
    shipped = shipped_library()
    if shipped is not None:
        return str(shipped)
    lib = _build_dir() / LIBRARY_NAME
    if lib.is_file():
        return str(lib)
    if not build_if_missing:
        raise KernelsUnavailable(f"{lib} is not built (python -m graphprune.kernels build)")
    return str(build())


def how_to_load(ops=("SparseMatMul",), model: str = "the model") -> str:
    """What to tell someone whose runtime lacks the library (one paragraph)."""
    listed = ", ".join(f"graphprune.{op}" for op in ops)
    return (f"{model} uses graphprune's sparse operators ({listed}), which live in "
            f"{LIBRARY_NAME}: register it before creating the session, e.g. in Python "
            f"`so = onnxruntime.SessionOptions(); so.register_custom_ops_library(path)` or "
            f"`graphprune.kernels.session(model)`, in C++ "
            f"`Ort::SessionOptions::RegisterCustomOpsLibrary(path)`; "
            f"`python -m graphprune.kernels build` builds it and prints its path")


_loaded = {}


def isa() -> str:
    """The code path the library picked on this CPU: ``avx512``, ``avx2`` or ``generic``."""
    path = library_path()
    if path not in _loaded:
        _loaded[path] = ctypes.CDLL(path)
    fn = _loaded[path].graphprune_kernels_isa
    fn.restype = ctypes.c_char_p
    return fn().decode()


def _register(so, cuda: bool) -> None:
    if not cuda:
        path = library_path()
    else:
        # The CUDA library registers the CPU library's operators into its own domain (ONNX
        # Runtime refuses a second "graphprune" domain), so nodes can fall back to the CPU.
        cpu, path = library_path(), cuda_library_path()
        old = os.environ.get(CPU_LIBRARY_ENV)
        os.environ[CPU_LIBRARY_ENV] = cpu
    try:
        so.register_custom_ops_library(path)
    except KernelsUnavailable:
        raise
    except Exception as exc:  # the library refused to register (e.g. an ONNX Runtime too old)
        raise KernelsUnavailable(str(exc)) from exc
    finally:
        if cuda:
            if old is None:
                os.environ.pop(CPU_LIBRARY_ENV, None)
            else:
                os.environ[CPU_LIBRARY_ENV] = old


def session_options(threads: int = 2, cuda: bool = False):
    """``onnxruntime.SessionOptions`` with the library registered and ``threads`` intra-op
    threads (the kernels split their work over that pool). ``cuda``: register the CUDA library
    (built with :func:`build_cuda` on first use), which brings the CPU operators along."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    _register(so, cuda)
    return so


def session(model_or_path, threads: int = 2, options=None, providers=None, cuda: bool = False):
    """An ``onnxruntime.InferenceSession`` for a model (path, bytes or ``onnx.ModelProto``) that
    uses ``graphprune`` operators. ``options``: a SessionOptions to start from (the library is
    registered into it; its thread settings are kept). ``cuda``: register the CUDA library too
    (see :func:`session_options`); providers then default to CUDA, then CPU."""
    import onnxruntime as ort

    if options is None:
        so = session_options(threads, cuda=cuda)
    elif cuda:
        so = options
        _register(so, cuda=True)
    else:
        so = options
        so.register_custom_ops_library(library_path())
    model = model_or_path
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    default = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(model, sess_options=so, providers=providers or default)
