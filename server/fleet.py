"""Devices: enrollment, device tokens (stored only as sha256), variant choice, metadata reads.

A device exchanges the fleet's enrollment token for a token of its own; enrolling
again with the same id rotates that token and updates its hardware profile.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from fleetcast.proto.topics import DEVICE_ID_PATTERN, TopicError, check_device_id
from fleetcast.server import signing
from fleetcast.server.errors import DeviceNotFound, InvalidRequest, MetadataNotFound, Unauthenticated
from fleetcast.server.store import Device, Store

logger = logging.getLogger(__name__)

HARDWARE_CLASSES: Final = frozenset(
    {"x86-cpu", "arm-cpu", "rk3399", "rk3588", "rk3566", "jetson", "movidius", "phone-android", "phone-ios"}
)
# Device ids, groups and back-end names: the device-id rule of the wire contract.
NAME: Final = DEVICE_ID_PATTERN
MAX_BACKENDS: Final = 16
MAX_LABELS: Final = 32
MAX_TOKEN_CHARS: Final = 256


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    hardware_class: str
    enroll_token: str
    backends: Sequence[str] = ()
    agent_version: str = ""
    group: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    # back end -> "VERSION on ACCELERATOR[; why it fell back]", from the agent's probe;
    # kept in the device's labels as "backend.NAME" (see `BACKEND_LABEL`).
    backend_info: Mapping[str, str] = field(default_factory=dict)


BACKEND_LABEL: Final = "backend."


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_id(device_id: str) -> str:
    try:
        return check_device_id(device_id)
    except TopicError as e:
        raise InvalidRequest(str(e)) from e


def _check_profile(e: Enrollment) -> None:
    if e.hardware_class not in HARDWARE_CLASSES:
        raise InvalidRequest(
            f"hardware class {e.hardware_class[:40]!r} is not known: use one of {', '.join(sorted(HARDWARE_CLASSES))}"
        )
    if len(e.backends) > MAX_BACKENDS or any(not NAME.fullmatch(b) for b in e.backends):
        raise InvalidRequest(f"backends must be at most {MAX_BACKENDS} names like 'onnxruntime' or 'tflite'")
    if e.group and not NAME.fullmatch(e.group):
        raise InvalidRequest(f"group {e.group[:80]!r} is not valid: use 1-64 letters, digits, '.', '_' or '-'")
    if len(e.agent_version) > 64:
        raise InvalidRequest("agent_version is longer than 64 characters")
    if any(name not in e.backends or len(text) > 256 for name, text in e.backend_info.items()):
        raise InvalidRequest("backend_info must describe reported backends in at most 256 characters each")
    if len(e.labels) > MAX_LABELS or any(len(k) > 64 or len(v) > 256 for k, v in e.labels.items()):
        raise InvalidRequest(f"labels: at most {MAX_LABELS}, keys up to 64 and values up to 256 characters")


def choose_variant(hardware_class: str, available: Iterable[str]) -> str:
    """The variant this hardware runs best among the built ones; "original" without compression."""
    names = set(available)
    try:
        from fleetcast.server.compress.levels import choose_variant as preferred
    except ImportError:  # a server built without the compression pipeline serves originals
        return "original"
    return preferred(hardware_class, names)


class Fleet:
    def __init__(self, *, store: Store, enroll_token: str) -> None:
        self.store = store
        self._enroll_token = enroll_token

    def enroll(self, e: Enrollment) -> str:
        """Returns a fresh device token; raises Unauthenticated for a wrong enrollment token."""
        given = e.enroll_token[:MAX_TOKEN_CHARS].encode()
        if not hmac.compare_digest(given, self._enroll_token.encode()):
            raise Unauthenticated("enrollment token is not valid: copy DATA/enroll-token from the server")
        check_id(e.device_id)
        _check_profile(e)
        token = secrets.token_hex(32)   # hex: never starts with "-"
        now = time.time()
        old = self.store.device(e.device_id)
        self.store.put_device(Device(
            device_id=e.device_id, token_sha256=hash_token(token), hardware_class=e.hardware_class,
            backends=tuple(e.backends), group=e.group, agent_version=e.agent_version,
            labels={**{k: v for k, v in e.labels.items() if not k.startswith(BACKEND_LABEL)},
                    **{BACKEND_LABEL + name: text for name, text in e.backend_info.items()}},
            enrolled_at=old.enrolled_at if old else now, last_seen=now,
        ))
        logger.info("device %s device_id=%s hardware_class=%s", "re-enrolled" if old else "enrolled",
                    e.device_id, e.hardware_class)
        return token

    def authenticate(self, token: str | None) -> str:
        """Device token -> device id; raises Unauthenticated."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated("a device token is required: send 'authorization: Bearer <device token>'")
        device = self.store.device_by_token(hash_token(token))
        if device is None:
            raise Unauthenticated("device token is not valid: enroll the device again")
        return device.device_id

    def device(self, device_id: str) -> Device:
        found = self.store.device(device_id) if NAME.fullmatch(device_id) else None
        if found is None:
            raise DeviceNotFound(f"device {device_id[:80]!r} is not enrolled: check the id with GET /v1/devices")
        return found


def read_metadata(signer: signing.Signer, *, repository: str, name: str, device_id: str) -> bytes:
    """Signed metadata for one device: the shared image repository or its own director."""
    if repository not in {"image", "director"}:
        raise InvalidRequest(f"repository {repository[:40]!r} is not valid: use 'image' or 'director'")
    repo = "image" if repository == "image" else f"director/{device_id}"
    try:
        return signer.metadata(repo, name)
    except signing.MetadataNotFound as e:
        raise MetadataNotFound(str(e)) from e
