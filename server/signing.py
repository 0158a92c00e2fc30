"""The two TUF repositories the server signs: the image repository and the director.

Every metadata file is a DSSE envelope (`tuf.api.dsse.SimpleEnvelope`) signed with
ed25519 keys from securesystemslib; agents verify them with python-tuf's ngclient
(`fleetcast.agent.trust`). Why two repositories and how the keys are laid out: ADR 0002.

Store layout (`MetadataStore`, repository -> name -> bytes):

| repository          | names                                                           |
|---------------------|-----------------------------------------------------------------|
| `image`             | `N.root.json`, `N.targets.json`, `N.snapshot.json`, `timestamp.json` |
| `director`          | `N.root.json`, `N.targets.json` (delegates to the bins), `N.bin-XX.json` (256 hash bins of `devices/<device id>` entries), `N.snapshot.json`, `timestamp.json` |
| `director/<device>` | retired (one repository per device, signed per device per deploy): no longer written |

The director is one repository the whole fleet shares (ADR 0008): each device's
assignment is the target `devices/<device id>` in the hash bin its path falls in
(TUF succinct hash delegation), so a deploy to ten thousand devices re-signs the 256
bins, the snapshot and the timestamp once instead of three files per device.

Every publish writes the new versioned targets (and bins) and snapshot before the new
`timestamp.json`, so a client never sees a timestamp that points at something missing.
Old versions stay in the store; only `timestamp.json` is overwritten.

Errors:
```
SigningError               the signing keys or stored metadata are unusable
  + MetadataNotFound       no such repository or metadata file (the gRPC/HTTP 404)
  + InvalidAssignmentError an artifact or assignment the repositories cannot sign
```
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.dsse import SimpleEnvelope
from tuf.api.metadata import (
    Delegations,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)

from fleetcast.agent.datadir import write_atomic  # the shared atomic-write primitive
from fleetcast.proto.assignment import METADATA_NAME, GoldenRef, device_target_path
from fleetcast.proto.topics import TopicError, check_device_id

logger = logging.getLogger(__name__)

IMAGE: Final = "image"
DIRECTOR: Final = "director"
# Retired names, still in older stores, no longer written or read: `director/devices.json`
# and `director/devices-XX.json` (the index of per-device director repositories).
TRUST_ROOT_FORMAT: Final = 1
BIN_PREFIX: Final = "bin"
BIN_BITS: Final = 8          # 256 bins: about 40 devices per bin at 10,000 devices
SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")
_ONLINE_ROLES: Final = (Targets.type, Snapshot.type, Timestamp.type)
SIGNING_LOCK: Final = "signing"   # the store lock every publish (and every assignment) holds

Clock = Callable[[], datetime.datetime]
S = TypeVar("S", bound=Signed)


class SigningError(Exception):
    """Base of every error this module raises on purpose."""


class MetadataNotFound(SigningError):
    """The repository or metadata file asked for does not exist."""


class InvalidAssignmentError(SigningError):
    """An artifact target or director assignment that cannot be signed as given."""


class MetadataStore(Protocol):
    """Where signed metadata lives; the server's Store fills it (SQLite, PostgreSQL)."""

    def get_metadata(self, repository: str, name: str) -> bytes | None: ...

    def put_metadata(self, repository: str, name: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class SigningConfig:
    """How long each role's metadata stays valid once signed."""

    root_expiry_s: float = 365 * 86400
    targets_expiry_s: float = 30 * 86400
    snapshot_expiry_s: float = 7 * 86400
    timestamp_expiry_s: float = 86400
    # How long a snapshot, targets or bin file stays in the store once a newer version of it
    # is published (a client reads what a timestamp names moments after reading it; the
    # margin covers slow links). Roots stay for ever: clients walk the chain.
    superseded_keep_s: float = 86400


@dataclass(frozen=True)
class ArtifactTarget:
    """One artifact the image repository vouches for, as `artifacts/<sha256>`.

    `custom` holds the Fleetcast fields (kind, model, version, variant, format, ...);
    they are stored under `custom["fleetcast"]`. A mapping whose only key is
    "fleetcast" is taken as already wrapped.
    """

    sha256: str
    length: int
    custom: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DirectorAssignment:
    """What one device should run: the single target of its director repository."""

    deployment_id: str
    model: str
    version: str
    variant: str
    format: str
    sha256: str
    length: int
    golden: GoldenRef | None = None
    inputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def artifact_path(sha256: str) -> str:
    return f"artifacts/{sha256}"


class Signer:
    """Signs and serves the image repository and every device's director repository.

    Every publish reads the current versions, signs the next ones and writes them while
    holding `lock()`: on a server, the store's `exclusive(SIGNING_LOCK)`, which keeps
    replicas sharing a database from publishing two contents under one versioned name.
    The default lock serves one process (tests, tools). It must be re-entrant.
    """

    def __init__(
        self,
        *,
        store: MetadataStore,
        config: SigningConfig,
        keys: Mapping[str, CryptoSigner],
        clock: Clock,
        lock: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._keys = dict(keys)
        self._clock = clock
        self._lock = lock or _process_lock()
        self._snapshots: dict[str, tuple[bytes, Snapshot]] = {}

    @classmethod
    def open(
        cls,
        keys_dir: Path,
        store: MetadataStore,
        config: SigningConfig = SigningConfig(),
        *,
        clock: Clock | None = None,
        lock: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> "Signer":
        """Loads the keys (creating them and the root metadata on first start)."""
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
        keys: dict[str, CryptoSigner] = {}
        for kind in (IMAGE, DIRECTOR):
            has_root = store.get_metadata(kind, "1.root.json") is not None
            for use in ("root", "online"):
                keys[f"{kind}-{use}"] = _load_or_create_key(
                    keys_dir / f"{kind}-{use}.pem", must_exist=has_root
                )
        signer = cls(store=store, config=config, keys=keys, clock=clock or _utc_now, lock=lock)
        signer._ensure_roots()
        return signer

    def locked(self) -> AbstractContextManager[Any]:
        """The signing lock, for a caller whose check and publish must be one step."""
        return self._lock()

    # -- reading -------------------------------------------------------------

    def trust_root(self) -> bytes:
        """The trust-root.json bytes an operator copies to devices."""
        doc = {
            "fleetcast_trust_root": TRUST_ROOT_FORMAT,
            "image_root": base64.b64encode(self._get(IMAGE, "1.root.json")).decode(),
            "director_root": base64.b64encode(self._get(DIRECTOR, "1.root.json")).decode(),
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def metadata(self, repository: str, name: str) -> bytes:
        """Signed metadata exactly as stored; raises MetadataNotFound.

        `repository` is `image` or `director` (the director every device shares; a
        device that is assigned nothing finds no entry for itself in its signed bin).
        """
        match = METADATA_NAME.fullmatch(name)
        if match is None:
            raise MetadataNotFound(
                f"metadata name {name[:80]!r} is not valid: ask for N.root.json, "
                "timestamp.json, N.snapshot.json, N.targets.json or N.bin-XX.json"
            )
        repo = self._check_repository(repository)
        version, role = match.group(1), match.group(2)
        if role == Root.type:
            number = int(version) if version else self._latest_root_version(repo)
            return self._get(repo, f"{number}.root.json")
        if version:
            if role == Timestamp.type:
                raise MetadataNotFound(f"{repository} keeps only the current timestamp.json")
            return self._get(repo, f"{int(version)}.{role}.json")
        if role.startswith(BIN_PREFIX):
            raise MetadataNotFound(f"ask for a bin by its version (N.{role}.json, as the snapshot lists it)")
        stamp = self._store.get_metadata(repo, "timestamp.json")   # read once: it is the hot path
        if stamp is None:
            raise MetadataNotFound(f"{repo} has no timestamp.json")
        if role == Timestamp.type:
            return stamp
        timestamp = _parse(stamp, Timestamp)
        snapshot_version = timestamp.snapshot_meta.version
        if role == Snapshot.type:
            return self._get(repo, f"{snapshot_version}.snapshot.json")
        snapshot = self._load(repo, f"{snapshot_version}.snapshot.json", Snapshot)
        return self._get(repo, f"{snapshot.meta['targets.json'].version}.targets.json")

    def current(self, repository: str) -> tuple[bytes, Snapshot]:
        """The current `timestamp.json` exactly as stored, and the snapshot it names
        (parsed once per version: callers must not mutate it)."""
        repo = self._check_repository(repository)
        stamp = self._get(repo, "timestamp.json")
        return stamp, self._snapshot(repo, _parse(stamp, Timestamp).snapshot_meta.version)

    def director_version(self, device_id: str) -> int:
        """The version of the director bin holding the device's entry (what a notice carries)."""
        role = device_bin(_check_device(device_id))
        snapshot = self._current_snapshot(DIRECTOR)[1]
        return snapshot.meta[f"{role}.json"].version

    def director_entry(self, device_id: str) -> TargetFile | None:
        """The device's signed director entry as its bin holds it now (None: nothing assigned)."""
        device_id = _check_device(device_id)
        role = device_bin(device_id)
        snapshot = self._current_snapshot(DIRECTOR)[1]
        bin_ = self._load(DIRECTOR, f"{snapshot.meta[f'{role}.json'].version}.{role}.json", Targets)
        return bin_.targets.get(device_target_path(device_id))

    # -- publishing ----------------------------------------------------------

    def add_artifact(self, target: ArtifactTarget) -> None:
        """Adds (or keeps) `artifacts/<sha256>` in the image repository."""
        _check_sha256(target.sha256, "artifact")
        _check_length(target.length, "artifact")
        custom = _fleetcast_custom(target.custom)
        path = artifact_path(target.sha256)
        with self._lock():
            targets = self._current(IMAGE)[2]
            old = targets.targets.get(path)
            if old is not None and old.length != target.length:
                raise InvalidAssignmentError(
                    f"artifact {target.sha256} is already signed with length {old.length}, "
                    f"not {target.length}: the same sha256 cannot have two lengths"
                )
            if old is not None and old.custom == custom:
                return
            targets.targets[path] = TargetFile(
                target.length, {"sha256": target.sha256}, path, unrecognized_fields={"custom": custom}
            )
            self._publish(IMAGE, targets)
            logger.info("image target signed path=%s version=%d", path, targets.version)

    def assign(self, device_id: str, assignment: DirectorAssignment | None) -> int:
        """Replaces the device's director entry (None clears it); returns its bin's new version."""
        return self.assign_many({device_id: assignment})[device_id]

    def assign_many(self, assignments: Mapping[str, DirectorAssignment | None]) -> dict[str, int]:
        """Replaces the director entries of many devices in one publish (each bin they fall
        in, the snapshot and the timestamp signed once); returns each device's bin version."""
        entries = {}
        fields: dict[int, dict[str, Any]] = {}   # an assignment shared by many devices: checked once
        for device_id, a in assignments.items():
            device_id = _check_device(device_id)
            if a is None:
                entries[device_id] = None
                continue
            if id(a) not in fields:
                fields[id(a)] = _director_fields(a)
            entries[device_id] = _device_target(device_id, a, fields[id(a)])
        if not entries:
            return {}
        roles = {device_id: device_bin(device_id) for device_id in entries}
        with self._lock():
            _, snapshot = self._current_snapshot(DIRECTOR)
            bins: dict[str, Targets] = {}
            for device_id, target in entries.items():
                role = roles[device_id]
                if role not in bins:
                    bins[role] = self._load(DIRECTOR, f"{snapshot.meta[f'{role}.json'].version}.{role}.json", Targets)
                if target is None:
                    bins[role].targets.pop(device_target_path(device_id), None)
                else:
                    bins[role].targets[target.path] = target
            self._publish_director(bins)
            logger.info("director signed devices=%d bins=%d", len(entries), len(bins))
            return {device_id: bins[roles[device_id]].version for device_id in entries}

    def refresh_timestamps(self) -> int:
        """Re-signs every role within half its lifetime of expiry; returns repositories renewed."""
        renewed = 0
        with self._lock():
            for kind in (IMAGE, DIRECTOR):
                self._renew_root_if_due(kind)
            for repo in (IMAGE, DIRECTOR):
                if self._renew_if_due(repo):
                    renewed += 1
        if renewed:
            logger.info("timestamps refreshed repositories=%d", renewed)
        return renewed

    # -- internals -----------------------------------------------------------

    def _ensure_roots(self) -> None:
        with self._lock():
            for kind in (IMAGE, DIRECTOR):
                data = self._store.get_metadata(kind, "1.root.json")
                if data is None:
                    self._write_root(kind, Root(version=1, consistent_snapshot=True))
                    continue
                self._check_keys_match(kind, _parse(data, Root))
            if self._store.get_metadata(IMAGE, "timestamp.json") is None:
                self._publish_snapshot(IMAGE, Targets(version=1), 0, 0)
            if self._store.get_metadata(DIRECTOR, "timestamp.json") is None:
                self._create_director()

    def _create_director(self) -> None:
        """The shared director: top-level targets delegating every `devices/<id>` path to
        its hash bin (all bins signed empty), then the snapshot and timestamp."""
        key = self._keys[f"{DIRECTOR}-online"].public_key
        top = Targets(version=1, delegations=Delegations(
            keys={key.keyid: key},
            succinct_roles=SuccinctRoles([key.keyid], 1, BIN_BITS, BIN_PREFIX)))
        bins = {role: Targets(version=1) for role in top.delegations.succinct_roles.get_roles()}
        self._publish_director(bins, top=top, fresh=True)

    def _write_root(self, kind: str, root: Root) -> None:
        root.expires = self._expiry(self._config.root_expiry_s)
        for role in (Root.type, *_ONLINE_ROLES):
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
        root.add_key(self._keys[f"{kind}-root"].public_key, Root.type)
        for role in _ONLINE_ROLES:
            root.add_key(self._keys[f"{kind}-online"].public_key, role)
        self._store.put_metadata(kind, f"{root.version}.root.json", self._sign(root, f"{kind}-root"))
        logger.info("root signed repository=%s version=%d", kind, root.version)

    def _check_keys_match(self, kind: str, root: Root) -> None:
        expected = {
            Root.type: self._keys[f"{kind}-root"].public_key.keyid,
            Timestamp.type: self._keys[f"{kind}-online"].public_key.keyid,
        }
        for role, keyid in expected.items():
            if keyid not in root.roles[role].keyids:
                raise SigningError(
                    f"the {kind} {role} key in the keys dir does not match the stored {kind} "
                    "root metadata: restore the keys dir that belongs to this database"
                )

    def _renew_root_if_due(self, kind: str) -> None:
        latest = self._latest_root_version(kind)
        root = self._load(kind, f"{latest}.root.json", Root)
        if self._due(root, self._config.root_expiry_s):
            root.version += 1
            self._write_root(kind, root)

    def _renew_if_due(self, repo: str) -> bool:
        if repo == DIRECTOR:
            return self._renew_director_if_due()
        timestamp, snapshot, targets = self._current(repo)
        if self._due(targets, self._config.targets_expiry_s):
            self._publish(repo, targets, snapshot.version, timestamp.version)
        elif self._due(snapshot, self._config.snapshot_expiry_s):
            self._publish_snapshot(repo, targets, snapshot.version, timestamp.version)
        elif self._due(timestamp, self._config.timestamp_expiry_s):
            snapshot_data = self._get(repo, f"{snapshot.version}.snapshot.json")
            self._publish_timestamp(repo, snapshot.version, snapshot_data, timestamp.version)
        else:
            return False
        return True

    def _renew_director_if_due(self) -> bool:
        timestamp, snapshot = self._current_snapshot(DIRECTOR)
        roles = [name.removesuffix(".json") for name in snapshot.meta]
        due = {role: signed for role in roles if self._due(
            signed := self._load(DIRECTOR, f"{snapshot.meta[f'{role}.json'].version}.{role}.json", Targets),
            self._config.targets_expiry_s)}
        top = due.pop(Targets.type, None)
        if top is not None or due or self._due(snapshot, self._config.snapshot_expiry_s):
            self._publish_director(due, top=top)
        elif self._due(timestamp, self._config.timestamp_expiry_s):
            snapshot_data = self._get(DIRECTOR, f"{snapshot.version}.snapshot.json")
            self._publish_timestamp(DIRECTOR, snapshot.version, snapshot_data, timestamp.version)
        else:
            return False
        return True

    def _publish_director(self, bins: Mapping[str, Targets], *, top: Targets | None = None,
                          fresh: bool = False) -> None:
        """Signs the changed bins (and top-level targets) at their next versions (`fresh`:
        at the versions given), then one snapshot listing every role's version, length and
        sha256, then the timestamp."""
        if fresh:
            meta: dict[str, MetaFile] = {}
            snapshot_version = timestamp_version = 0
        else:
            timestamp, snapshot = self._current_snapshot(DIRECTOR)
            meta = dict(snapshot.meta)
            snapshot_version, timestamp_version = snapshot.version, timestamp.version
        for role, signed in [*bins.items(), *([(Targets.type, top)] if top is not None else [])]:
            signed.version += 0 if fresh else 1
            signed.expires = self._expiry(self._config.targets_expiry_s)
            data = self._sign(signed, f"{DIRECTOR}-online")
            self._store.put_metadata(DIRECTOR, f"{signed.version}.{role}.json", data)
            meta[f"{role}.json"] = _meta_file(signed.version, data)
        snapshot = Snapshot(version=snapshot_version + 1, expires=self._expiry(self._config.snapshot_expiry_s),
                            meta=meta)
        snapshot_data = self._sign(snapshot, f"{DIRECTOR}-online")
        self._store.put_metadata(DIRECTOR, f"{snapshot.version}.snapshot.json", snapshot_data)
        self._publish_timestamp(DIRECTOR, snapshot.version, snapshot_data, timestamp_version)

    def _publish(
        self,
        repo: str,
        targets: Targets,
        snapshot_version: int | None = None,
        timestamp_version: int | None = None,
    ) -> None:
        if snapshot_version is None or timestamp_version is None:
            timestamp, snapshot, _ = self._current(repo)
            snapshot_version, timestamp_version = snapshot.version, timestamp.version
        targets.version += 1
        self._publish_snapshot(repo, targets, snapshot_version, timestamp_version)

    def _publish_snapshot(
        self, repo: str, targets: Targets, snapshot_version: int, timestamp_version: int
    ) -> None:
        # Order matters: versioned files first, timestamp.json last.
        targets.expires = self._expiry(self._config.targets_expiry_s)
        kind = IMAGE if repo == IMAGE else DIRECTOR
        targets_data = self._sign(targets, f"{kind}-online")
        self._store.put_metadata(repo, f"{targets.version}.targets.json", targets_data)
        snapshot = Snapshot(
            version=snapshot_version + 1,
            expires=self._expiry(self._config.snapshot_expiry_s),
            meta={"targets.json": _meta_file(targets.version, targets_data)},
        )
        snapshot_data = self._sign(snapshot, f"{kind}-online")
        self._store.put_metadata(repo, f"{snapshot.version}.snapshot.json", snapshot_data)
        self._publish_timestamp(repo, snapshot.version, snapshot_data, timestamp_version)

    def _publish_timestamp(
        self, repo: str, snapshot_version: int, snapshot_data: bytes, timestamp_version: int
    ) -> None:
        kind = IMAGE if repo == IMAGE else DIRECTOR
        timestamp = Timestamp(
            version=timestamp_version + 1,
            expires=self._expiry(self._config.timestamp_expiry_s),
            snapshot_meta=_meta_file(snapshot_version, snapshot_data),
        )
        self._store.put_metadata(repo, "timestamp.json", self._sign(timestamp, f"{kind}-online"))

    def _current(self, repo: str) -> tuple[Timestamp, Snapshot, Targets]:
        timestamp, snapshot = self._current_snapshot(repo)
        targets_version = snapshot.meta["targets.json"].version
        return timestamp, snapshot, self._load(repo, f"{targets_version}.targets.json", Targets)

    def _current_snapshot(self, repo: str) -> tuple[Timestamp, Snapshot]:
        timestamp = self._load(repo, "timestamp.json", Timestamp)
        return timestamp, self._snapshot(repo, timestamp.snapshot_meta.version)

    def _snapshot(self, repo: str, version: int) -> Snapshot:
        data = self._get(repo, f"{version}.snapshot.json")
        # The director's snapshot lists 257 roles and is read per watch, per notice and
        # per bundle: parsed once per version (never mutated by callers: publishes copy its meta).
        parsed = self._snapshots.get(repo)
        if parsed is None or parsed[0] is not data and parsed[0] != data:
            parsed = self._snapshots[repo] = (data, _parse(data, Snapshot))
        return parsed[1]

    def _latest_root_version(self, kind: str) -> int:
        version = 1
        while self._store.get_metadata(kind, f"{version + 1}.root.json") is not None:
            version += 1
        return version

    def _check_repository(self, repository: str) -> str:
        if repository in (IMAGE, DIRECTOR):
            return repository
        raise MetadataNotFound(f"repository {repository[:80]!r} is not valid: use 'image' or 'director'")

    def _get(self, repo: str, name: str) -> bytes:
        data = self._store.get_metadata(repo, name)
        if data is None:
            raise MetadataNotFound(f"{repo} has no {name}")
        return data

    def _load(self, repo: str, name: str, role: type[S]) -> S:
        return _parse(self._get(repo, name), role)

    def _sign(self, signed: Signed, key: str) -> bytes:
        envelope = SimpleEnvelope.from_signed(signed)
        envelope.sign(self._keys[key])
        return envelope.to_bytes()

    def _expiry(self, lifetime_s: float) -> datetime.datetime:
        return self._clock() + datetime.timedelta(seconds=lifetime_s)

    def _due(self, signed: Signed, lifetime_s: float) -> bool:
        remaining_s = (signed.expires - self._clock()).total_seconds()
        return remaining_s < lifetime_s / 2


def _process_lock() -> Callable[[], AbstractContextManager[Any]]:
    lock = threading.RLock()
    return lambda: lock


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _parse(data: bytes, role: type[S]) -> S:
    signed = SimpleEnvelope.from_bytes(data).get_signed()
    if not isinstance(signed, role):
        raise SigningError(f"stored metadata is a {signed.type}, expected {role.type}")
    return signed


_BINS: Final = SuccinctRoles([], 1, BIN_BITS, BIN_PREFIX)


def device_bin(device_id: str) -> str:
    """The director hash bin (delegated role) that lists `devices/<device_id>`."""
    return _BINS.get_role_for_target(device_target_path(device_id))


def _meta_file(version: int, data: bytes) -> MetaFile:
    return MetaFile(version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()})


def _fleetcast_custom(custom: Mapping[str, Any]) -> dict[str, Any]:
    inner = custom["fleetcast"] if set(custom) == {"fleetcast"} else custom
    try:
        fields = json.loads(json.dumps(dict(inner)))
    except (TypeError, ValueError) as e:
        raise InvalidAssignmentError(f"artifact custom fields are not JSON: {e}") from e
    return {"fleetcast": fields}


def _device_target(device_id: str, a: DirectorAssignment, fields: Mapping[str, Any]) -> TargetFile:
    """The device's entry: `fields` (checked by `_director_fields`) with its device id."""
    custom = {"fleetcast": {**fields, "device_id": device_id}}
    return TargetFile(a.length, {"sha256": a.sha256}, device_target_path(device_id),
                      unrecognized_fields={"custom": custom})


def _director_fields(a: DirectorAssignment) -> dict[str, Any]:
    """The assignment's signed fields but the device id, checked and as plain JSON values."""
    _check_sha256(a.sha256, "assignment")
    _check_length(a.length, "assignment")
    golden = None
    if a.golden is not None:
        _check_sha256(a.golden.sha256, "golden")
        _check_length(a.golden.length, "golden")
        golden = {
            "path": artifact_path(a.golden.sha256),
            "sha256": a.golden.sha256,
            "length": a.golden.length,
            "atol": float(a.golden.atol),
            "rtol": float(a.golden.rtol),
        }
    fields = {
        "deployment_id": str(a.deployment_id),
        "model": str(a.model),
        "version": str(a.version),
        "variant": str(a.variant),
        "format": str(a.format),
        "golden": golden,
        "inputs": {str(name): dict(spec) for name, spec in a.inputs.items()},
    }
    try:
        fields = json.loads(json.dumps(fields, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidAssignmentError(f"assignment fields are not JSON: {e}") from e
    return fields


def _check_device(device_id: str) -> str:
    try:
        return check_device_id(device_id)
    except TopicError as e:
        raise InvalidAssignmentError(str(e)) from e


def _check_sha256(value: str, what: str) -> None:
    if not isinstance(value, str) or not SHA256_HEX.fullmatch(value):
        raise InvalidAssignmentError(f"{what} sha256 {value!r:.80} is not 64 lowercase hex digits")


def _check_length(value: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidAssignmentError(f"{what} length {value!r:.40} is not a non-negative integer")


def _load_or_create_key(path: Path, *, must_exist: bool) -> CryptoSigner:
    if path.exists():
        try:
            private_key = load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as e:
            raise SigningError(f"signing key {path} is not a PEM private key: {e}") from e
        if not isinstance(private_key, Ed25519PrivateKey):
            raise SigningError(f"signing key {path} is not an ed25519 key")
        return CryptoSigner(private_key)
    if must_exist:
        raise SigningError(
            f"signing key {path} is missing but root metadata for it exists: "
            "restore the keys dir that belongs to this database"
        )
    signer = CryptoSigner.generate_ed25519()
    _write_secret(path, signer.private_bytes)
    logger.info("signing key created path=%s keyid=%s", path, signer.public_key.keyid)
    return signer


def _write_secret(path: Path, data: bytes) -> None:
    """Temp file in the same dir (0600), fsync, os.replace, fsync the dir."""
    write_atomic(path, data, mode=0o600)
