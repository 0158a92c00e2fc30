"""Uploads in formats other than ONNX: checked by really loading them, as ONNX is.

`open_upload(path)` returns an object with the onnxruntime `InferenceSession` calls the
registry uses (`get_inputs`, `get_outputs`, `run(None, feeds)`), so the registry's upload
check reads the same for every format; ONNX files go to the registry's own check.
Which runtime checks which format is `upload_check` in `fleetcast.proto.formats`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from fleetcast.proto import formats
from fleetcast.server.errors import ModelInvalid

_HEAD_BYTES: Final = 16
# numpy dtype names -> the onnxruntime type strings the registry maps back.
_ORT_TYPES: Final = {"float32": "tensor(float)", "float64": "tensor(double)", "float16": "tensor(float16)",
                     "int8": "tensor(int8)", "uint8": "tensor(uint8)", "int16": "tensor(int16)",
                     "int32": "tensor(int32)", "int64": "tensor(int64)", "bool": "tensor(bool)"}


def detect(path: Path) -> str:
    with path.open("rb") as f:
        return formats.sniff(f.read(_HEAD_BYTES))


@dataclass(frozen=True)
class Arg:
    name: str
    type: str
    shape: Sequence[int | None]


class UploadSession:
    """A loaded non-ONNX upload, shaped like the part of InferenceSession the registry calls."""

    def __init__(self, fmt: str, session: Any) -> None:
        self.format = fmt
        self._session = session

    def get_inputs(self) -> list[Arg]:
        return [Arg(s.name, _ORT_TYPES.get(s.dtype, s.dtype), list(s.shape)) for s in self._session.inputs]

    def get_outputs(self) -> list[Arg]:
        return [Arg(s.name, _ORT_TYPES.get(s.dtype, s.dtype), list(s.shape)) for s in self._session.outputs]

    def run(self, names: None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._session.run_values(feeds))


def _litert(path: Path) -> UploadSession:
    from fleetcast.agent.backends.litert import LiteRtBackend
    from fleetcast.agent.errors import AgentError

    if path.stat().st_size == 0:
        raise ModelInvalid("the model file is empty: upload a .tflite or .onnx file")
    try:
        return UploadSession("tflite", LiteRtBackend().load(path, threads=1, hardware_class="x86-cpu"))
    except AgentError as e:
        raise ModelInvalid(f"the .tflite model cannot be loaded by LiteRT: {e}") from e


CHECKS: Final[Mapping[str, Callable[[Path], UploadSession]]] = {"litert": _litert}


def open_upload(path: Path, *, onnx: Callable[[Path], Any]) -> Any:
    """A session over the upload, by its format; ModelInvalid when it does not load."""
    fmt = detect(path)
    check = formats.get(fmt).upload_check
    if fmt == "onnx":
        return onnx(path)
    if check not in CHECKS:
        raise ModelInvalid(f"a {fmt} file cannot be uploaded: upload one of {', '.join(formats.uploadable())}")
    return CHECKS[check](path)


def format_of(session: Any) -> str:
    return getattr(session, "format", "onnx")
