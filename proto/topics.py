"""MQTT topics of the wire contract, version 1.

MQTT is the notification plane: it only ever says "something changed, look again".
Trust never comes from the channel; the agent fetches and verifies signed metadata
over gRPC whichever way it was told.

| topic                                   | direction       | QoS | payload |
|-----------------------------------------|-----------------|-----|---------|
| fleetcast/v1/devices/{device_id}/assignment | server -> device | 1 | JSON `{"v": 1, "director_version": N, "deployment_id": "...", "check_within_ms": M}`, retained (`check_within_ms` only when not 0) |
| fleetcast/v1/fleet/assignment           | server -> all   | 1   | JSON `{"v": 1}`: every device looks again |
| fleetcast/v1/devices/{device_id}/status | device -> server | 1  | `StatusReport` protobuf bytes |
| fleetcast/v1/devices/{device_id}/telemetry | device -> server | 1 | `TelemetryBatch` protobuf bytes |
| fleetcast/v1/devices/{device_id}/ack    | server -> device | 1  | JSON `UplinkAck`: a status or batch the server has stored |

The ack topic closes the loop the broker cannot: a broker's PUBACK only says the broker
has the message, which a broker crash can still lose. The server publishes an
`UplinkAck` once a status report or telemetry batch is stored (or known already, or
refused for good), and the agent deletes a spooled item only on that ack; anything
unacknowledged is sent again, and the server counts each batch id once.

The broker's ACL (deploy/mosquitto/acl) lets a device read only its own assignment
and ack topics and the fleet topic, and write only its own status and
telemetry topics. Payloads larger than MAX_PAYLOAD_BYTES are dropped unread.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "fleetcast/v1"
FLEET_ASSIGNMENT: Final = f"{PREFIX}/fleet/assignment"
DEVICE_WILDCARD_STATUS: Final = f"{PREFIX}/devices/+/status"
DEVICE_WILDCARD_TELEMETRY: Final = f"{PREFIX}/devices/+/telemetry"
MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_ACK_BYTES: Final = 4096
MAX_ACK_ID_CHARS: Final = 128
# A notice may ask devices to spread their check over a window (thundering herd); no
# device waits longer than this, whatever a notice says.
MAX_CHECK_WITHIN_MS: Final = 60_000
ACK_KINDS: Final = frozenset({"status", "telemetry"})
ACK_RESULTS: Final = frozenset({"stored", "duplicate", "refused"})

# Device ids appear in topics and (never as paths) in storage keys: no '/', '+', '#'.
DEVICE_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TopicError(ValueError):
    """A topic or payload that does not follow this contract."""


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise TopicError(
            f"device id {device_id!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return device_id


def device_assignment(device_id: str) -> str:
    return f"{PREFIX}/devices/{check_device_id(device_id)}/assignment"


def device_status(device_id: str) -> str:
    return f"{PREFIX}/devices/{check_device_id(device_id)}/status"


def device_telemetry(device_id: str) -> str:
    return f"{PREFIX}/devices/{check_device_id(device_id)}/telemetry"


def device_ack(device_id: str) -> str:
    return f"{PREFIX}/devices/{check_device_id(device_id)}/ack"


def device_of(topic: str) -> tuple[str, str]:
    """Returns (device_id, kind) for an upstream device topic; raises TopicError otherwise."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{PREFIX}/devices" or parts[4] not in {
        "status", "telemetry", "assignment", "ack"
    }:
        raise TopicError(f"topic {topic!r} is not a Fleetcast v1 device topic")
    return check_device_id(parts[3]), parts[4]


@dataclass(frozen=True)
class AssignmentNotice:
    """The whole content of a notification: a hint to look again, nothing to trust."""

    director_version: int = 0
    deployment_id: str = ""
    check_within_ms: int = 0      # check at a random moment within this window (0: at once)

    def encode(self) -> bytes:
        doc: dict[str, object] = {"v": 1, "director_version": self.director_version,
                                  "deployment_id": self.deployment_id}
        if self.check_within_ms:   # absent when 0: the payload older servers sent
            doc["check_within_ms"] = self.check_within_ms
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> "AssignmentNotice":
        if len(payload) > 4096:
            raise TopicError(f"assignment notice of {len(payload)} bytes is larger than 4096")
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TopicError(f"assignment notice is not JSON: {e}") from e
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise TopicError("assignment notice must be a JSON object with \"v\": 1")
        version = doc.get("director_version", 0)
        deployment = doc.get("deployment_id", "")
        within = doc.get("check_within_ms", 0)
        if not isinstance(version, int) or version < 0 or not isinstance(deployment, str):
            raise TopicError("assignment notice has a bad director_version or deployment_id")
        if not isinstance(within, int) or isinstance(within, bool) or within < 0:
            raise TopicError("assignment notice has a bad check_within_ms")
        return cls(director_version=version, deployment_id=deployment[:128], check_within_ms=bounded_window_ms(within))


def bounded_window_ms(check_within_ms: int) -> int:
    """A notice's check window as a device honours it: at most MAX_CHECK_WITHIN_MS."""
    return max(0, min(int(check_within_ms), MAX_CHECK_WITHIN_MS))


@dataclass(frozen=True)
class UplinkAck:
    """The server's word that one status report or telemetry batch is dealt with.

    `id` is the batch id for telemetry and `status_ack_id(payload)` for a status report
    (status reports carry no id of their own). `result` is "stored", "duplicate" (stored
    before: the device may forget it) or "refused" (never storable: `reason` says why; the
    device drops it rather than resend it forever).
    """

    kind: str
    id: str
    result: str = "stored"
    reason: str = ""

    def encode(self) -> bytes:
        doc = {"v": 1, "kind": self.kind, "id": self.id, "result": self.result}
        if self.reason:
            doc["reason"] = self.reason[:1000]
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> "UplinkAck":
        if len(payload) > MAX_ACK_BYTES:
            raise TopicError(f"uplink ack of {len(payload)} bytes is larger than {MAX_ACK_BYTES}")
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise TopicError(f"uplink ack is not JSON: {e}") from e
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise TopicError('uplink ack must be a JSON object with "v": 1')
        kind, ack_id = doc.get("kind"), doc.get("id")
        result, reason = doc.get("result", "stored"), doc.get("reason", "")
        if kind not in ACK_KINDS or result not in ACK_RESULTS:
            raise TopicError(f"uplink ack needs kind in {sorted(ACK_KINDS)} and result in {sorted(ACK_RESULTS)}")
        if not isinstance(ack_id, str) or not 0 < len(ack_id) <= MAX_ACK_ID_CHARS:
            raise TopicError(f"uplink ack id must be a string of 1-{MAX_ACK_ID_CHARS} characters")
        if not isinstance(reason, str):
            raise TopicError("uplink ack reason must be a string")
        return cls(kind=kind, id=ack_id, result=result, reason=reason[:1000])


def status_ack_id(payload: bytes) -> str:
    """The id a status report is acknowledged by: a digest of its exact payload bytes."""
    return hashlib.sha256(payload).hexdigest()[:32]
