"""fcpack's decoder on hostile bytes: bounded by the caller's limit, never by sizes the
data declares, and `PackageError` for every malformed input (callers catch only that)."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import onnx
import pytest
import zstandard
from onnx import helper

from fleetcast.proto import fcpack


def small_model() -> onnx.ModelProto:
    weight = helper.make_tensor("w", onnx.TensorProto.FLOAT, [4, 4], np.arange(16, dtype=np.float32).tolist())
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [weight])
    return helper.make_model(graph)


def package(header: object, body: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    return fcpack.PREFIX.pack(fcpack.MAGIC, fcpack.VERSION, len(head)) + head + zstandard.ZstdCompressor().compress(body)


def with_entries(entries: list) -> bytes:
    data = fcpack.encode(small_model())
    header, body = fcpack.read_header_and_body(data)
    return package({**header, "tensors": entries}, body)


def with_tensor(**changes: object) -> bytes:
    data = fcpack.encode(small_model())
    header, body = fcpack.read_header_and_body(data)
    header["tensors"][0].update(changes)
    return package(header, body)


def test_a_valid_package_still_round_trips() -> None:
    model = small_model()
    decoded = onnx.ModelProto.FromString(fcpack.decode(fcpack.encode(model)))
    assert decoded.graph.initializer[0].raw_data == np.arange(16, dtype=np.float32).tobytes()


def test_zstd_frame_declaring_a_huge_content_size_is_refused_without_allocating_it() -> None:
    declared = 256 * 1024**2
    cobj = zstandard.ZstdCompressor(level=1).compressobj(size=declared)
    chunk = bytes(1024**2)
    frame = b"".join(cobj.compress(chunk) for _ in range(declared // len(chunk))) + cobj.flush()
    header = {"body_length": 1000, "graph": [0, 10], "tensors": []}
    head = json.dumps(header).encode()
    data = fcpack.PREFIX.pack(fcpack.MAGIC, fcpack.VERSION, len(head)) + head + frame
    assert len(data) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(fcpack.PackageError, match="more than"):
            fcpack.decode(data, max_bytes=10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024**2, f"decoding took {peak} bytes for a 1000-byte body"


def test_body_length_over_the_callers_limit_is_refused_before_decompressing() -> None:
    data = fcpack.encode(small_model())
    with pytest.raises(fcpack.PackageError, match="limit"):
        fcpack.decode(data, max_bytes=10)


MALFORMED = {
    "json list header": package([]),
    "infinite body_length": package(None, raw_header=b'{"body_length": 1e999}'),
    "float body_length": package({"body_length": 1.5}),
    "deep JSON header": package(None, raw_header=b"[" * 100_000),
    "header not UTF-8": package(None, raw_header=b'{"body_length": "\xff"}'),
    "header longer than the package": fcpack.PREFIX.pack(fcpack.MAGIC, 1, 2**32 - 1) + b"{}",
    "graph span not a list": package({"body_length": 0, "graph": 5, "tensors": []}),
    "graph span a dict": package({"body_length": 0, "graph": {"a": 1}, "tensors": []}),
    "graph span of floats": package({"body_length": 0, "graph": [0.5, 1e999], "tensors": []}),
    "tensor entry without a name": with_entries([{"dtype": "<f4"}]),
    "tensor name not a string": with_entries([{"name": ["w"]}]),
    "tensor entry not an object": with_entries([["w"]]),
    "object dtype": with_tensor(dtype="O"),
    "structured dtype": with_tensor(dtype=[["a", "<f4"]]),
    "dtype other than the graph's": with_tensor(dtype="<i4"),
    "infinite dimension": with_tensor(shape=[1e999]),
    "negative dimension": with_tensor(shape=[-4, -4]),
    "dimension as string": with_tensor(shape=["4", "4"]),
    "huge dimensions": with_tensor(shape=[2**40, 2**40]),
    "shape not a list": with_tensor(shape=16),
    "unknown encoding": with_tensor(encoding="lzma"),
    "codebook without a span": with_tensor(encoding="codebook", codebook=None),
    "mask of the wrong length": with_tensor(mask=[0, 1]),
    "data span out of the body": with_tensor(data=[0, 2**62]),
    "truncated": fcpack.encode(small_model())[:-7],
    "wrong magic": b"NOPE" + fcpack.encode(small_model())[4:],
    "empty": b"",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_package_raises_only_package_error(case: str) -> None:
    with pytest.raises(fcpack.PackageError):
        fcpack.decode(MALFORMED[case], max_bytes=64 * 1024**2)

