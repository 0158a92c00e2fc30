"""The device table's store reads: filters, order and pages in SQL, equal to the same
selection made in Python over every device; the liveness tally; batched touches; the
fleet sums per hardware class, kept at ingest and filled on upgrade."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcast.proto import telemetry as buckets
from fleetcast.server import fleetview, liveness
from fleetcast.server.store import DEVICE_SORTS, UNKNOWN_HARDWARE, Device, DeploymentDevice, Deployment, DeviceQuery
from fleetcast.server.store import StatsRow, Store
from tests.integration.store.conftest import OpenStore, run_sql

NOW = 1_000_000.0
CONFIG = liveness.LivenessConfig(expected_interval_s=60, offline_after_s=300)
HARDWARE = ("x86-cpu", "rk3399", "jetson")
ATTRS = {"id": "device_id", "last_seen": "last_seen", "hardware_class": "hardware_class", "group": "group",
         "active_model": "active_model", "state": "state", "enrolled_at": "enrolled_at"}


def _fleet(store: Store, n: int = 40) -> list[Device]:
    devices = []
    for i in range(n):
        seen = None if i % 7 == 0 else NOW - (i * 13) % 600
        d = Device(device_id=f"dev-{i:03d}{'_x' if i % 5 == 0 else ''}", token_sha256=f"{i:064x}",
                   hardware_class=HARDWARE[i % 3], backends=("onnxruntime",), group=f"g{i % 2}", labels={},
                   agent_version="1", enrolled_at=float(i % 4), last_seen=seen)
        store.put_device(d)
        if i % 3 and seen is not None:   # a report stamps last_seen: never-seen devices have none
            store.record_report(d.device_id, at=seen, state="idle", active_model=f"digits@{i % 3}", deployment_id="")
        devices.append(store.device(d.device_id))
    return devices


def _python(devices: list[Device], q: DeviceQuery) -> tuple[list[str], int]:
    def keep(d: Device) -> bool:
        if q.text and q.text.lower() not in d.device_id.lower():
            return False
        if q.hardware_class and d.hardware_class != q.hardware_class or q.group and d.group != q.group:
            return False
        if q.active_model and not (d.active_model == q.active_model or "@" not in q.active_model
                                   and d.active_model.startswith(q.active_model + "@")):
            return False
        if q.seen_since is not None and (d.last_seen is None or d.last_seen < q.seen_since):
            return False
        return q.unseen_since is None or d.last_seen is None or d.last_seen < q.unseen_since

    chosen = [d for d in devices if keep(d)]
    attr = ATTRS[q.sort]

    def sort_key(d: Device) -> tuple:
        value = getattr(d, attr)
        if q.sort == "last_seen":
            return (value is not None, value or 0.0, d.device_id)
        return (value, d.device_id)

    chosen.sort(key=sort_key, reverse=q.descending)
    if q.sort == "last_seen" and q.descending:   # newest first, never-seen last
        chosen.sort(key=lambda d: d.last_seen is None)
    return [d.device_id for d in chosen[q.offset:q.offset + q.limit]], len(chosen)


# One fleet per store, queried by every example (the queries only read).
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.sampled_from(["", "dev-01", "_X", "%", "_"]), hardware=st.sampled_from(["", *HARDWARE]),
       group=st.sampled_from(["", "g0", "g1"]), model=st.sampled_from(["", "digits", "digits@1", "dig"]),
       live=st.sampled_from(["", *liveness.STATES]), sort=st.sampled_from(DEVICE_SORTS), descending=st.booleans(),
       limit=st.integers(1, 15), offset=st.integers(0, 45))
def test_a_device_page_is_the_python_selection_of_every_device(store, text, hardware, group, model, live,
                                                                sort, descending, limit, offset) -> None:
    devices = store.devices() or _fleet(store)
    seen_since = unseen_since = None
    if live == "online":
        seen_since = NOW - CONFIG.expected_interval_s
    elif live == "late":
        seen_since, unseen_since = NOW - CONFIG.offline_after_s, NOW - CONFIG.expected_interval_s
    elif live == "offline":
        unseen_since = NOW - CONFIG.offline_after_s
    q = DeviceQuery(text=text, hardware_class=hardware, group=group, active_model=model, seen_since=seen_since,
                    unseen_since=unseen_since, sort=sort, descending=descending, limit=limit, offset=offset)
    page = store.find_devices(q)
    expected_ids, expected_total = _python(devices, q)
    assert ([d.device_id for d in page.devices], page.total) == (expected_ids, expected_total)
    assert all(d == store.device(d.device_id) for d in page.devices[:2])   # whole records, not only ids
    if live:
        assert all(liveness.state_of(d.last_seen, now=NOW, config=CONFIG) == live for d in page.devices)


def test_the_tally_counts_each_device_once_in_its_liveness_state(store) -> None:
    devices = _fleet(store)
    tally = store.device_tally(online_since=NOW - CONFIG.expected_interval_s, late_since=NOW - CONFIG.offline_after_s)
    assert sum(t.devices for t in tally) == len(devices)
    expected: dict[tuple[str, str, str], int] = {}
    for d in devices:
        key = (d.hardware_class, d.active_model, liveness.state_of(d.last_seen, now=NOW, config=CONFIG))
        expected[key] = expected.get(key, 0) + 1
    assert {(t.hardware_class, t.active_model, t.liveness): t.devices for t in tally} == expected


def test_touching_many_devices_stamps_each_of_them_and_no_other(store) -> None:
    devices = _fleet(store, n=10)
    ids = [d.device_id for d in devices[:6]]
    store.touch_devices(ids, NOW + 5)
    assert [store.device(i).last_seen for i in ids] == [NOW + 5] * 6
    assert store.device(devices[7].device_id).last_seen == devices[7].last_seen


def test_a_devices_deployments_come_newest_first_up_to_the_limit(store) -> None:
    for i in range(4):
        store.add_deployment(Deployment(f"dep-{i}", "m", "1", "all", "active", float(i), float(i)), [
            DeploymentDevice(f"dep-{i}", "dev-1", "original", "a" * 64, "assigned", "", "", 10.0 + i, None),
            DeploymentDevice(f"dep-{i}", "dev-2", "original", "a" * 64, "assigned", "", "", 10.0 + i, None)])
    assert [r.deployment_id for r in store.device_deployments("dev-1", limit=3)] == ["dep-3", "dep-2", "dep-1"]
    assert {r.device_id for r in store.device_deployments("dev-2")} == {"dev-2"}
    assert store.device_deployments("nobody") == []


def test_fleet_aggregates_are_the_device_aggregates_merged_by_hardware_class(store_url: str,
                                                                             open_store: OpenStore) -> None:
    store = open_store()
    devices = _fleet(store, n=12)
    for i, d in enumerate(devices):
        rows = []
        for version in ("1", "2")[: 1 + i % 2]:
            counts = buckets.empty()
            counts[(i * 3) % buckets.BUCKETS] += 5 + i
            counts[(i * 7 + 1) % buckets.BUCKETS] += 2
            rows.append(StatsRow("digits", version, "original", sum(counts), i % 3, 1.5 * i, tuple(counts),
                                 backend="onnxruntime"))
        store.ingest_telemetry(d.device_id, "b1", rows, NOW)
    store.ingest_telemetry("gone-device", "b1", [StatsRow("digits", "1", "original", 1, 0, 2.0,
                                                          tuple(1 if b == 0 else 0 for b in range(buckets.BUCKETS)))], NOW)
    hardware = {d.device_id: d.hardware_class for d in devices}
    expected = fleetview.merge(store.aggregates(), lambda a: (
        a.model, a.version, a.variant, hardware.get(a.device_id, UNKNOWN_HARDWARE),
        "" if a.device_id == "gone-device" else "onnxruntime"))
    got = {(t.model, t.version, t.variant, t.hardware_class, t.backend): t for t in store.fleet_aggregates()}
    assert set(got) == set(expected) and ("digits", "1", "original", UNKNOWN_HARDWARE, "") in got
    for key, f in expected.items():
        t = got[key]
        assert (t.inferences, t.errors, tuple(t.histogram)) == (f.inferences, f.errors, f.histogram)
        assert t.latency_sum_ms == f.latency_sum_ms
    # A database from before the rollup gets it filled from the stored aggregates (which
    # never recorded a back end); the histogram layout's migration then runs after it again.
    run_sql(store_url, "DROP TABLE telemetry_fleet", "DELETE FROM migrations WHERE name IN"
            " ('create_telemetry_fleet', 'histograms_in_bucket_columns')")
    reopened = open_store()
    assert "create_telemetry_fleet" in reopened.applied_migrations()
    backfilled = {(t.model, t.version, t.variant, t.hardware_class): t for t in reopened.fleet_aggregates()}
    assert {t.backend for t in backfilled.values()} == {""}
    assert {k: (t.inferences, t.errors, tuple(t.histogram)) for k, t in backfilled.items()} == \
        {k[:4]: (t.inferences, t.errors, tuple(t.histogram)) for k, t in got.items()}
