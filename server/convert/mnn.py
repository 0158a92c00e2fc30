"""ONNX or TFLite -> MNN with the converter the `MNN` wheel ships.

The wheel's `mnnconvert` console script sends usage logs to a remote service and tries
to pip-install a logging SDK when that is missing; Fleetcast never runs it. It calls
the converter's C extension (`_tools.mnnconvert`) directly, in a subprocess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fleetcast.server.convert.targets import ConversionError, python_tool

FRAMEWORKS: Final = {"onnx": "ONNX", "tflite": "TFLITE"}
# The extension's return value is not an exit status (it is nonzero on success too):
# success is a written model and the converter's own "Converted Success" line.
_CODE: Final = "import sys, _tools; _tools.mnnconvert(sys.argv)"


def convert(source: Path, fmt: str, out: Path) -> Path:
    target = out / "model.mnn"
    output = python_tool(_CODE, "-f", FRAMEWORKS[fmt], "--modelFile", str(source), "--MNNModel", str(target),
                "--bizCode", "fleetcast", what="MNN's converter")
    if "Converted Success" not in output or not target.is_file() or target.stat().st_size == 0:
        raise ConversionError("MNN's converter did not convert the model (it may use operators MNN does not "
                              f"support): {output.strip()[-300:]}")
    return target
