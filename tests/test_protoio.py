"""The streaming reader and writer agree with onnx's own serialization."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.io import load_split, save_graph
from graphprune.ir import Graph
from graphprune.protoscan import ScanError, read_metadata, read_model
from models.blocks import BLOCKS, save_with_external_data

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_]


def _model_with(arrays: dict) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"], name=f"id_{name}")
             for name in arrays]
    outputs = [helper.make_tensor_value_info(f"{n}_out", helper.np_dtype_to_tensor_dtype(
        a.dtype), a.shape) for n, a in arrays.items()]
    graph = helper.make_graph(nodes, "g", [], outputs,
                              [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("external", [False, True])
def test_round_trip_every_dtype(tmp_path, external):
    rng = np.random.default_rng(0)
    arrays = {f"w{i}": (rng.standard_normal((3, 5)) * 10).astype(dt)
              for i, dt in enumerate(DTYPES)}
    arrays["scalar"] = np.array(2.5, np.float32)
    arrays["empty"] = np.zeros((0, 4), np.float32)
    model = _model_with(arrays)
    graph = Graph.from_model(model)
    shell, weights = graph.split()
    path = save_graph(shell, weights, tmp_path / "m.onnx", external=external)
    assert (tmp_path / "m.onnx.data").exists() == external
    loaded = onnx.load(str(path))  # onnx's own reader accepts our framing
    onnx.checker.check_model(loaded, full_check=True)
    for t in loaded.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), arrays[t.name])
    shell2, weights2 = load_split(path)  # and our reader reads it back
    assert list(weights2) == list(arrays)
    for name, a in arrays.items():
        assert weights2[name].dtype == a.dtype and weights2[name].shape == a.shape
        np.testing.assert_array_equal(weights2[name], a)
    assert len(shell2.graph.initializer) == 0 and len(shell2.graph.node) == len(arrays)


def test_reader_matches_onnx_load_on_typed_fields(tmp_path):
    """Tensors stored in float_data/int64_data (not raw_data) go through the reference path."""
    t = helper.make_tensor("typed", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0], raw=False)
    i = helper.make_tensor("ints", TensorProto.INT64, [3], [7, 8, 9], raw=False)
    graph = helper.make_graph([helper.make_node("Identity", ["typed"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
                              [t, i])
    path = tmp_path / "typed.onnx"
    onnx.save(helper.make_model(graph), path)
    _, weights = read_model(path)
    np.testing.assert_array_equal(weights["typed"], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(weights["ints"], [7, 8, 9])


def test_reader_reads_external_data(tmp_path):
    save_with_external_data(BLOCKS["resnet_basic"](0), tmp_path / "ext.onnx")
    _, weights = load_split(tmp_path / "ext.onnx")
    original = {t.name: numpy_helper.to_array(t) for t in BLOCKS["resnet_basic"](0).graph.initializer}
    assert weights.keys() == original.keys()
    for name in original:
        np.testing.assert_array_equal(weights[name], original[name])


def test_reader_rejects_truncation(tmp_path):
    data = BLOCKS["resnet_basic"](0).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ScanError):
        read_model(path)


def test_external_model_with_shape_constants_runs(tmp_path):
    """Shape inputs (Reshape targets) must stay in the model file for ONNX Runtime."""
    from graphprune.verify import random_inputs, run

    model = BLOCKS["flatten_reshape_gemm"](0)
    graph = Graph.from_model(model)
    shell, weights = graph.split()
    path = save_graph(shell, weights, tmp_path / "m.onnx", external=True)
    feeds = random_inputs(model)
    np.testing.assert_allclose(run(str(path), feeds)[0], run(model, feeds)[0], rtol=1e-6)


def test_read_metadata_skips_the_graph(tmp_path):
    model = _model_with({"w": np.ones((64, 64), np.float32)})
    onnx.helper.set_model_props(model, {"revision": "2", "source": "test"})
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert read_metadata(path) == {"revision": "2", "source": "test"}
    onnx.save(_model_with({"w": np.ones(3, np.float32)}), path)
    assert read_metadata(path) == {}
