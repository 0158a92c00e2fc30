"""The agent's side of the control plane: enrollment, status and telemetry uplink,
and the notifications that say "look again".

Notifications come from the gRPC `WatchAssignments` stream (the default: no broker
needed) or, when an MQTT URL is configured, from the broker instead; a poll every
`poll_interval_s` backs either up. A notice only wakes the agent: trust comes from
the signed metadata it then fetches.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Final
from urllib.parse import urlsplit

import grpc

from fleetcast import agent as agent_package
from fleetcast.agent import backends as agent_backends
from fleetcast.agent.config import AgentConfig
from fleetcast.agent.datadir import DataDir, read_bounded, write_atomic
from fleetcast.agent.errors import EnrollmentError, ServerUnavailableError
from fleetcast.proto import topics
from fleetcast.proto.v1 import device_pb2, device_pb2_grpc

logger = logging.getLogger(__name__)

AGENT_VERSION: Final = getattr(agent_package, "__version__", "0.1.0")
_MAX_DEVICE_JSON_BYTES: Final = 64 * 1024
_MAX_TOKEN_CHARS: Final = 1024
_CHANNEL_OPTIONS: Final = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
_PERMANENT: Final = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                     grpc.StatusCode.INVALID_ARGUMENT}

Notify = Callable[[str], None]   # called with the notice's deployment id ("" when unknown)


class ControlClient:
    """One gRPC channel to the server; implements `telemetry.Uplink` over it."""

    def __init__(self, config: AgentConfig, data: DataDir) -> None:
        self.config = config
        self.data = data
        self.channel = grpc.insecure_channel(config.server, options=_CHANNEL_OPTIONS)
        self.stub = device_pb2_grpc.DeviceServiceStub(self.channel)
        self.token = ""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def close(self) -> None:
        self.channel.close()

    def ensure_enrolled(self) -> str:
        """The device token from device.json, enrolling first when there is none."""
        self.token = self._saved_token() or self.enroll()
        return self.token

    def enroll(self) -> str:
        if not self.config.enroll_token:
            raise EnrollmentError("this device has no token yet: give --enroll-token "
                                  "(the server's enroll-token file)")
        request = device_pb2.EnrollRequest(
            device_id=self.config.device_id, hardware_class=self.config.hardware_class,
            backends=agent_backends.available_backends(self.config.hardware_class),
            backend_info=[device_pb2.BackendInfo(name=p.name, version=p.version[:64], accelerator=p.accelerator,
                                                 detail=p.detail[:200])
                          for p in agent_backends.probes(self.config.hardware_class) if p.available],
            enroll_token=self.config.enroll_token,
            agent_version=AGENT_VERSION, group=self.config.group)
        try:
            response = self.stub.Enroll(request, timeout=self.config.rpc_timeout_s)
        except grpc.RpcError as e:
            if e.code() in _PERMANENT:
                raise EnrollmentError(f"the server refused enrollment: {e.details()}") from e
            raise ServerUnavailableError(f"enrollment failed: {e.code().name}") from e
        token = response.device_token
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise EnrollmentError("the server answered enrollment without a usable token")
        doc = {"device_id": self.config.device_id, "server": self.config.server, "token": token}
        write_atomic(self.data.device_json, json.dumps(doc).encode(), mode=0o600)
        logger.info("enrolled device_id=%s server=%s", self.config.device_id, self.config.server)
        self.token = token
        return token

    def _saved_token(self) -> str:
        try:
            doc = json.loads(read_bounded(self.data.device_json, _MAX_DEVICE_JSON_BYTES))
        except FileNotFoundError:
            return ""
        except ValueError as e:
            logger.warning("device.json unreadable (%s): enrolling again", e)
            return ""
        if not isinstance(doc, dict) or doc.get("device_id") != self.config.device_id:
            logger.warning("device.json is for another device: enrolling again")
            return ""
        token = doc.get("token")
        if not isinstance(token, str) or not 0 < len(token) <= _MAX_TOKEN_CHARS:
            return ""
        return token

    # telemetry.Uplink
    def send_status(self, report: device_pb2.StatusReport) -> None:
        try:
            self.stub.ReportStatus(report, metadata=self.metadata, timeout=self.config.rpc_timeout_s)
        except grpc.RpcError as e:
            raise ServerUnavailableError(f"ReportStatus failed: {e.code().name}") from e

    def send_batches(self, batches: Sequence[device_pb2.TelemetryBatch]) -> Iterator[str]:
        try:
            for ack in self.stub.StreamTelemetry(iter(batches), metadata=self.metadata,
                                                 timeout=self.config.rpc_timeout_s * 3):
                yield ack.batch_id
        except grpc.RpcError as e:
            raise ServerUnavailableError(f"StreamTelemetry failed: {e.code().name}") from e


class Notifier:
    """Wakes the agent on assignment notices: watch stream or MQTT, plus a poll."""

    def __init__(self, *, config: AgentConfig, client: ControlClient, notify: Notify,
                 stop: threading.Event, mqtt: "MqttListener | None" = None) -> None:
        self.config = config
        self.client = client
        self.notify = notify
        self.stop = stop
        self._call: grpc.Future | None = None
        self._mqtt = mqtt
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Starts the MQTT listener when one was given, the watch stream otherwise."""
        if self._mqtt is not None:
            self._mqtt.start()
        else:
            self._spawn(self._watch, "assignment-watch")
        self._spawn(self._poll, "assignment-poll")

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._mqtt is not None:
            self._mqtt.close()
        for thread in self._threads:
            thread.join(2.0)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll(self) -> None:
        while not self.stop.wait(self.config.poll_interval_s):
            self.notify("")

    def _watch(self) -> None:
        backoff_s = 1.0
        request = device_pb2.WatchRequest(device_id=self.config.device_id)
        while not self.stop.is_set():
            try:
                self._call = self.client.stub.WatchAssignments(request, metadata=self.client.metadata)
                for notice in self._call:
                    backoff_s = 1.0
                    logger.info("notice via=grpc director_version=%d deployment=%s",
                                notice.director_version, notice.deployment_id[:128])
                    self.notify(notice.deployment_id[:128])
            except grpc.RpcError as e:
                if self.stop.is_set():
                    return
                logger.info("watch stream ended: %s; reconnecting in %.0fs", e.code().name, backoff_s)
            self.stop.wait(backoff_s)
            backoff_s = min(backoff_s * 2, self.config.retry_backoff_max_s)
            self.notify("")   # we may have missed a notice while disconnected


class MqttListener:
    """paho-mqtt client (id = device id) subscribed to this device's and the fleet's topic."""

    def __init__(self, url: str, device_id: str, notify: Notify) -> None:
        import paho.mqtt.client as mqtt

        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
            raise ValueError(f"--mqtt {url!r} must look like mqtt://host:1883")
        self.host, self.port = parts.hostname, parts.port or 1883
        self.device_id = device_id
        self.notify = notify
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, timeout_s: float) -> bool:
        """Publishes at QoS 1; True once the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout_s)
        return info.is_published()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            logger.warning("mqtt connect refused: %s", reason_code)
            return
        # Subscribing here restores the subscriptions after every reconnect.
        client.subscribe([(topics.device_assignment(self.device_id), 1), (topics.FLEET_ASSIGNMENT, 1)])
        logger.info("mqtt connected host=%s port=%d", self.host, self.port)
        self.notify("")

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        if len(message.payload) > topics.MAX_PAYLOAD_BYTES:
            return
        try:
            notice = topics.AssignmentNotice.decode(message.payload)
        except topics.TopicError as e:
            logger.warning("mqtt notice on topic=%s ignored: %s", message.topic[:200], e)
            return
        logger.info("notice via=mqtt director_version=%d deployment=%s",
                    notice.director_version, notice.deployment_id)
        self.notify(notice.deployment_id)


class MqttUplink:
    """`telemetry.Uplink` over MQTT: status and telemetry published at QoS 1."""

    def __init__(self, listener: MqttListener, device_id: str, timeout_s: float) -> None:
        self.listener = listener
        self.device_id = device_id
        self.timeout_s = timeout_s

    def send_status(self, report: device_pb2.StatusReport) -> None:
        if not self.listener.publish(topics.device_status(self.device_id), report.SerializeToString(),
                                     self.timeout_s):
            raise ServerUnavailableError("status not acknowledged by the broker")

    def send_batches(self, batches: Sequence[device_pb2.TelemetryBatch]) -> Iterator[str]:
        for batch in batches:
            if not self.listener.publish(topics.device_telemetry(self.device_id),
                                         batch.SerializeToString(), self.timeout_s):
                raise ServerUnavailableError("telemetry not acknowledged by the broker")
            yield batch.batch_id
