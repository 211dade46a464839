"""Every builder in models.blocks yields a valid, deterministic, runnable ONNX model."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.blocks import BLOCKS, build_resnet_basic, save_with_external_data, with_constant_nodes


def _input(model: onnx.ModelProto) -> np.ndarray:
    (inp,) = model.graph.input
    assert inp.name == "input"
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert shape and all(d > 0 for d in shape)
    return np.random.default_rng(123).standard_normal(shape).astype(np.float32)


def _run(model_or_path, x: np.ndarray) -> list[np.ndarray]:
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})


@pytest.fixture(scope="module", params=sorted(BLOCKS))
def built(request):
    return request.param, BLOCKS[request.param](0)


def test_checker_and_structure(built):
    name, model = built
    onnx.checker.check_model(model, full_check=True)
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert model.graph.output[0].name == "output"
    for o in model.graph.output:
        dims = o.type.tensor_type.shape.dim
        assert dims and all(d.dim_value > 0 for d in dims), o.name
    assert {t.data_type for t in model.graph.initializer} <= {onnx.TensorProto.FLOAT,
                                                               onnx.TensorProto.INT64}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    inits = {t.name: t for t in model.graph.initializer}
    for c in convs:
        assert inits[c.input[1]].dims[0] >= 8, c.name


def test_runs_in_onnxruntime(built):
    name, model = built
    x = _input(model)
    outs = _run(model, x)
    assert len(outs) == len(model.graph.output)
    for o, vi in zip(outs, model.graph.output):
        assert list(o.shape) == [d.dim_value for d in vi.type.tensor_type.shape.dim]
        assert np.all(np.isfinite(o)), vi.name
        assert np.ptp(o) > 1e-3, f"{vi.name} is (nearly) constant"
        assert np.abs(o).max() < 1e3, f"{vi.name} blows up"


def test_deterministic(built):
    name, model = built
    assert BLOCKS[name](0).SerializeToString() == model.SerializeToString()
    assert BLOCKS[name](1).SerializeToString() != model.SerializeToString()


def test_constant_node_variant():
    model = build_resnet_basic(0)
    const = with_constant_nodes(model)
    assert len(const.graph.initializer) == 0
    assert sum(n.op_type == "Constant" for n in const.graph.node) == len(model.graph.initializer)
    onnx.checker.check_model(const, full_check=True)
    x = _input(model)
    for a, b in zip(_run(model, x), _run(const, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_external_data_variant(tmp_path):
    model = build_resnet_basic(0)
    path = tmp_path / "resnet_basic.onnx"
    save_with_external_data(model, path)
    assert (tmp_path / "resnet_basic.onnx.data").stat().st_size > 0
    assert path.stat().st_size < model.ByteSize() / 2
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    onnx.checker.check_model(str(path), full_check=True)
    loaded = onnx.load(str(path))
    x = _input(model)
    for a, b in zip(_run(model, x), _run(path, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(_run(model, x), _run(loaded, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
