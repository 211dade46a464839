"""The real-model zoo builds valid, runnable models.

Slow (the torchvision part exports a model per case unless the cache at
$GRAPHPRUNE_ZOO_CACHE or ~/.cache/graphprune/zoo already holds it), hence the
``zoo`` marker.
"""

import numpy as np
import onnx
import pytest

from models import zoo

ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.zoo


def _run(model, batch=1):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else batch for d in inp.shape]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    return sess.run(None, {inp.name: x})[0]


@pytest.mark.parametrize("name", zoo.LIGHT_MODELS)
def test_light_model_materialises_and_runs(name):
    original = onnx.load(str(zoo.light_model_path(name)))
    model = zoo.light_model(name)
    onnx.checker.check_model(model, full_check=True)

    assert not any(n.op_type == "ConstantOfShape" for n in model.graph.node)
    kept = [n for n in original.graph.node if n.op_type != "ConstantOfShape"]
    assert [(n.op_type, n.name) for n in model.graph.node] == [(n.op_type, n.name) for n in kept]
    assert [o.name for o in model.graph.output] == [o.name for o in original.graph.output]
    assert len(model.graph.input) == 1  # only the image; weights are constants
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer
               if len(t.dims) > 1)

    out = _run(model)
    assert np.isfinite(out).all()
    assert out.std() > 0
    assert out.shape[:2] == (1, 1000)


def test_light_model_is_seeded():
    a, b, c = zoo.light_model("squeezenet"), zoo.light_model("squeezenet"), \
        zoo.light_model("squeezenet", seed=1)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()


@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
@pytest.mark.parametrize("name", zoo.TORCHVISION_MODELS)
def test_torchvision_model_exports_and_runs(name, exporter):
    path = zoo.default_cache_dir() / f"{name}.{exporter}.onnx"
    if not path.exists():  # building needs torch; a cached file does not
        pytest.importorskip("torchvision")
        pytest.importorskip("onnxscript")
    path = zoo.torchvision_model(name, exporter)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert _run(path).shape == (1, 1000)
    out = _run(path, batch=2)
    assert out.shape == (2, 1000)  # dynamic batch axis
    # the logits depend on the input (zoo._normalise_activations): comparisons are not empty
    assert float(np.abs(out[0] - out[1]).max()) > 1e-3 * float(np.abs(out).max()) > 0
