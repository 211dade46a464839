"""Graphs from TensorFlow's exporter (tf2onnx), kept as files (models/keras_exports.py says how
they were made): a Keras CNN with NHWC input, folded BatchNorms, depthwise conv,
squeeze-and-excite, swish and Concatenate; a Keras transformer encoder whose attention
tf2onnx writes as Reshape -> MatMul -> Reshape with the heads folded into the batch axis by
run-time ReduceProd and Max of shape dims. Both prune into models that pass the full checker
and equal the mask oracle at batch 1 and 3; the encoder loses attention heads in each layer."""
import numpy as np
import onnx
import pytest

from graphprune import prune
from graphprune.api import analyze_model
from models import keras_exports
from oracle_testlib import assert_equals_oracle


@pytest.mark.parametrize("name", list(keras_exports.FIXTURES))
def test_tf2onnx_export_prunes_to_the_mask_oracle(name):
    path = keras_exports.path(name)
    result = prune(path, ratio=0.4)
    onnx.checker.check_model(result.model, full_check=True)
    assert 1 - result.report.pruning_param_ratio >= 0.40, result.report.summary()
    rng = np.random.default_rng(4)
    outputs = assert_equals_oracle(path, result, [keras_exports.feeds(name, batch, rng)
                                                  for batch in (1, 3)])
    assert [o.shape[0] for o in outputs] == [1, 3]
    assert float(np.ptp(outputs[1], axis=0).max()) > 1e-3 * float(np.abs(outputs[1]).max())


def test_keras_attention_prunes_heads_in_each_layer():
    path = keras_exports.path("keras_encoder")
    result = prune(path, ratio=0.4, head_ratio=0.5)
    _, analysis = analyze_model(path)
    planned = {g.key: g for g in result.plan.groups}
    heads = [g for g in analysis.prunable if "heads" in g.tags]
    assert len(heads) == 2, [g.key for g in heads]  # one group per layer, not one for both
    assert all(len(planned[g.key].keep) == 2 and g.units == 4 for g in heads)
    weights = {t.name: t.dims for t in result.model.graph.initializer}
    # Q, K, V and output projections (32 x 4 heads of 8) keep 2 heads: 16 columns or rows;
    # the Q/K/V biases, [heads, 8], keep 2 heads
    attention = [dims for name, dims in weights.items() if "multi_head_attention" in name]
    matrices = [dims for dims in attention if 32 in dims and len(dims) == 2]
    assert len(matrices) == 8 and all(sorted(dims) == [16, 32] for dims in matrices), attention
    assert [dims for dims in attention if 32 not in dims and len(dims) == 2] == [[2, 8]] * 6
