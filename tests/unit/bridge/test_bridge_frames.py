from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fleetcast.agent.bridge_frames import CODES, MAX_JSON_DEPTH, BridgeError, decode, encode, tensor_doc, tensor_from

REPO = Path(__file__).resolve().parents[3]
DTYPES = ["float16", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
          "uint64", "bool"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(DTYPES).flatmap(
    lambda d: hnp.arrays(np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=4, max_side=5))), max_size=5))
def test_tensors_round_trip_bit_for_bit_through_a_frame(arrays: list[np.ndarray]) -> None:
    buffers: list = []
    docs = [tensor_doc(a, buffers) for a in arrays]
    frame = decode(encode({"id": 1, "method": "run", "params": {"t": docs}}, buffers), max_bytes=1 << 20)
    for a, doc in zip(arrays, frame.header["params"]["t"]):
        back = tensor_from(doc, frame, "t")
        assert back.dtype == a.dtype and back.shape == a.shape and back.tobytes() == a.tobytes()


def frame_with(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    pad = (-(8 + len(head))) % 8
    return struct.pack("<4sI", b"FCB\x01", len(head)) + head + bytes(pad) + body


@pytest.mark.parametrize("data, words", [
    (b"", "shorter"),
    (b"XYZ\x01" + bytes(4), "magic"),
    (b"FCB\x07" + bytes(4), "version 7"),
    (struct.pack("<4sI", b"FCB\x01", 1 << 30), "header length"),
    (frame_with({"v": 2}), "v=2"),
    (frame_with([1]), "JSON object"),  # type: ignore[arg-type]
    (struct.pack("<4sI", b"FCB\x01", 2) + b"\xff\xfe", "not JSON"),
    (frame_with({"v": 1, "buffers": [[0, 16]]}, bytes(8)), "inside the frame"),
    (frame_with({"v": 1, "buffers": [[3, 1]]}, bytes(8)), "aligned"),
    (frame_with({"v": 1, "buffers": [[0, 1]] * 65}, bytes(8)), "at most 64"),
    (frame_with({"v": 1, "x": json.loads("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))}), "deeper"),
])
def test_decode_refuses_bad_frames_with_invalid_argument_naming_the_problem(data: bytes, words: str) -> None:
    with pytest.raises(BridgeError) as e:
        decode(data, max_bytes=1 << 20)
    assert e.value.code == "INVALID_ARGUMENT" and words in e.value.message


def test_decode_refuses_a_frame_over_the_cap_with_resource_exhausted() -> None:
    with pytest.raises(BridgeError) as e:
        decode(frame_with({"v": 1}, bytes(1024)), max_bytes=512)
    assert e.value.code == "RESOURCE_EXHAUSTED"


@pytest.mark.parametrize("doc, words", [
    ({"dtype": "complex64", "shape": [1], "buffer": 0}, "dtype"),
    ({"dtype": "float32", "shape": [-1], "buffer": 0}, "shape"),
    ({"dtype": "float32", "shape": [1] * 17, "buffer": 0}, "shape"),
    ({"dtype": "float32", "shape": [3], "buffer": 0}, "do not fill"),
    ({"dtype": "float32", "shape": [2], "buffer": 5}, "not in this frame"),
    ([1, 2, 3], "must be a tensor"),
])
def test_tensor_references_are_checked_against_their_bytes(doc: object, words: str) -> None:
    frame = decode(encode({"id": 1}, [np.zeros(2, np.float32).tobytes()]), max_bytes=1 << 20)
    with pytest.raises(BridgeError) as e:
        tensor_from(doc, frame, "x")
    assert e.value.code == "INVALID_ARGUMENT" and words in e.value.message


def test_the_js_package_has_the_same_codes_aliases_and_retryability() -> None:
    node = shutil.which("node")
    assert node, "node is missing: `make browser` installs nodejs"
    script = ("import('./sdk/js/src/errors.js').then(m => console.log(JSON.stringify(m.CODES)))")
    out = subprocess.run([node, "--input-type=module", "-e", script], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    js = json.loads(out)
    assert js == {name: {"alias": c.alias, "retryable": c.retryable} for name, c in CODES.items()}
    assert {c.alias for c in CODES.values()} == {1, 2, 3, 4}
