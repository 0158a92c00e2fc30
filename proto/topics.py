"""MQTT topics of the wire contract, version 1.

MQTT is the notification plane: it only ever says "something changed, look again".
Trust never comes from the channel; the agent fetches and verifies signed metadata
over gRPC whichever way it was told.

| topic                                   | direction       | QoS | payload |
|-----------------------------------------|-----------------|-----|---------|
| fleetcast/v1/devices/{device_id}/assignment | server -> device | 1 | JSON `{"v": 1, "director_version": N, "deployment_id": "..."}`, retained |
| fleetcast/v1/fleet/assignment           | server -> all   | 1   | JSON `{"v": 1}`: every device looks again |
| fleetcast/v1/devices/{device_id}/status | device -> server | 1  | `StatusReport` protobuf bytes |
| fleetcast/v1/devices/{device_id}/telemetry | device -> server | 1 | `TelemetryBatch` protobuf bytes |

The broker's ACL (deploy/mosquitto/acl) lets a client whose id is the device id read
only its own assignment topic and the fleet topic, and write only its own status and
telemetry topics. Payloads larger than MAX_PAYLOAD_BYTES are dropped unread.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "fleetcast/v1"
FLEET_ASSIGNMENT: Final = f"{PREFIX}/fleet/assignment"
DEVICE_WILDCARD_STATUS: Final = f"{PREFIX}/devices/+/status"
DEVICE_WILDCARD_TELEMETRY: Final = f"{PREFIX}/devices/+/telemetry"
MAX_PAYLOAD_BYTES: Final = 256 * 1024

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


def device_of(topic: str) -> tuple[str, str]:
    """Returns (device_id, kind) for an upstream device topic; raises TopicError otherwise."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{PREFIX}/devices" or parts[4] not in {
        "status", "telemetry", "assignment"
    }:
        raise TopicError(f"topic {topic!r} is not a Fleetcast v1 device topic")
    return check_device_id(parts[3]), parts[4]


@dataclass(frozen=True)
class AssignmentNotice:
    """The whole content of a notification: a hint to look again, nothing to trust."""

    director_version: int = 0
    deployment_id: str = ""

    def encode(self) -> bytes:
        return json.dumps(
            {"v": 1, "director_version": self.director_version, "deployment_id": self.deployment_id},
            separators=(",", ":"),
        ).encode()

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
        if not isinstance(version, int) or version < 0 or not isinstance(deployment, str):
            raise TopicError("assignment notice has a bad director_version or deployment_id")
        return cls(director_version=version, deployment_id=deployment[:128])
