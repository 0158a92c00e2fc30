"""The H5 bridge's wire format: versioned binary frames and the stable error codes.

A frame is one binary message (a WebSocket message or an HTTP body):

```
offset 0   b"FCB" + protocol version byte (1)
offset 4   header length H, uint32 little-endian
offset 8   header: UTF-8 JSON, H bytes, at most MAX_HEADER_BYTES
           then zero padding to a multiple of 8
then       the binary section: buffer i at [offset_i, offset_i + length_i) from its
           start, every offset a multiple of 8 (typed arrays view it without a copy)
```
The header is `{"v": 1, "id", "method", "params", "buffers": [[offset, length], ...]}`
for a call, `{"v": 1, "id", "result"}` or `{"v": 1, "id", "error": {"code",
"message", "retryable"}}` for its answer, and `{"v": 1, "event", "data"}` for a push.
A tensor inside params or result is `{"dtype", "shape", "buffer": i}`: its bytes are
buffer i, C order, little-endian. Numbers never travel as JSON arrays.

`decode` trusts nothing: sizes, counts, ranges, JSON depth and dtypes are bounded and
every refusal is a `BridgeError` with code INVALID_ARGUMENT (or RESOURCE_EXHAUSTED).
The codes are mirrored in `sdk/js/src/errors.js`; a test keeps the two equal.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

MAGIC: Final = b"FCB\x01"
PROTOCOL_VERSION: Final = 1
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_BUFFERS: Final = 64
MAX_RANK: Final = 16
MAX_JSON_DEPTH: Final = 16
_ALIGN: Final = 8
_PREFIX: Final = struct.Struct("<4sI")
DTYPES: Final = frozenset({"float16", "float32", "float64", "int8", "uint8", "int16", "uint16",
                           "int32", "uint32", "int64", "uint64", "bool"})


@dataclass(frozen=True)
class Code:
    name: str
    alias: int          # the Alipay-style numeric error: 1 not found/unavailable, 2 bad argument, 3 unknown, 4 no permission
    retryable: bool
    http_status: int


# The one table of error codes. Names and aliases are a public contract: never change one.
CODES: Final[Mapping[str, Code]] = {c.name: c for c in (
    Code("UNAVAILABLE", 1, True, 503),          # nothing served, or the bridge is stopping
    Code("INVALID_ARGUMENT", 2, False, 400),    # a malformed frame, unknown dtype, wrong shape
    Code("PERMISSION_DENIED", 4, False, 403),   # Host, Origin, token or method refused
    Code("NOT_FOUND", 1, False, 404),           # no such model or method
    Code("MODEL_LOADING", 1, True, 503),        # an update is installing the first model
    Code("RESOURCE_EXHAUSTED", 3, True, 429),   # rate limit or input size cap
    Code("TIMEOUT", 3, True, 504),              # the call ran past its timeoutMs
    Code("INFERENCE_ERROR", 3, False, 422),     # the model refused or failed on this input
    Code("INTERNAL", 3, False, 500),            # a bug: the message says what
)}


class BridgeError(Exception):
    """A call the bridge refuses or could not serve; `code` is a name in CODES."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown bridge error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def document(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": CODES[self.code].retryable}


@dataclass(frozen=True)
class Frame:
    header: dict[str, Any]
    buffers: tuple[memoryview, ...] = field(default=())


def _invalid(message: str) -> BridgeError:
    return BridgeError("INVALID_ARGUMENT", message)


def _padded(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _depth(value: Any, limit: int) -> None:
    stack = [(value, 1)]
    while stack:
        item, d = stack.pop()
        if d > limit:
            raise _invalid(f"frame header nests deeper than {limit} levels")
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)


def decode(data: bytes | memoryview, *, max_bytes: int) -> Frame:
    """Checks and splits one frame; raises BridgeError naming what is wrong."""
    view = memoryview(data)
    if len(view) > max_bytes:
        raise BridgeError("RESOURCE_EXHAUSTED", f"frame of {len(view)} bytes is over the {max_bytes}-byte cap")
    if len(view) < _PREFIX.size:
        raise _invalid("frame is shorter than its 8-byte prefix")
    magic, header_len = _PREFIX.unpack_from(view)
    if magic[:3] != MAGIC[:3]:
        raise _invalid("not a Fleetcast bridge frame (bad magic)")
    if magic[3] != PROTOCOL_VERSION:
        raise _invalid(f"frame version {magic[3]} is not supported; this agent speaks {PROTOCOL_VERSION}")
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(view):
        raise _invalid(f"frame header length {header_len} is over {MAX_HEADER_BYTES} or past the frame")
    try:
        header = json.loads(bytes(view[_PREFIX.size:_PREFIX.size + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _invalid(f"frame header is not JSON: {str(e)[:200]}") from e
    if not isinstance(header, dict):
        raise _invalid("frame header must be a JSON object")
    _depth(header, MAX_JSON_DEPTH)
    if header.get("v") != PROTOCOL_VERSION:
        raise _invalid(f"frame header v={json.dumps(header.get('v'))[:16]}; this agent speaks v={PROTOCOL_VERSION}")
    body = view[_padded(_PREFIX.size + header_len):]
    ranges = header.get("buffers", [])
    if not isinstance(ranges, list) or len(ranges) > MAX_BUFFERS:
        raise _invalid(f"frame buffers must be a list of at most {MAX_BUFFERS} [offset, length] pairs")
    buffers = []
    for r in ranges:
        if (not isinstance(r, list) or len(r) != 2 or not all(type(x) is int and x >= 0 for x in r)
                or r[0] % _ALIGN or r[0] + r[1] > len(body)):
            raise _invalid(f"frame buffer range {str(r)[:40]} is not an aligned range inside the frame")
        buffers.append(body[r[0]:r[0] + r[1]])
    return Frame(header=header, buffers=tuple(buffers))


def encode(header: Mapping[str, Any], buffers: list[bytes | memoryview] = ()) -> bytes:  # type: ignore[assignment]
    """One frame; `header` gets `v` and `buffers` filled in."""
    offsets, position = [], 0
    for b in buffers:
        offsets.append([position, len(b)])
        position = _padded(position + len(b))
    doc = dict(header, v=PROTOCOL_VERSION, buffers=offsets)
    head = json.dumps(doc, separators=(",", ":")).encode()
    out = bytearray(_PREFIX.pack(MAGIC, len(head)))
    out += head
    out += bytes(_padded(len(out)) - len(out))
    for b in buffers:
        out += b
        out += bytes(_padded(len(b)) - len(b))
    return bytes(out)


def tensor_from(doc: Any, frame: Frame, what: str) -> np.ndarray:
    """The array a `{"dtype", "shape", "buffer"}` reference names, checked against its bytes."""
    if not isinstance(doc, dict):
        raise _invalid(f"{what} must be a tensor {{dtype, shape, buffer}}")
    dtype, shape, index = doc.get("dtype"), doc.get("shape"), doc.get("buffer")
    if dtype not in DTYPES:
        raise _invalid(f"{what}: dtype {str(dtype)[:32]!r} is not one of {sorted(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise _invalid(f"{what}: shape must be a list of at most {MAX_RANK} non-negative integers")
    if type(index) is not int or not 0 <= index < len(frame.buffers):
        raise _invalid(f"{what}: buffer {str(index)[:16]} is not in this frame")
    data = frame.buffers[index]
    np_dtype = np.dtype(dtype).newbyteorder("<")
    if math.prod(shape) * np_dtype.itemsize != len(data):
        raise _invalid(f"{what}: {len(data)} bytes do not fill {dtype} shape {shape}")
    return np.frombuffer(data, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="), copy=False)


def tensor_doc(array: np.ndarray, buffers: list[bytes | memoryview]) -> dict[str, Any]:
    """Appends the array's bytes to `buffers` and returns the reference to them."""
    array = np.asarray(array)
    if array.dtype.name not in DTYPES:
        raise BridgeError("INFERENCE_ERROR", f"the model returned dtype {array.dtype}, which the bridge cannot send")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    buffers.append(memoryview(little.reshape(-1).view(np.uint8)))
    return {"dtype": array.dtype.name, "shape": list(array.shape), "buffer": len(buffers) - 1}
