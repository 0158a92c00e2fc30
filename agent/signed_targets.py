"""The image repository's targets as this agent last trusted them, checked offline.

At start the agent must not believe its own slot files: someone who can write the
data dir could replace a slot's model and its manifest together. Before serving, the
slot's model (and golden) must be a target of the image repository's `targets.json`
kept in `DATA/trust/image/`, with the same sha256, length and custom fields, and that
metadata must be signed by the targets keys of a root chained from the configured
trust root (`trust-root.json`, then each `root_history/N.root.json` signed by the
root before it and by itself, as python-tuf's ngclient stores them).

Expiry is deliberately not checked here: an expired timestamp says nothing about
whether an artifact is genuine, and a device that rebooted after a week offline
must still serve the model it verified when it installed it. Freshness is the next
online `Verifier.check()`'s job.

Every read is size-bounded; every failure raises `VerificationError` naming what
did not match.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tuf.api import exceptions as tuf_errors
from tuf.api.dsse import SimpleEnvelope
from tuf.api.metadata import Root, TargetFile, Targets

from fleetcast.agent.datadir import read_bounded
from fleetcast.agent.errors import VerificationError
from fleetcast.agent.trust import TrustConfig, TrustRoot, VerifiedAssignment

logger = logging.getLogger(__name__)

MAX_ROOT_ROTATIONS: Final = 256
# The fields of the image target's custom.fleetcast a slot manifest must repeat.
CUSTOM_FIELDS: Final = ("model", "version", "variant", "format")


@dataclass(frozen=True)
class SignedTargets:
    """The image targets metadata, verified against the trust root (expiry aside)."""

    targets: Mapping[str, TargetFile]
    version: int

    @classmethod
    def load(cls, trust_root: TrustRoot, image_dir: Path, config: TrustConfig = TrustConfig()) -> "SignedTargets":
        """Reads and verifies `image_dir/targets.json`; raises VerificationError."""
        root = _root_chain(trust_root.image_root, image_dir / "root_history", config.root_max_bytes)
        data = _read(image_dir / "targets.json", config.targets_max_bytes, "image targets metadata")
        try:
            envelope = SimpleEnvelope.from_bytes(data)
            signed = envelope.get_signed()
            if not isinstance(signed, Targets):
                raise VerificationError("the trusted image targets file is not a targets role")
            root.verify_delegate(Targets.type, envelope.pae(), envelope.signatures)
        except tuf_errors.UnsignedMetadataError as e:
            raise VerificationError(f"the trusted image targets metadata has a bad signature: {e}") from e
        except (tuf_errors.RepositoryError, ValueError, TypeError, KeyError) as e:
            raise VerificationError(f"the trusted image targets metadata is invalid: {e}") from e
        return cls(targets=dict(signed.targets), version=signed.version)

    def require(self, assignment: VerifiedAssignment) -> None:
        """Raises VerificationError unless the image repository signed this model (and golden)."""
        target = self._target(assignment.target_path, assignment.sha256, assignment.length, "model")
        custom = target.custom.get("fleetcast") if isinstance(target.custom, dict) else None
        if not isinstance(custom, dict):
            raise VerificationError(f"image target {assignment.target_path} has no custom.fleetcast fields")
        for key in CUSTOM_FIELDS:
            if custom.get(key) != getattr(assignment, key):
                raise VerificationError(
                    f"slot manifest says {key}={getattr(assignment, key)!r:.80} but the image repository "
                    f"signed {key}={custom.get(key)!r:.80} for this artifact")
        golden = assignment.golden
        if golden is not None:
            self._target(golden.path, golden.sha256, golden.length, "golden")

    def _target(self, path: str, sha256: str, length: int, what: str) -> TargetFile:
        target = self.targets.get(path)
        if target is None:
            raise VerificationError(
                f"the {what} {path} is not a target of the image repository this device trusts "
                f"(targets version {self.version}): it was not delivered by a signed update")
        if target.length != length or target.hashes.get("sha256") != sha256:
            raise VerificationError(
                f"the {what} {path} does not match the length/sha256 the image repository signed")
        return target


def _read(path: Path, max_bytes: int, what: str) -> bytes:
    try:
        return read_bounded(path, max_bytes)
    except FileNotFoundError:
        raise VerificationError(f"no {what} is kept at {path}: the device never verified an update") from None
    except (OSError, ValueError) as e:
        raise VerificationError(f"the {what} at {path} cannot be read: {e}") from e


def _parse_root(data: bytes, what: str) -> tuple[SimpleEnvelope, Root]:
    try:
        envelope = SimpleEnvelope.from_bytes(data)
        root = envelope.get_signed()
    except (tuf_errors.RepositoryError, ValueError, TypeError, KeyError) as e:
        raise VerificationError(f"{what} is not a root envelope: {e}") from e
    if not isinstance(root, Root):
        raise VerificationError(f"{what} is not a root role")
    return envelope, root


def _root_chain(bootstrap: bytes, history: Path, max_bytes: int) -> Root:
    """The newest root reachable from `bootstrap` through `history/N.root.json`."""
    _, root = _parse_root(bootstrap, "the configured image root")
    for _ in range(MAX_ROOT_ROTATIONS):
        path = history / f"{root.version + 1}.root.json"
        try:
            data = read_bounded(path, max_bytes)
        except FileNotFoundError:
            break
        except (OSError, ValueError) as e:
            raise VerificationError(f"the kept root {path.name} cannot be read: {e}") from e
        envelope, new = _parse_root(data, f"the kept root {path.name}")
        try:
            root.verify_delegate(Root.type, envelope.pae(), envelope.signatures)
            new.verify_delegate(Root.type, envelope.pae(), envelope.signatures)
        except tuf_errors.UnsignedMetadataError as e:
            raise VerificationError(f"the kept root {path.name} is not signed by the root before it: {e}") from e
        if new.version != root.version + 1:
            raise VerificationError(f"the kept root {path.name} holds version {new.version}")
        root = new
    return root

