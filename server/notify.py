"""Telling devices to look again: in-process watchers (gRPC streams) and the MQTT bridge.

A notice only says "your director metadata changed"; trust comes from the signed
metadata. `Hub.publish` may be called from any thread (domain calls run in worker
threads); watchers live on the event loop and always see the latest notice.

The MQTT bridge (paho-mqtt, callback API v2) publishes retained QoS 1 notices to
each device's assignment topic and consumes the upstream status and telemetry
topics, handing each payload to `server/upstream.py`, which checks and stores it with
the same domain functions the gRPC service uses; the acknowledgement it returns is
published to the device's ack topic. It subscribes in `on_connect`, so a reconnect
restores the subscriptions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlsplit

from fleetcast.proto import brokerauth, topics
from fleetcast.proto.brokerauth import BrokerAuth
from fleetcast.proto.identity import SERVER_IDENTITY
from fleetcast.proto.topics import AssignmentNotice, UplinkAck, bounded_window_ms

logger = logging.getLogger(__name__)


# Devices told together spread their checks over 0.5 ms per device told (10,000: 5 s), as
# polling fleets spread theirs (hawkBit, Mender): the server writes every notice before the
# fetches of the devices told first compete with it. A fleet's installs take minutes.
CHECK_WINDOW_MS_PER_DEVICE: Final = 0.5


def check_window_ms(devices: int) -> int:
    """The window a notice to `devices` devices at once asks them to spread their check over."""
    return bounded_window_ms(int(devices * CHECK_WINDOW_MS_PER_DEVICE))


class Sink(Protocol):
    def device_notices(self, notices: Sequence[tuple[str, AssignmentNotice]]) -> None: ...
    def fleet_notice(self) -> None: ...


class Watcher:
    """One open WatchAssignments stream: wakes on each change, keeps only the latest."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._latest: AssignmentNotice | None = None
        self.closed = False

    def offer(self, notice: AssignmentNotice | None) -> None:
        if notice is None:
            self.closed = True
        else:
            self._latest = notice
        self._event.set()

    async def next(self) -> AssignmentNotice | None:
        """The next notice, or None once the hub closes."""
        await self._event.wait()
        self._event.clear()
        if self.closed:
            return None
        return self._latest


class Hub:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchers: dict[str, set[Watcher]] = {}
        self._relayed: list[tuple[str, AssignmentNotice]] = []   # told by another replica, not yet offered
        self._relayed_lock = threading.Lock()
        self._sinks: list[Sink] = []
        self._closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._closed = False

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def publish(self, device_id: str, notice: AssignmentNotice) -> None:
        """Thread-safe: tells the device's open streams and every sink."""
        self.publish_many([(device_id, notice)])

    def publish_many(self, notices: Sequence[tuple[str, AssignmentNotice]]) -> None:
        """Thread-safe: `publish` for many devices, waking the event loop once, not per device.
        This process's streams are woken first; the sinks (the broker, the other replicas)
        get the batch after, each in one call."""
        if notices and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._offer_all, list(notices))
        for sink in list(self._sinks):
            try:
                sink.device_notices(notices)
            except Exception:
                logger.exception("notice sink failed devices=%d", len(notices))

    def tell_watchers(self, device_id: str, notice: AssignmentNotice) -> None:
        """Thread-safe: tells this process's open streams only (a notice another replica
        already published to the sinks). Notices arriving one by one (a deploy on another
        replica tells thousands) wake the event loop once per batch that piled up."""
        if self._loop is None or self._loop.is_closed():
            return
        with self._relayed_lock:
            first = not self._relayed
            self._relayed.append((device_id, notice))
        if first:
            try:
                self._loop.call_soon_threadsafe(self._offer_relayed)
            except RuntimeError:   # the loop closed meanwhile: nobody is watching any more
                with self._relayed_lock:
                    self._relayed.clear()

    def _offer_relayed(self) -> None:
        with self._relayed_lock:
            relayed, self._relayed = self._relayed, []
        self._offer_all(relayed)

    def publish_fleet(self) -> None:
        for sink in list(self._sinks):
            try:
                sink.fleet_notice()
            except Exception:
                logger.exception("fleet notice sink failed")

    def _offer(self, device_id: str, notice: AssignmentNotice | None) -> None:
        for watcher in list(self._watchers.get(device_id, ())):
            watcher.offer(notice)

    def _offer_all(self, notices: Sequence[tuple[str, AssignmentNotice]]) -> None:
        for device_id, notice in notices:
            self._offer(device_id, notice)

    @contextmanager
    def watch(self, device_id: str) -> Iterator[Watcher]:
        """Registers a watcher on the running loop for the life of the block."""
        watcher = Watcher()
        if self._closed:
            watcher.offer(None)
        self._watchers.setdefault(device_id, set()).add(watcher)
        try:
            yield watcher
        finally:
            group = self._watchers.get(device_id)
            if group is not None:
                group.discard(watcher)
                if not group:
                    del self._watchers[device_id]

    def watching(self, device_id: str) -> int:
        return len(self._watchers.get(device_id, ()))

    def close(self) -> None:
        """Ends every open watch (called on the loop when the server stops)."""
        self._closed = True
        for group in list(self._watchers.values()):
            for watcher in list(group):
                watcher.offer(None)


# (device id from the topic, payload) -> the ack to send the device, None for none.
UpstreamHandler = Callable[[str, bytes], Awaitable[UplinkAck | None]]


def mqtt_client_id(data_dir: Path) -> str:
    """The server's MQTT client id: stable across restarts of the server on `data_dir`."""
    return "fleetcast-server-" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


class MqttBridge:
    """paho-mqtt adapter: publishes notices, hands upstream payloads to the event loop."""

    def __init__(
        self,
        url: str,
        *,
        loop: asyncio.AbstractEventLoop,
        on_status: UpstreamHandler,
        on_telemetry: UpstreamHandler,
        client_id: str,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
        store_timeout_s: float = 30.0,
        auth: BrokerAuth | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        address = brokerauth.parse_url(url if "://" in url else f"mqtt://{url}")
        self.host, self.port = address.host, address.port
        self._loop = loop
        self._handlers = {"status": on_status, "telemetry": on_telemetry}
        self.connected = asyncio.Event()
        self._store_timeout_s = store_timeout_s
        # A stable client id with a persistent session (clean_session False): while this
        # server is down the broker keeps its QoS 1 subscriptions and queues what devices
        # publish, so a status or batch the broker acknowledged to a device is not lost.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        client.username_pw_set(parts.username or SERVER_IDENTITY, parts.password)
        # mqtts://: the broker checks this server's certificate (CN fleetcast-server).
        (auth or BrokerAuth()).apply(client, address)
        client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        logger.info("mqtt bridge connecting host=%s port=%d", self.host, self.port)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            logger.warning("mqtt connect refused reason=%s", reason_code)
            return
        client.subscribe([(topics.DEVICE_WILDCARD_STATUS, 1), (topics.DEVICE_WILDCARD_TELEMETRY, 1)])
        logger.info("mqtt bridge connected host=%s port=%d", self.host, self.port)
        self._loop.call_soon_threadsafe(self.connected.set)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        logger.info("mqtt bridge disconnected reason=%s", reason_code)
        self._loop.call_soon_threadsafe(self.connected.clear)

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        payload = bytes(message.payload)
        if len(payload) > topics.MAX_PAYLOAD_BYTES:
            logger.warning("mqtt payload dropped topic=%s bytes=%d", message.topic, len(payload))
            return
        try:
            device_id, kind = topics.device_of(message.topic)
        except topics.TopicError as e:
            logger.warning("mqtt message dropped: %s", e)
            return
        handler = self._handlers.get(kind)
        if handler is None:
            return
        # Stored before this callback returns: paho sends the PUBACK only after it, so the
        # broker redelivers anything this server had not committed when it stopped.
        if self._loop.is_closed():
            return   # stopping: unacknowledged, so the device sends it again
        try:
            future = asyncio.run_coroutine_threadsafe(handler(device_id, payload), self._loop)
        except RuntimeError:  # the loop closed meanwhile; same as above
            return
        try:
            ack = future.result(timeout=self._store_timeout_s)
        except concurrent.futures.TimeoutError:
            # Not acknowledged to the device, so it sends the message again.
            logger.error("mqtt message not stored within %.0f s topic=%s", self._store_timeout_s, message.topic)
            return
        except Exception:  # a store failure: unacknowledged, so the device sends it again
            logger.exception("mqtt message not stored topic=%s", message.topic)
            return
        if ack is not None:
            self._client.publish(topics.device_ack(device_id), ack.encode(), qos=1)

    def device_notices(self, notices: Sequence[tuple[str, AssignmentNotice]]) -> None:
        for device_id, notice in notices:
            try:
                self._client.publish(topics.device_assignment(device_id), notice.encode(), qos=1, retain=True)
            except Exception:   # one device's notice; the others still go out
                logger.exception("mqtt notice not published device_id=%s", device_id)

    def fleet_notice(self) -> None:
        self._client.publish(topics.FLEET_ASSIGNMENT, b'{"v":1}', qos=1)
