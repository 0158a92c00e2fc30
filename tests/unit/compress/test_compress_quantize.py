from __future__ import annotations

import numpy as np
import onnx

from fleetcast.server.compress.measure import open_session
from fleetcast.server.compress.quantize import int8_weights_only, weighted_layers

from tests.unit.compress.builders import DIGITS


def test_weight_only_int8_shrinks_float_layers_and_keeps_their_outputs() -> None:
    original = (DIGITS / "digits.onnx").read_bytes()
    layers = tuple(weighted_layers(onnx.load_from_string(original)))
    assert layers == ("fc0", "fc1", "fc2")
    smaller = int8_weights_only(original, layers)
    x = np.load(DIGITS / "test.npz")["x"]
    before = open_session(original, threads=1).run(None, {"input": x})[0]
    after = open_session(smaller, threads=1).run(None, {"input": x})[0]
    assert len(smaller) < 0.3 * len(original)
    assert np.abs(after - before).max() < 0.05
    assert (after.argmax(1) == before.argmax(1)).mean() > 0.99
    ops = [n.op_type for n in onnx.load_from_string(smaller).graph.node]
    assert ops.count("DequantizeLinear") == 3 and ops.count("Gemm") == 3
