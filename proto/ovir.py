"""The `openvino` artifact: an OpenVINO IR (model XML and its weights) in one file.

OpenVINO keeps a converted model as two files (`model.xml`, `model.bin`); a signed
artifact is one blob, so the server joins them:

    offset  size  field
    0       8     magic b"FCOVIR1\\0"
    8       8     XML length, little-endian unsigned
    16      n     the XML (UTF-8)
    16+n    rest  the weights

The agent splits it only after the artifact verified; `split` still bounds every
length by the bytes it was given.
"""

from __future__ import annotations

import struct
from typing import Final

MAGIC: Final = b"FCOVIR1\0"
_HEADER: Final = struct.Struct("<8sQ")


class IrError(ValueError):
    """Bytes that are not an `openvino` artifact."""


def join(xml: bytes, weights: bytes) -> bytes:
    return _HEADER.pack(MAGIC, len(xml)) + xml + weights


def split(data: bytes) -> tuple[bytes, bytes]:
    """(xml, weights); raises IrError naming what is wrong."""
    if len(data) < _HEADER.size:
        raise IrError(f"openvino artifact is {len(data)} bytes, shorter than its {_HEADER.size}-byte header")
    magic, xml_length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise IrError(f"not an openvino artifact (magic {magic[:8]!r}, expected {MAGIC!r})")
    if xml_length > len(data) - _HEADER.size:
        raise IrError(f"openvino artifact says its XML is {xml_length} bytes, more than the "
                      f"{len(data) - _HEADER.size} bytes that follow the header")
    end = _HEADER.size + xml_length
    return data[_HEADER.size:end], data[end:]
