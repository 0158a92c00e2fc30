"""Telling the other server replicas what this one signed, through the shared store.

A deployment made on one replica is signed there; devices watching another replica
must hear of it too. `Relay` is a `notify.Sink` that announces each device notice on
the store (PostgreSQL NOTIFY, in commit order after the metadata it points at), and a
store listener that hands the other replicas' notices to this replica's watch streams
only: the replica that signed already told the MQTT broker. On SQLite (one process)
the announcement goes nowhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from fleetcast.proto.topics import AssignmentNotice, TopicError, check_device_id
from fleetcast.server.notify import Hub
from fleetcast.server.store import Store

logger = logging.getLogger(__name__)

TOPIC: Final = "assignment"


class Relay:
    def __init__(self, *, store: Store, hub: Hub) -> None:
        self._store = store
        self._hub = hub

    def start(self) -> None:
        self._hub.add_sink(self)
        self._store.subscribe(self._on_change)

    def device_notices(self, notices: Sequence[tuple[str, AssignmentNotice]]) -> None:
        self._store.announce(TOPIC, *(f"{device_id}\n{notice.encode().decode()}" for device_id, notice in notices))

    def fleet_notice(self) -> None:
        """Fleet notices go to the broker only."""

    def _on_change(self, topic: str, detail: str) -> None:
        if topic == "":
            logger.warning("replica notices may have been missed; devices hear of those at their next check")
        if topic != TOPIC:
            return
        device_id, _, payload = detail.partition("\n")
        try:
            notice = AssignmentNotice.decode(payload.encode())
            self._hub.tell_watchers(check_device_id(device_id), notice)
        except TopicError as e:
            logger.warning("replica notice dropped: %s", e)
