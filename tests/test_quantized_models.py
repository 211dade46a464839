"""QDQ-quantized models (ONNX Runtime's quantize_static, per-channel int8 weights, uint8
activations): the weights are pruned as float and written back as the same integers with the
kept channels' scales, the activations keep their QuantizeLinear/DequantizeLinear pairs, and
the pruned model equals the mask oracle (computed with the float weights) and still runs with
ONNX Runtime's integer kernels."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from graphprune import prune
from graphprune.verify import run
from models.blocks import BLOCKS
from oracle_testlib import assert_equals_oracle

pytest.importorskip("onnxruntime.quantization")
_LAYERS = ("Conv", "Gemm", "MatMul")


def _qdq(name: str, tmp_path) -> tuple[str, list[dict]]:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    model = BLOCKS[name](0)
    src, dest = tmp_path / f"{name}.onnx", tmp_path / f"{name}.qdq.onnx"
    onnx.save(model, src)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(1)
    feeds = [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(6)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds[:4])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dest), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8)
    return str(dest), feeds[4:]


def _weight_sources(model: onnx.ModelProto) -> dict[str, str]:
    """For each layer, the op type that makes its weight input (or 'initializer')."""
    makers = {o: n for n in model.graph.node for o in n.output}
    weights = {t.name for t in model.graph.initializer}
    return {n.name: ("initializer" if n.input[1] in weights else makers[n.input[1]].op_type)
            for n in model.graph.node if n.op_type in _LAYERS}


@pytest.mark.parametrize("name", ["resnet_bottleneck", "mobilenet_v3", "flatten_gemm"])
def test_qdq_model_prunes_and_stays_quantized(name, tmp_path):
    path, feeds = _qdq(name, tmp_path)
    original = onnx.load(path)
    assert set(_weight_sources(original).values()) == {"DequantizeLinear"}
    result = prune(path, ratio=0.4, round_to=1)
    onnx.checker.check_model(result.model, full_check=True)
    report = result.report
    assert report.groups_pruned > 0 and not report.left_float, report.summary()
    assert f"quantized: {report.requantized} weight(s) written back as integers" in \
        report.summary() and report.requantized >= 3
    assert report.params_after < 0.8 * report.params_before
    # every layer still reads an integer weight through DequantizeLinear
    assert set(_weight_sources(result.model).values()) == {"DequantizeLinear"}
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    weights = {n.input[1] for n in result.model.graph.node if n.op_type in _LAYERS}
    stored = [inits[n.input[0]].dtype for n in result.model.graph.node
              if n.op_type == "DequantizeLinear" and n.output[0] in weights]
    assert stored and all(dtype == np.int8 for dtype in stored)
    assert sum(n.op_type == "QuantizeLinear" for n in result.model.graph.node) == \
        sum(n.op_type == "QuantizeLinear" for n in original.graph.node)
    # equal to the mask oracle, whose weights are the float values of the same integers
    assert_equals_oracle(path, result, feeds, tolerance=1e-5)
    # ONNX Runtime fuses the QDQ groups into integer kernels and runs the pruned model
    fused = ort.InferenceSession(result.model.SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    plain = run(result.model, feeds[0])[0]
    got = fused.run(None, feeds[0])[0]
    assert got.shape == plain.shape
    assert float(np.abs(got - plain).max()) <= 0.1 * float(np.abs(plain).max())


def test_weights_moved_off_the_grid_stay_float(tmp_path):
    # compensation re-fits the consumers of removed channels: their new values are not
    # integers times the old scales, so they stay float rather than be rounded
    path, feeds = _qdq("resnet_bottleneck", tmp_path)
    result = prune(path, ratio=0.4, round_to=1, compensate=True,
                   calib=np.concatenate([f["input"] for f in feeds]))
    report = result.report
    assert report.left_float and "left float" in report.summary()
    onnx.checker.check_model(result.model, full_check=True)
    sources = _weight_sources(result.model)
    assert "DequantizeLinear" in sources.values()
    assert "initializer" in sources.values() or any(
        name in {t.name for t in result.model.graph.initializer} for name in report.left_float)


def _weight_only(name: str) -> onnx.ModelProto:
    """Every conv weight stored as int8 with a per-channel scale and read through
    DequantizeLinear; activations stay float, so BatchNorms follow the convs directly."""
    from onnx import helper

    model = BLOCKS[name](0)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = numpy_helper.to_array(inits[node.input[1]])
            scale = (np.abs(w).reshape(len(w), -1).max(axis=1) / 127).astype(np.float32)
            q = np.rint(w / scale.reshape(-1, *[1] * (w.ndim - 1))).astype(np.int8)
            name_q, name_s = node.input[1] + ".q", node.input[1] + ".scale"
            model.graph.initializer.remove(inits[node.input[1]])
            model.graph.initializer.extend([numpy_helper.from_array(q, name_q),
                                            numpy_helper.from_array(scale, name_s)])
            nodes.append(helper.make_node("DequantizeLinear", [name_q, name_s],
                                          [node.input[1]], axis=0,
                                          name=node.input[1] + ".dequantize"))
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_weight_only_quantization_keeps_batchnorm_beside_the_integers():
    # folding a BatchNorm would move the weights off their grid: it stays a separate node
    model = _weight_only("resnet_basic")
    result = prune(model, ratio=0.4, round_to=1)
    assert result.report.groups_pruned > 0 and not result.report.left_float
    convs = {n.name for n in result.model.graph.node if n.op_type == "Conv"}
    sources = _weight_sources(result.model)
    assert {sources[c] for c in convs} == {"DequantizeLinear"}  # the Gemm head stays float
    assert any(n.op_type == "BatchNormalization" for n in result.model.graph.node)
    rng = np.random.default_rng(2)
    assert_equals_oracle(model, result, [{"input": rng.standard_normal((1, 3, 32, 32)).astype(
        np.float32)} for _ in range(2)], tolerance=1e-5)


def test_sparsity_leaves_quantized_weights_and_says_why(tmp_path):
    pytest.importorskip("graphprune.kernels")
    from graphprune import SparsifyConfig
    from graphprune.kernels import KernelsUnavailable, library_path

    try:
        library_path()
    except KernelsUnavailable:
        pytest.skip("graphprune's sparse-operator library is not built here")
    path, _ = _qdq("resnet_bottleneck", tmp_path)
    result = prune(path, ratio=0.0, sparse=SparsifyConfig(sparsity=0.9, measure=False))
    sparsity = result.report.sparsity
    assert not sparsity.rewritten and "quantized (QDQ) weight" in result.report.summary()
    assert set(_weight_sources(result.model).values()) == {"DequantizeLinear"}
