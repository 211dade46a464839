"""Reading and writing models without ever harming the user's files.

Outputs are written to a temporary file beside the destination and renamed into place, so a
crash never leaves half a model behind, and the input path is refused as the output path.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelLoadError, UsageError

_PROTOBUF_LIMIT = 2 * 1024**3 - 1024**2  # stay clear of protobuf's 2 GiB message limit


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file with its external data, with an actionable error for bad files."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: not an ONNX model ({_short(err)})") from None
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read ({err.strerror or err})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph or no nodes)")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as err:
        raise ModelLoadError(f"{path}: its external weight data cannot be read ({_short(err)}); "
                             f"keep the data file(s) beside the model") from None
    return model


def check_structure(model: onnx.ModelProto, source: str) -> None:
    """onnx.checker on a model, with a user-facing error. Callers pass a weightless view
    (Graph.to_model(embed_limit=...)): checking copies the model, and weights need no check."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise ModelLoadError(f"{source}: invalid ONNX model: {_short(err)}") from None


def save_model(model: onnx.ModelProto | bytes, path: str | os.PathLike,
               protect: str | os.PathLike | None = None) -> Path:
    """Write atomically; weights go to `<name>.data` beside it when the model exceeds 2 GB."""
    path = Path(path)
    if protect is not None and path.exists() and path.resolve() == Path(protect).resolve():
        raise UsageError(f"{path}: refusing to overwrite the input model; choose another -o")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: output directory does not exist")
    data = model if isinstance(model, bytes) else None
    external = data is None and model.ByteSize() > _PROTOBUF_LIMIT
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if external:
            data_name = f"{path.name}.data"
            data_tmp = path.parent / f".{data_name}.tmp"
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_tmp.name, size_threshold=1024)
            _relocate_external(tmp, data_tmp.name, data_name)
            os.replace(data_tmp, path.parent / data_name)
        else:
            with open(tmp, "wb") as f:
                f.write(data if data is not None else model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _relocate_external(model_path: str, old: str, new: str) -> None:
    """Point the external-data references of a saved model at the final data file name."""
    model = onnx.load(model_path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    with open(model_path, "wb") as f:
        f.write(model.SerializeToString())


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
