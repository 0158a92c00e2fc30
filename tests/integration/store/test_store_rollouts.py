"""Staged rollouts through the store: round trips, the compare-and-set on `revision`, and
the log's sequence taken in the database when several stores append at once."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

from fleetcast.server.store import Rollout, RolloutDevice, RolloutLogEntry, RolloutStage, Store
from tests.integration.store.conftest import OpenStore


def _rollout(rollout_id: str, *, at: float = 1.0, state: str = "running") -> Rollout:
    return Rollout(rollout_id=rollout_id, model="digits", version="2", target="all", deployment_id=f"dep-{rollout_id}",
                   state=state, stage=0, spec={"stages": ["1", "50%", "100%"], "soak_s": 60}, created_at=at,
                   updated_at=at, revision=0)


def _stages(rollout_id: str) -> list[RolloutStage]:
    return [RolloutStage(rollout_id, i, size, "pending", results=[]) for i, size in enumerate(["1", "50%", "100%"])]


def _devices(rollout_id: str, n: int = 4) -> list[RolloutDevice]:
    return [RolloutDevice(rollout_id, f"dev-{i}", stage=min(i, 2), cohort="x86-cpu", variant="original",
                          state="planned", updated_at=1.0) for i in range(n)]


def _entry(rollout_id: str, event: str, *, at: float = 1.0, snapshot: dict | None = None) -> RolloutLogEntry:
    return RolloutLogEntry(rollout_id=rollout_id, at=at, actor="operator", event=event, from_state="running",
                           to_state="running", reason=f"because {event}", snapshot=snapshot or {})


def _add(store: Store, rollout_id: str, **kw) -> Rollout:
    r = _rollout(rollout_id, **kw)
    store.add_rollout(r, _stages(rollout_id), _devices(rollout_id), _entry(rollout_id, "start"))
    return r


def test_a_rollout_its_stages_devices_and_log_read_back_as_written(store) -> None:
    r = _add(store, "ro-1")
    assert store.rollout("ro-1") == r
    assert store.rollout("nothing") is None
    assert store.rollout_stages("ro-1") == _stages("ro-1")
    assert store.rollout_devices("ro-1") == sorted(_devices("ro-1"), key=lambda d: (d.stage, d.device_id))
    [entry] = store.rollout_log("ro-1")
    assert entry == _entry("ro-1", "start")
    assert (store.rollout_stages("nothing"), store.rollout_devices("nothing"), store.rollout_log("nothing")) == \
        ([], [], [])


def test_rollouts_list_newest_first_filtered_by_state_and_limited(store) -> None:
    _add(store, "ro-a", at=1.0)
    _add(store, "ro-b", at=2.0, state="paused")
    _add(store, "ro-c", at=2.0)                 # same instant: the later one first
    _add(store, "ro-d", at=3.0, state="completed")
    assert [r.rollout_id for r in store.rollouts()] == ["ro-d", "ro-c", "ro-b", "ro-a"]
    assert [r.rollout_id for r in store.rollouts(limit=2)] == ["ro-d", "ro-c"]
    assert [r.rollout_id for r in store.rollouts(states=["running", "paused"])] == ["ro-c", "ro-b", "ro-a"]
    assert store.rollouts(states=["aborted"]) == []


def test_a_save_upserts_stages_and_devices_and_appends_the_log_in_order(store) -> None:
    r = _add(store, "ro-1")
    stage = dataclasses.replace(_stages("ro-1")[0], state="soaking", started_at=5.0, soak_started_at=6.0,
                                results=[{"cohort": "x86-cpu", "check": "p95", "verdict": "pass"}])
    device = dataclasses.replace(_devices("ro-1")[0], state="assigned", reason="wave 0", assigned_at=5.0,
                                 updated_at=5.0)
    moved = dataclasses.replace(r, stage=1, spec={**r.spec, "note": "x"}, updated_at=5.0, revision=1)
    assert store.save_rollout(moved, stages=[stage], devices=[device],
                              entries=[_entry("ro-1", "stage_started", at=5.0, snapshot={"devices": 1}),
                                       _entry("ro-1", "soak", at=6.0)])
    assert store.rollout("ro-1") == moved
    assert store.rollout_stages("ro-1")[0] == stage and len(store.rollout_stages("ro-1")) == 3
    assert store.rollout_devices("ro-1")[0] == device and len(store.rollout_devices("ro-1")) == 4
    log = store.rollout_log("ro-1")
    assert [e.event for e in log] == ["start", "stage_started", "soak"]
    assert log[1].snapshot == {"devices": 1} and log[1].reason == "because stage_started"


def test_a_save_from_a_stale_read_writes_nothing(store) -> None:
    r = _add(store, "ro-1")
    assert store.save_rollout(dataclasses.replace(r, state="paused", revision=1), entries=[_entry("ro-1", "pause")])
    stale = dataclasses.replace(r, state="aborted", revision=1)          # read before the pause was saved
    reverting = [dataclasses.replace(d, state="reverting") for d in _devices("ro-1")]
    failed = [dataclasses.replace(s, state="failed") for s in _stages("ro-1")]
    assert not store.save_rollout(stale, stages=failed, devices=reverting, entries=[_entry("ro-1", "abort")])
    assert not store.save_rollout(dataclasses.replace(r, revision=5), entries=[_entry("ro-1", "abort")])
    assert not store.save_rollout(dataclasses.replace(r, rollout_id="nothing", revision=1),
                                  entries=[_entry("nothing", "abort")])
    assert (store.rollout("ro-1").state, store.rollout("ro-1").revision) == ("paused", 1)
    assert {d.state for d in store.rollout_devices("ro-1")} == {"planned"}
    assert {s.state for s in store.rollout_stages("ro-1")} == {"pending"}
    assert [e.event for e in store.rollout_log("ro-1")] == ["start", "pause"]
    assert store.rollout_log("nothing") == []


def test_two_stores_saving_at_once_each_win_once_per_revision_and_log_every_win(open_store: OpenStore) -> None:
    stores = [open_store(), open_store()]
    _add(stores[0], "ro-1")
    per_worker, workers = 12, 4
    start = threading.Barrier(workers)

    def save(worker: int) -> int:
        store = stores[worker % 2]
        start.wait()
        lost = 0
        for i in range(per_worker):
            while True:
                current = store.rollout("ro-1")
                nxt = dataclasses.replace(current, revision=current.revision + 1, updated_at=float(current.revision))
                if store.save_rollout(nxt, entries=[_entry("ro-1", f"w{worker}-{i}")]):
                    break
                lost += 1
        return lost

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(save, range(workers)))
    assert stores[1].rollout("ro-1").revision == per_worker * workers
    log = stores[1].rollout_log("ro-1")
    assert len(log) == 1 + per_worker * workers
    assert sorted(e.event for e in log[1:]) == sorted(f"w{w}-{i}" for w in range(workers) for i in range(per_worker))
    for w in range(workers):   # each worker's entries in the order it saved them
        assert [e.event for e in log if e.event.startswith(f"w{w}-")] == [f"w{w}-{i}" for i in range(per_worker)]
