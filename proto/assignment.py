"""What the director's signed target says beside the artifact: shared by both ends.

The server writes these fields into the device's director entry, the target
`devices/<device id>` in the director's hash bin for that path (`custom["fleetcast"]`,
see docs/architecture.md and ADR 0008); the agent reads them back only after the
signatures verified (`fleetcast.agent.trust`), validating every field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

DEVICE_TARGET_PREFIX: Final = "devices/"
# Signed metadata file names either repository serves: group 1 the version, group 2 the
# role (the director's delegated hash bins are `bin-00` to `bin-ff`).
METADATA_NAME: Final = re.compile(r"^(?:(\d{1,10})\.)?(root|timestamp|snapshot|targets|bin-[0-9a-f]{2})\.json$")


def device_target_path(device_id: str) -> str:
    """The director target that holds one device's assignment."""
    return f"{DEVICE_TARGET_PREFIX}{device_id}"


@dataclass(frozen=True)
class GoldenRef:
    """The golden input/output file a device smoke-tests a new model against.

    `path` is the image-repository target (`artifacts/<sha256>`); a model passes when
    its outputs on the golden inputs are within `atol` + `rtol` * |expected|.
    """

    path: str
    sha256: str
    length: int
    atol: float
    rtol: float
