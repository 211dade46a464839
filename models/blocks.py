"""Small ONNX test graphs covering the channel-coupling patterns a CNN pruner must handle.

Every ``build_<name>(seed)`` returns a deterministic, fully shape-annotated ``onnx.ModelProto``
with one float32 input ``"input"`` and an output ``"output"`` (some add more outputs).
Graphs are written with ``onnx.helper`` directly, in the form an exporter emits them:
BatchNormalization unfolded after bias-free Conv, Clip with min/max inputs, decomposed
activations, shape constants as int64 initializers.  Weights are He/fan-in scaled so
activations stay O(1).  ``BLOCKS`` maps names to builders.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 9  # accepted by onnxruntime 1.32 for opset 18 and 21 alike
DEFAULT_OPSET = 18


class _Graph:
    """Accumulates nodes/initializers; tensor names equal the producing node's name."""

    def __init__(self, seed: int, opset: int = DEFAULT_OPSET):
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.value_info: list[onnx.ValueInfoProto] = []

    # -- tensors -----------------------------------------------------------
    def init(self, name: str, value, dtype=np.float32) -> str:
        assert name not in self.inits, name
        self.inits[name] = numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        return name

    def scalar(self, value: float) -> str:
        """Shared float scalar constant (exporters reuse these across nodes)."""
        name = f"const.{value:g}"
        if name not in self.inits:
            self.init(name, np.float32(value))
        return name

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self.init(name, np.asarray(values, dtype=np.int64), np.int64)

    def he(self, shape, fan_in: int, gain: float = 2.0) -> np.ndarray:
        return self.rng.normal(0.0, np.sqrt(gain / fan_in), size=shape)

    def small(self, n: int, scale: float = 0.1) -> np.ndarray:
        return self.rng.uniform(-scale, scale, size=n)

    # -- nodes -------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], name: str, n_out: int = 1,
           out: str | None = None, **attrs):
        outs = [out or name] if n_out == 1 else [f"{name}.{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def annotate(self, name: str, shape: Sequence[int]) -> None:
        """Declare an intermediate shape (for ops onnx shape inference skips)."""
        self.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))

    def conv(self, x, cin, cout, k, name, stride=1, group=1, pad=None, bias=True, out=None,
             gain=2.0):
        fan_in = cin // group * k * k
        ins = [x, self.init(f"{name}.weight", self.he((cout, cin // group, k, k), fan_in, gain))]
        if bias:
            ins.append(self.init(f"{name}.bias", self.small(cout)))
        p = k // 2 if pad is None else pad
        return self.op("Conv", ins, name, out=out, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[p] * 4, group=group, dilations=[1, 1])

    def bn(self, x, c, name, out=None):
        r = self.rng
        ins = [x,
               self.init(f"{name}.weight", r.uniform(0.5, 1.5, c)),
               self.init(f"{name}.bias", self.small(c)),
               self.init(f"{name}.running_mean", self.small(c)),
               self.init(f"{name}.running_var", r.uniform(0.5, 1.5, c))]
        return self.op("BatchNormalization", ins, name, out=out, epsilon=1e-5, momentum=0.9)

    def act(self, x, kind, name, out=None):
        if kind is None:
            return x
        if kind == "relu":
            return self.op("Relu", [x], name, out=out)
        if kind == "relu6":
            return self.op("Clip", [x, self.scalar(0.0), self.scalar(6.0)], name, out=out)
        if kind == "hswish":
            return self.op("HardSwish", [x], name, out=out)
        if kind == "hsig":  # torch.nn.Hardsigmoid: relu6(x + 3) / 6
            return self.op("HardSigmoid", [x], name, out=out, alpha=1 / 6, beta=0.5)
        if kind == "hswish_hsig":  # x * HardSigmoid(x)
            return self.op("Mul", [x, self.act(x, "hsig", f"{name}.hsig")], name, out=out)
        if kind == "hswish_clip":  # x * Clip(x + 3, 0, 6) / 6
            a = self.op("Add", [x, self.scalar(3.0)], f"{name}.add")
            c = self.op("Clip", [a, self.scalar(0.0), self.scalar(6.0)], f"{name}.clip")
            m = self.op("Mul", [x, c], f"{name}.mul")
            return self.op("Div", [m, self.scalar(6.0)], name, out=out)
        if kind == "silu":  # x * Sigmoid(x)
            return self.op("Mul", [x, self.op("Sigmoid", [x], f"{name}.sigmoid")], name, out=out)
        raise ValueError(kind)

    def cba(self, x, cin, cout, k, name, stride=1, group=1, act="relu", conv="conv", bn="bn",
            act_name="act"):
        """Conv(no bias) -> BatchNormalization -> activation, named ``name.conv`` etc.
        Without an activation (residual/projection outputs) the weights use gain 1."""
        y = self.conv(x, cin, cout, k, f"{name}.{conv}", stride, group, bias=False,
                      gain=2.0 if act else 1.0)
        y = self.bn(y, cout, f"{name}.{bn}")
        return self.act(y, act, f"{name}.{act_name}")

    def gemm(self, x, cin, cout, name, out=None, gain=2.0):
        w = self.init(f"{name}.weight", self.he((cout, cin), cin, gain))
        b = self.init(f"{name}.bias", self.small(cout))
        return self.op("Gemm", [x, w, b], name, out=out, alpha=1.0, beta=1.0, transB=1)

    def head(self, x, c, classes=10, name="fc"):
        """GlobalAveragePool -> Flatten -> Gemm classifier."""
        y = self.op("GlobalAveragePool", [x], "avgpool")
        y = self.op("Flatten", [y], "flatten", axis=1)
        return self.gemm(y, c, classes, name, out="output", gain=1.0)

    def build(self, name: str, input_shape: Sequence[int], outputs: Sequence[str],
              doc: str = "") -> onnx.ModelProto:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))
        graph = helper.make_graph(self.nodes, name, [inp], [], initializer=list(self.inits.values()),
                                  value_info=self.value_info)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=IR_VERSION, producer_name="graphprune.models.blocks",
                                  doc_string=doc.strip())
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(self.value_info)}
        for o in outputs:
            vi = known[o]
            dims = vi.type.tensor_type.shape.dim
            assert dims and all(d.HasField("dim_value") for d in dims), f"{o}: no static shape"
            model.graph.output.append(vi)
        return model


# ---------------------------------------------------------------------------------------------
def build_resnet_basic(seed: int = 0) -> onnx.ModelProto:
    """ResNet basic blocks: identity residual Add couples block output with its input
    (so stem/conv2/bn2 channels are one group); a stride-2 block couples conv2 with a
    1x1 Conv-BN downsample shortcut; GAP-Flatten-Gemm couples last channels to fc inputs."""
    g = _Graph(seed)
    x = g.cba("input", 3, 20, 3, "stem", conv="conv1", bn="bn1", act_name="relu")

    def basic(x, cin, cout, stride, name):
        y = g.cba(x, cin, cout, 3, name, stride, conv="conv1", bn="bn1", act_name="relu1")
        y = g.cba(y, cout, cout, 3, name, conv="conv2", bn="bn2", act=None)
        if stride != 1 or cin != cout:
            x = g.cba(x, cin, cout, 1, f"{name}.downsample", stride, act=None, conv="0", bn="1")
        return g.act(g.op("Add", [y, x], f"{name}.add"), "relu", f"{name}.relu2")

    x = basic(x, 20, 20, 1, "layer1.0")
    x = basic(x, 20, 36, 2, "layer2.0")
    g.head(x, 36)
    return g.build("resnet_basic", [1, 3, 32, 32], ["output"], build_resnet_basic.__doc__)


def build_resnet_bottleneck(seed: int = 0) -> onnx.ModelProto:
    """ResNet bottlenecks (1x1 reduce, 3x3, 1x1 expand x4): the inner width is free to prune,
    the expanded width is coupled across the residual chain and the downsample convs."""
    g = _Graph(seed)
    x = g.cba("input", 3, 16, 3, "stem", conv="conv1", bn="bn1", act_name="relu")

    def bottleneck(x, cin, width, stride, name):
        cout = width * 4
        y = g.cba(x, cin, width, 1, name, conv="conv1", bn="bn1", act_name="relu1")
        y = g.cba(y, width, width, 3, name, stride, conv="conv2", bn="bn2", act_name="relu2")
        y = g.cba(y, width, cout, 1, name, conv="conv3", bn="bn3", act=None)
        if stride != 1 or cin != cout:
            x = g.cba(x, cin, cout, 1, f"{name}.downsample", stride, act=None, conv="0", bn="1")
        return g.act(g.op("Add", [y, x], f"{name}.add"), "relu", f"{name}.relu3")

    x = bottleneck(x, 16, 12, 1, "layer1.0")   # 16 -> 48, projection shortcut
    x = bottleneck(x, 48, 12, 1, "layer1.1")   # identity shortcut
    x = bottleneck(x, 48, 20, 2, "layer2.0")   # 48 -> 80, stride 2
    g.head(x, 80)
    return g.build("resnet_bottleneck", [1, 3, 32, 32], ["output"], build_resnet_bottleneck.__doc__)


def build_densenet(seed: int = 0) -> onnx.ModelProto:
    """DenseNet block with a Concat chain: each pre-activation BN sits directly on a Concat,
    so its channels are a union of slices of earlier producers (stem, layer1, layer2, ...);
    pruning a producer must remove matching BN/conv-input slices in every later layer."""
    g = _Graph(seed)
    x = g.cba("input", 3, 24, 3, "features", conv="conv0", bn="norm0", act_name="relu0")
    c, growth = 24, 12
    for i in range(1, 4):
        n = f"features.denseblock1.denselayer{i}"
        y = g.act(g.bn(x, c, f"{n}.norm1"), "relu", f"{n}.relu1")
        y = g.conv(y, c, 4 * growth, 1, f"{n}.conv1", bias=False)
        y = g.act(g.bn(y, 4 * growth, f"{n}.norm2"), "relu", f"{n}.relu2")
        y = g.conv(y, 4 * growth, growth, 3, f"{n}.conv2", bias=False)
        x = g.op("Concat", [x, y], f"{n}.concat", axis=1)
        c += growth                                            # 36, 48, 60
    n = "features.transition1"
    y = g.act(g.bn(x, c, f"{n}.norm"), "relu", f"{n}.relu")
    y = g.conv(y, c, c // 2, 1, f"{n}.conv", bias=False)
    y = g.op("AveragePool", [y], f"{n}.pool", kernel_shape=[2, 2], strides=[2, 2])
    y = g.act(g.bn(y, c // 2, "features.norm5"), "relu", "features.relu5")
    g.head(y, c // 2, name="classifier")
    return g.build("densenet", [1, 3, 32, 32], ["output"], build_densenet.__doc__)


def build_mobilenet_v2(seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 inverted residuals: depthwise convs (group == channels) tie their channels
    to the expand conv; a channel-multiplier-2 depthwise conv (group = in, out = 2*in) ties
    pairs of output channels to one input channel; project outputs coupled by residual Adds."""
    g = _Graph(seed)
    x = g.cba("input", 3, 16, 3, "features.0", 2, act="relu6", conv="0", bn="1", act_name="2")

    # depthwise with channel multiplier 2, then project (no residual: 16 -> 12)
    n = "features.1.conv"
    y = g.cba(x, 16, 32, 3, n, group=16, act="relu6", conv="0.0", bn="0.1", act_name="0.2")
    x = g.cba(y, 32, 12, 1, n, act=None, conv="1", bn="2")

    def inverted(x, cin, hidden, cout, stride, name):
        n = f"{name}.conv"
        y = g.cba(x, cin, hidden, 1, n, act="relu6", conv="0.0", bn="0.1", act_name="0.2")
        y = g.cba(y, hidden, hidden, 3, n, stride, group=hidden, act="relu6",
                  conv="1.0", bn="1.1", act_name="1.2")
        y = g.cba(y, hidden, cout, 1, n, act=None, conv="2", bn="3")
        return g.op("Add", [x, y], f"{name}.add") if stride == 1 and cin == cout else y

    x = inverted(x, 12, 72, 12, 1, "features.2")    # residual
    x = inverted(x, 12, 72, 20, 2, "features.3")    # stride 2, no residual
    x = inverted(x, 20, 100, 20, 1, "features.4")   # residual
    x = g.cba(x, 20, 64, 1, "features.5", act="relu6", conv="0", bn="1", act_name="2")
    g.head(x, 64, name="classifier.1")
    return g.build("mobilenet_v2", [1, 3, 32, 32], ["output"], build_mobilenet_v2.__doc__)


def build_mobilenet_v3(seed: int = 0) -> onnx.ModelProto:
    """MobileNetV3: HardSwish op and both decomposed forms (x*HardSigmoid(x),
    x*Clip(x+3,0,6)/6 with shared scalar constants); squeeze-excite whose 1x1 convs and
    broadcast Mul ([1,C,1,1] x [1,C,H,W]) couple the gate's output channels with the block's."""
    g = _Graph(seed)
    x = g.cba("input", 3, 16, 3, "features.0", 2, act="hswish", conv="0", bn="1", act_name="2")

    def se(x, c, sq, name, reduce_mean=False):
        if reduce_mean:
            s = g.op("ReduceMean", [x, g.ints(f"{name}.avgpool.axes", [2, 3])],
                     f"{name}.avgpool", keepdims=1)
        else:
            s = g.op("GlobalAveragePool", [x], f"{name}.avgpool")
        s = g.act(g.conv(s, c, sq, 1, f"{name}.fc1"), "relu", f"{name}.relu")
        s = g.act(g.conv(s, sq, c, 1, f"{name}.fc2"), "hsig", f"{name}.hardsigmoid")
        return g.op("Mul", [x, s], f"{name}.mul")

    def block(x, cin, hidden, cout, k, stride, act, name, sq, rm=False):
        n = f"{name}.block"
        y = x
        if hidden != cin:
            y = g.cba(y, cin, hidden, 1, f"{n}.0", act=act, conv="0", bn="1", act_name="2")
        y = g.cba(y, hidden, hidden, k, f"{n}.1", stride, hidden, act=act, conv="0", bn="1",
                  act_name="2")
        y = se(y, hidden, sq, f"{n}.2", rm)
        y = g.cba(y, hidden, cout, 1, f"{n}.3", act=None, conv="0", bn="1")
        return g.op("Add", [x, y], f"{name}.add") if stride == 1 and cin == cout else y

    x = block(x, 16, 16, 16, 3, 1, "relu", "features.1", 8)                  # residual
    x = block(x, 16, 40, 24, 5, 2, "hswish_hsig", "features.2", 10, True)    # decomposed
    x = block(x, 24, 72, 24, 3, 1, "hswish_clip", "features.3", 20)          # residual
    x = g.cba(x, 24, 96, 1, "features.4", act="hswish", conv="0", bn="1", act_name="2")
    x = g.op("GlobalAveragePool", [x], "avgpool")
    x = g.op("Flatten", [x], "flatten", axis=1)
    x = g.act(g.gemm(x, 96, 64, "classifier.0"), "hswish", "classifier.1")
    g.gemm(x, 64, 10, "classifier.3", out="output", gain=1.0)
    return g.build("mobilenet_v3", [1, 3, 32, 32], ["output"], build_mobilenet_v3.__doc__)


def build_shufflenet_v2(seed: int = 0) -> onnx.ModelProto:
    """ShuffleNetV2: Split into halves (sizes as input; opset-18 num_outputs attribute),
    Concat, and channel shuffle via Reshape [1,2,C/2,H,W] / Transpose / Reshape with
    hard-coded int64 shape constants, which interleaves the two halves' channels."""
    g = _Graph(seed)
    x = g.cba("input", 3, 24, 3, "conv1", 2, conv="0", bn="1", act_name="2")   # 24x16x16
    c, half, hw = 44, 22, 8

    def branch(x, cin, name, stride):
        y = g.cba(x, cin, half, 1, name, conv="0", bn="1", act_name="2")
        y = g.cba(y, half, half, 3, name, stride, half, act=None, conv="3", bn="4")
        return g.cba(y, half, half, 1, name, conv="5", bn="6", act_name="7")

    def shuffle(x, name):
        y = g.op("Reshape", [x, g.ints(f"{name}.shape1", [1, 2, c // 2, hw, hw])], f"{name}.reshape1")
        y = g.op("Transpose", [y], f"{name}.transpose", perm=[0, 2, 1, 3, 4])
        return g.op("Reshape", [y, g.ints(f"{name}.shape2", [1, c, hw, hw])], f"{name}.reshape2")

    # downsampling unit: both branches see the full input
    n = "stage2.0"
    b1 = g.cba(x, 24, 24, 3, f"{n}.branch1", 2, 24, act=None, conv="0", bn="1")
    b1 = g.cba(b1, 24, half, 1, f"{n}.branch1", conv="2", bn="3", act_name="4")
    b2 = branch(x, 24, f"{n}.branch2", 2)
    x = shuffle(g.op("Concat", [b1, b2], f"{n}.concat", axis=1), f"{n}.shuffle")

    # basic units: x1 passes through, x2 goes through the branch
    for i, num_outputs in ((1, False), (2, True)):
        n = f"stage2.{i}"
        if num_outputs:
            x1, x2 = g.op("Split", [x], f"{n}.split", 2, axis=1, num_outputs=2)
        else:
            x1, x2 = g.op("Split", [x, g.ints(f"{n}.split.sizes", [half, half])], f"{n}.split", 2,
                          axis=1)
        y = g.op("Concat", [x1, branch(x2, half, f"{n}.branch2", 1)], f"{n}.concat", axis=1)
        x = shuffle(y, f"{n}.shuffle")

    x = g.cba(x, c, 64, 1, "conv5", conv="0", bn="1", act_name="2")
    g.head(x, 64)
    return g.build("shufflenet_v2", [1, 3, 32, 32], ["output"], build_shufflenet_v2.__doc__)


def build_grouped_conv(seed: int = 0) -> onnx.ModelProto:
    """ResNeXt/RegNet blocks: 3x3 grouped conv (groups=4, in == out) means channels can only
    be removed in equal numbers per group (or whole groups), tied to the 1x1 conv before it;
    residual Adds couple the outer width, including a stride-2 downsample block."""
    g = _Graph(seed)
    x = g.cba("input", 16, 24, 3, "stem", conv="conv", bn="bn", act_name="relu")

    def block(x, cin, width, cout, stride, name):
        y = g.cba(x, cin, width, 1, name, conv="conv1", bn="bn1", act_name="relu1")
        y = g.cba(y, width, width, 3, name, stride, 4, conv="conv2", bn="bn2", act_name="relu2")
        y = g.cba(y, width, cout, 1, name, act=None, conv="conv3", bn="bn3")
        if stride != 1 or cin != cout:
            x = g.cba(x, cin, cout, 1, f"{name}.downsample", stride, act=None, conv="0", bn="1")
        return g.act(g.op("Add", [y, x], f"{name}.add"), "relu", f"{name}.relu3")

    x = block(x, 24, 36, 24, 1, "layer1.0")     # 9 channels per group
    x = block(x, 24, 52, 40, 2, "layer2.0")     # 13 channels per group, downsample
    g.head(x, 40)
    return g.build("grouped_conv", [1, 16, 16, 16], ["output"], build_grouped_conv.__doc__)


def build_yolo_csp(seed: int = 0) -> onnx.ModelProto:
    """YOLOv8-style: Conv-BN-SiLU (Mul(x, Sigmoid(x))); C2f splits cv1 into halves, runs a
    residual bottleneck on the second half and concatenates [h1, h2, out]; SPPF concatenates
    a chain of three MaxPools; a Resize-upsampled map is concatenated with an earlier one.
    Two detection outputs ("output" at stride 4, "output_p5" at stride 8)."""
    g = _Graph(seed)

    def cbs(x, cin, cout, k, name, stride=1):
        return g.cba(x, cin, cout, k, name, stride, act="silu", act_name="act")

    def c2f(x, cin, cout, name, num_outputs):
        h = cout // 2
        y = cbs(x, cin, cout, 1, f"{name}.cv1")
        if num_outputs:
            y1, y2 = g.op("Split", [y], f"{name}.split", 2, axis=1, num_outputs=2)
        else:
            y1, y2 = g.op("Split", [y, g.ints(f"{name}.split.sizes", [h, h])], f"{name}.split", 2,
                          axis=1)
        b = cbs(y2, h, h, 3, f"{name}.m.0.cv1")
        b = cbs(b, h, h, 3, f"{name}.m.0.cv2")
        b = g.op("Add", [y2, b], f"{name}.m.0.add")
        y = g.op("Concat", [y1, y2, b], f"{name}.concat", axis=1)
        return cbs(y, 3 * h, cout, 1, f"{name}.cv2")

    x = cbs("input", 3, 12, 3, "model.0", 2)                      # 12x16x16
    x = cbs(x, 12, 24, 3, "model.1", 2)                           # 24x8x8
    p3 = c2f(x, 24, 24, "model.2", num_outputs=False)             # 24x8x8
    x = cbs(p3, 24, 40, 3, "model.3", 2)                          # 40x4x4
    # SPPF
    y = cbs(x, 40, 20, 1, "model.4.cv1")
    pools = [y]
    for i in range(3):
        pools.append(g.op("MaxPool", [pools[-1]], f"model.4.m.{i}", kernel_shape=[5, 5],
                          strides=[1, 1], pads=[2, 2, 2, 2]))
    y = g.op("Concat", pools, "model.4.concat", axis=1)
    p5 = cbs(y, 80, 40, 1, "model.4.cv2")                         # 40x4x4
    up = g.op("Resize", [p5, "", g.init("model.5.scales", [1.0, 1.0, 2.0, 2.0])], "model.5",
              mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    y = g.op("Concat", [up, p3], "model.6", axis=1)               # 64x8x8
    y = c2f(y, 64, 28, "model.7", num_outputs=True)               # 28x8x8
    g.conv(y, 28, 18, 1, "model.8.cv_p3", out="output")
    g.conv(p5, 40, 18, 1, "model.8.cv_p5", out="output_p5")
    return g.build("yolo_csp", [1, 3, 32, 32], ["output", "output_p5"], build_yolo_csp.__doc__)


def _flatten_features(g: _Graph) -> str:
    x = g.cba("input", 3, 12, 3, "features.0", conv="conv", bn="bn", act_name="relu")
    x = g.op("MaxPool", [x], "features.pool", kernel_shape=[2, 2], strides=[2, 2])     # 12x8x8
    x = g.conv(x, 12, 20, 3, "features.1.conv", stride=2)                             # 20x4x4
    return g.act(x, "relu", "features.1.relu")


def build_flatten_gemm(seed: int = 0) -> onnx.ModelProto:
    """Flatten(axis=1) of a 20x4x4 map into Gemm: each conv channel owns 16 consecutive fc
    input columns, so pruning a channel removes a stride-16 block of Gemm weight columns."""
    g = _Graph(seed)
    x = g.op("Flatten", [_flatten_features(g)], "flatten", axis=1)                    # 320
    x = g.act(g.gemm(x, 320, 36, "classifier.0"), "relu", "classifier.1")
    g.gemm(x, 36, 10, "classifier.2", out="output", gain=1.0)
    return g.build("flatten_gemm", [1, 3, 16, 16], ["output"], build_flatten_gemm.__doc__)


def build_flatten_reshape_gemm(seed: int = 0) -> onnx.ModelProto:
    """Like flatten_gemm but via Reshape with a constant [1, 320] shape (which must be
    rewritten when channels go) and MatMul with a [in, out] weight + Add bias."""
    g = _Graph(seed)
    x = g.op("Reshape", [_flatten_features(g), g.ints("flatten.shape", [1, 320])], "flatten")

    def linear(x, cin, cout, name, out=None, gain=2.0):
        y = g.op("MatMul", [x, g.init(f"{name}.weight", g.he((cin, cout), cin, gain))],
                 f"{name}.matmul")
        return g.op("Add", [y, g.init(f"{name}.bias", g.small(cout))], f"{name}.add", out=out)

    x = g.act(linear(x, 320, 36, "classifier.0"), "relu", "classifier.1")
    linear(x, 36, 10, "classifier.2", out="output", gain=1.0)
    return g.build("flatten_reshape_gemm", [1, 3, 16, 16], ["output"],
                   build_flatten_reshape_gemm.__doc__)


def build_crnn(seed: int = 0) -> onnx.ModelProto:
    """CRNN text recogniser (OCR): convs pool the height to 1, Squeeze + Transpose make the
    width a sequence [W, batch, C], a bidirectional LSTM reads the channels as its input
    features (W's last axis loses the pruned ones; the hidden size stays)."""
    g = _Graph(seed)
    x = g.cba("input", 3, 16, 3, "cnn.0")                                               # 16x8x32
    x = g.op("MaxPool", [x], "cnn.pool0", kernel_shape=[2, 2], strides=[2, 2])          # 16x4x16
    x = g.cba(x, 16, 24, 3, "cnn.1")
    x = g.op("MaxPool", [x], "cnn.pool1", kernel_shape=[4, 2], strides=[4, 2])          # 24x1x8
    x = g.op("Squeeze", [x, g.ints("cnn.squeeze.axes", [2])], "cnn.squeeze")            # 1x24x8
    x = g.op("Transpose", [x], "cnn.to_sequence", perm=[2, 0, 1])                       # 8x1x24
    hidden = 8
    w = g.init("rnn.W", g.he((2, 4 * hidden, 24), 24, 1.0))
    r = g.init("rnn.R", g.he((2, 4 * hidden, hidden), hidden, 1.0))
    b = g.init("rnn.B", g.small(8 * hidden).reshape(1, -1).repeat(2, axis=0))
    g.op("LSTM", [x, w, r, b], "rnn", out="output", hidden_size=hidden,
         direction="bidirectional")                                                     # 8x2x1x8
    return g.build("crnn", [1, 3, 8, 32], ["output"], build_crnn.__doc__)


def build_norms_misc(seed: int = 0) -> onnx.ModelProto:
    """Grab bag (opset 21): GroupNormalization (channels pruned per group), Instance-
    Normalization, PRelu slope [C,1,1], LeakyRelu, Erf-GELU, spatial Pad, ConvTranspose
    (weight is [Cin, Cout, k, k]), ReduceMean/GlobalMaxPool gates, NHWC Transpose -> MatMul
    [C, D] + Add -> Transpose back, Squeeze/Unsqueeze around GAP, Resize, AveragePool."""
    g = _Graph(seed, opset=21)
    x = g.conv("input", 3, 16, 3, "conv0", stride=2)                                   # 16x16x16
    x = g.op("GroupNormalization", [x, g.init("gn0.weight", g.rng.uniform(0.5, 1.5, 16)),
                                    g.init("gn0.bias", g.small(16))], "gn0", num_groups=4,
             epsilon=1e-5)
    g.annotate(x, [1, 16, 16, 16])  # onnx shape inference does not type GroupNormalization
    x = g.op("PRelu", [x, g.init("prelu0.slope", g.rng.uniform(0.05, 0.3, (16, 1, 1)))], "prelu0")

    x = g.conv(x, 16, 20, 3, "conv1")
    x = g.op("InstanceNormalization", [x, g.init("in1.weight", g.rng.uniform(0.5, 1.5, 20)),
                                       g.init("in1.bias", g.small(20))], "in1", epsilon=1e-5)
    x = g.op("LeakyRelu", [x], "lrelu1", alpha=0.1)

    x = g.op("Pad", [x, g.ints("pad2.pads", [0, 0, 1, 1, 0, 0, 1, 1])], "pad2", mode="constant")
    x = g.conv(x, 20, 24, 3, "conv2", pad=0)                                           # 24x16x16
    d = g.op("Div", [x, g.scalar(float(np.sqrt(2.0)))], "gelu2.div")
    e = g.op("Add", [g.op("Erf", [d], "gelu2.erf"), g.scalar(1.0)], "gelu2.add")
    x = g.op("Mul", [g.op("Mul", [x, e], "gelu2.mul"), g.scalar(0.5)], "gelu2")
    x = g.op("AveragePool", [x], "pool2", kernel_shape=[2, 2], strides=[2, 2])         # 24x8x8

    w = g.he((24, 12, 2, 2), 24 * 4)                                # [Cin, Cout/group, k, k]
    x = g.op("ConvTranspose", [x, g.init("deconv3.weight", w), g.init("deconv3.bias", g.small(12))],
             "deconv3", kernel_shape=[2, 2], strides=[2, 2])                           # 12x16x16
    x = g.op("Tanh", [x], "tanh3")

    x = g.conv(x, 12, 28, 3, "conv4", stride=2)                                        # 28x8x8
    s = g.op("ReduceMean", [x, g.ints("gate4.axes", [2, 3])], "gate4.mean", keepdims=1)
    x = g.op("Mul", [x, g.op("Sigmoid", [s], "gate4.sigmoid")], "gate4.mul")

    y = g.op("Transpose", [x], "mlp5.to_nhwc", perm=[0, 2, 3, 1])                     # 1x8x8x28
    y = g.op("MatMul", [y, g.init("mlp5.weight", g.he((28, 36), 28))], "mlp5.matmul")
    y = g.op("Add", [y, g.init("mlp5.bias", g.small(36))], "mlp5.add")
    x = g.op("Transpose", [y], "mlp5.to_nchw", perm=[0, 3, 1, 2])                     # 36x8x8

    x = g.op("Resize", [x, "", g.init("up6.scales", [1.0, 1.0, 2.0, 2.0])], "up6",
             mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    x = g.act(g.conv(x, 36, 20, 3, "conv7", stride=2), "relu", "relu7")               # 20x8x8

    axes = g.ints("gate8.axes", [2, 3])
    a = g.op("Squeeze", [g.op("GlobalAveragePool", [x], "gate8.gap"), axes], "gate8.squeeze")
    a = g.op("Unsqueeze", [a, axes], "gate8.unsqueeze")                                # 1x20x1x1
    m = g.op("GlobalMaxPool", [x], "gate8.gmp")
    s = g.op("Sigmoid", [g.op("Add", [a, m], "gate8.add")], "gate8.sigmoid")
    x = g.op("Mul", [x, s], "gate8.mul")

    x = g.op("Squeeze", [g.op("GlobalAveragePool", [x], "avgpool"), axes], "squeeze")  # 1x20
    x = g.op("Tanh", [g.gemm(x, 20, 16, "fc1")], "tanh9")
    g.gemm(x, 16, 10, "fc2", out="output", gain=1.0)
    return g.build("norms_misc", [1, 3, 32, 32], ["output"], build_norms_misc.__doc__)


# ---------------------------------------------------------------------------------------------
def with_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` with every initializer turned into a Constant node (Paddle/TF style)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = [helper.make_node("Constant", [], [t.name], name=f"const::{t.name}", value=t)
              for t in m.graph.initializer]
    nodes = consts + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.initializer[:]
    return m


def as_old_ir(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` as IR 3 files are written (old exporters, the model zoo's opset 7-8
    files): every initializer is also declared as a graph input."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = 3
    m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                         for t in m.graph.initializer)
    return m


def save_with_external_data(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Save ``model`` to ``path`` with all weights in one external file ``<name>.data`` beside it."""
    path = os.fspath(path)
    m = onnx.ModelProto()
    m.CopyFrom(model)  # convert_model_to_external_data mutates in place
    onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data", size_threshold=0,
                    convert_attribute=False)


BLOCKS: dict[str, Callable[[int], onnx.ModelProto]] = {
    "resnet_basic": build_resnet_basic,
    "resnet_bottleneck": build_resnet_bottleneck,
    "densenet": build_densenet,
    "mobilenet_v2": build_mobilenet_v2,
    "mobilenet_v3": build_mobilenet_v3,
    "shufflenet_v2": build_shufflenet_v2,
    "grouped_conv": build_grouped_conv,
    "yolo_csp": build_yolo_csp,
    "flatten_gemm": build_flatten_gemm,
    "flatten_reshape_gemm": build_flatten_reshape_gemm,
    "norms_misc": build_norms_misc,
    "crnn": build_crnn,
}
