"""Over a real broker and server: what a device publishes is acknowledged once stored,
counted once however often it is sent, and refused when it names another device."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator

import grpc
import paho.mqtt.client as mqtt
import pytest

from fleetcast.agent.control import MqttListener, MqttUplink
from fleetcast.proto import telemetry as buckets
from fleetcast.proto import topics
from fleetcast.proto.brokerauth import BrokerAuth
from fleetcast.proto.v1 import device_pb2 as pb
from tests.integration.server.conftest import RunningServer, auth, launch_with_broker
from tests.support import models
from tests.support.broker import Broker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def acking(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with launch_with_broker(tmp_path_factory.mktemp("acking"), mosquitto) as running:
        wait_for(lambda: "mqtt bridge connected" in running.log.read_text(errors="replace"), timeout_s=30,
                 what="the server's MQTT bridge to connect")
        yield running


@pytest.fixture
def uplink(acking: RunningServer, mosquitto: Broker) -> Iterator[MqttUplink]:
    """The agent's own MQTT uplink for a freshly enrolled device."""
    device_id = f"ack-{uuid.uuid4().hex[:8]}"
    acking.enroll(device_id)
    connected = threading.Event()
    cert, key = mosquitto.client_certificate(device_id)
    listener = MqttListener(mosquitto.url, device_id, lambda *_: connected.set(),
                            auth=BrokerAuth(ca=mosquitto.ca_path, cert=cert, key=key))
    listener.start()
    connected.wait(10)
    wait_for(listener.connected, timeout_s=10, what=f"{device_id} to connect to the broker")
    try:
        yield MqttUplink(listener, device_id, timeout_s=10)
    finally:
        listener.close()


def batch_of(device_id: str, inferences: int) -> pb.TelemetryBatch:
    histogram = buckets.empty()
    histogram[0] = inferences
    return pb.TelemetryBatch(batch_id=uuid.uuid4().hex, device_id=device_id, window_start_ms=1, window_end_ms=2,
                             stats=[pb.ModelStats(model="acked", version="1", variant="original",
                                                  backend="onnxruntime", inferences=inferences,
                                                  latency=pb.LatencyHistogram(counts=histogram),
                                                  latency_sum_ms=float(inferences))])


def counted(server: RunningServer, device_id: str) -> int:
    status, doc = server.json("GET", f"/v1/devices/{device_id}")
    assert status == 200, doc
    return sum(s["inferences"] for s in doc["telemetry"])


def test_a_batch_is_done_only_on_the_servers_ack_and_a_resend_is_counted_once(
    acking: RunningServer, uplink: MqttUplink
) -> None:
    first, second = batch_of(uplink.device_id, 5), batch_of(uplink.device_id, 3)
    assert list(uplink.send_batches([first, second])) == [first.batch_id, second.batch_id]
    assert counted(acking, uplink.device_id) == 8       # the ack came after the store
    # The same batch again, as after an ack lost in a broker crash: acknowledged, not counted.
    assert list(uplink.send_batches([first])) == [first.batch_id]
    assert counted(acking, uplink.device_id) == 8


def test_a_status_report_over_mqtt_is_acknowledged_once_applied(
    acking: RunningServer, uplink: MqttUplink
) -> None:
    assert acking.upload("acked-model", {"model": models.to_bytes(models.tiny_classifier(seed=5))})[0] == 201
    status, dep = acking.json("POST", "/v1/deployments",
                              {"model": "acked-model", "target": f"device:{uplink.device_id}"})
    assert status == 201
    uplink.send_status(pb.StatusReport(deployment_id=dep["id"], state="idle", event="success", final=True,
                                       outcome="installed", active_model="acked-model@1"))
    # send_status returned: the server has applied it, no waiting needed.
    assert acking.json("GET", f"/v1/deployments/{dep['id']}/devices")[1]["devices"][0]["outcome"] == "installed"


class RawDevice:
    """A plain MQTT client holding device `client_id`'s topics, listening on its ack topic."""

    def __init__(self, broker: Broker, client_id: str) -> None:
        self.acks: queue.Queue[bytes] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = lambda c, *_: c.subscribe(topics.device_ack(client_id), qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.acks.put(bytes(m.payload))
        cert, key = broker.client_certificate(client_id)
        self.client.tls_set(ca_certs=str(broker.ca_path), certfile=str(cert), keyfile=str(key))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), f"{client_id} did not subscribe"

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def refusals(server: RunningServer, reason: str) -> int:
    return server.log.read_text(errors="replace").count(f"reason={reason} ")


def test_payloads_naming_another_device_are_refused_counted_and_never_acknowledged(
    acking: RunningServer, mosquitto: Broker
) -> None:
    sender, victim = f"own-{uuid.uuid4().hex[:8]}", f"victim-{uuid.uuid4().hex[:8]}"
    acking.enroll(sender)
    acking.enroll(victim)
    assert acking.upload("forged-model", {"model": models.to_bytes(models.tiny_classifier(seed=6))})[0] == 201
    status, dep = acking.json("POST", "/v1/deployments", {"model": "forged-model", "target": f"device:{victim}"})
    assert status == 201
    before = refusals(acking, "device_mismatch")
    device = RawDevice(mosquitto, sender)
    try:
        device.publish(topics.device_telemetry(sender), batch_of(victim, 40).SerializeToString())
        device.publish(topics.device_telemetry(sender), batch_of("", 40).SerializeToString())
        forged = pb.StatusReport(deployment_id=dep["id"], state="idle", event="success", final=True,
                                 outcome="installed", device_id=victim)
        device.publish(topics.device_status(sender), forged.SerializeToString())
        unnamed = pb.StatusReport(deployment_id=dep["id"], state="idle", event="success", final=True,
                                  outcome="installed")
        device.publish(topics.device_status(sender), unnamed.SerializeToString())
        wait_for(lambda: refusals(acking, "device_mismatch") >= before + 4, timeout_s=15,
                 what="the server to refuse the four mismatched payloads")
        # A real batch after them is acknowledged: the refused ones were never acked.
        honest = batch_of(sender, 2)
        device.publish(topics.device_telemetry(sender), honest.SerializeToString())
        ack = topics.UplinkAck.decode(device.acks.get(timeout=10))
        assert (ack.kind, ack.id, ack.result) == ("telemetry", honest.batch_id, "stored")
        assert device.acks.empty()
    finally:
        device.close()
    assert counted(acking, sender) == 2 and counted(acking, victim) == 0
    assert acking.json("GET", f"/v1/deployments/{dep['id']}/devices")[1]["devices"][0]["outcome"] in (None, "")


def test_a_grpc_status_report_naming_another_device_is_refused(acking: RunningServer) -> None:
    own, other = f"grpc-{uuid.uuid4().hex[:8]}", f"grpc-{uuid.uuid4().hex[:8]}"
    token = acking.enroll(own)
    acking.enroll(other)
    with pytest.raises(grpc.RpcError) as refused:
        acking.stub().ReportStatus(pb.StatusReport(state="idle", device_id=other),
                                   metadata=auth(token), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert other in (refused.value.details() or "")
    acking.stub().ReportStatus(pb.StatusReport(state="idle", device_id=own), metadata=auth(token), timeout=10)
