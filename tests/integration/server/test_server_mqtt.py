from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from fleetcast.proto import topics
from fleetcast.proto.v1 import device_pb2 as pb
from tests.integration.server.conftest import RunningServer, launch_with_broker
from tests.support import models
from tests.support.broker import Broker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def bridged(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with launch_with_broker(tmp_path_factory.mktemp("bridged"), mosquitto) as running:
        yield running


class Device:
    """A device's MQTT side: a certificate with CN = device id, as the broker ACL expects."""

    def __init__(self, broker: Broker, device_id: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subscribed = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.on_connect = lambda c, *_: c.subscribe(topics.device_assignment(device_id), qos=1)
        self.client.on_subscribe = lambda *_: setattr(self, "subscribed", True)
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        cert, key = broker.client_certificate(device_id)
        self.client.tls_set(ca_certs=str(broker.ca_path), certfile=str(cert), keyfile=str(key))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        wait_for(lambda: self.subscribed, timeout_s=10, what=f"{device_id} to subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_deployment_publishes_a_retained_notice_and_status_comes_back_over_mqtt(
    bridged: RunningServer, mosquitto: Broker
) -> None:
    device_id = f"mqtt-{uuid.uuid4().hex[:8]}"
    bridged.enroll(device_id, group="mqtt")
    assert bridged.upload("mqtt-model", {"model": models.to_bytes(models.tiny_classifier(seed=9))})[0] == 201
    status, dep = bridged.json("POST", "/v1/deployments", {"model": "mqtt-model", "target": f"device:{device_id}"})
    assert status == 201

    device = Device(mosquitto, device_id)  # subscribes after the fact: the notice is retained
    try:
        topic, payload = device.messages.get(timeout=10)
        notice = topics.AssignmentNotice.decode(payload)
        assert topic == topics.device_assignment(device_id)
        assert notice.deployment_id == dep["id"] and notice.director_version >= 1

        report = pb.StatusReport(deployment_id=dep["id"], state="idle", event="success", final=True,
                                 outcome="installed", active_model="mqtt-model@1", device_id=device_id)
        device.client.publish(topics.device_status(device_id), report.SerializeToString(), qos=1)

        def outcome() -> str | None:
            return bridged.json("GET", f"/v1/deployments/{dep['id']}/devices")[1]["devices"][0]["outcome"]

        assert wait_for(outcome, timeout_s=10, what="the MQTT status report to reach the deployment") == "installed"
    finally:
        device.close()
