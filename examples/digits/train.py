"""Train the digits classifier that Fleetcast's examples and tests compress.

A small real model: a 64-256-128-10 multilayer perceptron trained with
scikit-learn on its bundled 8x8 handwritten digits (no download), written out as
an ONNX graph built with `onnx.helper` from the trained weights.

    .venv/bin/python examples/digits/train.py

Writes, next to this file:
    digits.onnx         input "input" float32 [N, 64] (raw pixel values 0..16),
                        output "probabilities" float32 [N, 10]; opset 17
    test.npz            the held-out split: x float32 [n, 64], y int64 [n]
    calibration/NNNN.npy  one training sample each (the calibration directory format)
    eval/NNNN.npy + eval/labels.npy  the held-out split in the evaluation directory format

Everything is seeded; running it twice writes the same model and data.
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
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
SEED = 0
HIDDEN = (256, 128)
CALIBRATION_SAMPLES = 64
PIXEL_SCALE = 1.0 / 16.0  # digits pixels are 0..16; the graph scales them itself


def train(x_train: np.ndarray, y_train: np.ndarray) -> MLPClassifier:
    classifier = MLPClassifier(
        hidden_layer_sizes=HIDDEN, activation="relu", alpha=1e-4,
        max_iter=200, random_state=SEED,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x_train * PIXEL_SCALE, y_train)
    return classifier


def build_graph(classifier: MLPClassifier) -> onnx.ModelProto:
    """Scale -> (Gemm -> Relu) x 2 -> Gemm -> Softmax, weights as initializers."""
    initializers = [numpy_helper.from_array(np.array(PIXEL_SCALE, np.float32), "pixel_scale")]
    nodes = [helper.make_node("Mul", ["input", "pixel_scale"], ["x0"], name="scale")]
    previous = "x0"
    layers = list(zip(classifier.coefs_, classifier.intercepts_))
    for index, (weight, bias) in enumerate(layers):
        w_name, b_name, out = f"fc{index}.weight", f"fc{index}.bias", f"fc{index}"
        # Stored as [out, in] with transB=1, the layout PyTorch exports.
        initializers.append(numpy_helper.from_array(weight.T.astype(np.float32), w_name))
        initializers.append(numpy_helper.from_array(bias.astype(np.float32), b_name))
        nodes.append(helper.make_node("Gemm", [previous, w_name, b_name], [out],
                                      name=f"fc{index}", transB=1))
        previous = out
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"relu{index}"], name=f"relu{index}"))
            previous = f"relu{index}"
    nodes.append(helper.make_node("Softmax", [previous], ["probabilities"], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="fleetcast-examples-digits")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_sample_dir(directory: Path, x: np.ndarray, labels: np.ndarray | None) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir()
    for index, sample in enumerate(x):
        np.save(directory / f"{index:04d}.npy", sample[None, :].astype(np.float32))
    if labels is not None:
        np.save(directory / "labels.npy", labels.astype(np.int64))


def main() -> None:
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=SEED, stratify=y)
    classifier = train(x_train, y_train)
    model = build_graph(classifier)
    onnx.save(model, HERE / "digits.onnx")
    np.savez_compressed(HERE / "test.npz", x=x_test, y=y_test)
    rng = np.random.default_rng(SEED)
    calibration = x_train[rng.choice(len(x_train), CALIBRATION_SAMPLES, replace=False)]
    write_sample_dir(HERE / "calibration", calibration, None)
    write_sample_dir(HERE / "eval", x_test, y_test)

    import onnxruntime as ort  # only to report the exported model's own accuracy
    session = ort.InferenceSession(str(HERE / "digits.onnx"), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"input": x_test})[0]
    onnx_accuracy = float((probabilities.argmax(axis=1) == y_test).mean())
    sklearn_accuracy = float(classifier.score(x_test * PIXEL_SCALE, y_test))
    print(f"train samples={len(x_train)} test samples={len(x_test)} "
          f"parameters={sum(w.size + b.size for w, b in zip(classifier.coefs_, classifier.intercepts_))}")
    print(f"test accuracy: sklearn={sklearn_accuracy:.4f} onnx={onnx_accuracy:.4f}")


if __name__ == "__main__":
    main()
