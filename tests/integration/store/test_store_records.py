"""The store contract: records round-trip, migrations are recorded once, on every store."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcast.server.store import Device, DeviceIdentity, Golden, ModelVersion, Variant
from fleetcast.server.store import postgres as pg_store
from fleetcast.server.store import sqlite as sqlite_store
from fleetcast.server.store.postgres import PostgresStore
from tests.integration.store.conftest import OpenStore


def test_migrations_are_applied_in_order_and_recorded_once(open_store: OpenStore) -> None:
    store = open_store()
    steps = pg_store.MIGRATIONS if isinstance(store, PostgresStore) else sqlite_store.MIGRATIONS
    assert store.applied_migrations() == [m.__name__ for m in steps]
    store.close()
    reopened = open_store()
    assert reopened.applied_migrations() == [m.__name__ for m in steps]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(repository=st.sampled_from(["image", "director/dev-1"]), name=st.text(min_size=1, max_size=40).filter(
    lambda s: "\x00" not in s), data=st.binary(max_size=2048))
def test_metadata_round_trips_exact_bytes(store, repository: str, name: str, data: bytes) -> None:
    store.put_metadata(repository, name, data)
    assert store.get_metadata(repository, name) == data
    store.put_metadata(repository, name, data + b"!")
    assert store.get_metadata(repository, name) == data + b"!"
    assert store.get_metadata(repository, name + "x") is None


def _version(model: str, version: str, at: float, *variants: str) -> ModelVersion:
    return ModelVersion(model=model, version=version, created_at=at, inputs={"x": {"dtype": "float32", "shape": [1]}},
                        outputs={}, golden=Golden("a" * 64, 10, 1e-4, 1e-3),
                        variants=tuple(Variant(v, "onnx", "b" * 64, 20) for v in variants or ("original",)))


def test_latest_version_is_the_last_added_not_the_largest_name(store) -> None:
    store.add_version(_version("m", "9", 1.0))
    store.add_version(_version("m", "10", 2.0))
    store.add_version(_version("m", "b-final", 3.0))
    assert store.latest_version("m").version == "b-final"
    assert [v.version for v in store.versions("m")] == ["9", "10", "b-final"]
    assert store.models() == [("m", "b-final", 3)]
    assert store.version("m", "10").variants[0].sha256 == "b" * 64


def test_variants_keep_the_order_they_were_added_and_a_replaced_one_goes_last(store) -> None:
    store.add_version(_version("m", "1", 1.0, "zeta", "alpha"))
    store.add_variant("m", "1", Variant("mid", "onnx", "c" * 64, 5, metrics={"size": 5}))
    store.add_variant("m", "1", Variant("zeta", "onnx", "d" * 64, 6, golden=Golden("e" * 64, 1, 0.1, 0.2)))
    got = store.version("m", "1").variants
    assert [v.variant for v in got] == ["alpha", "mid", "zeta"]
    assert got[1].metrics == {"size": 5} and got[2].golden == Golden("e" * 64, 1, 0.1, 0.2)
    store.set_compression("m", "1", {"status": "done", "levels": []})
    assert store.version("m", "1").compression == {"status": "done", "levels": []}


def test_device_token_lookup_follows_rotation(store) -> None:
    d = Device("dev-1", "t1", "x86-cpu", ("onnxruntime",), "lab", {}, "0.1", 1.0)
    store.put_device(d)
    store.put_device(Device("dev-1", "t2", "arm-cpu", (), "lab", {}, "0.2", 5.0))
    assert store.device_by_token("t1") is None
    again = store.device_by_token("t2")
    assert again is not None and again.hardware_class == "arm-cpu" and again.enrolled_at == 1.0


def test_devices_sort_bytewise_and_reports_keep_the_last_error(store) -> None:
    for device_id in ["dev-b", "Dev-a", "dev-a", "dev_a", "dev-A"]:
        store.put_device(Device(device_id, f"t-{device_id}", "x86-cpu", ("onnxruntime",), "g1", {"k": "v"}, "1", 1.0))
    assert [d.device_id for d in store.devices()] == sorted(["dev-b", "Dev-a", "dev-a", "dev_a", "dev-A"])
    assert [p.device_id for p in store.device_profiles(group="g1")] == [d.device_id for d in store.devices()]
    ordered = sorted(["dev-b", "Dev-a", "dev-a", "dev_a", "dev-A"])
    assert [d.device_id for d in store.devices(after=ordered[1], limit=2)] == ordered[2:4]
    assert [d.device_id for d in store.devices(group="g1", after=ordered[3])] == ordered[4:]
    assert store.devices(group="g2", limit=3) == []
    store.record_report("dev-a", at=7.0, state="trial", active_model="m@1", deployment_id="dep-1", error="bad hash")
    store.record_report("dev-a", at=8.0, state="idle", active_model="m@1", deployment_id="dep-1")
    d = store.device("dev-a")
    assert (d.state, d.last_seen, d.last_error, d.last_error_at, d.labels) == ("idle", 8.0, "bad hash", 7.0, {"k": "v"})
    store.touch_device("dev-a", 9.5)
    assert store.device("dev-a").last_seen == 9.5 and store.devices(group="nobody") == []


def test_a_device_identity_is_replaced_whole(store) -> None:
    store.put_device_identity(DeviceIdentity("dev-1", "PEM1", "c" * 64, 1.0))
    store.put_device_identity(DeviceIdentity("dev-1", "PEM2", "d" * 64, 2.0, reprovision_approved_at=3.0))
    assert store.device_identity("dev-1") == DeviceIdentity("dev-1", "PEM2", "d" * 64, 2.0, 3.0)
    assert store.device_identity("dev-2") is None


def test_pins_are_set_replaced_and_cleared(store) -> None:
    store.set_pin("m", "group:lab", "int8")
    store.set_pin("m", "group:lab", "fp16")
    store.set_pin("m", "hardware:rk3399", "rknn")
    assert store.pins("m") == {"group:lab": "fp16", "hardware:rk3399": "rknn"}
    store.set_pin("m", "group:lab", None)
    assert store.pins("m") == {"hardware:rk3399": "rknn"} and store.pins("other") == {}
