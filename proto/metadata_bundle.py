"""A `MetadataBundle` reply as a device reads it: bounded, then looked up by file name.

Shared by the agent (its ngclient fetcher) and the simulator. Nothing here is trusted:
the bytes go to the same verification as a `FetchMetadata` reply. This only bounds
what is kept and says, per (repository, name), whether the bundle has the file, says
there is no such root, or does not know (then the device calls `FetchMetadata`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from fleetcast.proto.assignment import METADATA_NAME
from fleetcast.proto.v1 import device_pb2 as pb

MAX_FILES: Final = 80                      # 2 x (32 roots + timestamp + snapshot + targets + bin)
MAX_BUNDLE_BYTES: Final = 8 * 1024**2
REPOSITORIES: Final = frozenset({pb.REPOSITORY_IMAGE, pb.REPOSITORY_DIRECTOR})


class BundleError(ValueError):
    """A bundle reply that breaks the contract (too many or too large files, bad names)."""


class Absent(enum.Enum):
    NO_SUCH_ROOT = "no such root"    # past the newest root the server said it has: a 404
    UNKNOWN = "unknown"              # not in the bundle: ask FetchMetadata


@dataclass(frozen=True)
class BundleFiles:
    files: Mapping[tuple[int, str], bytes] = field(default_factory=dict)
    roots: Mapping[int, int] = field(default_factory=dict)   # repository -> the server's newest root

    @classmethod
    def from_message(cls, reply: pb.MetadataBundle, *, max_bytes: int = MAX_BUNDLE_BYTES) -> "BundleFiles":
        if len(reply.files) > MAX_FILES or len(reply.states) > len(REPOSITORIES):
            raise BundleError(f"bundle holds {len(reply.files)} files and {len(reply.states)} states, "
                              f"over {MAX_FILES} and {len(REPOSITORIES)}")
        files: dict[tuple[int, str], bytes] = {}
        total = 0
        for f in reply.files:
            if f.repository not in REPOSITORIES or not METADATA_NAME.fullmatch(f.name):
                raise BundleError(f"bundle file {f.name[:60]!r} of repository {f.repository} is not a metadata file")
            total += len(f.data)
            if total > max_bytes:
                raise BundleError(f"bundle holds more than {max_bytes} bytes")
            files[(f.repository, f.name)] = f.data
        roots = {s.repository: s.root for s in reply.states if s.repository in REPOSITORIES}
        return cls(files=files, roots=roots)

    def lookup(self, repository: int, name: str) -> bytes | Absent:
        found = self.files.get((repository, name))
        if found is not None:
            return found
        match = METADATA_NAME.fullmatch(name)
        newest = self.roots.get(repository)
        if match and match.group(2) == "root" and match.group(1) and newest is not None \
                and int(match.group(1)) > newest:
            return Absent.NO_SUCH_ROOT
        return Absent.UNKNOWN
