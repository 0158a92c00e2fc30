"""Server-sent events for the dashboard: one poller, a bounded set of subscribers.

The poller reads a snapshot from the store every `poll_s` while anyone listens (so
every replica sees what any replica wrote) and sends each topic whose document
changed: `deployments` (the newest deployments' summaries) and `fleet` (devices by
liveness). The data are the same documents the REST API returns
(`fleetcast.server.documents`); the pages refresh the part an event names. At most
`max_subscribers` streams are open (more get 503); a subscriber that falls
`QUEUE_EVENTS` behind is dropped (its browser reconnects and gets a fresh snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fleetcast.server.errors import Unavailable

logger = logging.getLogger(__name__)

QUEUE_EVENTS: Final = 16
Snapshot = Mapping[str, Any]     # topic -> JSON-able document


@dataclass(frozen=True)
class Event:
    topic: str
    data: str                    # JSON text

    def encode(self) -> bytes:
        return f"event: {self.topic}\ndata: {self.data}\n\n".encode()


class Subscriber:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=QUEUE_EVENTS)

    def offer(self, event: Event | None) -> bool:
        """Queues `event`; False when this subscriber is too far behind."""
        try:
            self.queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            return False


class Events:
    def __init__(self, *, snapshot: Callable[[], Snapshot], max_subscribers: int, poll_s: float) -> None:
        self.snapshot = snapshot
        self.max_subscribers = max_subscribers
        self.poll_s = poll_s
        self._subscribers: set[Subscriber] = set()
        self._last: dict[str, str] = {}
        self._wake = asyncio.Event()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscriber]:
        if len(self._subscribers) >= self.max_subscribers:
            raise Unavailable(f"{self.max_subscribers} live-update streams are open on this server; "
                              "close a dashboard tab or reload later (pages still work without live updates)")
        sub = Subscriber()
        for topic, data in self._last.items():   # a new stream starts from the current state
            sub.offer(Event(topic, data))
        self._subscribers.add(sub)
        self._wake.set()
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    def publish(self, snapshot: Snapshot) -> list[str]:
        """Sends every topic whose document changed; returns their names."""
        changed = []
        for topic, doc in snapshot.items():
            data = json.dumps(doc, sort_keys=True, separators=(",", ":"))
            if self._last.get(topic) != data:
                self._last[topic] = data
                changed.append(topic)
                for sub in list(self._subscribers):
                    if not sub.offer(Event(topic, data)):
                        logger.info("event subscriber dropped: too far behind")
                        self._end(sub)
        return changed

    def _end(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        while not sub.offer(None):   # make room for the end marker: what it has not read is stale
            sub.queue.get_nowait()

    def close(self) -> None:
        """Ends every stream (at shutdown)."""
        for sub in list(self._subscribers):
            self._end(sub)

    async def run(self) -> None:
        """Polls while anyone listens; sleeps on `_wake` otherwise. Runs until cancelled."""
        while True:
            if not self._subscribers:
                self._last.clear()      # nobody saw these: the next subscriber gets a fresh snapshot
                self._wake.clear()
                await self._wake.wait()
            try:
                self.publish(await asyncio.to_thread(self.snapshot))
            except Exception as e:   # the store may be briefly unusable; live updates must not stop
                logger.warning("event snapshot failed error=%s", e)
            await asyncio.sleep(self.poll_s)
