"""ONNX or TFLite -> OpenVINO IR (`openvino.convert_model`), joined into one artifact.

Weights stay FP32 (`compress_to_fp16=False`): the variant's outputs must match the
original within float tolerance; FP16 is a compression level's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fleetcast.proto import ovir
from fleetcast.server.convert.targets import ConversionError, python_tool

_CODE: Final = (
    "import sys, openvino as ov\n"
    "ov.save_model(ov.convert_model(sys.argv[1]), sys.argv[2], compress_to_fp16=False)\n"
)


def convert(source: Path, fmt: str, out: Path) -> Path:
    xml = out / "openvino.xml"
    python_tool(_CODE, str(source), str(xml), what="OpenVINO's model converter")
    weights = xml.with_suffix(".bin")
    if not xml.is_file():
        raise ConversionError("OpenVINO's converter wrote no model")
    target = out / "model.ovir"
    target.write_bytes(ovir.join(xml.read_bytes(), weights.read_bytes() if weights.is_file() else b""))
    return target
