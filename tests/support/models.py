"""Small deterministic ONNX models for tests, built with onnx.helper.

Every builder returns the same bytes for the same arguments, so a test can compute
the sha256 a device must end up holding. All take input "input" float32 [N, n_in]
and give output "output" float32 [N, n_out] (softmax probabilities).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what onnxruntime 1.18+ loads; onnx's own default may be newer


def _model(graph: onnx.GraphProto, name: str) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fleetcast-tests")
    model.ir_version = IR_VERSION
    model.doc_string = name
    onnx.checker.check_model(model)
    return model


def _io(n_in: int, n_out: int) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    return (
        helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_in]),
        helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", n_out]),
    )


def _two_layer(seed: int, n_in: int, hidden: int, n_out: int, name: str) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((n_in, hidden)) / np.sqrt(n_in)).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, n_out)) / np.sqrt(hidden)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["output"], axis=1),
    ]
    x, y = _io(n_in, n_out)
    return _model(helper.make_graph(nodes, name, [x], [y], initializer=inits), name)


def tiny_classifier(seed: int, n_in: int = 16, n_out: int = 4) -> onnx.ModelProto:
    """MatMul + Add + Relu + MatMul + Softmax; a different seed gives different bytes."""
    return _two_layer(seed, n_in, 8, n_out, f"tiny_classifier_{seed}")


def sized_model(megabytes: float, seed: int, n_in: int = 16, n_out: int = 4) -> onnx.ModelProto:
    """The tiny classifier's shape with a hidden layer wide enough for ~`megabytes` of
    float32 weights (random, so they do not compress away in transport)."""
    hidden = max(8, int(megabytes * 1024 * 1024 / 4 / (n_in + n_out + 1)))
    return _two_layer(seed, n_in, hidden, n_out, f"sized_model_{megabytes}mb_{seed}")


def nondeterministic_model(n_in: int = 16, n_out: int = 4) -> onnx.ModelProto:
    """Adds fresh random noise, large next to the signal, on every run: its output never
    matches a golden output computed by another run, so a device's smoke test fails."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["logits"]),
        helper.make_node("RandomUniformLike", ["logits"], ["noise"], low=-50.0, high=50.0),
        helper.make_node("Add", ["logits", "noise"], ["noisy"]),
        helper.make_node("Softmax", ["noisy"], ["output"], axis=1),
    ]
    x, y = _io(n_in, n_out)
    graph = helper.make_graph(nodes, "nondeterministic", [x], [y], initializer=[numpy_helper.from_array(w, "w")])
    return _model(graph, "nondeterministic")


def masked_classifier(n_in: int = 16, n_out: int = 4) -> onnx.ModelProto:
    """A classifier whose last class is masked out by adding a constant -inf before the
    softmax, as attention exports do: it runs in float, and INT8 has no scale for -inf."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
    mask = np.zeros((1, n_out), np.float32)
    mask[0, -1] = -np.inf
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["logits"], name="fc"),
        helper.make_node("Add", ["logits", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["output"], name="softmax", axis=1),
    ]
    x, y = _io(n_in, n_out)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(mask, "mask")]
    return _model(helper.make_graph(nodes, "masked", [x], [y], initializer=inits), "masked_classifier")


def to_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def write(model: onnx.ModelProto, path: Path) -> Path:
    """Writes the model and returns the path; the bytes are `to_bytes(model)`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_bytes(model))
    return path


def sha256_of(path_or_bytes: Path | bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return hashlib.sha256(data).hexdigest()


def sample_input(n_in: int = 16, rows: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, n_in)).astype(np.float32)
