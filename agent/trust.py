"""Verify first: the agent trusts an assignment only after both TUF repositories agree.

The server signs two repositories (ADR 0002): the **image** repository says which
artifacts are genuine, the **director** says which one this device should run.
`Verifier.check()` refreshes both with python-tuf's ngclient (DSSE envelopes,
signatures checked over the exact payload bytes), from the trust root given by
configuration, and returns a `VerifiedAssignment` only when:

- every metadata file is validly signed, unexpired, and not older than what this
  agent trusted before (the last trusted metadata is kept in `state_dir`);
- the director (one repository the fleet shares, ADR 0008) has an entry for this
  device, the target `devices/<device id>` in the hash bin its path falls in, whose
  fields name this device (no entry: nothing is assigned);
- the image repository has `artifacts/<sha256>` with the entry's length and sha256,
  and the same for the golden file if there is one.

`VerifiedAssignment` is the only type the update flow accepts, and only this module
makes one (`check()`, or `from_saved()` for the agent's own state file).

Errors raised (the agent's tree, `fleetcast.agent.errors`):
```
TrustRootError          trust-root.json missing, unreadable, malformed, not a signed root
VerificationError       bad signature, expired, rollback, disagreement, bad custom fields
ServerUnavailableError  metadata could not be fetched (transient: retry later)
```
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from tuf.api import exceptions as tuf_errors
from tuf.api.dsse import SimpleEnvelope
from tuf.api.metadata import Root, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig
from tuf.ngclient.config import EnvelopeType

from fleetcast.agent.fetchers import BundleFetcher, GrpcMetadataFetcher  # re-exported for the agent
from fleetcast.agent.errors import ServerUnavailableError, TrustRootError, VerificationError
from fleetcast.proto.assignment import GoldenRef, device_target_path
from fleetcast.proto.topics import TopicError, check_device_id

logger = logging.getLogger(__name__)

__all__ = [
    "BundleFetcher", "GoldenRef", "GrpcMetadataFetcher", "TrustConfig", "TrustRoot", "VerifiedAssignment",
    "Verifier", "load_trust_root", "parse_trust_root",
]

TRUST_ROOT_FORMAT: Final = 1
MAX_TRUST_ROOT_BYTES: Final = 1024 * 1024
IMAGE_URL: Final = "fleetcast-image:///"
DIRECTOR_URL: Final = "fleetcast-director:///"
SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")
FIELD_TEXT: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
MAX_INPUTS: Final = 64
MAX_RANK: Final = 16

DIRECTOR_DIR: Final = "fleet-director"   # the shared director's trusted metadata (ADR 0008)
_SEAL: Final = object()


@dataclass(frozen=True)
class TrustConfig:
    """Limits for what the agent accepts. `device_id` may be given here or to Verifier."""

    device_id: str = ""
    max_artifact_bytes: int = 4 * 1024**3
    root_max_bytes: int = 512 * 1024
    timestamp_max_bytes: int = 16 * 1024
    snapshot_max_bytes: int = 2 * 1024**2
    targets_max_bytes: int = 8 * 1024**2


@dataclass(frozen=True)
class TrustRoot:
    """The two root envelopes, exact bytes, as the operator configured them."""

    image_root: bytes
    director_root: bytes


@dataclass(frozen=True)
class VerifiedAssignment:
    """An assignment both repositories signed and agree on. Made only by this module."""

    deployment_id: str
    device_id: str
    model: str
    version: str
    variant: str
    format: str
    target_path: str
    sha256: str
    length: int
    golden: GoldenRef | None
    inputs: Mapping[str, Mapping[str, Any]]
    director_version: int
    _seal: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._seal is not _SEAL:
            raise TypeError("a VerifiedAssignment comes only from Verifier.check() or from_saved()")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict for the agent's own state file; read back with from_saved."""
        return {
            "deployment_id": self.deployment_id,
            "device_id": self.device_id,
            "model": self.model,
            "version": self.version,
            "variant": self.variant,
            "format": self.format,
            "target_path": self.target_path,
            "sha256": self.sha256,
            "length": self.length,
            "golden": None if self.golden is None else {
                "path": self.golden.path, "sha256": self.golden.sha256,
                "length": self.golden.length, "atol": self.golden.atol, "rtol": self.golden.rtol,
            },
            "inputs": _thaw(self.inputs),
            "director_version": self.director_version,
        }

    @classmethod
    def from_saved(cls, doc: Mapping[str, Any]) -> "VerifiedAssignment":
        """Reads back `to_json()` output that this agent wrote after a check; validates types."""
        try:
            if not isinstance(doc, Mapping):
                raise VerificationError("saved assignment is not a JSON object")
            sha256 = _sha256(doc.get("sha256"), "sha256")
            path = doc.get("target_path")
            if path != f"artifacts/{sha256}":
                raise VerificationError(f"saved target_path {path!r:.90} does not match sha256")
            device_id = doc.get("device_id")
            if not isinstance(device_id, str):
                raise VerificationError("saved device_id is not a string")
            try:
                check_device_id(device_id)
            except TopicError as e:
                raise VerificationError(str(e)) from e
            fields = _custom_fields(doc, device_id)
            return _make(fields, path, sha256, _length(doc.get("length"), "length", 2**63),
                         _count(doc.get("director_version"), "director_version"))
        except VerificationError as e:
            raise VerificationError(f"saved assignment is invalid: {e}") from e


def load_trust_root(path: Path) -> TrustRoot:
    """Reads trust-root.json; raises TrustRootError naming the problem and the fix."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TRUST_ROOT_BYTES + 1)
    except FileNotFoundError as e:
        raise TrustRootError(
            f"trust root {path} does not exist: copy trust-root.json from the server's data dir"
        ) from e
    except OSError as e:
        raise TrustRootError(f"trust root {path} cannot be read: {e}") from e
    if len(data) > MAX_TRUST_ROOT_BYTES:
        raise TrustRootError(f"trust root {path} is larger than {MAX_TRUST_ROOT_BYTES} bytes")
    return parse_trust_root(data, source=str(path))


def parse_trust_root(data: bytes, *, source: str = "trust root") -> TrustRoot:
    """Parses trust-root.json bytes (see load_trust_root)."""
    fix = "copy trust-root.json again from the server's data dir"
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrustRootError(f"{source} is not JSON ({e}): {fix}") from e
    if not isinstance(doc, dict) or doc.get("fleetcast_trust_root") != TRUST_ROOT_FORMAT:
        raise TrustRootError(
            f"{source} is not a Fleetcast trust root (expected a JSON object with "
            f'"fleetcast_trust_root": {TRUST_ROOT_FORMAT}): {fix}'
        )
    roots = {}
    for key in ("image_root", "director_root"):
        value = doc.get(key)
        if not isinstance(value, str):
            raise TrustRootError(f"{source} has no {key} string: {fix}")
        try:
            roots[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise TrustRootError(f"{source} {key} is not valid base64 ({e}): {fix}") from e
        _check_self_signed(roots[key], f"{source} {key}", fix)
    return TrustRoot(image_root=roots["image_root"], director_root=roots["director_root"])


class Verifier:
    """Checks the device's assignment against both repositories. One check at a time."""

    def __init__(
        self,
        *,
        trust_root: TrustRoot,
        state_dir: Path,
        fetcher: FetcherInterface,
        config: TrustConfig = TrustConfig(),
        device_id: str | None = None,
    ) -> None:
        self._root = trust_root
        self._state_dir = state_dir
        self._fetcher = fetcher
        self._config = config
        self._device_id = check_device_id(device_id or config.device_id)
        self._updater_config = UpdaterConfig(
            envelope_type=EnvelopeType.SIMPLE,
            root_max_length=config.root_max_bytes,
            timestamp_max_length=config.timestamp_max_bytes,
            snapshot_max_length=config.snapshot_max_bytes,
            targets_max_length=config.targets_max_bytes,
        )

    def check(self) -> VerifiedAssignment | None:
        """The verified assignment, or None when the director assigns nothing."""
        if not isinstance(self._fetcher, BundleFetcher):
            return self._check()
        self._fetcher.prefetch(self._trusted_versions())
        try:
            return self._check()
        finally:
            self._fetcher.forget()

    def _trusted_versions(self) -> dict[str, dict[str, int]]:
        """The versions this device trusts (from its state dir), as a bundle request names them.
        Only hints for the server: whatever comes back is verified by ngclient."""
        versions: dict[str, dict[str, int]] = {}
        for scheme, name in (("fleetcast-image", "image"), ("fleetcast-director", DIRECTOR_DIR)):
            folder = self._state_dir / name
            found = {role: _stored_version(folder / f"{role}.json")
                     for role in ("root", "timestamp", "snapshot", "targets")}
            if name == DIRECTOR_DIR:
                found["bin"] = _stored_version(folder / f"{_device_bin(folder, self._device_id)}.json")
            versions[scheme] = found
        return versions

    def _check(self) -> VerifiedAssignment | None:
        director = self._updater(DIRECTOR_DIR, DIRECTOR_URL, self._root.director_root)
        with _tuf_errors("director"):
            director.refresh()
            entry = self._director_entry(director)
        if entry is None:
            logger.debug("no assignment device_id=%s", self._device_id)
            return None
        target, version = entry
        fields = _custom_fields(_fleetcast_custom(target), self._device_id)
        sha256 = _sha256(target.hashes.get("sha256"), "director target sha256")
        path = f"artifacts/{sha256}"
        _length(target.length, "director target length", self._config.max_artifact_bytes)

        image = self._updater("image", IMAGE_URL, self._root.image_root)
        with _tuf_errors("image"):
            image.refresh()
            _require_same(image.get_targetinfo(path), path, target.length, sha256, "model")
            golden = fields["golden"]
            if golden is not None:
                _require_same(image.get_targetinfo(golden.path), golden.path, golden.length,
                              golden.sha256, "golden")
        assignment = _make(fields, path, sha256, target.length, version)
        logger.info(
            "assignment verified device_id=%s deployment=%s model=%s version=%s director_version=%d",
            self._device_id, assignment.deployment_id, assignment.model, assignment.version, version,
        )
        return assignment

    def _updater(self, name: str, url: str, root: bytes) -> Updater:
        metadata_dir = self._state_dir / name
        metadata_dir.mkdir(parents=True, exist_ok=True)
        with _tuf_errors(name):
            # A new Updater per check: ngclient allows one refresh per Updater.
            return Updater(str(metadata_dir), url, fetcher=self._fetcher,
                           config=self._updater_config, bootstrap=root)

    def _director_entry(self, director: Updater) -> tuple[TargetFile, int] | None:
        """This device's entry and the version of the bin that signed it, or None."""
        path = device_target_path(self._device_id)
        # get_targetinfo walks the verified delegation to the device's bin (fetching and
        # checking it against the snapshot); None means the signed bin has no entry.
        target = director.get_targetinfo(path)
        if target is None:
            return None
        # ngclient does not say which role answered: read the bin it just verified and
        # persisted, and confirm it holds the same entry.
        top: Targets = _read_signed(self._state_dir / DIRECTOR_DIR / "targets.json")
        succinct = top.delegations.succinct_roles if top.delegations is not None else None
        if succinct is None:
            raise VerificationError("director targets metadata does not delegate to hash bins")
        role = succinct.get_role_for_target(path)
        listed: Targets = _read_signed(self._state_dir / DIRECTOR_DIR / f"{role}.json")
        if listed.targets.get(path) != target:
            raise VerificationError(f"director entry {path!r:.90} changed during the check")
        return target, listed.version


@contextmanager
def _tuf_errors(repository: str) -> Iterator[None]:
    """Maps python-tuf exceptions onto the agent's error tree."""
    try:
        yield
    except tuf_errors.ExpiredMetadataError as e:
        raise VerificationError(
            f"{repository} metadata expired ({e}): the server must re-sign its timestamps"
        ) from e
    except tuf_errors.BadVersionNumberError as e:
        raise VerificationError(
            f"{repository} metadata is older than what this device trusted (rollback refused): {e}"
        ) from e
    except tuf_errors.UnsignedMetadataError as e:
        raise VerificationError(f"{repository} metadata has a bad signature: {e}") from e
    except tuf_errors.LengthOrHashMismatchError as e:
        raise VerificationError(f"{repository} metadata does not match its signed hash: {e}") from e
    except tuf_errors.DownloadLengthMismatchError as e:
        raise VerificationError(f"{repository} metadata is longer than allowed: {e}") from e
    except tuf_errors.RepositoryError as e:
        raise VerificationError(f"{repository} metadata is invalid: {e or e.__cause__}") from e
    except tuf_errors.DownloadError as e:
        raise ServerUnavailableError(f"{repository} metadata could not be fetched: {e}") from e


def _check_self_signed(data: bytes, what: str, fix: str) -> None:
    try:
        envelope = SimpleEnvelope.from_bytes(data)
        root = envelope.get_signed()
        if not isinstance(root, Root):
            raise TrustRootError(f"{what} is a {root.type} metadata, not a root: {fix}")
        root.verify_delegate(Root.type, envelope.pae(), envelope.signatures)
    except tuf_errors.UnsignedMetadataError as e:
        raise TrustRootError(f"{what} is not signed by its own root keys ({e}): {fix}") from e
    except tuf_errors.RepositoryError as e:
        raise TrustRootError(f"{what} is not a TUF root envelope ({e or e.__cause__}): {fix}") from e


def _stored_version(path: Path) -> int:
    """The version of metadata this agent verified and kept, 0 when there is none (or it is unreadable:
    ngclient then finds that out itself)."""
    try:
        return SimpleEnvelope.from_bytes(path.read_bytes()).get_signed().version
    except (OSError, ValueError, KeyError, TypeError, tuf_errors.RepositoryError):
        return 0


def _device_bin(folder: Path, device_id: str) -> str:
    """The hash bin the kept director targets delegate this device's entry to ("" when unknown)."""
    try:
        top = _read_signed(folder / "targets.json")
    except (OSError, ValueError, KeyError, TypeError, tuf_errors.RepositoryError, VerificationError):
        return ""
    succinct = top.delegations.succinct_roles if top.delegations is not None else None
    return succinct.get_role_for_target(device_target_path(device_id)) if succinct is not None else ""


def _read_signed(path: Path) -> Targets:
    signed = SimpleEnvelope.from_bytes(path.read_bytes()).get_signed()
    if not isinstance(signed, Targets):
        raise VerificationError(f"director metadata {path.name} is not a targets role")
    return signed


def _require_same(found: TargetFile | None, path: str, length: int, sha256: str, what: str) -> None:
    if found is None:
        raise VerificationError(f"image repository does not list the {what} target {path}")
    if found.length != length:
        raise VerificationError(
            f"image and director disagree on the {what} length: {found.length} != {length}"
        )
    if found.hashes.get("sha256") != sha256:
        raise VerificationError(f"image and director disagree on the {what} sha256 of {path}")


def _fleetcast_custom(target: TargetFile) -> Mapping[str, Any]:
    custom = target.custom
    inner = custom.get("fleetcast") if isinstance(custom, dict) else None
    if not isinstance(inner, dict):
        raise VerificationError("director target has no custom.fleetcast object")
    return inner


def _custom_fields(doc: Mapping[str, Any], device_id: str) -> dict[str, Any]:
    if doc.get("device_id") != device_id or not isinstance(device_id, str):
        raise VerificationError(
            f"director target is for device {doc.get('device_id')!r:.80}, not this device {device_id!r}"
        )
    fields: dict[str, Any] = {"device_id": device_id}
    for key in ("deployment_id", "model", "version", "variant", "format"):
        value = doc.get(key)
        if not isinstance(value, str) or not FIELD_TEXT.fullmatch(value):
            raise VerificationError(f"director field {key} {value!r:.80} is not a short name")
        fields[key] = value
    fields["golden"] = _golden(doc.get("golden"))
    fields["inputs"] = _inputs(doc.get("inputs"))
    return fields


def _golden(value: Any) -> GoldenRef | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise VerificationError("director field golden is neither null nor an object")
    sha256 = _sha256(value.get("sha256"), "golden sha256")
    if value.get("path") != f"artifacts/{sha256}":
        raise VerificationError(f"golden path {value.get('path')!r:.90} is not artifacts/<sha256>")
    tolerances = []
    for key in ("atol", "rtol"):
        number = value.get(key)
        if isinstance(number, bool) or not isinstance(number, (int, float)) \
                or not math.isfinite(number) or not 0 <= number <= 1e6:
            raise VerificationError(f"golden {key} {number!r:.40} is not a finite number >= 0")
        tolerances.append(float(number))
    return GoldenRef(path=f"artifacts/{sha256}", sha256=sha256,
                     length=_length(value.get("length"), "golden length", 2**31),
                     atol=tolerances[0], rtol=tolerances[1])


def _inputs(value: Any) -> Mapping[str, Mapping[str, Any]]:
    if not isinstance(value, Mapping) or len(value) > MAX_INPUTS:
        raise VerificationError(f"director field inputs is not an object of at most {MAX_INPUTS} entries")
    inputs = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= 256:
            raise VerificationError(f"input name {name!r:.80} is not 1-256 characters")
        dtype = spec.get("dtype") if isinstance(spec, Mapping) else None
        shape = spec.get("shape") if isinstance(spec, Mapping) else None
        if not isinstance(dtype, str) or not FIELD_TEXT.fullmatch(dtype):
            raise VerificationError(f"input {name!r} has no valid dtype")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_dim(d) for d in shape):
            raise VerificationError(f"input {name!r} shape must be a list of at most {MAX_RANK} dims")
        inputs[name] = MappingProxyType({"dtype": dtype, "shape": tuple(shape)})
    return MappingProxyType(inputs)


def _is_dim(dim: Any) -> bool:
    if dim is None:
        return True
    if isinstance(dim, str):
        return len(dim) <= 64
    return isinstance(dim, int) and not isinstance(dim, bool) and -1 <= dim < 2**31


def _sha256(value: Any, what: str) -> str:
    if not isinstance(value, str) or not SHA256_HEX.fullmatch(value):
        raise VerificationError(f"{what} {value!r:.80} is not 64 lowercase hex digits")
    return value


def _length(value: Any, what: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise VerificationError(f"{what} {value!r:.40} is not an integer in 0..{maximum}")
    return value


def _count(value: Any, what: str) -> int:
    return _length(value, what, 2**63)


def _make(fields: Mapping[str, Any], path: str, sha256: str, length: int, version: int) -> VerifiedAssignment:
    return VerifiedAssignment(
        deployment_id=fields["deployment_id"], device_id=fields["device_id"], model=fields["model"],
        version=fields["version"], variant=fields["variant"], format=fields["format"],
        target_path=path, sha256=sha256, length=length, golden=fields["golden"],
        inputs=fields["inputs"], director_version=version, _seal=_SEAL,
    )


def _thaw(inputs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {name: {"dtype": spec["dtype"], "shape": list(spec["shape"])} for name, spec in inputs.items()}
