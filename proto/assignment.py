"""What the director's signed target says beside the artifact: shared by both ends.

The server writes these fields into a device's director targets metadata
(`custom["fleetcast"]`, see docs/architecture.md); the agent reads them back only
after the signatures verified (`fleetcast.agent.trust`), validating every field.
"""

from __future__ import annotations

from dataclasses import dataclass


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
