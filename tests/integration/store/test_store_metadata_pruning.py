"""Superseded signed metadata is pruned, on every store: the current files, every root
and timestamp.json stay, and a device verifying from its trust root still gets through."""

from __future__ import annotations

import asyncio
import datetime
import functools
import sqlite3
import time
from pathlib import Path

import psycopg
from tuf.api.dsse import SimpleEnvelope
from tuf.api.metadata import Snapshot, Timestamp

from fleetcast.agent.trust import parse_trust_root
from fleetcast.server.signing import DIRECTOR, IMAGE, ArtifactTarget, DirectorAssignment, Signer
from fleetcast.server.simulator.verify import RepositoryView, SignatureCache, agree, parse_root
from fleetcast.server.store import Store
from fleetcast.server.store.open import sqlite_path
from tests.integration.store.conftest import OpenStore, run_sql

SHA = "cd" * 32


def _publish_a_few(signer: Signer, devices: int = 6, rounds: int = 3) -> None:
    for r in range(rounds):
        signer.add_artifact(ArtifactTarget(sha256=f"{r:02x}" * 32, length=10 + r, custom={
            "model": "m", "version": str(r + 1), "variant": "original", "format": "onnx"}))
        signer.assign_many({f"dev-{d}": DirectorAssignment(
            deployment_id=f"dep-{r}", model="m", version=str(r + 1), variant="original", format="onnx",
            sha256=f"{r:02x}" * 32, length=10 + r) for d in range(devices)})


def _names(url: str) -> set[tuple[str, str]]:
    return set(_rows(url, "SELECT repository, name FROM metadata"))


def _rows(url: str, sql: str) -> list[tuple]:
    if url.startswith("sqlite:"):
        with sqlite3.connect(sqlite_path(url)) as c:
            return [tuple(r) for r in c.execute(sql)]
    with psycopg.connect(url) as c:
        return [tuple(r) for r in c.execute(sql)]


def _referenced(store: Store, repository: str) -> set[str]:
    """The file names the current timestamp reaches: its snapshot and every role that lists."""
    timestamp = SimpleEnvelope.from_bytes(store.get_metadata(repository, "timestamp.json")).get_signed()
    assert isinstance(timestamp, Timestamp)
    snapshot_name = f"{timestamp.snapshot_meta.version}.snapshot.json"
    snapshot = SimpleEnvelope.from_bytes(store.get_metadata(repository, snapshot_name)).get_signed()
    assert isinstance(snapshot, Snapshot)
    return {snapshot_name, *(f"{meta.version}.{role}" for role, meta in snapshot.meta.items())}


def test_pruning_drops_only_superseded_files_and_devices_still_verify(open_store: OpenStore, store_url: str,
                                                                       tmp_path: Path) -> None:
    store = open_store()
    signer = Signer.open(tmp_path / "keys", store)
    _publish_a_few(signer)
    before = _names(store_url)
    current = {repo: _referenced(store, repo) for repo in (IMAGE, DIRECTOR)}

    assert store.prune_metadata(superseded_before=time.time() - 3600) == 0   # nothing superseded that long ago
    assert _names(store_url) == before

    dropped = store.prune_metadata(superseded_before=time.time() + 1)
    after = _names(store_url)
    assert dropped == len(before - after) > 0
    for repo in (IMAGE, DIRECTOR):
        kept = {name for r, name in after if r == repo}
        assert current[repo] <= kept                      # everything the timestamp reaches
        assert "timestamp.json" in kept and "1.root.json" in kept
        # of each replaceable role, only its current version is left
        assert kept - {"timestamp.json"} - {n for n in kept if n.endswith(".root.json")} == current[repo]
    assert all(name.endswith(".root.json") or name == "timestamp.json" or name in current[repo]
               for repo, name in after)
    # a device verifying both repositories from its trust root still gets its entry
    trust = parse_trust_root(signer.trust_root())
    now = datetime.datetime.now(datetime.timezone.utc)

    async def fetch_as_a_device(repository: str, name: str) -> bytes | None:
        return store.get_metadata(repository, name)
    director = RepositoryView(DIRECTOR, parse_root(trust.director_root, "director root"), SignatureCache())
    image = RepositoryView(IMAGE, parse_root(trust.image_root, "image root"), SignatureCache())

    async def check_as_a_device() -> None:
        fetch_director = functools.partial(fetch_as_a_device, DIRECTOR)
        await director.refresh(fetch_director, now)
        seen = await director.entry(fetch_director, "dev-3", now)
        assert seen is not None and seen.hashes["sha256"] == "02" * 32
        agree(seen, await image.refresh(functools.partial(fetch_as_a_device, IMAGE), now))
    asyncio.run(check_as_a_device())
    # and signing goes on from what is left
    reopened = Signer.open(tmp_path / "keys", open_store())
    entry = reopened.director_entry("dev-3")
    assert entry is not None and entry.unrecognized_fields["custom"]["fleetcast"]["deployment_id"] == "dep-2"
    reopened.assign("dev-3", DirectorAssignment(deployment_id="dep-9", model="m", version="3", variant="original",
                                                format="onnx", sha256="02" * 32, length=12))
    assert reopened.director_entry("dev-3").unrecognized_fields["custom"]["fleetcast"]["deployment_id"] == "dep-9"
    assert store.prune_metadata(superseded_before=time.time() + 1) > 0   # what that publish replaced


def test_files_written_before_the_migration_become_prunable(open_store: OpenStore, store_url: str,
                                                           tmp_path: Path) -> None:
    store = open_store()
    signer = Signer.open(tmp_path / "keys", store)
    _publish_a_few(signer, rounds=2)
    store.close()
    # the metadata table as it was before roles were kept
    run_sql(store_url, "DROP INDEX metadata_roles", "ALTER TABLE metadata DROP COLUMN role",
            "ALTER TABLE metadata DROP COLUMN version", "ALTER TABLE metadata DROP COLUMN written_at",
            "DELETE FROM migrations WHERE name = 'add_metadata_roles'")
    migrated = open_store()
    assert "add_metadata_roles" in migrated.applied_migrations()
    roles = dict(((repo, name), role) for repo, name, role in _rows(store_url, "SELECT repository, name, role FROM metadata"))
    assert roles[(DIRECTOR, "1.root.json")] is None and roles[(DIRECTOR, "timestamp.json")] is None
    assert roles[(DIRECTOR, "1.snapshot.json")] == "snapshot" and roles[(IMAGE, "1.targets.json")] == "targets"
    assert any(role is not None and role.startswith("bin-") for role in roles.values())
    assert migrated.prune_metadata(superseded_before=time.time() + 1) > 0
    assert (DIRECTOR, "1.snapshot.json") not in _names(store_url)
    assert Signer.open(tmp_path / "keys", migrated).director_entry("dev-1") is not None
