"""The conversion targets: one row each, and the runner that builds them for a job."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

TIMEOUT_S: Final = 600.0


class ConversionError(Exception):
    """A target that could not be built; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    name: str                       # the variant name
    sources: frozenset[str]         # upload formats it converts from
    format: str                     # the artifact format (fleetcast.proto.formats)
    backend: str                    # the agent back end that runs it, also used to measure it
    convert: Callable[[Path, str, Path], Path]   # (source, source format, out dir) -> artifact


def run_tool(argv: Sequence[str], *, what: str, timeout_s: float = TIMEOUT_S,
             env: Mapping[str, str] | None = None) -> str:
    """Runs a converter subprocess; returns its output or raises ConversionError with its tail."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                              env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise ConversionError(f"{what} did not finish within {timeout_s:.0f}s") from e
    except OSError as e:
        raise ConversionError(f"{what} could not start: {e}") from e
    output = (done.stdout or "") + (done.stderr or "")
    if done.returncode != 0:
        raise ConversionError(f"{what} failed (exit {done.returncode}): {output.strip()[-400:]}")
    return output


def python_tool(code: str, *args: str, what: str) -> str:
    """Runs `code` in a fresh interpreter of this environment, no user site, no network proxies."""
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR", "LD_LIBRARY_PATH"}}
    env["PYTHONNOUSERSITE"] = "1"
    return run_tool([sys.executable, "-c", code, *args], what=what, env=env)


def _mnn(source: Path, fmt: str, out: Path) -> Path:
    from fleetcast.server.convert import mnn

    return mnn.convert(source, fmt, out)


def _openvino(source: Path, fmt: str, out: Path) -> Path:
    from fleetcast.server.convert import openvino

    return openvino.convert(source, fmt, out)


def _rknn(platform: str) -> Callable[[Path, str, Path], Path]:
    def convert(source: Path, fmt: str, out: Path) -> Path:
        from fleetcast.server.convert import rknn

        return rknn.convert(source, fmt, out, platform=platform)
    return convert


TARGETS: Final[Mapping[str, Target]] = {t.name: t for t in (
    Target("mnn", frozenset({"onnx", "tflite"}), "mnn", "mnn", _mnn),
    Target("openvino", frozenset({"onnx", "tflite"}), "openvino", "openvino", _openvino),
    Target("rknn-rk3588", frozenset({"onnx"}), "rknn", "rknn", _rknn("rk3588")),
    Target("rknn-rk3566", frozenset({"onnx"}), "rknn", "rknn", _rknn("rk3566")),
)}


def parse_targets(text: str) -> tuple[str, ...]:
    """"mnn,openvino" -> ("mnn", "openvino"); raises ValueError naming an unknown one."""
    names = tuple(dict.fromkeys(p.strip() for p in text[:256].split(",") if p.strip()))
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ValueError(f"unknown build target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    return names


def check_targets(names: Sequence[str], source_format: str) -> None:
    """Raises ValueError when a target cannot be built from `source_format`."""
    for name in names:
        if source_format not in TARGETS[name].sources:
            raise ValueError(f"target {name!r} builds from {' or '.join(sorted(TARGETS[name].sources))}, "
                             f"not from a {source_format} upload")
