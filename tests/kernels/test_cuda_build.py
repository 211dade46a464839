"""libgraphprune_kernels_cuda (kernels/cuda/): graphprune.SparseMatMul for the CUDAExecutionProvider.

What runs where:
- build: wherever nvcc, cmake and the ONNX Runtime headers are (no GPU needed); skipped otherwise.
  Cached by the hash of the sources like the CPU library (about 20 s the first time).
- registration: the CUDA library registers the CPU library's operators into its own "graphprune"
  domain; checked in a CPU-only session (no GPU needed).
- emulation: the kernels' per-thread code (kernels/cuda/spmm_device.h) compiled for the host by
  kernels/cuda/emulate.cpp and run block by block, thread by thread, against numpy: checks the
  indexing of both kernels without a GPU (not the CUDA specifics: barriers, shuffles, streams).
- GPU: the operator in an ONNX Runtime session on the CUDAExecutionProvider against numpy; only
  where onnxruntime has that provider and a GPU is present (skipped otherwise).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from graphprune import kernels as gk
from kernels_testlib import FORMAT_IDS, FORMATS, assert_close, masked, reference, sparse_model

ACTS = {"none": 0, "relu": 1, "gelu": 2}


# ---------------------------------------------------------------------------------------------
# helpers


def _tool_output(cmd):
    if shutil.which(cmd[0]) is None:
        return None
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def _gpu_unavailable_reason():
    """None where a session can run on the CUDAExecutionProvider, else why not."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no CUDA driver (libcuda.so.1) on this machine"
    if cuda.cuInit(0) != 0:
        return "cuInit failed: no usable GPU"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "no GPU"
    return None


# ---------------------------------------------------------------------------------------------
# build


@pytest.fixture(scope="module")
def cuda_library():
    if gk.find_nvcc() is None:
        pytest.skip("no CUDA compiler (nvcc) here: the CUDA library cannot be built")
    if gk.find_cmake() is None:
        pytest.skip("cmake is not installed")
    try:
        gk.find_headers()
    except gk.KernelsUnavailable as exc:
        pytest.skip(f"ONNX Runtime headers unavailable here: {exc}")
    # nvcc, cmake and headers are here: from now on a failure is a failure, not a skip.
    return gk.cuda_library_path()


def test_cuda_library_builds_and_exports_register(cuda_library):
    path = Path(cuda_library)
    assert path.name == gk.CUDA_LIBRARY_NAME and path.is_file()
    # Cached by source hash: a second call does not rebuild.
    assert gk.build_cuda() == path
    assert path.parent.name == f"cuda-{gk.cuda_source_hash()}"
    # Loads without a GPU or driver (static CUDA runtime; libcuda is only needed at the first
    # CUDA call) and exports the ONNX Runtime entry point.
    lib = ctypes.CDLL(str(path))
    assert lib.RegisterCustomOps is not None
    info = lib.graphprune_kernels_cuda_build_info
    info.restype = ctypes.c_char_p
    text = info().decode()
    assert "api=21" in text
    if not os.environ.get("CUDAARCHS"):
        assert "archs=80,90" in text
    symbols = _tool_output(["nm", "-D", "--defined-only", str(path)])
    if symbols is not None:
        exported = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
        assert {"RegisterCustomOps", "graphprune_kernels_cuda_build_info"} <= exported
    needed = _tool_output(["readelf", "-d", str(path)])
    if needed is not None:
        assert "libcudart" not in needed       # linked statically
        assert "libonnxruntime" not in needed  # the runtime hands us its API table


def test_cpu_library_stays_free_of_cuda(library):
    for tool in (["readelf", "-d", library], ["nm", "-D", library]):
        out = _tool_output(tool)
        if out is None:
            pytest.skip(f"{tool[0]} is not installed")
        assert "cuda" not in out.lower()


# ---------------------------------------------------------------------------------------------
# registration (no GPU needed)


def test_cuda_library_brings_the_cpu_operators(cuda_library, library):
    """One registration serves CUDA and CPU: on a CPU-only session the CPU kernel runs."""
    rng = np.random.default_rng(1)
    w = masked(rng.standard_normal((64, 48)).astype(np.float32), "bsr", (4, 1))
    bias = rng.standard_normal(48).astype(np.float32)
    model = sparse_model(w, "bsr", (4, 1), bias=bias, activation="relu")
    sess = gk.session(model, cuda=True, providers=["CPUExecutionProvider"])
    assert os.environ.get(gk._build.CPU_LIBRARY_ENV) is None  # restored after registering
    x = rng.standard_normal((5, 64)).astype(np.float32)
    assert_close(sess.run(None, {"X": x})[0], reference(x, w, bias, "relu"))


def test_cpu_library_path_errors_are_reported(cuda_library, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setenv(gk._build.CPU_LIBRARY_ENV, "/nonexistent/libgraphprune_kernels.so")
    with pytest.raises(Exception, match="cannot be loaded"):
        ort.SessionOptions().register_custom_ops_library(cuda_library)
    monkeypatch.setenv(gk._build.CPU_LIBRARY_ENV, cuda_library)
    with pytest.raises(Exception, match="names the CUDA library itself"):
        ort.SessionOptions().register_custom_ops_library(cuda_library)


# ---------------------------------------------------------------------------------------------
# host emulation of the kernels (no GPU needed)


@pytest.fixture(scope="module")
def emulator():
    cxx = shutil.which(os.environ.get("CXX", "")) if os.environ.get("CXX") else (
        shutil.which("c++") or shutil.which("g++") or shutil.which("clang++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = gk.source_dir()
    sources = [src / "cuda" / "emulate.cpp", src / "cuda" / "gpu_layout.cpp", src / "src" / "pack.cpp"]
    headers = [src / "cuda" / "spmm_device.h", src / "cuda" / "gpu_layout.h", src / "src" / "sparse_matmul.h"]
    h = hashlib.sha256(cxx.encode())
    for f in sources + headers:
        h.update(f.read_bytes())
    out = gk.cache_root() / f"cuda-emulate-{h.hexdigest()[:16]}" / "libgraphprune_cuda_emulate.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        # -O1: GCC 12's -O2 identical-code folding (-fipa-icf) has been seen merging template
        # instances that differ only in a constant bound; the emulator need not be fast.
        cmd = [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", f"-I{src / 'cuda'}", f"-I{src / 'src'}",
               *map(str, sources), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        os.replace(tmp, out)
    lib = ctypes.CDLL(str(out))
    fn = lib.graphprune_cuda_emulate
    p = ctypes.c_void_p
    fn.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int, ctypes.c_int, p, ctypes.c_size_t, p, ctypes.c_size_t, p,
                   ctypes.c_size_t, p, ctypes.c_int64, p, ctypes.c_int, p, ctypes.c_int,
                   ctypes.c_char_p, ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def run(sw, x, bias=None, activation="none", force=0):
        values = np.ascontiguousarray(sw.values, dtype=np.float32)
        indices = np.ascontiguousarray(sw.indices, dtype=np.int64)
        row_ptr = None if sw.row_ptr is None else np.ascontiguousarray(sw.row_ptr, dtype=np.int64)
        x = np.ascontiguousarray(x, dtype=np.float32)
        bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        y = np.full((x.shape[0], sw.n), np.nan, dtype=np.float32)
        br, bc = sw.block if sw.format == "bsr" else (1, 1)
        err = ctypes.create_string_buffer(1024)
        rc = fn(sw.format.encode(), sw.k, sw.n, br, bc, sw.nm[0], sw.nm[1],
                values.ctypes.data, values.size, indices.ctypes.data, indices.size,
                None if row_ptr is None else row_ptr.ctypes.data,
                0 if row_ptr is None else row_ptr.size, x.ctypes.data, x.shape[0],
                None if bias is None else bias.ctypes.data, ACTS[activation], y.ctypes.data,
                force, err, len(err))
        assert rc == 0, err.value.decode()
        return y

    return run


@pytest.mark.parametrize("k,n", [(37, 29), (130, 67), (600, 140), (1, 1)])
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_emulated_kernels_match_numpy(emulator, fmt, block, k, n):
    """Both kernels (rows: M <= 8, tile: any M) on odd shapes; k = 600: three K panels."""
    rng = np.random.default_rng(k * 31 + n)
    w = masked(rng.standard_normal((k, n)).astype(np.float32), fmt, block)
    sw = gk.pack(w, fmt, block=block, nm=block)
    bias = rng.standard_normal(n).astype(np.float32)
    for m in (1, 2, 3, 5, 8, 9, 33, 70):
        x = rng.standard_normal((m, k)).astype(np.float32)
        for activation in ("none", "relu", "gelu"):
            b = None if activation == "none" else bias
            ref = reference(x, w, b, activation)
            for force in ((0, 2) if m <= 8 else (0,)):  # 0: as the op picks, 2: the tile kernel
                assert_close(emulator(sw, x, b, activation, force), ref)


@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_emulated_kernels_large_k_sparse(emulator, fmt, block):
    """K = 4000 (16 panels, many of them empty in some columns) at 95% sparsity."""
    rng = np.random.default_rng(17)
    w = masked(rng.standard_normal((4000, 24)).astype(np.float32), fmt, block, sparsity=0.95)
    sw = gk.pack(w, fmt, block=block, nm=block)
    for m in (1, 7, 40):
        x = rng.standard_normal((m, 4000)).astype(np.float32)
        assert_close(emulator(sw, x), reference(x, w))


def test_emulated_empty_weight(emulator):
    """A weight with no non-zero at all: Y = act(bias)."""
    w = np.zeros((20, 10), dtype=np.float32)
    sw = gk.pack(w, "bsr", block=(4, 1))
    bias = np.linspace(-1, 1, 10).astype(np.float32)
    x = np.ones((12, 20), dtype=np.float32)
    assert_close(emulator(sw, x, bias, "relu"), reference(x, w, bias, "relu"))


# ---------------------------------------------------------------------------------------------
# on a GPU (skipped without one)


@pytest.fixture(scope="module")
def gpu(cuda_library, library):
    reason = _gpu_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return cuda_library


def cuda_session(model):
    """A session whose graphprune nodes must run on the CUDA provider (no CPU fallback)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return gk.session(model, options=so, cuda=True, providers=["CUDAExecutionProvider"])


@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
@pytest.mark.parametrize("k,n", [(37, 29), (130, 67), (600, 140)])
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_cuda_matches_numpy(gpu, fmt, block, k, n, activation):
    rng = np.random.default_rng(k * 7 + n)
    w = masked(rng.standard_normal((k, n)).astype(np.float32), fmt, block)
    bias = rng.standard_normal(n).astype(np.float32)
    sess = cuda_session(sparse_model(w, fmt, block, bias=bias, activation=activation))
    for m in (1, 2, 3, 7, 8, 9, 16, 64, 130):
        x = rng.standard_normal((m, k)).astype(np.float32)
        (y,) = sess.run(None, {"X": x})
        assert y.shape == (m, n) and y.dtype == np.float32
        assert_close(y, reference(x, w, bias, activation))


@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_cuda_no_bias_leading_dims_and_large_k(gpu, fmt, block):
    rng = np.random.default_rng(3)
    w = masked(rng.standard_normal((4000, 40)).astype(np.float32), fmt, block, sparsity=0.9)
    sw = gk.pack(w, fmt, block=block, nm=block)
    node, inits = gk.make_sparse_matmul_node(sw, "X", "Y")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3, None, 4000])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(gk.DOMAIN, gk.OPSET_VERSION)])
    sess = cuda_session(model)
    for rows in (1, 5, 0):
        x = rng.standard_normal((2, 3, rows, 4000)).astype(np.float32)
        (y,) = sess.run(None, {"X": x})
        assert y.shape == (2, 3, rows, 40)
        assert_close(y, reference(x, w))


def test_cuda_runtime_weights(gpu):
    """Weights fed as graph inputs (CPU inputs of the op): packed and copied on every run."""
    rng = np.random.default_rng(9)
    w = gk.mask_blocks(rng.standard_normal((45, 30)).astype(np.float32), 0.6, (4, 4))
    sw = gk.pack(w, "bsr", block=(4, 4), index_dtype=np.int64)
    node, _ = gk.make_sparse_matmul_node(sw, "X", "Y", prefix="w")
    names = list(node.input)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", 45]),
         helper.make_tensor_value_info(names[1], TensorProto.FLOAT, list(sw.values.shape)),
         helper.make_tensor_value_info(names[2], TensorProto.INT64, list(sw.indices.shape)),
         helper.make_tensor_value_info(names[3], TensorProto.INT64, list(sw.row_ptr.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(gk.DOMAIN, gk.OPSET_VERSION)])
    sess = cuda_session(model)
    for m in (1, 40):
        x = rng.standard_normal((m, 45)).astype(np.float32)
        feeds = {"X": x, names[1]: sw.values, names[2]: sw.indices, names[3]: sw.row_ptr}
        assert_close(sess.run(None, feeds)[0], reference(x, w))
