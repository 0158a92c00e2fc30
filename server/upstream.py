"""Status reports and telemetry batches that devices publish over MQTT.

The broker only tells us the topic a message came on; its ACL ties a device's
status and telemetry topics to the identity it authenticated as. A message is
stored only when that topic's device id, the payload's device id and an enrolled
device agree; anything else is refused, counted in `refusals` by reason, logged at
WARNING and never acknowledged (the device it names did not send it).

What is stored, or was stored before, is acknowledged to the device with an
`UplinkAck` on its ack topic (proto/topics.py); the device deletes an item from its
spool only then, and resends anything unacknowledged. Telemetry is counted once per
batch id whatever the number of copies; a status report is acknowledged by the
digest of its payload and applying one twice changes nothing. A message the device
sent that can never be stored (an invalid batch) is acknowledged as "refused" so
that it leaves the device's spool instead of coming back forever. A store failure
is not acknowledged: the device sends the item again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from google.protobuf.message import DecodeError

from fleetcast.proto import topics
from fleetcast.proto.topics import UplinkAck
from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.server.deployments import StatusUpdate
from fleetcast.server.errors import InvalidRequest, NotFound
from fleetcast.server.telemetry import Batch

logger = logging.getLogger(__name__)

# Refusal reasons (the keys of `Upstream.refusals`).
UNDECODABLE: Final = "undecodable"
DEVICE_MISMATCH: Final = "device_mismatch"
NOT_ENROLLED: Final = "not_enrolled"
INVALID: Final = "invalid"


class Upstream:
    """Checks, stores and acknowledges what arrives on the device topics."""

    def __init__(self, *, is_enrolled: Callable[[str], bool],
                 apply_status: Callable[[str, StatusUpdate], Any],
                 ingest: Callable[[str, Batch], bool]) -> None:
        self._is_enrolled = is_enrolled
        self._apply_status = apply_status
        self._ingest = ingest
        self._lock = threading.Lock()
        self.refusals: Counter[str] = Counter()

    async def status(self, device_id: str, payload: bytes) -> UplinkAck | None:
        report = self._parse(pb.StatusReport, "status", device_id, payload)
        if report is None or not await self._agree("status", device_id, report.device_id):
            return None
        ack_id = topics.status_ack_id(payload)
        try:
            await asyncio.to_thread(self._apply_status, device_id, StatusUpdate.from_message(report))
        except (InvalidRequest, NotFound) as e:
            self._refuse("status", device_id, INVALID, e.message)
            return UplinkAck(kind="status", id=ack_id, result="refused", reason=e.message)
        return UplinkAck(kind="status", id=ack_id)

    async def telemetry(self, device_id: str, payload: bytes) -> UplinkAck | None:
        batch = self._parse(pb.TelemetryBatch, "telemetry", device_id, payload)
        if batch is None or not await self._agree("telemetry", device_id, batch.device_id):
            return None
        if not 0 < len(batch.batch_id) <= topics.MAX_ACK_ID_CHARS:
            self._refuse("telemetry", device_id, INVALID, "batch_id is empty or too long")
            return None   # nothing to acknowledge it by
        try:
            duplicate = await asyncio.to_thread(self._ingest, device_id, Batch.from_message(batch))
        except (InvalidRequest, NotFound) as e:
            self._refuse("telemetry", device_id, INVALID, e.message)
            return UplinkAck(kind="telemetry", id=batch.batch_id, result="refused", reason=e.message)
        return UplinkAck(kind="telemetry", id=batch.batch_id, result="duplicate" if duplicate else "stored")

    def _parse(self, kind: type, what: str, device_id: str, payload: bytes) -> Any:
        try:
            return kind.FromString(payload)
        except (DecodeError, RecursionError) as e:
            self._refuse(what, device_id, UNDECODABLE, f"not a {kind.__name__} ({e})")
            return None

    async def _agree(self, what: str, topic_device: str, payload_device: str) -> bool:
        if payload_device != topic_device:
            self._refuse(what, topic_device, DEVICE_MISMATCH,
                         f"payload names device {payload_device[:80]!r} on the topic of {topic_device!r}")
            return False
        if not await asyncio.to_thread(self._is_enrolled, topic_device):
            self._refuse(what, topic_device, NOT_ENROLLED, "no such device is enrolled")
            return False
        return True

    def _refuse(self, what: str, device_id: str, reason: str, detail: str) -> None:
        with self._lock:
            self.refusals[reason] += 1
            total = sum(self.refusals.values())
        logger.warning("mqtt %s refused device_id=%s reason=%s refused_total=%d: %s",
                       what, device_id, reason, total, detail)
