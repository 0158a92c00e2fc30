"""Every newer metadata file a device needs, in one reply (`FetchMetadataBundle`).

A device tells the versions it trusts of each repository (root, timestamp, snapshot,
targets and, for the director, its own hash bin); the bundle holds, from the signer's
memory cache, the root chain after its root, the current `timestamp.json`, and the
snapshot, targets and bin that timestamp leads to where they are newer than the
device's. The bytes are exactly what `FetchMetadata` serves: the device verifies them
all, in TUF's order, and asks `FetchMetadata` for anything missing, so a bundle the
size bound cut short (or a device's wrong hint) costs calls, never trust. The versions
a device sends are hints, not claims: a device learns nothing it could not fetch one
file at a time (of the director's bins, only its own, as `read_metadata`). ADR 0010.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from fleetcast.server import signing
from fleetcast.server.errors import InvalidRequest

MAX_BUNDLE_BYTES: Final = 4 * 1024**2   # a reply's payload; what does not fit is left to FetchMetadata
MAX_ROOTS: Final = 32                   # newer roots sent at once (the simulator's and ngclient's walk bound)
MAX_VERSION: Final = 2**40
REPOSITORIES: Final = (signing.IMAGE, signing.DIRECTOR)


@dataclass(frozen=True)
class Trusted:
    """What a device says it trusts of one repository (0: nothing of that role)."""

    root: int = 0
    timestamp: int = 0
    snapshot: int = 0
    targets: int = 0
    bin: int = 0

    def __post_init__(self) -> None:
        for name in ("root", "timestamp", "snapshot", "targets", "bin"):
            value = getattr(self, name)
            if not 0 <= value < MAX_VERSION:
                raise InvalidRequest(f"trusted {name} version {value} is out of range (0 to {MAX_VERSION - 1})")


@dataclass(frozen=True)
class File:
    repository: str
    name: str
    data: bytes


@dataclass(frozen=True)
class Bundle:
    files: tuple[File, ...]
    roots: dict[str, int]        # repository -> the newest root the server holds


def make_bundle(signer: signing.Signer, *, device_id: str, trusted: dict[str, Trusted],
                max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    """The files newer than `trusted` for both repositories, at most `max_bytes` of them."""
    files: list[File] = []
    roots: dict[str, int] = {}
    room = max_bytes
    for repository in REPOSITORIES:
        have = trusted.get(repository, Trusted())
        for name, data in _newer(signer, repository, device_id, have, roots):
            if len(data) > room:
                break           # the device fetches the rest one file at a time
            files.append(File(repository, name, data))
            room -= len(data)
    return Bundle(files=tuple(files), roots=roots)


def _newer(signer: signing.Signer, repository: str, device_id: str, have: Trusted,
           roots: dict[str, int]) -> Iterable[tuple[str, bytes]]:
    """(name, bytes) in the order a client verifies them; fills `roots[repository]`."""
    root = max(have.root, 1)
    for _ in range(MAX_ROOTS):
        name = f"{root + 1}.root.json"
        try:
            data = signer.metadata(repository, name)
        except signing.MetadataNotFound:
            roots[repository] = root
            break
        yield name, data
        root += 1
    stamp, snapshot = signer.current(repository)
    yield "timestamp.json", stamp
    if snapshot.version != have.snapshot:
        yield f"{snapshot.version}.snapshot.json", signer.metadata(repository, f"{snapshot.version}.snapshot.json")
    targets = snapshot.meta["targets.json"].version
    if targets != have.targets:
        yield f"{targets}.targets.json", signer.metadata(repository, f"{targets}.targets.json")
    if repository == signing.DIRECTOR:
        role = signing.device_bin(device_id)
        meta = snapshot.meta.get(f"{role}.json")
        if meta is not None and meta.version != have.bin:
            yield f"{meta.version}.{role}.json", signer.metadata(repository, f"{meta.version}.{role}.json")
