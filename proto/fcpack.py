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

import io
import json
import math
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
    """Turn fcpack bytes back into ONNX model bytes. Raises PackageError, and only that.

    `max_bytes` bounds the decompressed body and the decoded tensors together (the
    agent passes its limit for the signed artifact): a package that would decode to
    more is refused before it is expanded. Sizes the data declares (the header's
    `body_length`, a zstd frame's content size) are never trusted for allocation.
    """
    try:
        return _decode(data, max_bytes)
    except PackageError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, MemoryError) as error:
        # Every check below should have caught it first; keep the documented contract anyway.
        raise PackageError(f"the package is malformed ({type(error).__name__}: {error}); rebuild it") from error


def _decode(data: bytes, max_bytes: int) -> bytes:
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
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise PackageError("the fcpack header has a malformed tensor entry; rebuild the package")
        tensor = by_name.get(entry["name"])
        if tensor is None:
            raise PackageError(f"the package stores tensor {entry['name'][:80]!r} that its graph lacks; "
                               "rebuild the package")
        dtype, shape = entry_type(entry)
        if ELEMENT_TYPES.get(tensor.data_type) is None or np.dtype(ELEMENT_TYPES[tensor.data_type]) != dtype:
            raise PackageError(f"tensor {entry['name'][:80]!r}: stored as {dtype.str} but the graph "
                               "declares another element type; rebuild the package")
        budget -= math.prod(shape) * dtype.itemsize
        if budget < 0:
            raise PackageError(f"the package decodes to more than {max_bytes} bytes, over this device's limit")
        values = decode_tensor(entry, body)
        tensor.raw_data = values.tobytes()
    return proto.SerializeToString()


_DTYPES: Final = frozenset(np.dtype(code).str for code in ELEMENT_TYPES.values())
MAX_RANK: Final = 32
MAX_HEADER_BYTES: Final = 64 * 1024**2


def entry_type(entry: dict) -> tuple[np.dtype, tuple[int, ...]]:
    """The tensor's element type and shape from its header entry; raises PackageError."""
    name = str(entry.get("name"))[:80]
    code, shape = entry.get("dtype"), entry.get("shape")
    if not isinstance(code, str) or code not in _DTYPES:
        raise PackageError(f"tensor {name!r} has element type {str(code)[:20]!r}, not one fcpack stores")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in shape):
        raise PackageError(f"tensor {name!r} has a malformed shape (a list of at most {MAX_RANK} "
                           "non-negative integers)")
    return np.dtype(code), tuple(shape)


def decoded_size(entry: dict) -> int:
    """Bytes the tensor takes once decoded, from its header entry alone."""
    dtype, shape = entry_type(entry)
    return math.prod(shape) * dtype.itemsize


def read_header_and_body(data: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> tuple[dict, bytes]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PackageError(f"an fcpack package is bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < PREFIX.size:
        raise PackageError(f"{len(data)} bytes is too short for an fcpack package; was the download truncated?")
    magic, version, header_length = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise PackageError(f"not an fcpack package (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise PackageError(f"fcpack version {version} is not supported (this decoder reads {VERSION}); "
                           "update the agent")
    header_end = PREFIX.size + header_length
    if header_length > MAX_HEADER_BYTES or header_end > len(data):
        raise PackageError(f"the fcpack header claims {header_length} bytes, more than the package holds")
    try:
        header = json.loads(data[PREFIX.size:header_end])
    except (ValueError, RecursionError) as error:   # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PackageError(f"the fcpack header is not JSON ({str(error)[:80]}); rebuild the package") from error
    body_length = header.get("body_length") if isinstance(header, dict) else None
    if not isinstance(body_length, int) or isinstance(body_length, bool):
        raise PackageError("the fcpack header is malformed (no integer body_length); rebuild the package")
    limit = min(max_bytes, MAX_BODY_BYTES)
    if not 0 <= body_length <= limit:
        raise PackageError(f"the fcpack body claims {body_length} bytes, over the {limit} limit")
    body = decompress_bounded(data[header_end:], body_length)
    return header, body


def decompress_bounded(frame: bytes, expected: int) -> bytes:
    """The one zstd frame's content, reading at most `expected` + 1 bytes of output.

    A streaming reader is used so that the frame's declared content size never
    decides how much memory is allocated.
    """
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frame), read_across_frames=False) as reader:
            parts, size = [], 0
            while size <= expected:
                chunk = reader.read(min(_READ_CHUNK_BYTES, expected + 1 - size))
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
    except zstandard.ZstdError as error:
        raise PackageError(f"the fcpack body does not decompress ({error}); was the download truncated?") from error
    if size != expected:
        raise PackageError(f"the fcpack body is {'more than ' if size > expected else ''}{size} bytes, "
                           f"the header says {expected}")
    return b"".join(parts)


_READ_CHUNK_BYTES: Final = 4 * 1024**2


def section(body: bytes, span: object) -> bytes:
    if not (isinstance(span, list) and len(span) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in span)):
        raise PackageError(f"the fcpack header has a missing or malformed section span {str(span)[:40]}")
    offset, length = span
    if offset < 0 or length < 0 or offset + length > len(body):
        raise PackageError(f"fcpack section [{offset}, {offset + length}) lies outside the {len(body)}-byte body")
    return body[offset:offset + length]


def decode_tensor(entry: dict, body: bytes) -> np.ndarray:
    dtype, shape = entry_type(entry)
    name = str(entry.get("name"))[:80]
    bits_dtype = np.dtype(BITS_TYPES[dtype.itemsize])
    total = math.prod(shape)
    mask = None
    stored = total
    if entry.get("mask") is not None:
        packed = section(body, entry["mask"])
        if len(packed) != (total + 7) // 8:
            raise PackageError(f"tensor {name!r}: its mask does not match its shape")
        mask = np.unpackbits(np.frombuffer(packed, np.uint8), count=total).astype(bool)
        stored = int(mask.sum())
    data = section(body, entry.get("data"))
    if entry.get("encoding") == "codebook":
        table = section(body, entry.get("codebook"))
        if len(table) % bits_dtype.itemsize or len(table) // bits_dtype.itemsize > CODEBOOK_MAX_ENTRIES:
            raise PackageError(f"tensor {name!r}: its codebook is not whole {dtype.str} values, at most "
                               f"{CODEBOOK_MAX_ENTRIES}")
        codebook = np.frombuffer(table, bits_dtype)
        indices = np.frombuffer(data, np.uint8)
        if len(indices) != stored or (len(indices) and indices.max() >= len(codebook)):
            raise PackageError(f"tensor {name!r}: codebook indices do not match its shape")
        bits = codebook[indices]
    elif entry.get("encoding") == "raw":
        if len(data) != stored * dtype.itemsize:
            raise PackageError(f"tensor {name!r}: {len(data)} bytes do not match its shape")
        bits = unshuffle_bytes(data, bits_dtype, stored)
    else:
        raise PackageError(f"tensor {name!r}: unknown encoding {str(entry.get('encoding'))[:20]!r}; "
                           "update the agent")
    if mask is not None:
        full = np.zeros(total, bits_dtype)
        full[mask] = bits
        bits = full
    return bits.view(dtype).reshape(shape)
