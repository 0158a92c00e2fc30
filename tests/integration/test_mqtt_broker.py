"""The repo's broker ACL (deploy/mosquitto/acl) keeps devices to their own topics.

Clients log in as the shipped config asks: TLS, with a certificate from the device
CA whose CN is the identity (`Broker.client_certificate`)."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
import pytest

from fleetcast.agent.control import MqttListener
from fleetcast.proto import topics
from fleetcast.proto.brokerauth import BrokerAuth
from tests.support.broker import Broker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker


class Listener:
    """A paho client that records what arrives, subscribed in on_connect."""

    def __init__(self, broker: Broker, client_id: str, *, username: str | None = None, subscribe: tuple[str, ...] = (),
                 identity: str | None = None):
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.granted: dict[str, int] = {}
        self._subscribe = subscribe
        self._pending_subs: set[int] = set()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if username:
            self.client.username_pw_set(username)
        # The certificate names the identity; by default the one the client id claims.
        cert, key = broker.client_certificate(identity or username or client_id)
        self.client.tls_set(ca_certs=str(broker.ca_path), certfile=str(cert), keyfile=str(key))
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload))
        self.client.on_subscribe = self._on_subscribe
        self.connected = False
        name = identity or username or client_id
        url = urlparse(broker.server_url if name == "fleetcast-server" else broker.url)
        self.client.connect(url.hostname or "127.0.0.1", url.port or 8883)
        self.client.loop_start()
        wait_for(lambda: self.connected and not self._pending_subs, timeout_s=10,
                 what=f"client {client_id} to connect and subscribe", context=broker.log_tail)

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        for topic in self._subscribe:
            _, mid = client.subscribe(topic, qos=1)
            self._pending_subs.add(mid)
        self.connected = True

    def _on_subscribe(self, _c: object, _u: object, mid: int, reasons: list, _p: object) -> None:
        self._pending_subs.discard(mid)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

    def received(self) -> list[tuple[str, bytes]]:
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def clients(mosquitto: Broker) -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for c in made:
        c.close()


def _marker() -> bytes:
    return uuid.uuid4().hex.encode()


def test_device_receives_own_assignment_and_fleet_topic_but_not_another_devices(
    mosquitto: Broker, clients: list[Listener]
) -> None:
    device = Listener(mosquitto, "dev-1", subscribe=(topics.device_assignment("dev-1"),
                                                     topics.device_assignment("dev-2"),
                                                     topics.FLEET_ASSIGNMENT))
    server = Listener(mosquitto, f"server-{uuid.uuid4().hex[:8]}", username="fleetcast-server")
    clients += [device, server]
    own, other, fleet = _marker(), _marker(), _marker()
    server.publish(topics.device_assignment("dev-2"), other)
    server.publish(topics.device_assignment("dev-1"), own)
    server.publish(topics.FLEET_ASSIGNMENT, fleet)

    seen: list[tuple[str, bytes]] = []
    wait_for(lambda: seen.extend(device.received()) or {p for _, p in seen} >= {own, fleet},
             timeout_s=10, what="dev-1 to receive its own assignment and the fleet notice",
             context=mosquitto.log_tail)
    # A message published after the two dev-1 should get, on the same server connection,
    # proves the earlier dev-2 message had its chance to arrive (MQTT keeps per-client order).
    last = _marker()
    server.publish(topics.device_assignment("dev-1"), last)
    wait_for(lambda: seen.extend(device.received()) or last in {p for _, p in seen},
             timeout_s=10, what="dev-1 to receive a second assignment notice", context=mosquitto.log_tail)
    assert (topics.device_assignment("dev-2"), other) not in seen, f"dev-1 read dev-2's assignment: {seen}"
    assert (topics.device_assignment("dev-1"), own) in seen
    assert (topics.FLEET_ASSIGNMENT, fleet) in seen


def test_device_cannot_publish_to_another_devices_status_topic(mosquitto: Broker, clients: list[Listener]) -> None:
    server = Listener(mosquitto, f"server-{uuid.uuid4().hex[:8]}", username="fleetcast-server",
                      subscribe=(topics.DEVICE_WILDCARD_STATUS,))
    device = Listener(mosquitto, "dev-1")
    clients += [server, device]
    forged, own = _marker(), _marker()
    device.publish(topics.device_status("dev-2"), forged)
    device.publish(topics.device_status("dev-1"), own)

    seen: list[tuple[str, bytes]] = []
    # dev-1's own status is published after the forged one on the same connection, so once
    # it arrives the forged one would have arrived too, had the broker let it through.
    wait_for(lambda: seen.extend(server.received()) or own in {p for _, p in seen},
             timeout_s=10, what="the server to receive dev-1's own status", context=mosquitto.log_tail)
    assert (topics.device_status("dev-1"), own) in seen
    assert all(payload != forged for _, payload in seen), f"dev-1 wrote to dev-2's status topic: {seen}"


def test_the_agent_hears_a_notices_check_window_bounded_by_what_it_honours(
    mosquitto: Broker, clients: list[Listener]
) -> None:
    device_id = f"win-{uuid.uuid4().hex[:8]}"
    heard: queue.Queue[tuple[str, float]] = queue.Queue()
    cert, key = mosquitto.client_certificate(device_id)
    listener = MqttListener(mosquitto.url, device_id, lambda d, within_s: heard.put((d, within_s)),
                            auth=BrokerAuth(ca=mosquitto.ca_path, cert=cert, key=key))
    listener.start()
    try:
        assert heard.get(timeout=10) == ("", 0.0)          # on connect: look once, at once
        server = Listener(mosquitto, f"server-{uuid.uuid4().hex[:8]}", username="fleetcast-server")
        clients.append(server)
        # A server asking for more than any device waits: the agent waits at most the bound.
        for deployment, window_ms in (("dep-spread", 4_000), ("dep-too-long", 10 * topics.MAX_CHECK_WITHIN_MS)):
            notice = topics.AssignmentNotice(director_version=3, deployment_id=deployment, check_within_ms=window_ms)
            server.publish(topics.device_assignment(device_id), notice.encode())
        assert [heard.get(timeout=10), heard.get(timeout=10)] == [
            ("dep-spread", 4.0), ("dep-too-long", topics.MAX_CHECK_WITHIN_MS / 1000)]
    finally:
        listener.close()
