"""Shared helpers for the pass tests: build tiny models, run them on onnxruntime, compare."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from graphprune.ir import Graph

RNG = np.random.default_rng(0)


def init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def vi(name: str, shape, elem=onnx.TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=8):
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model


def rand(*shape, positive=False) -> np.ndarray:
    a = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


def feeds_for(model: onnx.ModelProto, batch: int = 2) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[v.name] = RNG.standard_normal(shape).astype(dtype)
    return feeds


def run_ort(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_equivalent(original: onnx.ModelProto, graph: Graph, batch: int = 2) -> onnx.ModelProto:
    """The rewritten graph is a valid model computing what the original did."""
    model = graph.to_model()
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == [o.name for o in original.graph.output]
    feeds = feeds_for(original, batch)
    expected, got = run_ort(original, feeds), run_ort(model, feeds)
    for e, g in zip(expected, got, strict=True):
        assert e.dtype == g.dtype and e.shape == g.shape
        scale = max(float(np.abs(e).max()), 1.0) if e.size else 1.0
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5 * scale)
    return model


def load(model: onnx.ModelProto) -> Graph:
    """A Graph over a copy: the IR shares NodeProtos with the model it was built from, and
    passes edit nodes in place, so the original must stay untouched for the comparison."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return Graph.from_model(copy)


def op_types(graph: Graph) -> list[str]:
    return [n.op_type for n in graph.nodes]
