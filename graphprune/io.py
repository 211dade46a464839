"""Reading and writing models without ever harming the user's files.

Outputs are written to a temporary file beside the destination and renamed into place, so a
crash never leaves half a model behind, and the input path is refused as the output path.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from .errors import ModelLoadError, UsageError
from .protoscan import ScanError, read_model
from .protowrite import needs_external_data, write_model



def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file with its external data, with an actionable error for bad files."""
    path = _existing_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: not an ONNX model ({_short(err)})") from None
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read ({err.strerror or err})") from None
    _require_graph(model, path)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as err:
        raise _external_data_error(path, err) from None
    return model


def load_split(path: str | os.PathLike) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model without its initializers, and the initializers as numpy arrays, holding one
    copy of the weights at most (see protoscan). Falls back to onnx.load for unusual files."""
    path = _existing_file(path)
    try:
        model, weights = read_model(path)
    except ScanError:
        model = load_model(path)  # gives the precise error, or loads what the scan refused
        weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        del model.graph.initializer[:]
        return model, weights
    except (DecodeError, RuntimeWarning, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: not an ONNX model ({_short(err)})") from None
    except (OSError, onnx.checker.ValidationError) as err:
        raise _external_data_error(path, err) from None
    except ValueError as err:
        raise ModelLoadError(f"{path}: not an ONNX model ({_short(err)})") from None
    _require_graph(model, path)
    return model, weights


def _existing_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    return path


def _require_graph(model: onnx.ModelProto, path: Path) -> None:
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph or no nodes)")


def _external_data_error(path: Path, err: BaseException) -> ModelLoadError:
    return ModelLoadError(f"{path}: its external weight data cannot be read ({_short(err)}); "
                          f"keep the data file(s) beside the model")


def check_structure(model: onnx.ModelProto, source: str) -> None:
    """onnx.checker on a model, with a user-facing error. Callers pass a weightless view
    (Graph.to_model(embed_limit=...)): checking copies the model, and weights need no check."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise ModelLoadError(f"{source}: invalid ONNX model: {_short(err)}") from None


def save_graph(shell: onnx.ModelProto, weights: dict[str, np.ndarray],
               path: str | os.PathLike, protect: str | os.PathLike | None = None,
               external: bool | None = None) -> Path:
    """Write atomically (temporary files renamed into place), streaming the weights; they go
    to `<name>.data` beside the model when it exceeds protobuf's 2 GB limit (or `external`)."""
    path = Path(path)
    if protect is not None and path.exists() and path.resolve() == Path(protect).resolve():
        raise UsageError(f"{path}: refusing to overwrite the input model; choose another -o")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: output directory does not exist")
    if external is None:
        external = needs_external_data(weights)
    data_name = f"{path.name}.data"
    temps = []
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        temps.append(tmp)
        with os.fdopen(fd, "wb") as out:
            if external:
                dfd, dtmp = tempfile.mkstemp(prefix=f".{data_name}.", suffix=".tmp",
                                             dir=path.parent)
                temps.append(dtmp)
                with os.fdopen(dfd, "wb") as data:
                    write_model(shell, weights, out, (data, data_name))
            else:
                write_model(shell, weights, out)
        for t in temps:  # mkstemp files are private; the outputs are ordinary files
            os.chmod(t, usual_file_mode())
        if external:
            os.replace(temps[1], path.parent / data_name)
        os.replace(tmp, path)
    except BaseException:
        for t in temps:
            Path(t).unlink(missing_ok=True)
        raise
    return path


def usual_file_mode(directory: bool = False) -> int:
    """The mode a plain open() would give a new file (or folder) under the current umask:
    temporary files from mkstemp are 0600, which a serving process running as another user
    could not read."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """A small text file (plan, report), written atomically like models."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: directory does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, usual_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
