"""fcpack, re-exported for the compression code: the format lives in `fleetcast.proto.fcpack`.

The package format is part of the wire contract (the agent decodes it), so its one
implementation is there; this name stays so the pipeline, the recipes and their
tests keep importing `fleetcast.server.compress.package`.
"""

from __future__ import annotations

from fleetcast.proto.fcpack import (
    CODEBOOK_MAX_ENTRIES,
    MAGIC,
    MASK_MIN_ZERO_FRACTION,
    MAX_BODY_BYTES,
    VERSION,
    PackageError,
    decode,
    encode,
)

__all__ = ["CODEBOOK_MAX_ENTRIES", "MAGIC", "MASK_MIN_ZERO_FRACTION", "MAX_BODY_BYTES", "VERSION",
           "PackageError", "decode", "encode"]
