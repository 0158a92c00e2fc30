"""ResNet-18 and MobileNetV2 for the compression benchmark, defined with onnx.helper.

No torch and no downloads: the layers follow torchvision's definitions, weights are
He-initialized and seeded, and every BatchNormalization is kept (as exporters emit it
in eval mode) so the lossless level has Conv+BN folding to do. Written the way older
exporters write models: opset 11, weights held in `Constant` nodes, which is what
Fleetcast's normalization has to cope with.

A random network fed white noise is degenerate: global pooling averages the noise
away, every input lands on nearly the same logits and the top two differ by about
1 %, so fidelity measured on it says little. So the inputs are `images`: smooth
multi-scale fields with correlated colour channels, varying in content, brightness
and contrast from one to the next; and `calibrate` sets each BatchNorm's running
mean and variance to the statistics of its input on such images, layer by layer as
training would, and standardizes each logit, so predictions spread over the classes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class NetBuilder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0
        self.batch_norms: list[tuple[str, str, str]] = []   # (input, mean constant, variance constant)

    def constant(self, name: str, values: np.ndarray) -> str:
        self.nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}",
                                           value=numpy_helper.from_array(values, name)))
        return name

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def conv_bn(self, x: str, c_in: int, c_out: int, kernel: int, stride: int, *, groups: int = 1,
                act: str | None = "relu", gamma: float = 1.0) -> str:
        name = self.fresh("conv")
        fan_in = c_in // groups * kernel * kernel
        weight = (self.rng.standard_normal((c_out, c_in // groups, kernel, kernel)) * np.sqrt(2.0 / fan_in))
        w = self.constant(f"{name}.weight", weight.astype(np.float32))
        self.nodes.append(helper.make_node("Conv", [x, w], [name], name=name, kernel_shape=[kernel, kernel],
                                           strides=[stride, stride], pads=[kernel // 2] * 4, group=groups))
        bn = self.fresh("bn")
        params = [gamma * (1 + 0.1 * self.rng.standard_normal(c_out)), 0.1 * self.rng.standard_normal(c_out),
                  0.1 * self.rng.standard_normal(c_out), 1 + 0.1 * np.abs(self.rng.standard_normal(c_out))]
        names = [self.constant(f"{bn}.{p}", v.astype(np.float32))
                 for p, v in zip(("scale", "bias", "mean", "var"), params)]
        self.nodes.append(helper.make_node("BatchNormalization", [name, *names], [bn], name=bn, epsilon=1e-5))
        self.batch_norms.append((name, names[2], names[3]))
        return self.activation(bn, act)

    def activation(self, x: str, act: str | None) -> str:
        if act is None:
            return x
        out = self.fresh(act)
        if act == "relu":
            self.nodes.append(helper.make_node("Relu", [x], [out], name=out))
        else:  # relu6, opset 11 Clip takes its bounds as inputs
            low = self.constant(self.fresh("zero"), np.array(0.0, np.float32))
            high = self.constant(self.fresh("six"), np.array(6.0, np.float32))
            self.nodes.append(helper.make_node("Clip", [x, low, high], [out], name=out))
        return out

    def add(self, a: str, b: str, act: str | None = None) -> str:
        out = self.fresh("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=out))
        return self.activation(out, act)

    def head(self, x: str, channels: int, classes: int = 1000) -> str:
        pooled, flat = self.fresh("gap"), self.fresh("flatten")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled], name=pooled))
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat], name=flat, axis=1))
        w = self.constant("fc.weight", (self.rng.standard_normal((classes, channels)) / np.sqrt(channels)).astype(np.float32))
        b = self.constant("fc.bias", np.zeros(classes, np.float32))
        self.nodes.append(helper.make_node("Gemm", [flat, w, b], ["logits"], name="fc", transB=1))
        return "logits"

    def set_constant(self, name: str, values: np.ndarray) -> None:
        node = next(n for n in self.nodes if n.output[0] == name)
        node.attribute[0].t.CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))

    def calibrate(self, name: str, images: np.ndarray) -> onnx.ModelProto:
        """The model with BatchNorm statistics and the classifier fitted to `images`."""
        import onnxruntime as ort

        def outputs(output: str) -> np.ndarray:
            model = self.model(name)
            model.graph.output.append(onnx.ValueInfoProto(name=output))
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return session.run([output], {"input": images})[0]

        for conv, mean, variance in self.batch_norms:
            values = outputs(conv)
            self.set_constant(mean, values.mean(axis=(0, 2, 3)))
            self.set_constant(variance, values.var(axis=(0, 2, 3)) + 1e-5)
        logits = outputs("logits")
        weight = numpy_helper.to_array(next(n for n in self.nodes if n.output[0] == "fc.weight").attribute[0].t)
        scale = 1.0 / (logits.std(axis=0) + 1e-6)
        self.set_constant("fc.weight", weight * scale[:, None])
        self.set_constant("fc.bias", -logits.mean(axis=0) * scale)
        return self.model(name)

    def model(self, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name,
                                  [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="fleetcast-bench")
        model.ir_version = 6
        onnx.checker.check_model(model)
        return model


def resnet18(seed: int = 0) -> onnx.ModelProto:
    net = NetBuilder(seed)
    x = net.conv_bn("input", 3, 64, 7, 2)
    pooled = net.fresh("maxpool")
    net.nodes.append(helper.make_node("MaxPool", [x], [pooled], name=pooled, kernel_shape=[3, 3],
                                      strides=[2, 2], pads=[1, 1, 1, 1]))
    x, c_in = pooled, 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            y = net.conv_bn(x, c_in, c_out, 3, s)
            y = net.conv_bn(y, c_out, c_out, 3, 1, act=None, gamma=0.5)
            shortcut = net.conv_bn(x, c_in, c_out, 1, s, act=None) if (s != 1 or c_in != c_out) else x
            x, c_in = net.add(y, shortcut, "relu"), c_out
    net.head(x, 512)
    return net.calibrate("resnet18", images(CALIBRATION_IMAGES, seed=seed + 1000))


def mobilenet_v2(seed: int = 0) -> onnx.ModelProto:
    net = NetBuilder(seed)
    x, c_in = net.conv_bn("input", 3, 32, 3, 2, act="relu6"), 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for index in range(n):
            stride = s if index == 0 else 1
            hidden = c_in * t
            y = net.conv_bn(x, c_in, hidden, 1, 1, act="relu6") if t != 1 else x
            y = net.conv_bn(y, hidden, hidden, 3, stride, groups=hidden, act="relu6")
            y = net.conv_bn(y, hidden, c, 1, 1, act=None, gamma=0.5)
            x = net.add(y, x) if stride == 1 and c_in == c else y
            c_in = c
    x = net.conv_bn(x, c_in, 1280, 1, 1, act="relu6")
    net.head(x, 1280)
    return net.calibrate("mobilenet_v2", images(CALIBRATION_IMAGES, seed=seed + 1000))


CALIBRATION_IMAGES = 48


def images(count: int, *, seed: int, size: int = 224) -> np.ndarray:
    """`count` image-like inputs [count, 3, size, size], about zero mean and unit variance
    per image as normalized photos are: a sum of smooth random fields from coarse to fine
    (amplitude falling with frequency, as in natural images), one shared by the three
    channels (brightness) plus a weaker one each (colour), a random tint and contrast."""
    rng = np.random.default_rng(seed)
    batch = np.empty((count, 3, size, size), np.float32)
    for index in range(count):
        image = np.zeros((3, size, size))
        for cells in (2, 4, 8, 16, 32, 64):
            shared = rng.standard_normal((cells, cells))
            own = 0.4 * rng.standard_normal((3, cells, cells))
            grid = upsample(size, cells)
            image += (grid @ (shared + own) @ grid.T) * cells ** -0.7
        image = (image - image.mean()) / image.std()
        tint = 0.5 * rng.standard_normal((3, 1, 1))
        batch[index] = image * rng.uniform(0.5, 1.5) + tint
    return batch


def upsample(size: int, cells: int) -> np.ndarray:
    """[size, cells] bilinear interpolation matrix."""
    position = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, cells - 1)
    weight = position - low
    matrix = np.zeros((size, cells))
    matrix[np.arange(size), low] += 1 - weight
    matrix[np.arange(size), high] += weight
    return matrix
