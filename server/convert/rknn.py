"""ONNX -> RKNN for Rockchip NPUs, with `rknn-toolkit2` in its own Python environment.

rknn-toolkit2 pins numpy<=1.26.4, protobuf<=4.25.4 and torch<=2.4, which clash with
the server's, so it never shares the server's environment: the operator installs it
into a separate virtual environment (`make rknn-env` builds `.venv-rknn`) and points
`FLEETCAST_RKNN_PYTHON` at that environment's python. `rknn_worker.py` runs there.
Without it the target fails with a message saying how to set it up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from fleetcast.server.convert.targets import ConversionError, run_tool

ENV_VAR: Final = "FLEETCAST_RKNN_PYTHON"
WORKER: Final = Path(__file__).with_name("rknn_worker.py")


def toolkit_python(environ: dict[str, str] | None = None) -> Path | None:
    value = (environ if environ is not None else os.environ).get(ENV_VAR, "")
    return Path(value) if value and Path(value).is_file() else None


def convert(source: Path, fmt: str, out: Path, *, platform: str, python: Path | None = None) -> Path:
    python = python or toolkit_python()
    if python is None:
        raise ConversionError(f"rknn-toolkit2 is not set up: run `make rknn-env` and set {ENV_VAR} to "
                              ".venv-rknn/bin/python (its pins clash with the server's environment)")
    target = out / "model.rknn"
    run_tool([str(python), "-I", str(WORKER), "build", str(source), str(target), platform], what="rknn-toolkit2")
    if not target.is_file() or target.stat().st_size == 0:
        raise ConversionError("rknn-toolkit2 wrote no model")
    return target


def simulate(source: Path, inputs_npz: Path, outputs_npz: Path, *, platform: str, python: Path) -> None:
    """Runs the ONNX model through rknn-toolkit2's simulator (build, then inference on the PC)."""
    run_tool([str(python), "-I", str(WORKER), "simulate", str(source), str(inputs_npz), str(outputs_npz), platform],
             what="rknn-toolkit2 simulator")
