"""Small Keras models converted by tf2onnx, kept as files in models/examples/ so that the tests
see a TensorFlow exporter's graphs without installing TensorFlow (about 600 MB):

- keras_cnn.tf2onnx.onnx: NHWC input, Conv/BatchNorm/ReLU6, an inverted residual with a
  depthwise conv and squeeze-and-excite (hard sigmoid), swish, a Concatenate of two branches,
  global pooling and a Dense head. tf2onnx folds the BatchNorms and moves the NHWC transposes
  to the input.
- keras_encoder.tf2onnx.onnx: two pre-norm transformer blocks with keras.layers
  .MultiHeadAttention (4 heads). Keras computes attention with einsum; tf2onnx writes each
  einsum as Reshape -> MatMul -> Reshape whose targets fold the heads into the batch axis
  with ReduceProd and Max of run-time dims, and LayerNorm as moments (GlobalAveragePool).

Regenerate (needs `pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0`, not a test
dependency):

    python -m models.keras_exports models/examples

Weights are Keras's initialisation plus seeded noise on every variable (no zero biases or unit
norms, which tf2onnx would deduplicate across layers).
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np

FIXTURES = {"keras_cnn": "keras_cnn.tf2onnx.onnx", "keras_encoder": "keras_encoder.tf2onnx.onnx"}
INPUT_SHAPES = {"keras_cnn": (32, 32, 3), "keras_encoder": (8, 32)}  # without the batch axis


def path(name: str) -> Path:
    return Path(__file__).resolve().parent / "examples" / FIXTURES[name]


def feeds(name: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal((batch, *INPUT_SHAPES[name])).astype(np.float32)}


def _cnn(keras):
    from keras import layers

    def cbr(x, filters, kernel, strides=1, act="relu6"):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.Activation(act)(x) if act else x

    inp = keras.Input(INPUT_SHAPES["keras_cnn"], name="input")
    x = cbr(inp, 16, 3, strides=2)
    y = cbr(x, 48, 1)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(y)
    y = layers.Activation("relu6")(layers.BatchNormalization()(y))
    s = layers.GlobalAveragePooling2D(keepdims=True)(y)
    s = layers.Conv2D(12, 1, activation="relu")(s)
    s = layers.Conv2D(48, 1, activation="hard_sigmoid")(s)
    y = layers.Multiply()([y, s])
    x = layers.Add()([x, cbr(y, 16, 1, act=None)])
    x = cbr(x, 32, 3, strides=2, act="swish")
    x = layers.Concatenate()([cbr(x, 16, 1), cbr(x, 24, 3)])
    out = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


def _encoder(keras):
    from keras import layers

    inp = keras.Input(INPUT_SHAPES["keras_encoder"], name="input")
    x = inp
    for _ in range(2):
        h = layers.LayerNormalization(epsilon=1e-6)(x)
        x = layers.Add()([x, layers.MultiHeadAttention(num_heads=4, key_dim=8)(h, h)])
        h = layers.LayerNormalization(epsilon=1e-6)(x)
        h = layers.Dense(32)(layers.Dense(64, activation="relu")(h))
        x = layers.Add()([x, h])
    out = layers.Dense(5)(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inp, out)


def export(name: str, dest: Path) -> Path:
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(0)
    model = {"keras_cnn": _cnn, "keras_encoder": _encoder}[name](keras)
    for w in model.weights:
        noise = np.random.default_rng(zlib.crc32(w.path.encode())).standard_normal(w.shape)
        value = w.numpy() + 0.05 * noise.astype(np.float32)
        w.assign(np.abs(value) if "variance" in w.path else value)
    spec = (tf.TensorSpec((None, *INPUT_SHAPES[name]), tf.float32, name="input"),)

    @tf.function(input_signature=spec)
    def call(x):
        return model(x, training=False)

    out = dest / FIXTURES[name]
    tf2onnx.convert.from_function(call, input_signature=spec, opset=17, output_path=str(out))
    return out


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "examples")
    for fixture in FIXTURES:
        print("wrote", export(fixture, folder))
