"""Deployment rows, their counters, assignments and enroll tokens through the store."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from fleetcast.server.store import Assignment, Deployment, DeploymentDevice, EnrollToken
from fleetcast.server.store import Store
from tests.integration.store.conftest import OpenStore


def _deployment(deployment_id: str, at: float) -> Deployment:
    return Deployment(deployment_id, "m", "1", "all", "active", at, at)


def _row(deployment_id: str, device_id: str, *, previous: dict | None = None) -> DeploymentDevice:
    return DeploymentDevice(deployment_id, device_id, "original", "a" * 64, "assigned", "", "", 1.0, previous)


def test_counts_follow_every_row_change(store) -> None:
    store.add_deployment(_deployment("dep-1", 1.0), [_row("dep-1", f"dev-{i}") for i in range(5)])
    assert store.deployment_counts("dep-1") == {"": 5}
    store.update_deployment_device("dep-1", "dev-0", state="commit", outcome="installed", reason="", at=2.0)
    store.update_deployment_device("dep-1", "dev-0", state="commit", outcome="installed", reason="", at=2.5)
    store.update_deployment_device("dep-1", "dev-1", state="trial", outcome="", reason="", at=2.0)
    store.update_deployment_device("dep-1", "nobody", state="trial", outcome="failed", reason="", at=2.0)
    assert store.deployment_counts("dep-1") == {"": 4, "installed": 1}
    row = store.deployment_device("dep-1", "dev-1")
    assert (row.state, row.outcome, row.updated_at) == ("trial", "", 2.0)
    store.add_deployment(_deployment("dep-2", 3.0), [_row("dep-2", "dev-1", previous={"deployment_id": "dep-1"})])
    touched = store.close_open_rows(["dev-1", "dev-2", "dev-9"], outcome="superseded", reason="newer", at=3.0,
                                    keep="dep-2")
    assert touched == ["dep-1"]
    assert store.deployment_counts("dep-1") == {"": 2, "installed": 1, "superseded": 2}
    assert store.deployment_counts("dep-2") == {"": 1}
    assert store.deployment_device("dep-2", "dev-1").previous == {"deployment_id": "dep-1"}
    assert [r.device_id for r in store.open_rows_of("dev-1")] == ["dev-1"]
    assert [d.deployment_id for d in store.deployments()] == ["dep-2", "dep-1"]


def test_device_rows_page_bytewise_by_device_id(store) -> None:
    ids = ["dev-10", "dev-2", "Dev-1", "dev-1", "dev-é", "dev-_"]
    store.add_deployment(_deployment("dep-1", 1.0), [_row("dep-1", i) for i in ids])
    store.add_deployment(_deployment("dep-2", 1.0), [_row("dep-2", "dev-0")])
    expected = sorted(ids, key=lambda i: i.encode())
    assert [r.device_id for r in store.deployment_devices("dep-1")] == expected
    pages, after = [], ""
    while page := store.deployment_devices("dep-1", after=after, limit=4):
        pages.append([r.device_id for r in page])
        after = page[-1].device_id
    assert pages == [expected[:4], expected[4:]]
    assert store.deployment_devices("dep-1", after=expected[-1], limit=4) == []


def test_deployments_created_in_one_instant_list_newest_first(store) -> None:
    for i in range(3):
        store.add_deployment(_deployment(f"dep-{i}", 5.0), [])
    assert [d.deployment_id for d in store.deployments(limit=2)] == ["dep-2", "dep-1"]
    store.set_deployment_status("dep-0", "cancelled", 6.0)
    assert (store.deployment("dep-0").status, store.deployment("dep-0").updated_at) == ("cancelled", 6.0)


def test_unsigned_rows_are_the_open_rows_of_active_deployments_not_yet_assigned(store) -> None:
    store.add_deployment(_deployment("dep-1", 1.0), [_row("dep-1", f"dev-{i}") for i in range(4)])
    store.set_assignment("dev-0", Assignment("dev-0", "dep-1", {"deployment_id": "dep-1", "v": [1, 2]}))
    store.update_deployment_device("dep-1", "dev-1", state="x", outcome="cancelled", reason="", at=2.0)
    assert [r.device_id for r in store.unsigned_rows(limit=10)] == ["dev-2", "dev-3"]
    assert [r.device_id for r in store.unsigned_rows(limit=1)] == ["dev-2"]
    assert store.assignments_of(["dev-0", "dev-2"]) == {
        "dev-0": Assignment("dev-0", "dep-1", {"deployment_id": "dep-1", "v": [1, 2]})}
    store.set_assignment("dev-0", None)
    assert store.assignment("dev-0") is None
    store.set_deployment_status("dep-1", "cancelled", 3.0)
    assert store.unsigned_rows(limit=10) == []


def test_two_stores_closing_the_same_rows_count_each_once(open_store: OpenStore) -> None:
    stores = [open_store(), open_store()]
    devices = [f"dev-{i}" for i in range(50)]
    stores[0].add_deployment(_deployment("dep-1", 1.0), [_row("dep-1", d) for d in devices])
    start = threading.Barrier(6)

    def close(k: int) -> None:
        start.wait()
        if k % 2:
            stores[k % 2].close_open_rows(devices[k:] + devices[:k], outcome="superseded", reason="", at=2.0)
        else:
            for d in devices[k:] + devices[:k]:
                stores[k % 2].update_deployment_device("dep-1", d, state="commit", outcome="installed", reason="",
                                                       at=2.0)

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(close, range(6)))
    counts = stores[1].deployment_counts("dep-1")
    rows = stores[1].deployment_devices("dep-1")
    assert sum(counts.values()) == 50 and "" not in counts
    assert counts == {o: sum(1 for r in rows if r.outcome == o) for o in {r.outcome for r in rows}}


def test_an_enroll_token_is_used_exactly_as_often_as_allowed_across_stores(open_store: OpenStore) -> None:
    stores = [open_store(), open_store()]
    stores[0].add_enroll_token(EnrollToken("h" * 64, "et-hhhh", "lab", 1.0, None, 7))
    stores[0].add_enroll_token(EnrollToken("e" * 64, "et-eeee", "", 1.0, 10.0, None))
    start = threading.Barrier(30)

    def use(i: int) -> EnrollToken | None:
        start.wait()
        return stores[i % 2].use_enroll_token("h" * 64, 5.0)

    with ThreadPoolExecutor(max_workers=30) as pool:
        got = [t for t in pool.map(use, range(30)) if t is not None]
    assert len(got) == 7 and sorted(t.uses_left for t in got) == list(range(7))
    assert stores[1].use_enroll_token("e" * 64, 9.0).uses_left is None     # unlimited until it expires
    assert stores[1].use_enroll_token("e" * 64, 10.0) is None
    assert stores[1].use_enroll_token("x" * 64, 1.0) is None
    assert [t.name for t in stores[1].enroll_tokens()] == ["et-hhhh", "et-eeee"]


def test_set_assignments_writes_many_in_one_go_and_replaces_older_ones(store: Store) -> None:
    store.set_assignment("dev-0", Assignment("dev-0", "dep-old", {"model": "m", "version": "1"}))
    store.set_assignments([Assignment(f"dev-{i}", "dep-new", {"model": "m", "version": "2", "i": i})
                           for i in range(300)])

    found = store.assignments_of([f"dev-{i}" for i in range(301)])
    assert len(found) == 300 and found["dev-0"].deployment_id == "dep-new"
    assert found["dev-299"].document == {"model": "m", "version": "2", "i": 299}
    store.set_assignment("dev-1", None)
    assert store.assignment("dev-1") is None and store.assignment("dev-2") is not None
