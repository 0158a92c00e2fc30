"""fcpack: Fleetcast's transport package for a compressed ONNX model.

The agent decodes a package back to a standard ONNX model before loading it, so no
special kernels are needed on the device. The format is part of the wire
contract (the image repository records `format: "fcpack"`), so it lives in
`fleetcast.proto`; this module imports only numpy, onnx and zstandard, which
`fleetcast[agent]` installs: `decode(data) -> bytes` gives ONNX model bytes.

Encoding is lossless: `decode(encode(model))` gives back every initializer bit for
bit. The lossy steps (pruning, weight sharing) happen before, in the server's
`compress/prune.py` and `compress/weight_sharing.py`; they leave tensors with many
zeros and few distinct values, which this format stores compactly. `decode` takes a
`max_bytes` bound (default 4 GiB) on the body and on the decoded tensors, checked
before anything that large is allocated.

Layout, version 1 (integers little-endian):

    offset  size  field
    0       4     magic b"FCPK"
    4       2     format version, uint16 (1)
    6       4     header length H, uint32
    10      H     header, UTF-8 JSON (below)
    10+H    ...   body: one zstandard frame

The decompressed body is a concatenation of sections; the header says where each is:

    {"body_length": int,                       # decompressed length of the body
     "graph": [offset, length],                # ONNX ModelProto, extracted tensors emptied
     "tensors": [{"name": str, "dtype": "<f4", "shape": [int, ...],
                  "encoding": "raw" | "codebook",
                  "data": [offset, length],    # raw: the tensor's bytes, byte-shuffled
                                               # codebook: one uint8 index per stored element
                  "codebook": [offset, length] | null,  # codebook: the k <= 256 distinct values
                  "mask": [offset, length] | null}]}    # np.packbits(bits != 0) over all elements;
                                                        # when present only non-zero elements are stored

"Byte-shuffled" means the bytes of an n-byte element type are stored as n planes
(all first bytes, then all second bytes, ...), which entropy-codes better for floats.
A tensor's values are compared by their bits, so -0.0 and NaN payloads survive.
"""

from __future__ import annotations

import json
import struct
from typing import Final

import numpy as np
import onnx
import zstandard

MAGIC: Final = b"FCPK"
VERSION: Final = 1
PREFIX: Final = struct.Struct("<4sHI")
ZSTD_LEVEL: Final = 19
MAX_BODY_BYTES: Final = 4 * 1024**3
CODEBOOK_MAX_ENTRIES: Final = 256
MASK_MIN_ZERO_FRACTION: Final = 0.3

# ONNX element types whose initializers the package stores itself; others stay in the graph.
ELEMENT_TYPES: Final[dict[int, str]] = {
    onnx.TensorProto.FLOAT: "<f4", onnx.TensorProto.FLOAT16: "<f2",
    onnx.TensorProto.DOUBLE: "<f8", onnx.TensorProto.INT8: "i1",
    onnx.TensorProto.UINT8: "u1", onnx.TensorProto.INT16: "<i2",
    onnx.TensorProto.UINT16: "<u2", onnx.TensorProto.INT32: "<i4",
    onnx.TensorProto.UINT32: "<u4", onnx.TensorProto.INT64: "<i8",
    onnx.TensorProto.UINT64: "<u8",
}
BITS_TYPES: Final[dict[int, str]] = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}


class PackageError(ValueError):
    """fcpack bytes are malformed, truncated or of an unknown version."""


class SectionWriter:
    """Appends byte sections to the body and hands back their [offset, length]."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.length = 0

    def add(self, data: bytes) -> list[int]:
        span = [self.length, len(data)]
        self.parts.append(data)
        self.length += len(data)
        return span

    def body(self) -> bytes:
        return b"".join(self.parts)


def encode(model: onnx.ModelProto | bytes, *, level: int = ZSTD_LEVEL) -> bytes:
    """Pack a model (in memory, no external data) into fcpack bytes, losslessly."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model) if isinstance(model, onnx.ModelProto) else proto.ParseFromString(model)
    writer = SectionWriter()
    entries: list[dict] = []
    for tensor in proto.graph.initializer:
        if tensor.data_type not in ELEMENT_TYPES or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        values = onnx.numpy_helper.to_array(tensor).astype(ELEMENT_TYPES[tensor.data_type], copy=False)
        entries.append(encode_tensor(tensor.name, values, writer))
        empty_tensor_data(tensor)
    graph_span = writer.add(proto.SerializeToString())
    body = writer.body()
    header = {"body_length": len(body), "graph": graph_span, "tensors": entries}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    compressed = zstandard.ZstdCompressor(level=level).compress(body)
    return PREFIX.pack(MAGIC, VERSION, len(header_bytes)) + header_bytes + compressed


def encode_tensor(name: str, values: np.ndarray, writer: SectionWriter) -> dict:
    flat = np.ascontiguousarray(values).reshape(-1)
    bits = flat.view(BITS_TYPES[flat.dtype.itemsize])
    entry: dict = {"name": name, "dtype": flat.dtype.str, "shape": list(values.shape),
                   "encoding": "raw", "codebook": None, "mask": None}
    nonzero = bits != 0
    if flat.size and 1 - nonzero.mean() >= MASK_MIN_ZERO_FRACTION:
        entry["mask"] = writer.add(np.packbits(nonzero).tobytes())
        bits = bits[nonzero]
    distinct, indices = np.unique(bits, return_inverse=True)
    if flat.dtype.itemsize > 1 and len(distinct) <= CODEBOOK_MAX_ENTRIES and bits.size >= 4 * len(distinct):
        entry["encoding"] = "codebook"
        entry["codebook"] = writer.add(distinct.tobytes())
        entry["data"] = writer.add(indices.astype(np.uint8).tobytes())
    else:
        entry["data"] = writer.add(shuffle_bytes(bits))
    return entry


def empty_tensor_data(tensor: onnx.TensorProto) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data",
                  "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)


def shuffle_bytes(values: np.ndarray) -> bytes:
    return values.view(np.uint8).reshape(-1, values.dtype.itemsize).T.tobytes()


def unshuffle_bytes(data: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    planes = np.frombuffer(data, np.uint8).reshape(dtype.itemsize, count)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(-1)


def decode(data: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """Turn fcpack bytes back into ONNX model bytes. Raises PackageError.

    `max_bytes` bounds the decompressed body and the decoded tensors together: a
    package that would decode to more is refused before it is expanded.
    """
    header, body = read_header_and_body(data, max_bytes=max_bytes)
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(section(body, header.get("graph")))
    except Exception as error:  # protobuf raises its own DecodeError
        raise PackageError(f"the package's model graph does not parse ({error}); rebuild the package") from error
    by_name = {tensor.name: tensor for tensor in proto.graph.initializer}
    budget = max_bytes - len(body)
    if not isinstance(header.get("tensors"), list):
        raise PackageError("the fcpack header has no tensor list; rebuild the package")
    for entry in header["tensors"]:
        if not isinstance(entry, dict):
            raise PackageError("the fcpack header has a malformed tensor entry; rebuild the package")
        tensor = by_name.get(entry.get("name"))
        if tensor is None:
            raise PackageError(f"the package stores tensor {entry['name']!r} that its graph lacks; rebuild the package")
        budget -= decoded_size(entry)
        if budget < 0:
            raise PackageError(f"the package decodes to more than {max_bytes} bytes, over this device's limit")
        values = decode_tensor(entry, body)
        tensor.raw_data = values.tobytes()
    return proto.SerializeToString()


def decoded_size(entry: dict) -> int:
    """Bytes the tensor takes once decoded, from its header entry alone."""
    try:
        count = 1
        for dim in entry["shape"]:
            if int(dim) < 0:
                raise ValueError(f"negative dimension {dim}")
            count *= int(dim)
        return count * np.dtype(entry["dtype"]).itemsize
    except (KeyError, TypeError, ValueError) as error:
        raise PackageError(f"tensor {entry.get('name')!r} has a malformed entry ({error})") from error


def read_header_and_body(data: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> tuple[dict, bytes]:
    if len(data) < PREFIX.size:
        raise PackageError(f"{len(data)} bytes is too short for an fcpack package; was the download truncated?")
    magic, version, header_length = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise PackageError(f"not an fcpack package (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise PackageError(f"fcpack version {version} is not supported (this decoder reads {VERSION}); "
                           "update the agent")
    header_end = PREFIX.size + header_length
    try:
        header = json.loads(data[PREFIX.size:header_end])
        body_length = int(header["body_length"])
    except (ValueError, KeyError, TypeError) as error:
        raise PackageError(f"the fcpack header is malformed ({error}); rebuild the package") from error
    limit = min(max_bytes, MAX_BODY_BYTES)
    if not 0 <= body_length <= limit:
        raise PackageError(f"the fcpack body claims {body_length} bytes, over the {limit} limit")
    try:
        body = zstandard.ZstdDecompressor().decompress(data[header_end:], max_output_size=body_length)
    except zstandard.ZstdError as error:
        raise PackageError(f"the fcpack body does not decompress ({error}); was the download truncated?") from error
    if len(body) != body_length:
        raise PackageError(f"the fcpack body is {len(body)} bytes, the header says {body_length}")
    return header, body


def section(body: bytes, span: list[int] | None) -> bytes:
    if span is None:
        raise PackageError("the fcpack header lacks a section it needs; rebuild the package")
    try:
        offset, length = int(span[0]), int(span[1])
    except (TypeError, ValueError, IndexError, KeyError) as error:
        raise PackageError(f"the fcpack header has a malformed section span {str(span)[:40]}") from error
    if offset < 0 or length < 0 or offset + length > len(body):
        raise PackageError(f"fcpack section [{offset}, {offset + length}) lies outside the {len(body)}-byte body")
    return body[offset:offset + length]


def decode_tensor(entry: dict, body: bytes) -> np.ndarray:
    try:
        dtype = np.dtype(entry["dtype"])
        shape = tuple(int(d) for d in entry["shape"])
        bits_dtype = np.dtype(BITS_TYPES[dtype.itemsize])
    except (KeyError, TypeError, ValueError) as error:
        raise PackageError(f"tensor {entry.get('name')!r} has a malformed entry ({error})") from error
    total = int(np.prod(shape, dtype=np.int64))
    mask = None
    stored = total
    if entry.get("mask") is not None:
        mask = np.unpackbits(np.frombuffer(section(body, entry["mask"]), np.uint8), count=total).astype(bool)
        stored = int(mask.sum())
    data = section(body, entry.get("data"))
    if entry.get("encoding") == "codebook":
        codebook = np.frombuffer(section(body, entry["codebook"]), bits_dtype)
        indices = np.frombuffer(data, np.uint8)
        if len(indices) != stored or (len(indices) and indices.max() >= len(codebook)):
            raise PackageError(f"tensor {entry['name']!r}: codebook indices do not match its shape")
        bits = codebook[indices]
    elif entry.get("encoding") == "raw":
        if len(data) != stored * dtype.itemsize:
            raise PackageError(f"tensor {entry['name']!r}: {len(data)} bytes do not match its shape")
        bits = unshuffle_bytes(data, bits_dtype, stored)
    else:
        raise PackageError(f"tensor {entry['name']!r}: unknown encoding {entry.get('encoding')!r}; update the agent")
    if mask is not None:
        full = np.zeros(total, bits_dtype)
        full[mask] = bits
        bits = full
    return bits.view(dtype).reshape(shape)
