"""Calibration data and the activation statistics the data-aware criteria and compensation use.

`CalibrationSet` reads a folder (or one file) of arrays or images and yields feeds for the
model's inputs in batches. `collect_stats` runs the canonical graph in ONNX Runtime with the
inputs of every channel *consumer* (the Conv/Gemm/MatMul weights that read a prunable group's
channels) exposed as extra graph outputs, and accumulates per channel: the number of rows
(batch × positions), the sum, the sum of squares, and the input Gram matrix XᵀX, streaming
batch by batch so that memory stays bounded by one batch plus the accumulators.

Without data, `data_free_stats` derives per-channel means and second moments from the
BatchNorms folded into the producers: if a BN's running statistics match the data, its output
channel c is distributed with mean β_c and standard deviation |γ_c|; we assume it is Gaussian,
N(β_c, γ_c²), and push that through the elementwise activations between the BN and the
consumer by numerical integration (ReLU, Clip, HardSwish, SiLU, ...; average pooling keeps the
mean, max pooling and anything else stops the trace). Cross-channel correlations are unknown
without data and taken to be zero, so data-free statistics carry no Gram matrix.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import helper

from .analysis import Analysis, Group
from .coupling import ParamSlice, Space, attr
from .errors import UsageError
from .ir import Graph

ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
PREPROCESS = ("imagenet", "unit", "raw")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGENET_CROP = 0.875  # the standard evaluation transform: resize to 256, centre-crop 224
DEFAULT_BATCH = 16  # samples per ONNX Runtime run when the model's batch axis is dynamic
GRAM_LIMIT = 4096  # consumers reading more channels get per-channel statistics only


# ---------------------------------------------------------------- which tensors
@dataclass
class ConsumerRef:
    """One weight that reads a group's channels: the node, the slice and the tensor it reads."""

    group: Group
    space: Space  # (tensor the node reads, channel axis)
    param: ParamSlice
    node: onnx.NodeProto


def consumer_refs(graph: Graph, groups: Iterable[Group]) -> list[ConsumerRef]:
    """The consumer weight slices of `groups` with the node each belongs to."""
    refs = []
    for group in groups:
        for space, param in group.params:
            if param.role != "consumer":
                continue
            node = next((n for n in graph.consumers(space[0])
                         if len(n.input) > 1 and n.input[1] == param.weight
                         and n.input[0] == space[0]), None)
            if node is not None:
                refs.append(ConsumerRef(group, space, param, node))
    return refs


def needed_tensors(graph: Graph, analysis: Analysis) -> dict[str, int]:
    """Tensor → channel axis for every input of a consumer of a prunable group."""
    return {ref.space[0]: ref.space[1] for ref in consumer_refs(graph, analysis.prunable)}


# ---------------------------------------------------------------- statistics
@dataclass
class TensorStats:
    """Per-channel statistics of one tensor along its channel axis."""

    axis: int
    count: int = 0  # rows accumulated: samples × positions
    sum: np.ndarray | None = None
    sumsq: np.ndarray | None = None
    gram: np.ndarray | None = None  # Σ x xᵀ over rows, [C, C]; None above GRAM_LIMIT
    data_free_mean: np.ndarray | None = None
    data_free_sq: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        if self.data_free_mean is not None:
            return self.data_free_mean
        return self.sum / max(self.count, 1)

    @property
    def second_moment(self) -> np.ndarray | None:
        """E[x²] per channel (None when a data-free trace could not tell)."""
        if self.sumsq is not None:
            return self.sumsq / max(self.count, 1)
        return self.data_free_sq

    def norms(self) -> np.ndarray:
        """‖X_c‖₂ over every row seen (Wanda's activation norm)."""
        return np.sqrt(self.sumsq)

    def moment(self) -> np.ndarray | None:
        """E[x xᵀ] (uncentered), or None."""
        return None if self.gram is None else self.gram / max(self.count, 1)

    def covariance(self) -> np.ndarray | None:
        if self.gram is None:
            return None
        mu = self.mean
        return self.gram / max(self.count, 1) - np.outer(mu, mu)


@dataclass
class Stats:
    """Statistics of the tensors consumers read, measured (calibration) or derived (BN)."""

    tensors: dict[str, TensorStats] = field(default_factory=dict)
    samples: int = 0
    data_free: bool = False
    source: str = ""

    def get(self, tensor: str) -> TensorStats | None:
        return self.tensors.get(tensor)


def collect_stats(graph: Graph, analysis: Analysis, feeds, *, gram: bool = True,
                  gram_limit: int = GRAM_LIMIT, tensors: dict[str, int] | None = None,
                  progress: Callable[[str], None] | None = None) -> Stats:
    """Run the canonical graph on calibration `feeds` (an iterable of feed dicts, or a
    CalibrationSet) and accumulate per-channel statistics of every consumer input."""
    from .io import save_graph
    from .verify import session

    wanted = needed_tensors(graph, analysis) if tensors is None else dict(tensors)
    if isinstance(feeds, CalibrationSet):
        feeds = feeds.batches(model_inputs(graph))
    inputs = set(graph.input_names)
    extra = [t for t in wanted if t not in inputs]
    stats = Stats(tensors={t: TensorStats(a) for t, a in wanted.items()})
    with tempfile.TemporaryDirectory(prefix="graphprune-calib-") as tmp:
        shell, weights = graph.split()
        known = {o.name for o in shell.graph.output}
        for t in extra:
            if t not in known:
                shell.graph.output.append(helper.make_tensor_value_info(
                    t, graph.dtypes.get(t, onnx.TensorProto.FLOAT), None))
        path = save_graph(shell, weights, Path(tmp) / "calibration.onnx")
        sess = session(str(path), threads=os.cpu_count() or 1)
        for batch_no, (feed, label) in enumerate(feeds):
            if progress:
                progress(f"calibration batch {batch_no + 1}")
            try:
                outs = sess.run([n for n in extra], feed) if extra else []
            except Exception as err:
                raise UsageError(f"{label}: the model cannot run on this calibration input "
                                 f"({_first_line(err)})") from None
            got = dict(zip(extra, outs))
            for t in wanted:
                value = feed[t] if t in inputs else got[t]
                _accumulate(stats.tensors[t], value, gram, gram_limit)
            stats.samples += _batch_size(feed)
    if stats.samples == 0:
        raise UsageError("the calibration data holds no samples")
    return stats


def _accumulate(ts: TensorStats, value: np.ndarray, gram: bool, gram_limit: int) -> None:
    x = np.moveaxis(np.asarray(value), ts.axis, -1)
    c = x.shape[-1]
    x = x.reshape(-1, c).astype(np.float64)
    if ts.sum is None:
        ts.sum, ts.sumsq = np.zeros(c), np.zeros(c)
        if gram and c <= gram_limit:
            ts.gram = np.zeros((c, c))
    ts.count += x.shape[0]
    ts.sum += x.sum(axis=0)
    ts.sumsq += np.einsum("ij,ij->j", x, x)
    if ts.gram is not None:
        ts.gram += x.T @ x


def _batch_size(feed: dict) -> int:
    first = next(iter(feed.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__


# ---------------------------------------------------------------- calibration files
@dataclass
class InputSpec:
    name: str
    shape: tuple  # dims, None where dynamic
    dtype: np.dtype


def model_inputs(graph: Graph) -> list[InputSpec]:
    from .verify import _NP_TYPES

    specs = []
    for vi in graph.model.graph.input:
        if vi.name in graph.weights:
            continue
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                     for d in t.shape.dim)
        specs.append(InputSpec(vi.name, dims, np.dtype(_NP_TYPES.get(t.elem_type, np.float32))))
    return specs


class CalibrationSet:
    """Calibration samples: a folder (or one file) of .npy/.npz arrays or images, or arrays
    in memory.

    - `.npy`: one array, for single-input models; a batch [N, ...] or one sample (rank one
      less than the input's).
    - `.npz`: arrays keyed by input name (a single array under any key is accepted for
      single-input models).
    - images (.jpg/.jpeg/.png/.bmp): for a model with one NCHW input of fixed C (1 or 3), H, W.
      `preprocess` is "imagenet" (resize the shorter side to H/0.875, centre-crop, scale to
      [0, 1], normalise by ImageNet's mean and std), "unit" (resize the shorter side to the
      target, centre-crop, [0, 1]) or "raw" (like unit, values 0-255).
    Files are read in name order; other files in the folder are ignored.
    """

    def __init__(self, source, preprocess: str = "imagenet", batch_size: int | None = None,
                 limit: int | None = None):
        if preprocess not in PREPROCESS:
            raise UsageError(f"--calib-preprocess must be one of {', '.join(PREPROCESS)}, "
                             f"got '{preprocess}'")
        self.preprocess, self.batch_size, self.limit = preprocess, batch_size, limit
        self.files: list[Path] = []
        self.memory: list[dict | np.ndarray] | None = None
        if isinstance(source, (str, os.PathLike)):
            self.label = str(source)
            self.files = _calibration_files(Path(source))
        elif isinstance(source, (np.ndarray, dict)):
            self.label, self.memory = "calibration array", [source]
        elif isinstance(source, (list, tuple)):
            self.label, self.memory = "calibration arrays", list(source)
        else:
            raise UsageError(f"calibration data must be a path, an array, a dict of arrays or a "
                             f"list of those, not {type(source).__name__}")

    def __repr__(self) -> str:
        return f"CalibrationSet({self.label!r}, preprocess={self.preprocess!r})"

    # -- samples ---------------------------------------------------------
    def _samples(self, specs: list[InputSpec]) -> Iterator[tuple[dict[str, np.ndarray], str]]:
        """Per source item: {input name: array with a leading batch axis}, label."""
        if self.memory is not None:
            for i, item in enumerate(self.memory):
                label = f"{self.label} [{i}]"
                if isinstance(item, dict):
                    yield _arrays_for(dict(item), specs, label), label
                else:
                    yield _arrays_for({"": item}, specs, label), label
            return
        for path in self.files:
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                yield {_image_spec(specs, path).name: _read_image(path, specs, self.preprocess)[None]}, str(path)
            elif suffix == ".npy":
                try:
                    array = np.load(path, mmap_mode="r", allow_pickle=False)
                except Exception as err:
                    raise UsageError(f"{path}: not a readable .npy array ({_first_line(err)})") from None
                yield _arrays_for({"": array}, specs, str(path)), str(path)
            else:
                try:
                    with np.load(path, allow_pickle=False) as z:
                        arrays = {k: z[k] for k in z.files}
                except Exception as err:
                    raise UsageError(f"{path}: not a readable .npz archive ({_first_line(err)})") from None
                yield _arrays_for(arrays, specs, str(path)), str(path)

    def batches(self, specs: list[InputSpec]) -> Iterator[tuple[dict[str, np.ndarray], str]]:
        """Feed dicts of `batch` samples each (the model's fixed batch size, else
        `batch_size` or DEFAULT_BATCH), and a label naming where they came from."""
        fixed = {s.shape[0] for s in specs if s.shape and s.shape[0] is not None}
        if len(fixed) > 1:
            raise UsageError(f"{self.label}: the model's inputs have different fixed batch "
                             f"sizes {sorted(fixed)}")
        batch = fixed.pop() if fixed else (self.batch_size or DEFAULT_BATCH)
        pending: list[tuple[dict, str]] = []
        held = seen = 0
        for arrays, label in self._samples(specs):
            n = next(iter(arrays.values())).shape[0]
            if self.limit is not None:
                n = min(n, self.limit - seen)
                arrays = {k: v[:n] for k, v in arrays.items()}
            if n <= 0:
                break
            seen += n
            start = 0
            while start < n:
                take = min(batch - held, n - start)
                pending.append(({k: v[start:start + take] for k, v in arrays.items()}, label))
                held += take
                start += take
                if held == batch:
                    yield _join(pending), pending[-1][1]
                    pending, held = [], 0
            if self.limit is not None and seen >= self.limit:
                break
        if seen == 0:
            raise UsageError(f"{self.label}: no calibration samples")
        if pending:
            if fixed and batch > 1 and held < batch:
                if seen < batch:
                    raise UsageError(f"{self.label}: the model's batch size is fixed at {batch} "
                                     f"but the calibration data holds only {seen} samples")
                return  # a partial batch cannot run; the full ones were used
            yield _join(pending), pending[-1][1]


def as_calibration(calib, preprocess: str = "imagenet") -> "CalibrationSet":
    return calib if isinstance(calib, CalibrationSet) else CalibrationSet(calib, preprocess)


def _join(parts: list[tuple[dict, str]]) -> dict[str, np.ndarray]:
    keys = parts[0][0].keys()
    return {k: np.ascontiguousarray(np.concatenate([p[k] for p, _ in parts], axis=0))
            for k in keys}


def _calibration_files(path: Path) -> list[Path]:
    if not path.exists():
        raise UsageError(f"--calib {path}: no such file or directory")
    usable = ARRAY_SUFFIXES + IMAGE_SUFFIXES
    if path.is_file():
        if path.suffix.lower() not in usable:
            raise UsageError(f"--calib {path}: not a calibration file (use .npy, .npz, .jpg, "
                             f".png or a folder of them)")
        return [path]
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in usable)
    if not files:
        raise UsageError(f"--calib {path}: the folder has no .npy, .npz, .jpg or .png files")
    return files


def _arrays_for(arrays: dict[str, np.ndarray], specs: list[InputSpec],
                label: str) -> dict[str, np.ndarray]:
    """Match arrays to the model's inputs, add a batch axis where missing, cast, check."""
    names = [s.name for s in specs]
    if set(names) <= set(arrays):
        chosen = {s.name: arrays[s.name] for s in specs}
    elif len(specs) == 1 and len(arrays) == 1:
        chosen = {specs[0].name: next(iter(arrays.values()))}
    elif len(specs) == 1:
        raise UsageError(f"{label}: holds arrays {sorted(arrays)} but the model's input is "
                         f"'{names[0]}'")
    else:
        missing = [n for n in names if n not in arrays]
        hint = "; use .npz files keyed by input name" if "" in arrays else ""
        raise UsageError(f"{label}: no array for the model input(s) {', '.join(missing)}{hint}")
    out, count = {}, None
    for spec in specs:
        a = chosen[spec.name]
        if not isinstance(a, np.ndarray) or a.dtype == object:
            raise UsageError(f"{label}: the array for input '{spec.name}' is not numeric")
        if a.ndim == len(spec.shape) - 1:
            a = a[None]
        if a.ndim != len(spec.shape):
            raise UsageError(f"{label}: array of shape {tuple(a.shape)} for input '{spec.name}' "
                             f"of shape {_dims(spec.shape)}")
        for got, want in zip(a.shape[1:], spec.shape[1:]):
            if want is not None and got != want:
                raise UsageError(f"{label}: array of shape {tuple(a.shape)} does not fit input "
                                 f"'{spec.name}' of shape {_dims(spec.shape)}")
        if np.issubdtype(spec.dtype, np.floating) and not (np.issubdtype(a.dtype, np.number)
                                                           or a.dtype == np.bool_):
            raise UsageError(f"{label}: the array for input '{spec.name}' is not numeric")
        if count is not None and a.shape[0] != count:
            raise UsageError(f"{label}: arrays hold different numbers of samples")
        count = a.shape[0]
        out[spec.name] = np.asarray(a, dtype=spec.dtype)
    return out


def _dims(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _image_spec(specs: list[InputSpec], path: Path) -> InputSpec:
    if len(specs) != 1 or len(specs[0].shape) != 4 or specs[0].shape[1] not in (1, 3) or \
            specs[0].shape[2] is None or specs[0].shape[3] is None:
        shapes = ", ".join(f"{s.name} {_dims(s.shape)}" for s in specs)
        raise UsageError(f"{path}: images need a model with one NCHW input of fixed C (1 or 3), "
                         f"H and W; this model has {shapes}; use .npy/.npz calibration files")
    return specs[0]


def _read_image(path: Path, specs: list[InputSpec], preprocess: str) -> np.ndarray:
    spec = _image_spec(specs, path)
    c, h, w = spec.shape[1:]
    try:
        pixels = _load_pixels(path, gray=c == 1)
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"{path}: not a readable image ({_first_line(err)})") from None
    short = min(h, w) / (IMAGENET_CROP if preprocess == "imagenet" else 1.0)
    scale = short / min(pixels.shape[:2])
    size = (max(h, int(round(pixels.shape[0] * scale))), max(w, int(round(pixels.shape[1] * scale))))
    pixels = _resize(pixels, size)
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    pixels = pixels[top:top + h, left:left + w].astype(np.float32)  # [h, w, c] in 0..255
    if preprocess != "raw":
        pixels = pixels / 255.0
    if preprocess == "imagenet":
        mean = IMAGENET_MEAN if c == 3 else IMAGENET_MEAN.mean(keepdims=True)
        std = IMAGENET_STD if c == 3 else IMAGENET_STD.mean(keepdims=True)
        pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(spec.dtype)


def _load_pixels(path: Path, gray: bool) -> np.ndarray:
    """[H, W, C] uint8-range float array, RGB or one grey channel."""
    try:
        from PIL import Image
    except ImportError:  # matplotlib reads PNG by itself
        try:
            import matplotlib.image as mpimg
        except ImportError:
            raise UsageError(f"{path}: reading images needs Pillow (pip install "
                             f"'graphprune[calib]') or matplotlib") from None
        a = np.asarray(mpimg.imread(str(path)), dtype=np.float32)
        if a.max(initial=0) <= 1.0 and path.suffix.lower() == ".png":
            a = a * 255.0
        if a.ndim == 2:
            a = a[..., None]
        a = a[..., :3]
        if gray:
            a = a.mean(axis=2, keepdims=True) if a.shape[2] == 3 else a
        elif a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        return a
    with Image.open(path) as img:
        img = img.convert("L" if gray else "RGB")
        a = np.asarray(img, dtype=np.float32)
    return a[..., None] if a.ndim == 2 else a


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [H, W, C] (Pillow when available, else numpy)."""
    if a.shape[:2] == size:
        return a
    try:
        from PIL import Image

        channels = [np.asarray(Image.fromarray(a[..., i]).resize((size[1], size[0]),
                                                                 Image.BILINEAR))
                    for i in range(a.shape[2])]
        return np.stack(channels, axis=2)
    except ImportError:
        ys = np.clip((np.arange(size[0]) + 0.5) * a.shape[0] / size[0] - 0.5, 0, a.shape[0] - 1)
        xs = np.clip((np.arange(size[1]) + 0.5) * a.shape[1] / size[1] - 0.5, 0, a.shape[1] - 1)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        y1, x1 = np.minimum(y0 + 1, a.shape[0] - 1), np.minimum(x0 + 1, a.shape[1] - 1)
        wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
        bottom = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
        return top * (1 - wy) + bottom * wy


# ---------------------------------------------------------------- data-free statistics
def bn_statistics(model, graph: Graph) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(β, |γ|) of every BatchNorm, keyed by the tensor it produces: read from the source
    model for BNs the canonical graph folded away, from the graph for the others."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for node in graph.nodes:
        if node.op_type == "BatchNormalization" and len(node.input) >= 3:
            gamma, beta = graph.const(node.input[1]), graph.const(node.input[2])
            if gamma is not None and beta is not None:
                out[node.output[0]] = (beta.astype(np.float64).ravel(),
                                       np.abs(gamma.astype(np.float64).ravel()))
    wanted = set(graph.bn_scales) - set(out)
    if not wanted or model is None:
        return out
    from onnx import numpy_helper

    from .ir import _constant_value

    if isinstance(model, onnx.ModelProto):
        proto, arrays = model, None
    else:
        from .io import load_split

        proto, arrays = load_split(model)
    inits = {t.name: t for t in proto.graph.initializer}
    consts = {n.output[0]: n for n in proto.graph.node if n.op_type == "Constant"}

    def value(name):
        if arrays is not None and name in arrays:
            return arrays[name]
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return _constant_value(consts[name])
        return None

    for node in proto.graph.node:
        if node.op_type == "BatchNormalization" and node.output[0] in wanted:
            gamma, beta = value(node.input[1]), value(node.input[2])
            if gamma is not None and beta is not None:
                out[node.output[0]] = (np.asarray(beta, np.float64).ravel(),
                                       np.abs(np.asarray(gamma, np.float64).ravel()))
    return out


_GRID = np.linspace(-8.0, 8.0, 1601)
_GRID_W = np.exp(-0.5 * _GRID ** 2)
_GRID_W /= _GRID_W.sum()


def _gaussian_moments(mu: np.ndarray, sigma: np.ndarray,
                      fn: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """E[f(z)] and E[f(z)²] for z ~ N(mu, sigma²), channel by channel (dense quadrature)."""
    z = mu[:, None] + sigma[:, None] * _GRID[None, :]
    fz = fn(z)
    return fz @ _GRID_W, (fz * fz) @ _GRID_W


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _unary(node: onnx.NodeProto, graph: Graph):
    """A numpy version of an elementwise op on its first input, or None."""
    op = node.op_type
    if op == "Relu":
        return lambda x: np.maximum(x, 0.0)
    if op == "LeakyRelu":
        a = float(attr(node, "alpha", 0.01))
        return lambda x: np.where(x >= 0, x, a * x)
    if op == "Clip":
        bounds = []
        for i, key, default in ((1, "min", -np.inf), (2, "max", np.inf)):
            if len(node.input) > i and node.input[i]:
                v = graph.const(node.input[i])
                if v is None:
                    return None
                bounds.append(float(v))
            else:
                bounds.append(float(attr(node, key, default)))
        lo, hi = bounds
        return lambda x: np.clip(x, lo, hi)
    if op == "Sigmoid":
        return _sigmoid
    if op == "Tanh":
        return np.tanh
    if op == "HardSigmoid":
        a, b = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
        return lambda x: np.clip(a * x + b, 0.0, 1.0)
    if op == "HardSwish":
        return lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    if op == "Elu":
        a = float(attr(node, "alpha", 1.0))
        return lambda x: np.where(x > 0, x, a * (np.exp(np.minimum(x, 0)) - 1))
    if op == "Softplus":
        return lambda x: np.logaddexp(0.0, x)
    if op == "Gelu":  # tanh approximation: close enough for statistics
        return _gelu
    if op in ("Identity", "Dropout"):
        return lambda x: x
    return None


def _trace(graph: Graph, tensor: str, axis: int, size: int, bn: dict):
    """Follow `tensor` back to a BatchNorm output through elementwise ops.

    Returns (bn tensor, fn, channel index of every channel of `tensor`, second moments valid)
    or None when the path holds anything else."""
    fns: list[Callable] = []
    index = np.arange(size)
    sq_ok = True
    for _ in range(64):
        if tensor in bn:
            def fn(x, fns=tuple(reversed(fns))):
                for f in fns:
                    x = f(x)
                return x
            return tensor, fn, index, sq_ok
        node = graph.producer(tensor)
        if node is None or not node.input:
            return None
        op = node.op_type
        f = _unary(node, graph)
        if f is not None:
            fns.append(f)
            tensor = node.input[0]
            continue
        if op == "Mul" and len(node.input) == 2:  # x * Sigmoid(x) / x * HardSigmoid(x)
            a, b = node.input
            for x, gate in ((a, b), (b, a)):
                g = graph.producer(gate)
                if g is not None and g.input and g.input[0] == x and \
                        g.op_type in ("Sigmoid", "HardSigmoid"):
                    gf = _unary(g, graph)
                    fns.append(lambda v, gf=gf: v * gf(v))
                    tensor = x
                    break
            else:
                return None
            continue
        if op in ("GlobalAveragePool", "AveragePool"):
            sq_ok = False
            tensor = node.input[0]
            continue
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            src = node.input[0]
            shape = graph.shape(src)
            if shape is None or len(shape) < 2 or axis != 1 or any(d is None for d in shape[1:]):
                return None
            per = int(np.prod(shape[2:])) if len(shape) > 2 else 1
            if shape[1] * per != size or graph.shape(tensor) is None or \
                    graph.shape(tensor)[0] != shape[0]:
                return None
            index = index // per
            size = shape[1]
            tensor = src
            continue
        return None
    return None


def _gelu(x):
    from math import sqrt

    return 0.5 * x * (1.0 + np.tanh(sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def data_free_stats(graph: Graph, analysis: Analysis, model=None) -> Stats:
    """Means and second moments of consumer inputs from folded BatchNorm statistics (see the
    module docstring for the assumptions). Tensors that cannot be traced are left out."""
    bn = bn_statistics(model, graph)
    stats = Stats(data_free=True, source="folded BatchNorm statistics")
    for tensor, axis in needed_tensors(graph, analysis).items():
        shape = graph.shape(tensor)
        if shape is None or axis >= len(shape) or shape[axis] is None:
            continue
        traced = _trace(graph, tensor, axis, shape[axis], bn)
        if traced is None:
            continue
        source, fn, index, sq_ok = traced
        beta, gamma = bn[source]
        if beta.size <= int(index.max(initial=0)) or beta.size != gamma.size:
            continue
        mean, sq = _gaussian_moments(beta, gamma, fn)
        stats.tensors[tensor] = TensorStats(axis, data_free_mean=mean[index],
                                            data_free_sq=sq[index] if sq_ok else None)
    return stats
