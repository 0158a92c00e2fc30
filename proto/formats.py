"""Model formats: the one table both ends read.

Each row says what a format is called on the wire (the image and director targets'
`format`), the file name a slot stores it under, the format a back end loads once
the artifact is unpacked, which back ends run it (best first), how the server checks
an upload of it (`upload_check`: the runtime that must load it; None when the format
is only ever built by the server), and the bytes that identify an upload.

Adding a format is one row here plus its back end in `fleetcast.agent.backends`
(and, when it can be uploaded, its loader in `fleetcast.server.inspection`).
Names are persisted: never rename, never reuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


class FormatError(ValueError):
    """A format name or file this contract does not know."""


@dataclass(frozen=True)
class ModelFormat:
    name: str
    file_name: str                  # inside a slot
    runs_as: str                    # the format a back end loads after unpacking
    backends: tuple[str, ...]       # back ends that load `runs_as`, preferred first
    upload_check: str | None        # runtime that must load an upload; None: built only
    magic: tuple[int, bytes] | None = None   # (offset, bytes) that identify an upload


FORMATS: Final[Mapping[str, ModelFormat]] = MappingProxyType({f.name: f for f in (
    ModelFormat("onnx", "model.onnx", "onnx", ("onnxruntime", "openvino"), "onnxruntime"),
    # Compressed transport (ADR 0003): decoded to ONNX in memory on the device.
    ModelFormat("fcpack", "model.fcpack", "onnx", ("onnxruntime", "openvino"), None, (0, b"FCPK")),
    # TFLite flatbuffers carry the file identifier "TFL3" at offset 4.
    ModelFormat("tflite", "model.tflite", "tflite", ("litert", "openvino"), "litert", (4, b"TFL3")),
    # Built by the server: mnnconvert from ONNX or TFLite.
    ModelFormat("mnn", "model.mnn", "mnn", ("mnn",), None),
    # Built by the server: OpenVINO IR (xml + weights) in one file (`fleetcast.proto.ovir`).
    ModelFormat("openvino", "model.ovir", "openvino", ("openvino",), None, (0, b"FCOVIR1\0")),
    # Built by the server with rknn-toolkit2 for one Rockchip NPU platform.
    ModelFormat("rknn", "model.rknn", "rknn", ("rknn",), None),
)})


def get(name: str) -> ModelFormat:
    """The row for `name`; raises FormatError naming the known formats."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise FormatError(f"model format {str(name)[:40]!r} is not known "
                          f"(known: {', '.join(FORMATS)})") from None


def uploadable() -> tuple[str, ...]:
    return tuple(f.name for f in FORMATS.values() if f.upload_check)


def sniff(head: bytes) -> str:
    """The uploadable format of a file from its first bytes: a magic match, else "onnx"
    (protobuf has no magic; the ONNX check then says plainly when it is not ONNX)."""
    for f in FORMATS.values():
        if f.upload_check and f.magic and head[f.magic[0]:f.magic[0] + len(f.magic[1])] == f.magic[1]:
            return f.name
    return "onnx"


def loadable_by(name: str, backends: set[str] | frozenset[str] | tuple[str, ...]) -> bool:
    """Whether a device reporting `backends` can run an artifact of format `name`."""
    return name in FORMATS and any(b in backends for b in FORMATS[name].backends)
