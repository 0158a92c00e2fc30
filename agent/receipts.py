"""Receipts: the server's acknowledgements of what this device sent over MQTT.

The MQTT listener records every `UplinkAck` that arrives on the device's ack topic;
the MQTT uplink waits here for the acks of what it just published. A broker's PUBACK
is not a receipt: only the server's ack, sent once the item is stored, lets the
spool forget an item. Acks that arrive late (after the uplink stopped waiting) are
kept, so the next round forgets those items without publishing them again.

Thread-safe; bounded to `max_receipts` (oldest forgotten first: a forgotten receipt
only costs one more resend, which the server counts once).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Collection

from fleetcast.proto.topics import UplinkAck


class Receipts:
    def __init__(self, *, max_receipts: int = 10_000) -> None:
        self.max_receipts = max_receipts
        self._acks: OrderedDict[tuple[str, str], UplinkAck] = OrderedDict()
        self._changed = threading.Condition()
        self._closed = False

    def record(self, ack: UplinkAck) -> None:
        with self._changed:
            self._acks[(ack.kind, ack.id)] = ack
            self._acks.move_to_end((ack.kind, ack.id))
            while len(self._acks) > self.max_receipts:
                self._acks.popitem(last=False)
            self._changed.notify_all()

    def get(self, kind: str, ack_id: str) -> UplinkAck | None:
        with self._changed:
            return self._acks.get((kind, ack_id))

    def wait(self, kind: str, ids: Collection[str], timeout_s: float) -> dict[str, UplinkAck]:
        """The acks of `ids` that arrived by `timeout_s`; returns early once all are in."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = {i: a for i in ids if (a := self._acks.get((kind, i))) is not None}
                left = deadline - time.monotonic()
                if len(found) == len(ids) or left <= 0 or self._closed:
                    return found
                self._changed.wait(left)

    def close(self) -> None:
        """Ends every wait now (the agent is stopping): waits return what they have."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def forget(self, kind: str, ids: Collection[str]) -> None:
        """Drops receipts the spool has acted on."""
        with self._changed:
            for i in ids:
                self._acks.pop((kind, i), None)
