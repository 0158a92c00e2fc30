"""The metadata checks a simulated device makes before it downloads anything.

A `RepositoryView` holds what one device last trusted of one repository and moves it
forward: root rotation, then `timestamp.json`, the snapshot and the targets it names,
each validly signed by the keys of the trusted root (DSSE, over the exact payload
bytes), unexpired, never older than before, and matching the length and sha256 its
parent lists; for the director (one repository the fleet shares, ADR 0008), also the
hash bin holding the device's entry, signed by the keys its targets delegate to and
matching the snapshot. The checks are the agent's (python-tuf ngclient) in miniature; a
`SignatureCache` shared by the swarm lets identical bytes (the image repository every
device reads) be verified once per process instead of once per device.
"""

from __future__ import annotations

import datetime
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from tuf.api import exceptions as tuf_errors
from tuf.api.dsse import SimpleEnvelope
from tuf.api.metadata import MetaFile, Root, Signed, Snapshot, TargetFile, Targets, Timestamp

from fleetcast.proto.assignment import device_target_path

MAX_METADATA_BYTES: Final = 8 * 1024**2
MAX_ROOT_ROTATIONS: Final = 32

S = TypeVar("S", bound=Signed)
Fetch = Callable[[str], Awaitable[bytes | None]]   # name -> bytes, None when the server has none


class VerificationError(Exception):
    """Metadata or an artifact failed a check; the message says which and why."""


class SignatureCache:
    """Bounded map from (root, role, sha256 of the bytes) to the verified payload."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[tuple[str, str, str], Signed] = OrderedDict()
        self._max = max_entries

    def verified(self, root: Root | Targets, role: str, data: bytes, kind: type[S]) -> S:
        """`root` is the delegator: the root, or the targets that delegate to a bin."""
        if len(data) > MAX_METADATA_BYTES:
            raise VerificationError(f"{role} metadata is {len(data)} bytes, over {MAX_METADATA_BYTES}")
        key = (root_id(root), role, hashlib.sha256(data).hexdigest())
        found = self._entries.get(key)
        if found is None:
            found = _verify(root, role, data, kind)
            self._entries[key] = found
            if len(self._entries) > self._max:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        if not isinstance(found, kind):
            raise VerificationError(f"{role} metadata is a {found.type}, expected {kind.type}")
        return found


def root_id(root: Root | Targets) -> str:
    keys = root.keys if isinstance(root, Root) else (root.delegations.keys if root.delegations else {})
    return f"{root.type}:{root.version}:" + ",".join(sorted(keys))


def _verify(root: Root | Targets, role: str, data: bytes, kind: type[S]) -> S:
    try:
        envelope = SimpleEnvelope.from_bytes(data)
        root.verify_delegate(role, envelope.pae(), envelope.signatures)
        signed = envelope.get_signed()
    except tuf_errors.UnsignedMetadataError as e:
        raise VerificationError(f"{role} metadata is not signed by the trusted {role} keys: {e}") from e
    except (tuf_errors.RepositoryError, ValueError, KeyError, TypeError) as e:
        raise VerificationError(f"{role} metadata is malformed: {e}") from e
    if not isinstance(signed, kind):
        raise VerificationError(f"{role} metadata is a {signed.type}, expected {kind.type}")
    return signed


def parse_root(data: bytes, what: str) -> Root:
    """A root envelope signed by its own root keys (the trust anchor given by configuration)."""
    try:
        signed = SimpleEnvelope.from_bytes(data).get_signed()
    except (ValueError, KeyError, TypeError) as e:
        raise VerificationError(f"{what} is not a root envelope: {e}") from e
    if not isinstance(signed, Root):
        raise VerificationError(f"{what} is a {signed.type}, not a root")
    return _verify(signed, Root.type, data, Root)


@dataclass
class RepositoryView:
    """What one device trusts of one repository; `refresh` moves it forward or raises."""

    name: str
    root: Root
    cache: SignatureCache
    timestamp: Timestamp | None = None
    snapshot: Snapshot | None = None
    targets: Targets | None = None
    bins: dict[str, Targets] | None = None

    def versions(self, device_id: str) -> dict[str, int]:
        """What this view trusts, as a bundle request names it (0: nothing of that role)."""
        delegations = self.targets.delegations if self.targets is not None else None
        bin_ = None
        if delegations is not None and delegations.succinct_roles is not None and self.bins:
            bin_ = self.bins.get(delegations.succinct_roles.get_role_for_target(device_target_path(device_id)))
        return {"root": self.root.version,
                **{role: (m.version if m is not None else 0) for role, m in
                   (("timestamp", self.timestamp), ("snapshot", self.snapshot), ("targets", self.targets),
                    ("bin", bin_))}}

    async def refresh(self, fetch: Fetch, now: datetime.datetime) -> Targets:
        await self._rotate_root(fetch)
        self._unexpired(self.root, now)
        timestamp = self._checked(await self._need(fetch, "timestamp.json"), Timestamp, now)
        if self.timestamp is not None:
            if timestamp.version < self.timestamp.version:
                raise VerificationError(f"{self.name} timestamp version {timestamp.version} is older than "
                                        f"the trusted {self.timestamp.version} (rollback refused)")
            if timestamp.snapshot_meta.version < self.timestamp.snapshot_meta.version:
                raise VerificationError(f"{self.name} timestamp names an older snapshot (rollback refused)")
        self.timestamp = timestamp
        meta = timestamp.snapshot_meta
        if self.snapshot is None or self.snapshot.version != meta.version or self.targets is None:
            snapshot = self._child(await self._need(fetch, f"{meta.version}.snapshot.json"), Snapshot, meta, now)
            self.snapshot = snapshot
            targets_meta = snapshot.meta["targets.json"]
            if self.targets is not None and targets_meta.version < self.targets.version:
                raise VerificationError(f"{self.name} snapshot names older targets (rollback refused)")
            if self.targets is None or self.targets.version != targets_meta.version:
                data = await self._need(fetch, f"{targets_meta.version}.targets.json")
                self.targets = self._child(data, Targets, targets_meta, now)
        self._unexpired(self.snapshot, now)
        self._unexpired(self.targets, now)
        return self.targets

    async def _rotate_root(self, fetch: Fetch) -> None:
        for _ in range(MAX_ROOT_ROTATIONS):
            data = await fetch(f"{self.root.version + 1}.root.json")
            if data is None:
                return
            new = self.cache.verified(self.root, Root.type, data, Root)   # signed by the old keys
            new = _verify(new, Root.type, data, Root)                    # and by the new ones
            if new.version != self.root.version + 1:
                raise VerificationError(f"{self.name} root {new.version} was served as {self.root.version + 1}")
            self.root, self.timestamp, self.snapshot, self.targets, self.bins = new, None, None, None, None
        raise VerificationError(f"{self.name} offers more than {MAX_ROOT_ROTATIONS} root rotations at once")

    async def entry(self, fetch: Fetch, device_id: str, now: datetime.datetime) -> TargetFile | None:
        """After `refresh`: the device's director entry from its bin, or None (nothing assigned)."""
        delegations = self.targets.delegations if self.targets is not None else None
        if self.snapshot is None or delegations is None or delegations.succinct_roles is None:
            raise VerificationError(f"{self.name} targets do not delegate to hash bins")
        path = device_target_path(device_id)
        role = delegations.succinct_roles.get_role_for_target(path)
        meta = self.snapshot.meta.get(f"{role}.json")
        if meta is None:
            raise VerificationError(f"{self.name} snapshot does not list the delegated {role}")
        bins = self.bins if self.bins is not None else {}
        old = bins.get(role)
        if old is not None and meta.version < old.version:
            raise VerificationError(f"{self.name} snapshot names an older {role} (rollback refused)")
        if old is None or old.version != meta.version:
            data = await self._need(fetch, f"{meta.version}.{role}.json")
            try:
                meta.verify_length_and_hashes(data)
            except tuf_errors.LengthOrHashMismatchError as e:
                raise VerificationError(f"{self.name} {role} does not match what the snapshot lists: {e}") from e
            signed = self.cache.verified(self.targets, role, data, Targets)
            if signed.version != meta.version:
                raise VerificationError(f"{self.name} {role} is version {signed.version}, expected {meta.version}")
            bins[role] = old = signed
            self.bins = bins
        self._unexpired(old, now)
        return device_entry(old, device_id)

    async def _need(self, fetch: Fetch, name: str) -> bytes:
        data = await fetch(name)
        if data is None:
            raise VerificationError(f"{self.name} has no {name}")
        return data

    def _checked(self, data: bytes, kind: type[S], now: datetime.datetime) -> S:
        signed = self.cache.verified(self.root, kind.type, data, kind)
        self._unexpired(signed, now)
        return signed

    def _child(self, data: bytes, kind: type[S], meta: MetaFile, now: datetime.datetime) -> S:
        try:
            meta.verify_length_and_hashes(data)
        except tuf_errors.LengthOrHashMismatchError as e:
            raise VerificationError(f"{self.name} {kind.type} does not match what its parent lists: {e}") from e
        signed = self._checked(data, kind, now)
        if signed.version != meta.version:
            raise VerificationError(f"{self.name} {kind.type} is version {signed.version}, expected {meta.version}")
        return signed

    def _unexpired(self, signed: Signed | None, now: datetime.datetime) -> None:
        if signed is not None and signed.is_expired(now):
            raise VerificationError(f"{self.name} {signed.type} metadata expired at {signed.expires}")


def device_entry(bin_: Targets, device_id: str) -> TargetFile | None:
    """The device's entry in its director bin, or None when nothing is assigned."""
    target = bin_.targets.get(device_target_path(device_id))
    if target is None:
        return None
    fields = (target.unrecognized_fields.get("custom") or {}).get("fleetcast") or {}
    if fields.get("device_id") != device_id:
        raise VerificationError(f"director target is meant for {str(fields.get('device_id'))[:80]!r}, not {device_id}")
    return target


def agree(director: TargetFile, image: Targets) -> None:
    path = f"artifacts/{director.hashes.get('sha256')}"
    found = image.targets.get(path)
    if found is None or found.length != director.length or found.hashes != director.hashes:
        raise VerificationError(f"image repository does not vouch for {path} with that length and sha256")
