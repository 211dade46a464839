"""DequantizeWeights: DequantizeLinear of constant integers becomes the float weight it
computes, with the quantization kept for requantization; anything else is left alone."""
import numpy as np
from onnx import helper

from graphprune.passes import DequantizeWeights
from graphprune.quantization import quantize_exactly
from graphprune.verify import run
from passes_testlib import init, load, make_model, op_types, vi

Q = np.arange(-12, 12, dtype=np.int8).reshape(4, 6)


def _model(blocked: bool = False):
    dq = {"axis": 1}
    if blocked:
        dq = {"axis": 1, "block_size": 2}
    scale = np.array([0.5, 0.25, 0.1], np.float32) if blocked else \
        np.array([0.5, 0.25, 0.1, 0.2, 0.3, 0.05], np.float32)
    return make_model(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], **dq),
         helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("DequantizeLinear", ["q2", "s2"], ["w2"]),  # per tensor
         helper.make_node("MatMul", ["h", "w2"], ["y"])],
        [vi("x", [2, 4])], [vi("y", [2, 3])],
        [init("q", Q if not blocked else Q), init("s", scale.reshape(-1) if not blocked else
                                                  np.tile(scale, (2, 1))),
         init("z", np.arange(6, dtype=np.int8) - 3 if not blocked else
              np.zeros((2, 3), np.int8)),
         init("q2", (np.arange(18) % 7 - 3).astype(np.int8).reshape(6, 3)),
         init("s2", np.float32(0.125))], opset=21 if blocked else 17)


def test_weights_become_float_and_quantize_back_exactly():
    model = _model()
    graph = load(model)
    assert DequantizeWeights().run(graph)
    assert "DequantizeLinear" not in op_types(graph)
    w = graph.weights["w"]
    scale = np.array([0.5, 0.25, 0.1, 0.2, 0.3, 0.05], np.float32)
    # as DequantizeLinear computes it: integer difference, then times the float32 scale
    assert np.array_equal(w, (Q.astype(np.int64) - (np.arange(6) - 3)).astype(np.float32) * scale)
    assert w.dtype == np.float32
    assert graph.quantized["w"].axis == 1 and graph.quantized["w2"].axis is None
    assert np.array_equal(quantize_exactly(w, graph.quantized["w"]), Q)
    assert quantize_exactly(w + 0.01, graph.quantized["w"]) is None  # off the grid
    assert not {"q", "s", "z", "q2", "s2"} & graph.weights.keys()
    # ONNX Runtime without optimizations (with them it fuses DequantizeLinear + MatMul into
    # a kernel that also quantizes x, another computation)
    x = {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}
    assert np.array_equal(run(model, x)[0], run(graph.to_model(), x)[0])


def test_blocked_and_run_time_quantization_is_left_alone():
    graph = load(_model(blocked=True))
    DequantizeWeights().run(graph)  # folds the per-tensor w2 only
    assert "w" not in graph.weights and "w" not in graph.quantized and "w2" in graph.quantized
    model = make_model([helper.make_node("DequantizeLinear", ["xq", "s"], ["x"]),
                        helper.make_node("Relu", ["x"], ["y"])],
                       [vi("xq", [2, 4], elem=3)], [vi("y", [2, 4])],
                       [init("s", np.float32(0.5))])
    assert not DequantizeWeights().run(load(model))


def test_large_int32_biases_quantize_back_exactly():
    from graphprune.quantization import Quantization, dequantize

    # float32 division misrounds these (found by search); float64 does not
    q = np.array([5_328_983, -5_350_917, 3, 5_356_899], np.int32)
    quant = Quantization(np.float32(0.0123).reshape(()), None, None, np.dtype(np.int32))
    assert np.array_equal(quantize_exactly(dequantize(q, quant), quant), q)
