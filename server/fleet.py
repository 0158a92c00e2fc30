"""Devices: enrollment, device tokens (stored only as sha256), variant choice, metadata reads.

A device exchanges an enrollment token (`enrolltokens`) and a certificate request
for its key pair for a device token and a device certificate (ADR 0005). An id
that already holds a live credential is never re-issued on an enroll token alone:
the caller must prove possession of the key the device enrolled with, or the
operator must have approved a re-provisioning (`fleetcast device reprovision ID`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from fleetcast.proto import identity
from fleetcast.proto.assignment import METADATA_NAME
from fleetcast.proto.topics import DEVICE_ID_PATTERN, TopicError, check_device_id
from fleetcast.server import signing
from fleetcast.server.certificates import Certificates
from fleetcast.server.credential_cache import TOPIC as TOKEN_CHANGED, CredentialCache
from fleetcast.server.enrolltokens import EnrollTokens
from fleetcast.server.errors import AlreadyEnrolled, DeviceNotFound, InvalidRequest, MetadataNotFound, Unauthenticated
from fleetcast.server.store import Device, DeviceIdentity, Store

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
    csr: bytes = b""          # PEM request for the device's key pair; empty: no certificate, no key on record
    proof: bytes = b""        # re-enrollment: signature with the key on record (fleetcast.proto.identity)
    proof_time: int = 0
    # back end -> "VERSION on ACCELERATOR[; why it fell back]", from the agent's probe;
    # kept in the device's labels as "backend.NAME" (see `BACKEND_LABEL`).
    backend_info: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Enrolled:
    device_token: str
    certificate: bytes        # PEM, b"" when the request carried no CSR


BACKEND_LABEL: Final = "backend."


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_id(device_id: str) -> str:
    try:
        check_device_id(device_id)
    except TopicError as e:
        raise InvalidRequest(str(e)) from e
    if device_id in identity.RESERVED_IDS:
        raise InvalidRequest(f"device id {device_id!r} is reserved for the server: choose another id")
    return device_id


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
    def __init__(self, *, store: Store, enroll_token: str, certificates: Certificates | None = None,
                 credentials: CredentialCache | None = None) -> None:
        self.store = store
        self.tokens = EnrollTokens(store=store, fleet_token=enroll_token)
        self.certificates = certificates
        self.credentials = credentials if credentials is not None else CredentialCache(changes=store)

    def enroll(self, e: Enrollment) -> str:
        """Returns a fresh device token (see `enroll_device`)."""
        return self.enroll_device(e).device_token

    def enroll_device(self, e: Enrollment) -> Enrolled:
        """Raises Unauthenticated for a bad enroll token, AlreadyEnrolled for a takeover."""
        admission = self.tokens.check(e.enroll_token)
        check_id(e.device_id)
        _check_profile(e)
        if admission.group and e.group and e.group != admission.group:
            raise InvalidRequest(f"this enroll token admits devices to group {admission.group!r} only, "
                                 f"not {e.group[:80]!r}: leave out --group or use another token")
        group = admission.group or e.group
        old = self.store.device(e.device_id)
        if old is not None:
            self._check_reenrollment(e)
        certificate, public_key = b"", ""
        if e.csr:
            if self.certificates is None:
                raise InvalidRequest("this server issues no device certificates")
            certificate, public_key = self.certificates.issue_device(e.device_id, e.csr)
        self.tokens.use(admission)
        token = secrets.token_hex(32)   # hex: never starts with "-"
        now = time.time()
        self.store.put_device(Device(
            device_id=e.device_id, token_sha256=hash_token(token), hardware_class=e.hardware_class,
            backends=tuple(e.backends), group=group, agent_version=e.agent_version,
            labels={**{k: v for k, v in e.labels.items() if not k.startswith(BACKEND_LABEL)},
                    **{BACKEND_LABEL + name: text for name, text in e.backend_info.items()}},
            enrolled_at=old.enrolled_at if old else now, last_seen=now,
        ))
        if old is not None:     # the old token is dead: here at once, on other replicas by the notice
            self.credentials.forget(e.device_id)
            self.store.announce(TOKEN_CHANGED, e.device_id)
        self.store.put_device_identity(DeviceIdentity(
            device_id=e.device_id, public_key_pem=public_key,
            certificate_sha256=hashlib.sha256(certificate).hexdigest() if certificate else "", issued_at=now,
        ))
        logger.info("device %s device_id=%s hardware_class=%s key=%s", "re-enrolled" if old else "enrolled",
                    e.device_id, e.hardware_class, "yes" if public_key else "none")
        return Enrolled(device_token=token, certificate=certificate)

    def _check_reenrollment(self, e: Enrollment) -> None:
        """An id with a live credential: allowed once after the operator's approval, or with
        proof of the key on record; anything else would be a takeover."""
        record = self.store.device_identity(e.device_id)
        if record is not None and record.reprovision_approved_at is not None:
            logger.warning("device re-provisioned as approved device_id=%s", e.device_id)
            return
        if record is not None and record.public_key_pem and e.proof:
            try:
                identity.verify_proof(record.public_key_pem, e.proof, device_id=e.device_id, csr_pem=e.csr,
                                      at=e.proof_time, now=time.time())
            except identity.IdentityError as err:
                raise Unauthenticated(f"re-enrollment of {e.device_id!r} refused: {err}") from err
            return
        logger.warning("enrollment refused device_id=%s: already enrolled with a live credential", e.device_id)
        raise AlreadyEnrolled(
            f"device {e.device_id!r} is already enrolled and its credential is live: an enroll token cannot "
            f"re-issue it. If this is a replacement for that device, the operator approves it with "
            f"`fleetcast device reprovision {e.device_id}` and the agent then enrolls on its next try; "
            f"otherwise choose another --device-id"
        )

    def approve_reprovision(self, device_id: str) -> DeviceIdentity:
        """The next enrollment of `device_id` may bring a new key (once)."""
        self.device(device_id)   # raises DeviceNotFound
        record = self.store.device_identity(device_id) or DeviceIdentity(
            device_id=device_id, public_key_pem="", certificate_sha256="", issued_at=0.0)
        approved = replace(record, reprovision_approved_at=time.time())
        self.store.put_device_identity(approved)
        logger.warning("re-provisioning approved device_id=%s", device_id)
        return approved

    def authenticate(self, token: str | None) -> str:
        """Device token -> device id; raises Unauthenticated."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated("a device token is required: send 'authorization: Bearer <device token>'")
        digest = hash_token(token)
        known = self.credentials.device_for(digest)
        if known is not None:
            return known
        generation = self.credentials.generation()
        device = self.store.device_by_token(digest)
        if device is None:
            raise Unauthenticated("device token is not valid: enroll the device again")
        self.credentials.keep(digest, device.device_id, generation=generation)
        return device.device_id

    def device(self, device_id: str) -> Device:
        found = self.store.device(device_id) if NAME.fullmatch(device_id) else None
        if found is None:
            raise DeviceNotFound(f"device {device_id[:80]!r} is not enrolled: check the id with GET /v1/devices")
        return found


def read_metadata(signer: signing.Signer, *, repository: str, name: str, device_id: str) -> bytes:
    """Signed metadata for one device: the image repository or the director (both shared
    by the fleet). Of the director's hash bins a device reads only the one holding its own
    entry (`devices/<device_id>`), so it learns the assignments of its bin's neighbours at
    most, never the fleet's (ADR 0008)."""
    if repository not in {"image", "director"}:
        raise InvalidRequest(f"repository {repository[:40]!r} is not valid: use 'image' or 'director'")
    match = METADATA_NAME.fullmatch(name)
    role = match.group(2) if match else ""
    if repository == "director" and role.startswith(signing.BIN_PREFIX) and role != signing.device_bin(device_id):
        raise MetadataNotFound(f"{name[:40]} is not the director bin of device {device_id}: a device reads only its own")
    try:
        return signer.metadata(repository, name)
    except signing.MetadataNotFound as e:
        raise MetadataNotFound(str(e)) from e
