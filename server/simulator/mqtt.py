"""Simulated devices told over MQTT: many paho-mqtt clients on one asyncio loop.

Each device has its own paho client (callback API v2) that logs in with its own
certificate (issued at enrollment, CN = device id, as an agent's), and subscribes in
`on_connect` to its assignment topic and the fleet topic, as the agent's
`MqttListener` does; the broker's ACL lets it read nothing else. paho's socket
callbacks hand each socket to the event loop (`add_reader`/`add_writer`), so ten
thousand clients need no thread each, and one timer runs `loop_misc` (keepalive pings)
for all of them. paho's connect does the TLS handshake synchronously: connects run in
a few worker threads (`connect_concurrency`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcast.proto import brokerauth, identity, topics
from fleetcast.proto.topics import AssignmentNotice

logger = logging.getLogger(__name__)

OnNotice = Callable[[AssignmentNotice], None]


@dataclass(frozen=True)
class MqttConfig:
    """The broker the devices listen on. Times in seconds."""

    url: str                          # the devices' listener, mqtts://HOST:PORT
    ca: Path                          # the CA of the broker's certificate
    key_dir: Path                     # where each device's key and certificate are written (private)
    keepalive_s: int = 60
    connect_concurrency: int = 8      # TLS handshakes in flight (worker threads)
    connect_timeout_s: float = 30.0
    reconnect_s: float = 2.0


@dataclass(frozen=True)
class DeviceKey:
    """A simulated device's key and the CSR it enrolls with (CN = device id)."""

    key_pem: bytes
    csr: bytes

    @classmethod
    def make(cls, device_id: str) -> "DeviceKey":
        key = identity.generate_key()
        return cls(key_pem=identity.key_pem(key), csr=identity.certificate_request(key, device_id))


class DeviceLink:
    """One device's broker connection. Its paho callbacks run on the event loop (or, while
    connecting, in the worker thread that connects): `on_notice` gets every assignment
    or fleet notice, `on_subscribed` runs once the broker granted the subscriptions."""

    def __init__(self, *, device_id: str, config: MqttConfig, loop: asyncio.AbstractEventLoop,
                 context: ssl.SSLContext, on_notice: OnNotice, on_subscribed: Callable[[], None],
                 on_error: Callable[[str], None]) -> None:
        import paho.mqtt.client as mqtt

        address = brokerauth.parse_url(config.url)
        self.device_id = device_id
        self.host, self.port = address.host, address.port
        self.config = config
        self._loop = loop
        self._on_notice, self._on_subscribed, self.on_error = on_notice, on_subscribed, on_error
        self.closing = False
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        client.tls_set_context(context)
        client.connect_timeout = config.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.client = client

    def connect(self) -> None:
        """Blocking (TCP and TLS handshake): run it in a worker thread."""
        self.client.connect(self.host, self.port, keepalive=self.config.keepalive_s)

    def close(self) -> None:
        self.closing = True
        self.client.disconnect()

    # -- paho's socket callbacks: the event loop watches the socket -------------------------
    # On the loop's own thread at once (a closed socket's number may be reused at once),
    # from the connecting worker thread through the loop.
    def _on_loop(self, action: Callable[..., Any], *args: Any) -> None:
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:   # a worker thread: no loop runs there
            here = False
        if here:
            action(*args)
        else:
            self._loop.call_soon_threadsafe(action, *args)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._on_loop(self._loop.add_reader, sock.fileno(), self._read)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._on_loop(self._remove, sock.fileno())

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._on_loop(self._loop.add_writer, sock.fileno(), self._write)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._on_loop(self._loop.remove_writer, sock.fileno())

    def _remove(self, fd: int) -> None:
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _read(self) -> None:
        self.client.loop_read()
        sock = self.client.socket()
        # TLS may hold a whole record already decrypted: epoll would not say so.
        while sock is not None and isinstance(sock, ssl.SSLSocket) and sock.pending():
            self.client.loop_read()
            sock = self.client.socket()

    def _write(self) -> None:
        self.client.loop_write()

    # -- MQTT callbacks ------------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.on_error(f"{self.device_id} mqtt connect refused: {reason_code}")
            return
        client.subscribe([(topics.device_assignment(self.device_id), 1), (topics.FLEET_ASSIGNMENT, 1)])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            self.on_error(f"{self.device_id} mqtt subscription refused: {', '.join(refused)}")
            return
        self._on_subscribed()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            notice = AssignmentNotice.decode(bytes(message.payload))
        except topics.TopicError as e:
            self.on_error(f"{self.device_id} mqtt notice on {message.topic[:200]} ignored: {e}")
            return
        self._on_notice(notice)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not self.closing:
            logger.warning("mqtt disconnected device_id=%s reason=%s; reconnecting", self.device_id, reason_code)
            self._on_loop(self._loop.call_later, self.config.reconnect_s, self._reconnect)

    def _reconnect(self) -> None:
        if self.closing:
            return

        async def again() -> None:
            try:
                await asyncio.to_thread(self.client.reconnect)
            except (OSError, ssl.SSLError) as e:
                self.on_error(f"{self.device_id} mqtt reconnect failed: {e}")
                self._loop.call_later(self.config.reconnect_s, self._reconnect)
        asyncio.ensure_future(again())


def client_context(config: MqttConfig, cert_pem: bytes, key_pem: bytes, device_id: str) -> ssl.SSLContext:
    """A TLS context that checks the broker against `config.ca` and shows this device's
    certificate (written to `config.key_dir`)."""
    config.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = config.key_dir / f"{device_id}.pem", config.key_dir / f"{device_id}.key"
    cert_path.write_bytes(cert_pem)
    key_path.touch(mode=0o600)
    key_path.write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(config.ca))
    context.load_cert_chain(str(cert_path), str(key_path))
    return context


class Links:
    """Every device's link, connected `connect_concurrency` at a time; one `loop_misc` timer."""

    def __init__(self, config: MqttConfig, links: Sequence[DeviceLink]) -> None:
        self.config = config
        self.links = list(links)
        self._misc: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        gate = asyncio.Semaphore(self.config.connect_concurrency)
        self._misc = asyncio.create_task(self._keepalive())

        async def one(link: DeviceLink) -> None:
            async with gate:
                try:
                    await asyncio.to_thread(link.connect)
                except (OSError, ssl.SSLError) as e:
                    link.on_error(f"{link.device_id} mqtt connect failed: {e}")
        await asyncio.gather(*(one(link) for link in self.links))

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for link in self.links:
                link.client.loop_misc()

    async def close(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
        for link in self.links:
            link.close()
        await asyncio.sleep(0.1)   # the DISCONNECTs go out on the loop
