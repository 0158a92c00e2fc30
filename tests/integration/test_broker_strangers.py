"""The shipped broker config (deploy/mosquitto/) keeps strangers out (issue 8, item 3):
a client without credentials, one with another device's client id, one subscribing to
wildcards and one with a certificate from another CA get nothing and forge nothing."""

from __future__ import annotations

import ssl
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fleetcast.proto import topics
from fleetcast.server.certificates import Certificates
from tests.integration.test_mqtt_broker import Listener
from tests.support.broker import ACL, CONF, Broker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker


def _marker() -> bytes:
    return uuid.uuid4().hex.encode()


def _connect_result(broker: Broker, *, tls: bool, cert: tuple[Path, Path] | None = None,
                    ca: Path | None = None, username: str | None = None) -> str:
    """Connects once, without retrying; 'connected' or why not."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"stranger-{uuid.uuid4().hex[:6]}")
    outcome: list[str] = []
    done = threading.Event()

    def on_connect(_c, _u, _f, reason, _p) -> None:  # noqa: ANN001
        outcome.append("connected" if not reason.is_failure else f"refused: {reason}")
        done.set()

    def on_disconnect(*_args: object) -> None:
        outcome.append("disconnected")
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    if username:
        client.username_pw_set(username)
    if tls:
        client.tls_set(ca_certs=str(ca or broker.ca_path), certfile=None if cert is None else str(cert[0]),
                       keyfile=None if cert is None else str(cert[1]), cert_reqs=ssl.CERT_REQUIRED)
    try:
        client.connect("127.0.0.1", broker.port, keepalive=10)
        client.loop_start()
        done.wait(5)
    except (OSError, ssl.SSLError) as e:
        outcome.append(f"failed: {e}")
    finally:
        client.loop_stop()
        client.disconnect()
    return outcome[0] if outcome else "no answer"


def test_the_shipped_config_has_no_placeholders_no_anonymous_access_and_no_client_id_acl() -> None:
    conf, acl = CONF.read_text(), ACL.read_text()
    assert "allow_anonymous false" in conf and "require_certificate true" in conf
    assert "use_identity_as_username true" in conf and "use_username_as_clientid true" in conf
    rules = [line for line in acl.splitlines() if line.strip() and not line.startswith("#")]
    assert all("%c" not in line for line in rules) and any("%u" in line for line in rules)


def test_clients_without_a_fleet_certificate_cannot_connect(mosquitto: Broker, tmp_path: Path) -> None:
    assert _connect_result(mosquitto, tls=False, username="fleetcast-server") != "connected"
    assert _connect_result(mosquitto, tls=True, username="fleetcast-server") != "connected"
    # A certificate from some other CA, however it names itself, is refused too.
    other = Certificates.open(tmp_path / "other-ca", names=["127.0.0.1"])
    cert, key = other.mqtt_client_paths   # CN fleetcast-server, from the wrong device CA
    assert _connect_result(mosquitto, tls=True, cert=(cert, key)) != "connected"
    assert _connect_result(mosquitto, tls=True, cert=mosquitto.client_certificate("dev-ok")) == "connected"


def test_another_devices_client_id_forges_nothing_and_kicks_nobody(mosquitto: Broker) -> None:
    server = Listener(mosquitto, f"srv-{uuid.uuid4().hex[:6]}", identity="fleetcast-server",
                      subscribe=(topics.DEVICE_WILDCARD_STATUS,))
    real = Listener(mosquitto, "dev-b", subscribe=(topics.device_assignment("dev-b"),))
    disconnects: list[object] = []
    real.client.on_disconnect = lambda *args: disconnects.append(args)
    # dev-a's own certificate, claiming dev-b's client id and the server's user name.
    forger = Listener(mosquitto, "dev-b", identity="dev-a", username="fleetcast-server")
    try:
        forged, own = _marker(), _marker()
        forger.publish(topics.device_status("dev-b"), forged)
        forger.publish(topics.device_status("dev-a"), own)
        seen: list[tuple[str, bytes]] = []
        wait_for(lambda: seen.extend(server.received()) or own in {p for _, p in seen}, timeout_s=10,
                 what="the server to receive dev-a's own status", context=mosquitto.log_tail)
        assert all(p != forged for _, p in seen), f"dev-a forged dev-b's status: {seen}"

        notice = _marker()
        server.publish(topics.device_assignment("dev-b"), notice)
        got: list[tuple[str, bytes]] = []
        wait_for(lambda: got.extend(real.received()) or notice in {p for _, p in got}, timeout_s=10,
                 what="the real dev-b, still connected, to receive its notice", context=mosquitto.log_tail)
        assert not disconnects, "the real dev-b was kicked off by a client claiming its client id"
    finally:
        for c in (forger, real, server):
            c.close()


def test_wildcard_subscriptions_read_nothing_of_other_devices(mosquitto: Broker) -> None:
    server = Listener(mosquitto, f"srv-{uuid.uuid4().hex[:6]}", identity="fleetcast-server",
                      subscribe=(topics.DEVICE_WILDCARD_TELEMETRY,))
    snoop = Listener(mosquitto, "dev-snoop", subscribe=("#", "fleetcast/v1/#", "fleetcast/v1/devices/+/assignment",
                                                         topics.DEVICE_WILDCARD_TELEMETRY))
    victim = Listener(mosquitto, "dev-victim")
    try:
        secret_notice, secret_telemetry, own = _marker(), _marker(), _marker()
        server.publish(topics.device_assignment("dev-victim"), secret_notice)
        victim.publish(topics.device_telemetry("dev-victim"), secret_telemetry)
        wait_for(lambda: secret_telemetry in {p for _, p in server.received()}, timeout_s=10,
                 what="the server to receive the victim's telemetry", context=mosquitto.log_tail)
        server.publish(topics.device_assignment("dev-snoop"), own)   # after the others, on one connection
        seen: list[tuple[str, bytes]] = []
        wait_for(lambda: seen.extend(snoop.received()) or own in {p for _, p in seen}, timeout_s=10,
                 what="the snooping device to receive its own notice", context=mosquitto.log_tail)
        payloads = {p for _, p in seen}
        assert secret_notice not in payloads and secret_telemetry not in payloads, f"wildcards read: {seen}"
    finally:
        for c in (snoop, victim, server):
            c.close()
