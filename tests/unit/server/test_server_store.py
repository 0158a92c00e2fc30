from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetcast.proto import telemetry as buckets
from fleetcast.server.store import Assignment, Device, Golden, ModelVersion, StatsRow, Variant
from fleetcast.server.store.sqlite import MIGRATIONS, SqliteStore


def test_migrations_are_applied_in_order_and_recorded_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "f.db")
    assert store.applied_migrations() == [m.__name__ for m in MIGRATIONS]
    store.close()
    reopened = SqliteStore(tmp_path / "f.db")
    assert reopened.applied_migrations() == [m.__name__ for m in MIGRATIONS]
    reopened.close()
    rows = sqlite3.connect(tmp_path / "f.db").execute("SELECT COUNT(*) FROM migrations").fetchone()
    assert rows[0] == len(MIGRATIONS)


@settings(max_examples=30, deadline=None)
@given(repository=st.sampled_from(["image", "director/dev-1"]), name=st.text(min_size=1, max_size=40),
       data=st.binary(max_size=2048))
def test_metadata_round_trips_exact_bytes(tmp_path_factory, repository: str, name: str, data: bytes) -> None:
    store = SqliteStore(tmp_path_factory.mktemp("m") / "f.db")
    store.put_metadata(repository, name, data)
    assert store.get_metadata(repository, name) == data
    store.put_metadata(repository, name, data + b"!")
    assert store.get_metadata(repository, name) == data + b"!"
    assert store.get_metadata(repository, name + "x") is None
    store.close()


def _version(model: str, version: str, at: float) -> ModelVersion:
    return ModelVersion(model=model, version=version, created_at=at, inputs={"x": {"dtype": "float32", "shape": [1]}},
                        outputs={}, golden=Golden("a" * 64, 10, 1e-4, 1e-3),
                        variants=(Variant("original", "onnx", "b" * 64, 20),))


def test_latest_version_is_the_last_added_not_the_largest_name(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "f.db")
    store.add_version(_version("m", "9", 1.0))
    store.add_version(_version("m", "10", 2.0))
    store.add_version(_version("m", "b-final", 3.0))
    assert store.latest_version("m").version == "b-final"
    assert [v.version for v in store.versions("m")] == ["9", "10", "b-final"]
    assert store.models() == [("m", "b-final", 3)]
    assert store.version("m", "10").variants[0].sha256 == "b" * 64
    store.close()


def test_device_token_lookup_follows_rotation(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "f.db")
    d = Device("dev-1", "t1", "x86-cpu", ("onnxruntime",), "lab", {}, "0.1", 1.0)
    store.put_device(d)
    store.put_device(Device("dev-1", "t2", "arm-cpu", (), "lab", {}, "0.2", 5.0))
    assert store.device_by_token("t1") is None
    again = store.device_by_token("t2")
    assert again is not None and again.hardware_class == "arm-cpu" and again.enrolled_at == 1.0
    store.close()


def test_telemetry_batch_is_counted_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "f.db")
    hist = buckets.empty()
    hist[3] = 5
    row = StatsRow("m", "1", "original", 5, 1, 12.5, tuple(hist))
    assert store.ingest_telemetry("dev-1", "b1", [row], 1.0) is False
    assert store.ingest_telemetry("dev-1", "b1", [row], 2.0) is True
    assert store.ingest_telemetry("dev-2", "b1", [row], 2.0) is False
    [agg] = store.aggregates(device_id="dev-1")
    assert (agg.inferences, agg.errors, agg.histogram[3]) == (5, 1, 5)
    store.close()


def test_set_assignments_writes_many_in_one_go_and_replaces_older_ones(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite")
    store.set_assignment("dev-0", Assignment("dev-0", "dep-old", {"model": "m", "version": "1"}))
    store.set_assignments([Assignment(f"dev-{i}", "dep-new", {"model": "m", "version": "2", "i": i})
                           for i in range(300)])

    found = store.assignments_of([f"dev-{i}" for i in range(301)])
    assert len(found) == 300 and found["dev-0"].deployment_id == "dep-new"
    assert found["dev-299"].document == {"model": "m", "version": "2", "i": 299}
    store.set_assignment("dev-1", None)
    assert store.assignment("dev-1") is None and store.assignment("dev-2") is not None
