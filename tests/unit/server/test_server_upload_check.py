"""Hostile uploads are refused by the bounded check; concurrent uploads get distinct versions;
a refused or failed upload leaves nothing signed and nothing recorded; orphan blobs are swept."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tuf.api.dsse import SimpleEnvelope

from fleetcast.server.config import ServerConfig
from fleetcast.server.errors import FleetcastError, InvalidRequest, ModelTooCostly, VersionExists
from fleetcast.server.services import Services, open_services
from fleetcast.server.signing import artifact_path
from tests.support import hostile, models

MiB = 1024**2


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[Services]:
    s = open_services(ServerConfig(data_dir=tmp_path / "data", max_upload_bytes=MiB, upload_check_time_s=3.0,
                                   upload_check_memory_bytes=1024 * MiB, max_golden_unpacked_bytes=64 * MiB))
    try:
        yield s
    finally:
        s.close()


def _stage(services: Services, data: bytes):
    staged = services.blobs.stage(len(data) + 1)
    staged.write(data)
    return staged


def _signed_paths(services: Services) -> set[str]:
    return set(SimpleEnvelope.from_bytes(services.signer.metadata("image", "targets.json")).get_signed().targets)


def _blobs(services: Services) -> set[str]:
    return {p.name for p in (services.blobs.root / "sha256").rglob("*") if p.is_file()}


@pytest.mark.parametrize("model, words", [
    (hostile.endless_loop(), "longer than 3 s"),
    (hostile.huge_constant(), "more than 1073741824 bytes of memory"),
])
def test_hostile_models_are_refused_by_the_bounded_check_and_nothing_is_kept(
    bounded: Services, model, words: str
) -> None:
    before_signed, before_blobs = _signed_paths(bounded), _blobs(bounded)
    started = time.monotonic()
    with pytest.raises(ModelTooCostly, match=words):
        bounded.registry.add_version("hostile", _stage(bounded, models.to_bytes(model)))
    assert time.monotonic() - started < 30
    assert bounded.store.versions("hostile") == []
    assert _signed_paths(bounded) == before_signed and _blobs(bounded) == before_blobs
    assert list(bounded.blobs.tmp_dir.iterdir()) == []


def test_a_golden_zip_bomb_is_refused_before_it_is_unpacked(bounded: Services, model_bytes: bytes) -> None:
    bomb = hostile.npz_bomb("input", unpacked_mib=1024)
    assert len(bomb) < 2 * MiB
    with pytest.raises(InvalidRequest, match="unpacks to 1073741952 bytes"):
        bounded.registry.add_version("digits", _stage(bounded, model_bytes), golden=_stage(bounded, bomb))
    assert bounded.store.versions("digits") == []


@pytest.fixture
def roomy(tmp_path: Path) -> Iterator[Services]:
    """Twelve checks at once on a loaded machine: limits far above what a tiny model needs."""
    s = open_services(ServerConfig(data_dir=tmp_path / "data", max_upload_bytes=MiB, upload_check_time_s=120.0))
    try:
        yield s
    finally:
        s.close()


def test_concurrent_uploads_to_one_model_get_distinct_versions_and_every_signed_model_has_one(
    roomy: Services
) -> None:
    bounded = roomy
    start = threading.Barrier(12)

    def upload(i: int) -> str | FleetcastError:
        staged = _stage(bounded, models.to_bytes(models.tiny_classifier(1000 + i)))
        start.wait()
        try:
            return bounded.registry.add_version("race", staged, version="named" if i % 4 == 0 else None).version
        except FleetcastError as e:
            return e

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(upload, range(12)))
    versions = [r for r in results if isinstance(r, str)]
    errors = [r for r in results if not isinstance(r, str)]
    assert len(versions) == len(set(versions)), f"a version was given twice: {versions}"
    assert all(isinstance(e, VersionExists) for e in errors), errors
    assert len(errors) == 2, f"two of the three uploads naming one version must be refused: {results}"
    assert sorted(v for v in versions if v != "named") == [str(n) for n in range(1, 10)]
    recorded = {v.version: v for v in bounded.store.versions("race")}
    assert sorted(recorded) == sorted(versions)
    signed = _signed_paths(bounded)
    for v in recorded.values():
        assert artifact_path(v.variants[0].sha256) in signed
    assert len(signed) == 2 * len(recorded), "something was signed without a version (a model and a golden each)"


def test_unreferenced_blobs_older_than_the_grace_period_are_swept_at_start(tmp_path: Path, model_bytes: bytes) -> None:
    config = ServerConfig(data_dir=tmp_path / "data", orphan_blob_grace_s=600.0)
    services = open_services(config)
    try:
        kept = services.registry.add_version("digits", _stage(services, model_bytes))
        old_orphan, _ = services.blobs.put_bytes(b"written, then the server crashed before the record")
        new_orphan, _ = services.blobs.put_bytes(b"an upload still in flight")
    finally:
        services.close()
    an_hour_ago = time.time() - 3600
    for sha256 in (old_orphan, kept.variants[0].sha256, kept.golden.sha256):
        os.utime(services.blobs.path(sha256), (an_hour_ago, an_hour_ago))
    reopened = open_services(config)
    try:
        assert not reopened.blobs.exists(old_orphan)
        assert reopened.blobs.exists(new_orphan)
        assert reopened.blobs.exists(kept.variants[0].sha256) and reopened.blobs.exists(kept.golden.sha256)
    finally:
        reopened.close()
