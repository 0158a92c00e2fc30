"""An upload's metadata: the model name in the path, the version and compress form
fields (first byte 'f', fields separated by NUL), or (otherwise) its golden .npz."""

from __future__ import annotations

import io

from fleetcast.server import registry
from fleetcast.server.errors import InvalidRequest

MAX_UNPACKED_BYTES = 64 * 1024**2   # the bound the server passes (ServerConfig.max_golden_unpacked_bytes is larger)


def test_one_input(data: bytes) -> None:
    try:
        if data[:1] == b"f":
            name, version, levels = (data[1:].decode("utf-8", "replace").split("\0") + ["", ""])[:3]
            registry.check_model_name(name)
            registry.check_version_name(version)
            registry.parse_levels(levels)
        else:
            registry._read_golden(io.BytesIO(data[1:]),  # type: ignore[arg-type] (np.load takes a file)
                                  max_unpacked_bytes=MAX_UNPACKED_BYTES)
    except InvalidRequest:
        return
