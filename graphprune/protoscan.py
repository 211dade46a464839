"""Read an ONNX file's weights straight into numpy arrays, without parsing them into protobuf.

`onnx.load` reads the whole file into bytes and parses it, and converting the parsed tensors
to numpy copies every weight once more: three copies of the weights at the peak. Here the file
is scanned at the protobuf wire level: everything except the initializers is parsed as usual
(it is small), and each initializer's raw bytes are read from the file directly into the buffer
of its numpy array. The peak is one copy of the weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

_MODEL_GRAPH = 7  # ModelProto.graph
_MODEL_METADATA = 14  # ModelProto.metadata_props
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_T_DIMS, _T_TYPE, _T_NAME, _T_RAW, _T_LOCATION = 1, 2, 8, 9, 14  # TensorProto fields


class ScanError(ValueError):
    """The file is not well-formed protobuf (or uses a form we leave to onnx.load)."""


def _varint(f) -> int:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            raise ScanError("truncated varint")
        result |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ScanError("varint too long")


def encode_varint(value: int) -> bytes:
    """Protobuf's base-128 varint (the writer frames fields with it too)."""
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(f, end: int):
    """Yield (field, wire_type, start_of_key, start_of_payload, payload_length)."""
    while f.tell() < end:
        key_at = f.tell()
        key = _varint(f)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _varint(f)
            yield field, wire, key_at, f.tell(), 0
            continue
        if wire == 1:
            length = 8
        elif wire == 5:
            length = 4
        elif wire == 2:
            length = _varint(f)
        else:
            raise ScanError(f"unsupported wire type {wire}")
        at = f.tell()
        if at + length > end:
            raise ScanError("field runs past the end of its message")
        yield field, wire, key_at, at, length
        f.seek(at + length)


def _copy(f, start: int, stop: int) -> bytes:
    f.seek(start)
    data = f.read(stop - start)
    if len(data) != stop - start:
        raise ScanError("truncated file")
    return data


def read_metadata(path: str | Path) -> dict[str, str]:
    """The model's metadata_props, read without parsing (or reading) its graph and weights."""
    path = Path(path)
    props = {}
    with open(path, "rb") as f:
        for field, wire, _, at, length in _fields(f, path.stat().st_size):
            if field == _MODEL_METADATA and wire == 2:
                entry = onnx.StringStringEntryProto.FromString(_copy(f, at, at + length))
                props[entry.key] = entry.value
    return props


def read_model(path: str | Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model without initializers, and the initializers as arrays (in file order)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb", buffering=1 << 16) as f:
        model_bytes, graph_range = bytearray(), None
        for field, wire, key_at, at, length in _fields(f, size):
            end = at + length
            if field == _MODEL_GRAPH and wire == 2:
                if graph_range is not None:
                    raise ScanError("two graph fields")
                graph_range = (at, end)
            else:
                model_bytes += _copy(f, key_at, end)
            f.seek(end)
        if graph_range is None:
            raise ScanError("no graph")
        graph_bytes, tensors = bytearray(), []
        f.seek(graph_range[0])
        for field, wire, key_at, at, length in _fields(f, graph_range[1]):
            if field == _GRAPH_INITIALIZER and wire == 2:
                tensors.append((at, at + length))
            else:
                graph_bytes += _copy(f, key_at, at + length)
            f.seek(at + length)
        model_bytes += encode_varint(_MODEL_GRAPH << 3 | 2) + encode_varint(len(graph_bytes))
        model_bytes += graph_bytes
        model = onnx.ModelProto()
        model.ParseFromString(bytes(model_bytes))
        weights = {}
        for start, stop in tensors:
            name, array = _read_tensor(f, start, stop, path.parent)
            weights[name] = array
    return model, weights


def _read_tensor(f, start: int, stop: int, base_dir: Path) -> tuple[str, np.ndarray]:
    header, raw = bytearray(), None
    f.seek(start)
    for field, wire, key_at, at, length in _fields(f, stop):
        if field == _T_RAW and wire == 2:
            raw = (at, length)
        else:
            header += _copy(f, key_at, at + length)
        f.seek(at + length)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(bytes(header))
    dtype = _plain_dtype(tensor.data_type)
    if raw is None or dtype is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        # typed fields, external data or exotic types: the reference path, one tensor at a time
        whole = onnx.TensorProto()
        whole.ParseFromString(_copy(f, start, stop))
        if whole.data_location == onnx.TensorProto.EXTERNAL:
            onnx.external_data_helper.load_external_data_for_tensor(whole, str(base_dir))
        return whole.name, numpy_helper.to_array(whole)
    buffer = bytearray(raw[1])
    f.seek(raw[0])
    if f.readinto(buffer) != raw[1]:
        raise ScanError(f"truncated data of tensor '{tensor.name}'")
    array = np.frombuffer(buffer, dtype=dtype.newbyteorder("<"))
    count = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
    if array.size != count:
        raise ScanError(f"tensor '{tensor.name}' holds {array.size} values for shape "
                        f"{list(tensor.dims)}")
    return tensor.name, array.reshape(tuple(tensor.dims)).astype(dtype, copy=False)


def _plain_dtype(data_type: int) -> np.dtype | None:
    """numpy dtype for types stored as plain little-endian values; None for the others."""
    if data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                     onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
                     onnx.TensorProto.UINT16, onnx.TensorProto.INT32, onnx.TensorProto.UINT32,
                     onnx.TensorProto.INT64, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL):
        return np.dtype(helper.tensor_dtype_to_np_dtype(data_type))
    return None


__all__ = ["ScanError", "read_model"]
