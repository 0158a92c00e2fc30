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

import grpc

from fleetcast import agent as agent_package
from fleetcast.agent import backends as agent_backends
from fleetcast.agent.config import AgentConfig
from fleetcast.agent.credentials import Credentials, credential_refused
from fleetcast.agent.datadir import DataDir, read_bounded, write_atomic
from fleetcast.agent.errors import BrokerUnavailableError, EnrollmentError, ReenrollmentRefused, ServerUnavailableError
from fleetcast.agent.receipts import Receipts
from fleetcast.agent.telemetry import send_one_by_one
from fleetcast.proto import brokerauth, topics
from fleetcast.proto.brokerauth import BrokerAuth
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

def _tls_hint(error: grpc.RpcError) -> str:
    details = (error.details() or "")[:300]
    if "handshake" in details.lower() or "ssl" in details.lower() or "certificate" in details.lower():
        return (f" ({details}): the server's certificate does not chain to the pinned server CA; copy the "
                "server's DATA/server-ca.pem next to trust-root.json (or give --server-ca)")
    return ""


# Called with the notice's deployment id ("" when unknown) and the window in seconds the
# notice asks the check to be spread over (0: at once; already bounded).
Notify = Callable[[str, float], None]


def _window_s(check_within_ms: int) -> float:
    return topics.bounded_window_ms(check_within_ms) / 1000.0


class ControlClient:
    """One gRPC channel to the server; implements `telemetry.Uplink` over it."""

    def __init__(self, config: AgentConfig, data: DataDir) -> None:
        self.config = config
        self.data = data
        self.credentials = Credentials(config)
        self._open_channel()
        self.token = ""
        self._batch_reports = True     # off for this run once the server answers UNIMPLEMENTED

    def _open_channel(self) -> None:
        self.channel = self.credentials.channel(_CHANNEL_OPTIONS)
        self.stub = device_pb2_grpc.DeviceServiceStub(self.channel)

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
            raise EnrollmentError("this device has no token yet: give --enroll-token-file FILE "
                                  "(the server's enroll-token file, or one from `fleetcast enroll-token create`)")
        key = self.credentials.request()
        request = device_pb2.EnrollRequest(
            device_id=self.config.device_id, hardware_class=self.config.hardware_class,
            backends=agent_backends.available_backends(self.config.hardware_class),
            backend_info=[device_pb2.BackendInfo(name=p.name, version=p.version[:64], accelerator=p.accelerator,
                                                 detail=p.detail[:200])
                          for p in agent_backends.probes(self.config.hardware_class) if p.available],
            enroll_token=self.config.enroll_token,
            agent_version=AGENT_VERSION, group=self.config.group,
            csr=key.csr, proof=key.proof, proof_time=key.proof_time)
        try:
            response = self.stub.Enroll(request, timeout=self.config.rpc_timeout_s)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.ALREADY_EXISTS:
                # Another device holds this id, or the operator has not approved the
                # re-provisioning yet: retried with backoff, so an approval takes effect.
                raise ReenrollmentRefused(f"the server refused enrollment: {e.details()}") from e
            if e.code() in _PERMANENT:
                raise EnrollmentError(f"the server refused enrollment: {e.details()}") from e
            raise ServerUnavailableError(f"enrollment failed: {e.code().name}{_tls_hint(e)}") from e
        token = response.device_token
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise EnrollmentError("the server answered enrollment without a usable token")
        self.credentials.save_certificate(response.certificate)
        doc = {"device_id": self.config.device_id, "server": self.config.server, "token": token}
        write_atomic(self.data.device_json, json.dumps(doc).encode(), mode=0o600)
        self.channel.close()
        self._open_channel()   # from now on the channel shows the device certificate
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

    def send_statuses(self, reports: Sequence[device_pb2.StatusReport]) -> int:
        """One ReportStatuses call for them all; one ReportStatus each on a server without it."""
        if len(reports) > 1 and self._batch_reports:
            try:
                self.stub.ReportStatuses(device_pb2.StatusReports(reports=reports), metadata=self.metadata,
                                         timeout=self.config.rpc_timeout_s)
                return len(reports)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise ServerUnavailableError(f"ReportStatuses failed: {e.code().name}") from e
                logger.info("the server has no ReportStatuses: sending status reports one by one")
                self._batch_reports = False
        return send_one_by_one(self.send_status, reports)

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
            self.notify("", 0.0)

    def _watch(self) -> None:
        backoff_s = 1.0
        request = device_pb2.WatchRequest(device_id=self.config.device_id)
        while not self.stop.is_set():
            try:
                self._call = self.client.stub.WatchAssignments(request, metadata=self.client.metadata)
                for notice in self._call:
                    backoff_s = 1.0
                    logger.info("notice via=grpc director_version=%d deployment=%s check_within_ms=%d",
                                notice.director_version, notice.deployment_id[:128], notice.check_within_ms)
                    self.notify(notice.deployment_id[:128], _window_s(notice.check_within_ms))
            except grpc.RpcError as e:
                if self.stop.is_set():
                    return
                if credential_refused(e, self.config.device_id):
                    backoff_s = self.config.retry_backoff_max_s   # nothing changes soon: no spinning
                else:
                    logger.info("watch stream ended: %s%s; reconnecting in %.0fs", e.code().name, _tls_hint(e),
                                backoff_s)
            self.stop.wait(backoff_s)
            backoff_s = min(backoff_s * 2, self.config.retry_backoff_max_s)
            self.notify("", 0.0)   # we may have missed a notice while disconnected


class MqttListener:
    """paho-mqtt client (id = device id) subscribed to this device's and the fleet's topic.

    This is the agent's one connection to the broker: the uplink publishes through it
    and the server's acks (the device's ack topic) arrive through it into `receipts`.
    paho's loop thread reconnects with backoff; subscriptions are made in `on_connect`
    so every reconnect restores them.
    """

    def __init__(self, url: str, device_id: str, notify: Notify, *,
                 receipts: Receipts | None = None, auth: BrokerAuth | None = None) -> None:
        import paho.mqtt.client as mqtt

        try:
            address = brokerauth.parse_url(url)
        except brokerauth.BrokerAuthError as e:
            raise ValueError(f"--mqtt: {e}") from e
        self.host, self.port = address.host, address.port
        self.device_id = device_id
        self.notify = notify
        self.receipts = receipts if receipts is not None else Receipts()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        # mqtts://: the device certificate is the MQTT identity the broker's ACL keys on.
        (auth or BrokerAuth()).apply(self.client, address)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def close(self) -> None:
        self.receipts.close()   # a sender waiting for acks gives up now and keeps its spool
        self.client.disconnect()
        self.client.loop_stop()

    def connected(self) -> bool:
        return self.client.is_connected()

    def publish(self, topic: str, payload: bytes) -> None:
        """Hands a QoS 1 message to paho; raises BrokerUnavailableError when it cannot.

        Nothing is queued while disconnected: the spool keeps the item and the sender
        tries again, so paho's memory never fills with copies of the same batch.
        """
        if not self.connected():
            raise BrokerUnavailableError(f"not connected to the broker {self.host}:{self.port}")
        try:
            info = self.client.publish(topic, payload, qos=1)
        except (ValueError, RuntimeError, OSError) as e:
            raise BrokerUnavailableError(f"publish to {topic} failed: {e}") from e
        if info.rc != 0:   # MQTT_ERR_SUCCESS
            raise BrokerUnavailableError(f"publish to {topic} failed: paho rc={info.rc}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            logger.warning("mqtt connect refused: %s", reason_code)
            return
        # Subscribing here restores the subscriptions after every reconnect.
        client.subscribe([(topics.device_assignment(self.device_id), 1), (topics.FLEET_ASSIGNMENT, 1),
                          (topics.device_ack(self.device_id), 1)])
        logger.info("mqtt connected host=%s port=%d", self.host, self.port)
        self.notify("", 0.0)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        logger.info("mqtt disconnected reason=%s; reconnecting", reason_code)

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        if len(message.payload) > topics.MAX_PAYLOAD_BYTES:
            return
        if message.topic == topics.device_ack(self.device_id):
            self._on_ack(bytes(message.payload))
            return
        try:
            notice = topics.AssignmentNotice.decode(message.payload)
        except topics.TopicError as e:
            logger.warning("mqtt notice on topic=%s ignored: %s", message.topic[:200], e)
            return
        logger.info("notice via=mqtt director_version=%d deployment=%s check_within_ms=%d",
                    notice.director_version, notice.deployment_id, notice.check_within_ms)
        self.notify(notice.deployment_id, _window_s(notice.check_within_ms))

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = topics.UplinkAck.decode(payload)
        except topics.TopicError as e:
            logger.warning("mqtt ack ignored: %s", e)
            return
        self.receipts.record(ack)


class MqttUplink:
    """`telemetry.Uplink` over MQTT: published at QoS 1, done only on the server's ack.

    Each call publishes what it is given and waits up to `timeout_s` for the server's
    `UplinkAck`s; only acknowledged items are reported done (the spool deletes those),
    the rest stay spooled and are sent again on the next round. A status report is
    acknowledged by the digest of its payload, a batch by its batch id.
    """

    def __init__(self, listener: MqttListener, device_id: str, timeout_s: float) -> None:
        self.listener = listener
        self.receipts = listener.receipts
        self.device_id = device_id
        self.timeout_s = timeout_s

    def send_statuses(self, reports: Sequence[device_pb2.StatusReport]) -> int:
        return send_one_by_one(self.send_status, reports)

    def send_status(self, report: device_pb2.StatusReport) -> None:
        message = device_pb2.StatusReport()
        message.CopyFrom(report)
        message.device_id = self.device_id   # the server checks it against the topic
        payload = message.SerializeToString(deterministic=True)
        ack_id = topics.status_ack_id(payload)
        if self.receipts.get("status", ack_id) is None:
            self.listener.publish(topics.device_status(self.device_id), payload)
        acks = self.receipts.wait("status", [ack_id], self.timeout_s)
        if ack_id not in acks:
            raise ServerUnavailableError(f"status not acknowledged by the server within {self.timeout_s:.0f} s")
        self.receipts.forget("status", [ack_id])
        _log_refused(acks[ack_id])

    def send_batches(self, batches: Sequence[device_pb2.TelemetryBatch]) -> Iterator[str]:
        ids = [b.batch_id for b in batches]
        for batch in batches:
            if self.receipts.get("telemetry", batch.batch_id) is None:
                self.listener.publish(topics.device_telemetry(self.device_id), batch.SerializeToString())
        acks = self.receipts.wait("telemetry", ids, self.timeout_s)
        if not acks:
            raise ServerUnavailableError(
                f"no telemetry acknowledged by the server within {self.timeout_s:.0f} s: kept in the spool")
        for batch_id in ids:
            if batch_id in acks:
                _log_refused(acks[batch_id])
                yield batch_id
        self.receipts.forget("telemetry", list(acks))


def _log_refused(ack: topics.UplinkAck) -> None:
    if ack.result == "refused":
        logger.warning("server refused %s id=%s for good, dropped from the spool: %s", ack.kind, ack.id, ack.reason)
