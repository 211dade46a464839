"""Write a graph's model to disk streaming the weights, without building them into protobuf.

Building a ModelProto copies every weight into it, and serializing copies them twice more;
here the small part of the model is serialized as usual and each weight is written from its
numpy buffer straight into the file, wrapped in the protobuf framing of an initializer. Models
over protobuf's 2 GB limit put the weights into one external data file instead.
"""
from __future__ import annotations

from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .protoscan import encode_varint as _varint

_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW = 7, 5, 9
_PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # room for the graph itself
_INLINE_BYTES = 1024  # with external data, tensors smaller than this stay in the model file


def _key(field: int) -> bytes:
    return _varint(field << 3 | 2)


def _raw(array: np.ndarray) -> memoryview | None:
    """Little-endian contiguous bytes of `array`, or None for types raw_data cannot hold."""
    if array.dtype == object or array.dtype.kind in "USV":
        return None
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return memoryview(array.reshape(-1).view(np.uint8))


class _Tensor:
    """One initializer: its protobuf header plus the raw bytes that follow it in the file."""

    def __init__(self, name: str, array: np.ndarray, raw: memoryview | None,
                 location: tuple[str, int] | None = None):
        if raw is None:  # strings and the like: the ordinary way
            self.header, self.raw = numpy_helper.from_array(array, name).SerializeToString(), b""
            return
        tensor = onnx.TensorProto(name=name, dims=list(array.shape),
                                  data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        if location is not None:
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location[0]), ("offset", str(location[1])),
                               ("length", str(raw.nbytes))):
                tensor.external_data.add(key=key, value=value)
            self.header, self.raw = tensor.SerializeToString(), b""
        else:
            self.header = tensor.SerializeToString() + _key(_TENSOR_RAW) + _varint(raw.nbytes)
            self.raw = raw

    @property
    def size(self) -> int:
        return len(self.header) + len(self.raw)


def write_model(shell: onnx.ModelProto, weights: dict[str, np.ndarray], out: BinaryIO,
                data: tuple[BinaryIO, str] | None = None) -> None:
    """Write `shell` (a model without initializers) with `weights` as its initializers.

    With `data` = (file, name the model refers to it by), weight bytes go to that file.
    """
    tensors = []
    offset = 0
    for name, array in weights.items():
        raw = _raw(array)
        if data is None or raw is None or raw.nbytes < _INLINE_BYTES:
            tensors.append(_Tensor(name, array, raw))  # small ones inline: runtimes read
            continue                                   # shape inputs only from the model
        pad = (-offset) % 4096  # aligned, so runtimes can map the weights directly
        data[0].write(b"\0" * pad)
        offset += pad
        tensors.append(_Tensor(name, array, raw, (data[1], offset)))
        data[0].write(raw)
        offset += raw.nbytes
    graph_bytes = shell.graph.SerializeToString()
    head = onnx.ModelProto()
    head.CopyFrom(shell)
    head.ClearField("graph")
    prefixes = [_key(_GRAPH_INITIALIZER) + _varint(t.size) for t in tensors]
    graph_size = len(graph_bytes) + sum(len(p) + t.size for p, t in zip(prefixes, tensors))
    out.write(head.SerializeToString())
    out.write(_key(_MODEL_GRAPH) + _varint(graph_size))
    out.write(graph_bytes)
    for prefix, t in zip(prefixes, tensors):
        out.write(prefix)
        out.write(t.header)
        out.write(t.raw)


def needs_external_data(weights: dict[str, np.ndarray]) -> bool:
    return sum(a.nbytes for a in weights.values()) > _PROTOBUF_LIMIT
