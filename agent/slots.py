"""A/B model slots and the atomic `active` pointer.

```
DATA/slots/a/  model.onnx (or model.<format>), golden.npz, manifest.json
DATA/slots/b/  ...
DATA/active    "a" or "b", replaced atomically
```
Files in a slot are named by fixed names only; the manifest is the verified
assignment as JSON and is written last, so a slot whose install was interrupted has
no manifest and never loads. Loading re-hashes the model (and golden) file against
the manifest: a file changed or corrupted on disk is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fleetcast.agent.datadir import DataDir, fsync_dir, read_bounded, write_atomic
from fleetcast.agent.errors import ActivationError, IncompatibleModelError, VerificationError
from fleetcast.agent.trust import VerifiedAssignment
from fleetcast.proto import formats

logger = logging.getLogger(__name__)

LETTERS: Final = ("a", "b")
MODEL_FILES: Final[Mapping[str, str]] = {f.name: f.file_name for f in formats.FORMATS.values()}
GOLDEN_FILE: Final = "golden.npz"
MANIFEST_FILE: Final = "manifest.json"
_MAX_MANIFEST_BYTES: Final = 256 * 1024
_MAX_POINTER_BYTES: Final = 16
_COPY_CHUNK_BYTES: Final = 1024 * 1024


def other(slot: str | None) -> str:
    """The slot a new model goes into when `slot` is serving."""
    return "b" if slot == "a" else "a"


def assignment_doc(assignment: VerifiedAssignment) -> dict[str, Any]:
    doc = assignment.to_json()
    if isinstance(doc, (bytes, str)):
        doc = json.loads(doc)
    return dict(doc)


def manifest_digest(assignment: VerifiedAssignment) -> str:
    canonical = json.dumps(assignment_doc(assignment), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_file_name(fmt: str) -> str:
    try:
        return MODEL_FILES[fmt]
    except KeyError:
        raise IncompatibleModelError(f"model format {fmt!r} is not one this agent installs") from None


def hash_file(path: Path, *, max_bytes: int | None = None) -> tuple[str, int]:
    """(sha256 hex, length) of a file, reading at most `max_bytes` + 1 bytes."""
    digest, length = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK_BYTES):
            digest.update(chunk)
            length += len(chunk)
            if max_bytes is not None and length > max_bytes:
                break
    return digest.hexdigest(), length


def check_file(path: Path, sha256: str, length: int, what: str) -> None:
    """Raises VerificationError unless the file has exactly the signed length and sha256."""
    try:
        actual, size = hash_file(path, max_bytes=length)
    except FileNotFoundError:
        raise VerificationError(f"{what} file is missing") from None
    except OSError as e:
        raise VerificationError(f"{what} file cannot be read: {e}") from e
    if size != length or actual != sha256:
        raise VerificationError(
            f"{what} file does not match its signed length/sha256 "
            f"(length {size} vs {length}, sha256 {actual[:12]} vs {sha256[:12]})")


def parse_manifest(data: bytes, what: str = "slot manifest") -> VerifiedAssignment:
    """A slot manifest's bytes as the assignment it records; raises VerificationError only."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:   # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise VerificationError(f"{what} is not JSON: {str(e)[:120]}") from e
    try:
        return VerifiedAssignment.from_saved(doc)
    except VerificationError as e:
        raise VerificationError(f"{what} is unreadable: {e}") from e
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
        raise VerificationError(f"{what} is unreadable: {type(e).__name__}: {str(e)[:120]}") from e


@dataclass(frozen=True)
class InstalledModel:
    slot: str
    assignment: VerifiedAssignment
    model_path: Path
    golden_path: Path | None


class Slots:
    def __init__(self, data: DataDir) -> None:
        self.data = data

    def path(self, slot: str) -> Path:
        if slot not in LETTERS:
            raise ValueError(f"slot {slot!r} is not a or b")
        return self.data.slots / slot

    def active(self) -> str | None:
        """The slot the pointer names, None when there is none (or it is unreadable)."""
        try:
            return self.read_pointer()
        except VerificationError as e:
            logger.error("%s: ignoring it", e)
            return None

    def read_pointer(self) -> str | None:
        """The slot the pointer names, None when there is none; raises VerificationError
        when the pointer is oversized, unreadable or names no slot."""
        try:
            text = read_bounded(self.data.active_pointer, _MAX_POINTER_BYTES).decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise VerificationError(f"active pointer {self.data.active_pointer} is unreadable ({e})") from e
        if text not in LETTERS:
            raise VerificationError(f"active pointer {self.data.active_pointer} holds {text[:8]!r}, not a slot letter")
        return text

    def flip(self, slot: str | None) -> None:
        """Points `active` at `slot` atomically (None removes the pointer)."""
        if slot is None:
            self.data.active_pointer.unlink(missing_ok=True)
            fsync_dir(self.data.root)
        else:
            self.path(slot)
            write_atomic(self.data.active_pointer, slot.encode())
        logger.info("active_slot=%s", slot)

    def install(self, slot: str, assignment: VerifiedAssignment, *,
                model_file: Path, golden_file: Path | None) -> InstalledModel:
        """Installs into `slot` from scratch; safe to repeat after an interruption."""
        if slot == self.active():
            raise ActivationError(f"refusing to install into slot {slot}: it is the one serving")
        target = self.path(slot)
        name = model_file_name(assignment.format)
        (target / MANIFEST_FILE).unlink(missing_ok=True)   # first: a half slot never loads
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(mode=0o700, parents=True)
        self._copy(model_file, target / name, assignment.sha256, assignment.length, "model")
        golden = assignment.golden
        if golden is not None:
            if golden_file is None:
                raise VerificationError("the assignment names a golden file but none was downloaded")
            self._copy(golden_file, target / GOLDEN_FILE, golden.sha256, golden.length, "golden")
        fsync_dir(target)
        manifest = json.dumps(assignment_doc(assignment), sort_keys=True).encode()
        write_atomic(target / MANIFEST_FILE, manifest)
        logger.info("slot=%s installed model=%s version=%s sha256=%s", slot, assignment.model,
                    assignment.version, assignment.sha256[:12])
        return self.load(slot)

    def load(self, slot: str) -> InstalledModel:
        """The slot's model, re-checked against its manifest; raises VerificationError."""
        target = self.path(slot)
        assignment = self.manifest(slot)
        model_path = target / model_file_name(assignment.format)
        check_file(model_path, assignment.sha256, assignment.length, f"slot {slot} model")
        golden_path = None
        if assignment.golden is not None:
            golden_path = target / GOLDEN_FILE
            check_file(golden_path, assignment.golden.sha256, assignment.golden.length,
                       f"slot {slot} golden")
        return InstalledModel(slot=slot, assignment=assignment, model_path=model_path,
                              golden_path=golden_path)

    def manifest(self, slot: str) -> VerifiedAssignment:
        """The slot's manifest alone (files not re-hashed); raises VerificationError."""
        try:
            data = read_bounded(self.path(slot) / MANIFEST_FILE, _MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise VerificationError(f"slot {slot} has no manifest: nothing installed") from None
        except (OSError, ValueError) as e:
            raise VerificationError(f"slot {slot} manifest is unreadable: {e}") from e
        return parse_manifest(data, f"slot {slot} manifest")

    @staticmethod
    def _copy(source: Path, dest: Path, sha256: str, length: int, what: str) -> None:
        digest, size = hashlib.sha256(), 0
        with open(source, "rb") as src, open(dest, "wb") as dst:
            os.fchmod(dst.fileno(), 0o600)
            while chunk := src.read(_COPY_CHUNK_BYTES):
                size += len(chunk)
                if size > length:
                    break
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if size != length or digest.hexdigest() != sha256:
            dest.unlink(missing_ok=True)
            raise VerificationError(f"downloaded {what} does not match its signed length/sha256")
