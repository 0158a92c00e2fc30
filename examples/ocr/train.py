"""Train the two small text models that Fleetcast's compression examples and tests use.

Both read images of varying size drawn from scikit-learn's bundled 8x8 handwritten
digits (no download), upscaled to 16x16 glyphs on a noisy background:

- detector.onnx: a fully-convolutional text detector. Input `image` float32
  [N, 1, H, W] (H, W free); outputs `probability` [N, 1, H, W] (per pixel, the
  probability that it lies inside a digit's box: a dense probability map) and
  `logits` [N, 1, H, W] (the same before the sigmoid). Conv 9x9 (16) -> ReLU ->
  Conv 1x1 (16) -> ReLU -> Conv 1x1 (1).
- recognizer.onnx: a convolutional text-line recognizer with a CTC output (a CRNN's
  convolutional part and its CTC head; it has no recurrent layer). Input `line`
  float32 [N, 1, 16, W] (W free); output `log_probs` [N, T, 11], T = W / 2 + 1 time
  steps over blank (class 0) and the digits 0-9 (classes 1-10), decoded greedily.
  Conv 16x12 stride (1, 2) (48) -> ReLU -> Conv 1x1 (32) -> ReLU -> Conv 1x1 (11) ->
  Squeeze -> Transpose -> LogSoftmax.

Each is a multilayer perceptron trained with scikit-learn on image patches (the
detector: 9x9 patches labelled inside/outside a box; the recognizer: 16x12 windows
labelled with the digit whose centre they sit on, or blank), then written out as the
equivalent convolutions, so it runs on images of any size. Training takes seconds.

    .venv/bin/python examples/ocr/train.py

Writes, next to this file (everything seeded; running it twice writes the same files):
    detector.onnx, detector/calibration/*.npy, detector/eval/*.npy
    recognizer.onnx, recognizer/calibration/*.npy, recognizer/eval/*.npy,
    recognizer/eval/labels.npy   digits per line, padded with -1 to MAX_DIGITS
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
SEED = 0
GLYPH = 16
DET_KERNEL = 9
REC_WINDOW = 12
REC_STRIDE = 2
MAX_DIGITS = 5
CALIBRATION_SAMPLES = 16
EVAL_SAMPLES = 48
OPSET = 17


def glyphs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train glyphs, train digits, test glyphs, test digits): 16x16 in [0, 1]."""
    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((2, 2))).astype(np.float32)
    order = np.random.default_rng(SEED).permutation(len(images))
    train, test = order[:1200], order[1200:]
    return images[train], digits.target[train], images[test], digits.target[test]


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Noise plus a few isolated specks that are not text."""
    image = rng.normal(0.05, 0.05, (height, width)).astype(np.float32)
    for _ in range(rng.integers(1, 4)):
        y, x = rng.integers(0, height - 2), rng.integers(0, width - 2)
        image[y:y + 2, x:x + 2] += rng.uniform(0.5, 1.0)
    return image


def draw_scene(rng: np.random.Generator, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image [H, W], box mask [H, W]) with 1-3 glyphs; H, W in [24, 48]."""
    height, width = int(rng.integers(24, 49)), int(rng.integers(24, 49))
    image, mask = background(rng, height, width), np.zeros((height, width), np.float32)
    for _ in range(rng.integers(1, 4)):
        y, x = int(rng.integers(0, height - GLYPH + 1)), int(rng.integers(0, width - GLYPH + 1))
        image[y:y + GLYPH, x:x + GLYPH] = np.maximum(image[y:y + GLYPH, x:x + GLYPH],
                                                      pool[rng.integers(len(pool))])
        mask[y + 2:y + GLYPH - 2, x + 2:x + GLYPH - 2] = 1.0
    return np.clip(image, 0.0, 1.0), mask


def draw_line(rng: np.random.Generator, pool: np.ndarray,
              classes: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """(line [16, W], its digits, their centre columns): 2-5 glyphs with 0-4 px gaps and a 4-12 px margin."""
    count = int(rng.integers(2, MAX_DIGITS + 1))
    picks = rng.integers(len(pool), size=count)
    gaps = rng.integers(0, 5, size=count - 1)
    left, right = int(rng.integers(4, 13)), int(rng.integers(4, 13))
    width = left + right + GLYPH * count + int(gaps.sum())
    line = background(rng, GLYPH, width) * 0.5
    x, centres = left, []
    for index, pick in enumerate(picks):
        line[:, x:x + GLYPH] = np.maximum(line[:, x:x + GLYPH], pool[pick])
        centres.append(x + GLYPH // 2)
        x += GLYPH + (int(gaps[index]) if index < count - 1 else 0)
    return np.clip(line, 0.0, 1.0), [int(classes[p]) for p in picks], centres


def detector_patches(rng: np.random.Generator, pool: np.ndarray, scenes: int) -> tuple[np.ndarray, np.ndarray]:
    half = DET_KERNEL // 2
    xs, ys = [], []
    for _ in range(scenes):
        image, mask = draw_scene(rng, pool)
        padded = np.pad(image, half)
        windows = np.lib.stride_tricks.sliding_window_view(padded, (DET_KERNEL, DET_KERNEL))
        xs.append(windows.reshape(-1, DET_KERNEL * DET_KERNEL))
        ys.append(mask.reshape(-1))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def recognizer_windows(rng: np.random.Generator, pool: np.ndarray, classes: np.ndarray,
                       lines: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of every time step; label: the digit + 1 when the step's centre is
    within 2 px of a glyph's centre, else 0 (blank)."""
    xs, ys = [], []
    for _ in range(lines):
        line, digits, centres = draw_line(rng, pool, classes)
        windows = line_windows(line)
        steps = np.arange(len(windows)) * REC_STRIDE
        labels = np.zeros(len(windows), np.int64)
        for digit, centre in zip(digits, centres):
            labels[np.abs(steps - centre) <= 2] = digit + 1
        xs.append(windows)
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def line_windows(line: np.ndarray) -> np.ndarray:
    """The recognizer's first convolution's inputs: [T, 16 * 12], T = W / 2 + 1."""
    half = REC_WINDOW // 2
    padded = np.pad(line, ((0, 0), (half, half)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (GLYPH, REC_WINDOW))[0, ::REC_STRIDE]
    return windows.reshape(len(windows), -1)


def fit(x: np.ndarray, y: np.ndarray, hidden: tuple[int, int], iterations: int) -> MLPClassifier:
    classifier = MLPClassifier(hidden_layer_sizes=hidden, activation="relu", alpha=1e-4, batch_size=256,
                               max_iter=iterations, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x, y)
    return classifier


def without_subnormals(values: np.ndarray) -> np.ndarray:
    """Weight decay leaves weights below float32's smallest normal number; they change no
    output but CPUs multiply them many times slower (the FP32 baseline would be unfair)."""
    values = values.astype(np.float32)
    return np.where(np.abs(values) < np.finfo(np.float32).tiny, np.float32(0), values)


def conv_layers(classifier: MLPClassifier, first_kernel: tuple[int, int], prefix: str) -> list[tuple]:
    """The MLP's layers as (weight [out, in, kh, kw], bias) convolutions."""
    layers = []
    for index, (weight, bias) in enumerate(zip(classifier.coefs_, classifier.intercepts_)):
        kernel = first_kernel if index == 0 else (1, 1)
        layers.append((f"{prefix}{index}", without_subnormals(weight.T.reshape(weight.shape[1], -1, *kernel)),
                       without_subnormals(bias)))
    return layers


def conv_stack(layers: list[tuple], source: str, first: dict) -> tuple[list, list, str]:
    nodes, initializers, previous = [], [], source
    for index, (name, weight, bias) in enumerate(layers):
        initializers += [numpy_helper.from_array(weight, f"{name}.weight"), numpy_helper.from_array(bias, f"{name}.bias")]
        attributes = first if index == 0 else {}
        nodes.append(helper.make_node("Conv", [previous, f"{name}.weight", f"{name}.bias"], [name], name=name,
                                      **attributes))
        previous = name
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [previous], [f"{name}.relu"], name=f"{name}.relu"))
            previous = f"{name}.relu"
    return nodes, initializers, previous


def detector_model(classifier: MLPClassifier) -> onnx.ModelProto:
    layers = conv_layers(classifier, (DET_KERNEL, DET_KERNEL), "conv")
    half = DET_KERNEL // 2
    nodes, initializers, last = conv_stack(layers, "image", {"pads": [half] * 4})
    nodes += [helper.make_node("Identity", [last], ["logits"], name="logits"),
              helper.make_node("Sigmoid", [last], ["probability"], name="probability")]
    graph = helper.make_graph(
        nodes, "detector", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1, "H", "W"]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1, "H", "W"])], initializers)
    return finish(graph)


def recognizer_model(classifier: MLPClassifier) -> onnx.ModelProto:
    layers = conv_layers(classifier, (GLYPH, REC_WINDOW), "conv")
    half = REC_WINDOW // 2
    nodes, initializers, last = conv_stack(layers, "line", {"pads": [0, half, 0, half], "strides": [1, REC_STRIDE]})
    initializers.append(numpy_helper.from_array(np.array([2], np.int64), "height_axis"))
    nodes += [helper.make_node("Squeeze", [last, "height_axis"], ["steps_first"], name="squeeze"),
              helper.make_node("Transpose", ["steps_first"], ["scores"], name="transpose", perm=[0, 2, 1]),
              helper.make_node("LogSoftmax", ["scores"], ["log_probs"], name="log_softmax", axis=-1)]
    graph = helper.make_graph(
        nodes, "recognizer", [helper.make_tensor_value_info("line", TensorProto.FLOAT, ["N", 1, GLYPH, "W"])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["N", "T", 11])], initializers)
    return finish(graph)


def finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fleetcast-examples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_samples(directory: Path, samples: list[np.ndarray]) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for index, sample in enumerate(samples):
        np.save(directory / f"{index:04d}.npy", sample[None, None].astype(np.float32))


def greedy(log_probs: np.ndarray) -> list[int]:
    best = log_probs.argmax(-1)
    return [int(c) - 1 for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]


def main() -> None:
    import onnxruntime as ort

    train_glyphs, train_classes, test_glyphs, test_classes = glyphs()
    rng = np.random.default_rng(SEED)
    x, y = detector_patches(rng, train_glyphs, 300)
    keep = rng.permutation(len(x))[:60_000]
    detector = detector_model(fit(x[keep], y[keep], (16, 16), 30))
    x, y = recognizer_windows(rng, train_glyphs, train_classes, 1500)
    recognizer = recognizer_model(fit(x, y, (48, 32), 60))
    onnx.save(detector, str(HERE / "detector.onnx"))
    onnx.save(recognizer, str(HERE / "recognizer.onnx"))

    rng = np.random.default_rng(SEED + 1)
    scenes = [draw_scene(rng, test_glyphs) for _ in range(CALIBRATION_SAMPLES + EVAL_SAMPLES)]
    write_samples(HERE / "detector" / "calibration", [image for image, _ in scenes[:CALIBRATION_SAMPLES]])
    write_samples(HERE / "detector" / "eval", [image for image, _ in scenes[CALIBRATION_SAMPLES:]])
    lines = [draw_line(rng, test_glyphs, test_classes) for _ in range(CALIBRATION_SAMPLES + EVAL_SAMPLES)]
    write_samples(HERE / "recognizer" / "calibration", [line for line, _, _ in lines[:CALIBRATION_SAMPLES]])
    write_samples(HERE / "recognizer" / "eval", [line for line, _, _ in lines[CALIBRATION_SAMPLES:]])
    labels = np.full((EVAL_SAMPLES, MAX_DIGITS), -1, np.int64)
    for row, (_, digits, _) in enumerate(lines[CALIBRATION_SAMPLES:]):
        labels[row, :len(digits)] = digits
    np.save(HERE / "recognizer" / "eval" / "labels.npy", labels)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(detector.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ious = []
    for image, mask in scenes[CALIBRATION_SAMPLES:]:
        predicted = session.run(["probability"], {"image": image[None, None]})[0][0, 0] > 0.5
        union = np.logical_or(predicted, mask > 0).sum()
        ious.append(np.logical_and(predicted, mask > 0).sum() / union if union else 1.0)
    session = ort.InferenceSession(recognizer.SerializeToString(), options, providers=["CPUExecutionProvider"])
    correct = sum(greedy(session.run(None, {"line": line[None, None]})[0][0]) == digits
                  for line, digits, _ in lines[CALIBRATION_SAMPLES:])
    print(f"detector: box IoU on {EVAL_SAMPLES} held-out scenes {np.mean(ious):.3f}")
    print(f"recognizer: lines read exactly {correct}/{EVAL_SAMPLES}")


if __name__ == "__main__":
    main()
