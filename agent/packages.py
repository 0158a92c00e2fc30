"""Model packages: what a slot's file is, and the standard model a back end loads from it.

A slot holds the artifact exactly as signed (`model.onnx` or `model.fcpack`), so
loading can re-check it against the manifest. An fcpack package is decoded here, in
memory, back to the ONNX model it packs (`fleetcast.proto.fcpack`), so back ends
only ever see standard formats and need no special kernels.

Raises `IncompatibleModelError` for a format this agent does not know and
`ActivationError` for a package that does not decode or decodes past the limit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from fleetcast.agent.datadir import read_bounded
from fleetcast.agent.errors import ActivationError, IncompatibleModelError
from fleetcast.proto import formats

logger = logging.getLogger(__name__)

# Artifact format -> the format a back end loads once the artifact is unpacked.
RUNNABLE_FORMATS: Final[Mapping[str, str]] = MappingProxyType(
    {f.name: f.runs_as for f in formats.FORMATS.values()})


def runnable_format(fmt: str) -> str:
    """The format a back end must load for an artifact of format `fmt`."""
    try:
        return RUNNABLE_FORMATS[fmt]
    except KeyError:
        raise IncompatibleModelError(
            f"model format {fmt[:40]!r} is not one this agent knows ({', '.join(RUNNABLE_FORMATS)})") from None


def unpack(path: Path, fmt: str, *, max_bytes: int, signed_length: int | None = None) -> Path | bytes:
    """What the back end loads: the file itself, or the decoded model bytes for a package.

    A package is read bounded by its signed length (when given) and decoded bounded by
    `max_bytes`; the sizes it declares itself are never used to allocate."""
    if runnable_format(fmt) == fmt:
        return path
    from fleetcast.proto import fcpack   # onnx and zstandard: only needed for packages

    limit = fcpack.MAX_BODY_BYTES if signed_length is None else signed_length
    try:
        data = read_bounded(path, limit)
    except (OSError, ValueError) as e:
        raise ActivationError(f"the {fmt} package cannot be read within its {limit}-byte limit: {e}") from e
    try:
        model = fcpack.decode(data, max_bytes=max_bytes)
    except fcpack.PackageError as e:
        raise ActivationError(f"the {fmt} package does not decode: {e}") from e
    if len(model) > max_bytes:
        raise ActivationError(f"the {fmt} package decodes to {len(model)} bytes, over this device's "
                              f"limit of {max_bytes} bytes (max_artifact_bytes)")
    logger.info("decoded package format=%s packed_bytes=%d model_bytes=%d", fmt, len(data), len(model))
    return model
