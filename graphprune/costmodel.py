"""Measured cost model for the sparse operators: is the sparse op faster than the dense one?

Whether a sparse kernel beats ONNX Runtime's dense MatMul/Conv depends on the shape, the batch,
the pattern, the sparsity, the CPU and the thread count; the crossover moves a lot between them
(bench/kernels.py). So the sparsity pass does not guess: it times both versions of each distinct
node shape as a one-node model in ONNX Runtime, on this machine, with the session's thread count,
and keeps the answers in a small JSON cache keyed by everything that changes them.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CACHE_VERSION = 1


@dataclass(frozen=True)
class Timing:
    dense_ms: float
    sparse_ms: float

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms if self.sparse_ms > 0 else float("inf")


def cache_path() -> Path:
    env = os.environ.get("GRAPHPRUNE_COSTMODEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "graphprune" / \
        "costmodel.json"


def machine_key(threads: int) -> str:
    """What, besides the node, changes a timing: CPU, kernel ISA and build, runtime, threads."""
    import onnxruntime as ort

    from .kernels import isa

    return (f"{_cpu_name()}|{isa()}|lib{_library_id()}|ort{ort.__version__}|t{threads}"
            f"|v{CACHE_VERSION}")


def _library_id() -> str:
    """A digest of the kernel library in use: timings of an older build do not carry over."""
    import hashlib

    from .kernels import library_path

    return hashlib.sha256(Path(library_path()).read_bytes()).hexdigest()[:12]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class CostModel:
    """Times dense vs sparse one-node models, with a persistent cache.

    `measure(key, dense, sparse, feeds)` returns the cached Timing for `key` or runs both models
    (alternating, best median of `rounds`) and stores it."""

    def __init__(self, threads: int = 2, path: Path | None = None, use_cache: bool = True,
                 min_seconds: float = 0.05, min_runs: int = 10, rounds: int = 2):
        self.threads = threads
        self.path = path or cache_path()
        self.use_cache = use_cache
        self.min_seconds, self.min_runs, self.rounds = min_seconds, min_runs, rounds
        self._machine = machine_key(threads)
        self._entries = self._load() if use_cache else {}
        self.measured = 0  # timings run in this process (not from the cache)

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data.get(self._machine, {}) if isinstance(data, dict) else {}

    def _save(self) -> None:
        try:
            data = json.loads(self.path.read_text()) if self.path.is_file() else {}
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data[self._machine] = self._entries
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".costmodel.", dir=self.path.parent)
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:  # a read-only cache only costs re-measuring next time
            pass

    def measure(self, key: str, dense: onnx.ModelProto, sparse: onnx.ModelProto,
                feeds: dict[str, np.ndarray]) -> Timing:
        hit = self._entries.get(key)
        if hit is not None:
            return Timing(**hit)
        timing = self._time(dense, sparse, feeds)
        self.measured += 1
        if self.use_cache:
            self._entries[key] = asdict(timing)
            self._save()
        return timing

    def _time(self, dense, sparse, feeds) -> Timing:
        import onnxruntime as ort

        from .kernels import session_options

        def make(model, custom: bool):
            so = session_options(self.threads) if custom else ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            sess = ort.InferenceSession(model.SerializeToString(), so,
                                        providers=["CPUExecutionProvider"])
            return lambda: sess.run(None, feeds)

        runs = {"dense": make(dense, False), "sparse": make(sparse, True)}
        best = {name: float("inf") for name in runs}
        for _ in range(self.rounds):
            for name, fn in runs.items():
                best[name] = min(best[name], median_ms(fn, self.min_runs, self.min_seconds))
        return Timing(dense_ms=best["dense"], sparse_ms=best["sparse"])


def median_ms(fn: Callable[[], object], min_runs: int, min_seconds: float) -> float:
    """Median ms of `fn` after 3 warm-up calls, over at least `min_runs` calls and
    `min_seconds` in a row (2000 calls at most)."""
    for _ in range(3):  # warm-up: first runs allocate and pre-pack
        fn()
    samples, start = [], time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
        if len(samples) >= 2000:
            break
    return statistics.median(samples) * 1e3


# --------------------------------------------------------------------------------------------
# one-node models


def dense_node_model(op: str, x_shape: tuple, weight: np.ndarray, bias: np.ndarray | None,
                     activation: str, conv_attrs: dict | None = None,
                     residual: bool = False) -> onnx.ModelProto:
    """The dense reference: MatMul (+ Add) or Conv, (+ Add of input R, a shortcut), then the
    activation, as ORT would run it inside the model (ORT fuses bias, shortcut and activation
    into its conv itself)."""
    inits = [numpy_helper.from_array(weight.astype(np.float32), "W")]
    nodes = []
    if op == "Conv":
        inputs = ["X", "W"]
        if bias is not None:
            inits.append(numpy_helper.from_array(bias.astype(np.float32), "B"))
            inputs.append("B")
        nodes.append(helper.make_node("Conv", inputs, ["Z"], **(conv_attrs or {})))
    else:
        nodes.append(helper.make_node("MatMul", ["X", "W"], ["Z0" if bias is not None else "Z"]))
        if bias is not None:
            inits.append(numpy_helper.from_array(bias.astype(np.float32), "B"))
            nodes.append(helper.make_node("Add", ["Z0", "B"], ["Z"]))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))]
    if residual:
        nodes[-1].output[0] = "Z1"
        nodes.append(helper.make_node("Add", ["Z1", "R"], ["Z"]))
        inputs.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, None))
    if activation == "relu":
        nodes.append(helper.make_node("Relu", ["Z"], ["Y"]))
    elif activation == "gelu":
        nodes.append(helper.make_node("Gelu", ["Z"], ["Y"]))
    else:
        nodes[-1].output[0] = "Y"
    graph = helper.make_graph(nodes, "dense", inputs, [helper.make_tensor_value_info(
        "Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def sparse_node_model(node: onnx.NodeProto, inits: list[onnx.TensorProto],
                      x_shape: tuple) -> onnx.ModelProto:
    """A one-node model around a graphprune sparse node (its input renamed X, its shortcut
    input, if any, R, its output Y)."""
    from .kernels import DOMAIN, OPSET_VERSION

    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.input[0], copy.output[0] = "X", "Y"
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))]
    if len(copy.input) > 5 and copy.input[5]:
        copy.input[5] = "R"
        inputs.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, None))
    graph = helper.make_graph([copy], "sparse", inputs, [helper.make_tensor_value_info(
        "Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                   helper.make_opsetid(DOMAIN, OPSET_VERSION)])
