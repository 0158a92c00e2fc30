"""Rollouts over a real Services (store, signer, deployments), devices answering by hand."""

from __future__ import annotations

import secrets
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcast.proto import telemetry as buckets
from fleetcast.server import assigner, documents
from fleetcast.server.deployments import StatusUpdate
from fleetcast.server.errors import Conflict, IllegalTransition
from fleetcast.server.fleet import Enrollment
from fleetcast.server.rollouts import scheduler
from fleetcast.server.rollouts.spec import spec_from
from fleetcast.server.services import Services
from fleetcast.server.store import StatsRow
from tests.support import models

FLEET = {"x86-0": "x86-cpu", "x86-1": "x86-cpu", "rk-0": "rk3399", "rk-1": "rk3399"}


def _enroll(services: Services) -> None:
    token = (services.config.data_dir / "enroll-token").read_text().strip()
    for device_id, hw in FLEET.items():
        services.fleet.enroll(Enrollment(device_id=device_id, hardware_class=hw, enroll_token=token,
                                         backends=("onnxruntime",)))


def _upload(services: Services, seed: int) -> str:
    data = models.to_bytes(models.tiny_classifier(seed=seed))
    staged = services.blobs.stage(len(data))
    staged.write(data)
    return services.registry.add_version("digits", staged).version


def _install(services: Services, device_id: str, *, version: str | None = None, outcome: str = "installed") -> None:
    """What an agent reports when it finishes the assignment it holds now."""
    assignment = services.store.assignment(device_id)
    assert assignment is not None
    doc = assignment.document
    served = f"digits@{version or doc['version']}"
    services.deployments.apply_status(device_id, StatusUpdate(
        deployment_id=assignment.deployment_id, state="idle", event="success", final=True, outcome=outcome,
        active_model=served, reason="" if outcome == "installed" else "trial failed"))


def _serve(services: Services, device_id: str, version: str, *, latency_ms: float, n: int = 200) -> None:
    histogram = buckets.empty()
    histogram[buckets.bucket_of(latency_ms)] = n
    services.store.ingest_telemetry(device_id, secrets.token_hex(8), [StatsRow(
        model="digits", version=version, variant="original", inferences=n, errors=0, latency_sum_ms=latency_ms * n,
        histogram=histogram)], at=time.time())


def _fleet_on_v1(services: Services) -> tuple[str, str]:
    _enroll(services)
    v1 = _upload(services, 1)
    services.deployments.create(model="digits", version=v1, target="all")
    assigner.drain(services.deployments)
    for device_id in FLEET:
        _install(services, device_id)
    return v1, _upload(services, 2)


def _look(services: Services, times: int = 3) -> None:
    for _ in range(times):
        scheduler.tick(services.rollouts)
        assigner.drain(services.deployments)


def _state(services: Services, rollout_id: str) -> dict[str, str]:
    return {d.device_id: d.state for d in services.store.rollout_devices(rollout_id)}


SPEC = {"stages": "1,100%", "soak_s": 0.3, "gates": ["latency_p95 <= 1.2x control", "serving >= 1"],
        "min_inferences": 50}


def test_a_canary_slower_on_one_cohort_is_aborted_and_sent_back_there_only(services: Services) -> None:
    v1, v2 = _fleet_on_v1(services)
    r = services.rollouts.start(model="digits", version=v2, target="all", spec=spec_from(SPEC))
    _look(services)
    canaries = [d for d, s in _state(services, r.rollout_id).items() if s == "assigned"]
    assert sorted(h[:2] for h in canaries) == ["rk", "x8"]       # one canary per cohort
    v1_doc = {d: services.store.assignment(d).document for d in FLEET if d not in canaries}
    for device_id in canaries:
        _install(services, device_id)
    _look(services)
    assert services.store.rollout_stages(r.rollout_id)[0].state == "soaking"
    for device_id in FLEET:
        slow = device_id.startswith("rk") and device_id in canaries
        _serve(services, device_id, v2 if device_id in canaries else v1, latency_ms=20.0 if slow else 10.0)
    _look(services, 1)
    rollout = services.rollouts.get(r.rollout_id)
    assert rollout.state == "aborted"
    states = _state(services, r.rollout_id)
    rk = next(d for d in canaries if d.startswith("rk"))
    x86 = next(d for d in canaries if d.startswith("x86"))
    assert states[rk] == "reverted" and states[x86] == "serving"
    assert all(states[d] == "planned" for d in FLEET if d not in canaries)   # never given v2
    back = services.store.assignment(rk).document
    assert (back["version"], back["sha256"]) == (v1, v1_doc[next(d for d in v1_doc if d.startswith("rk"))]["sha256"])
    doc = documents.rollout(services.store, rollout)
    failed = [c for c in doc["stages"][0]["checks"] if c["verdict"] == "fail"]
    assert [c["cohort"].split("/")[0] for c in failed] == ["rk3399"]
    assert failed[0]["control"] is not None and failed[0]["value"] > 1.2
    assert doc["log"][-1]["event"] == "gate_failed" and doc["log"][-1]["snapshot"]["checks"]
    with pytest.raises(IllegalTransition):
        services.rollouts.command(r.rollout_id, "resume")


def test_a_good_version_completes_every_stage_and_undo_brings_back_the_previous_bytes(services: Services) -> None:
    v1, v2 = _fleet_on_v1(services)
    before = {d: services.store.assignment(d).document["sha256"] for d in FLEET}
    r = services.rollouts.start(model="digits", version=v2, target="all", spec=spec_from(SPEC))
    for _ in range(40):
        _look(services)
        for device_id, state in _state(services, r.rollout_id).items():
            if state == "assigned":
                _install(services, device_id)
            on = services.store.assignment(device_id).document["version"]
            _serve(services, device_id, on, latency_ms=10.0)
        if services.rollouts.get(r.rollout_id).state == "completed":
            break
        time.sleep(0.1)
    assert services.rollouts.get(r.rollout_id).state == "completed"
    assert set(_state(services, r.rollout_id).values()) == {"serving"}
    with pytest.raises(IllegalTransition, match="is completed and cannot resume"):
        services.rollouts.command(r.rollout_id, "resume")
    services.rollouts.command(r.rollout_id, "undo")
    assert services.rollouts.get(r.rollout_id).state == "rolled_back"
    assert {d: services.store.assignment(d).document["sha256"] for d in FLEET} == before


def test_no_traffic_during_the_soak_pauses_as_inconclusive_and_resume_soaks_again(services: Services) -> None:
    _, v2 = _fleet_on_v1(services)
    r = services.rollouts.start(model="digits", version=v2, target="all", spec=spec_from(SPEC))
    _look(services)
    for device_id, state in _state(services, r.rollout_id).items():
        if state == "assigned":
            _install(services, device_id)
    _look(services)
    time.sleep(0.35)
    _look(services)
    rollout = services.rollouts.get(r.rollout_id)
    assert rollout.state == "paused"
    assert services.store.rollout_stages(r.rollout_id)[0].state == "inconclusive"
    assert documents.rollout(services.store, rollout)["log"][-1]["event"] == "inconclusive"
    services.rollouts.command(r.rollout_id, "resume")
    assert services.store.rollout_stages(r.rollout_id)[0].state == "soaking"
    with pytest.raises(IllegalTransition):
        services.rollouts.command(r.rollout_id, "resume")      # twice: the second is refused


def test_a_second_rollout_of_a_model_waits_for_the_first(services: Services) -> None:
    _, v2 = _fleet_on_v1(services)
    services.rollouts.start(model="digits", version=v2, target="all", spec=spec_from(SPEC))
    with pytest.raises(Conflict, match="let it finish"):
        services.rollouts.start(model="digits", version=v2, target="all", spec=spec_from(SPEC))


def test_a_restart_mid_stage_resumes_where_it_was(services: Services) -> None:
    _, v2 = _fleet_on_v1(services)
    r = services.rollouts.start(model="digits", version=v2, target="all", spec=spec_from({**SPEC, "soak_s": 60}))
    _look(services)
    before = _state(services, r.rollout_id)
    services.close()
    from fleetcast.server.services import open_services
    again = open_services(services.config)
    try:
        assert _state(again, r.rollout_id) == before
        for device_id, state in before.items():
            if state == "assigned":
                _install(again, device_id)
        _look(again)
        assert again.store.rollout_stages(r.rollout_id)[0].state == "soaking"
        assert again.rollouts.get(r.rollout_id).state == "running"
    finally:
        again.close()


def test_devices_marked_before_a_crash_are_assigned_or_reverted_after_it(services: Services) -> None:
    import dataclasses

    v1, v2 = _fleet_on_v1(services)
    r = services.rollouts.start(model="digits", version=v2, target="all", spec=spec_from(SPEC))
    scheduler.step(services.rollouts, r.rollout_id)          # stage 0 starts
    # The save that marks the wave assigned happened; the process died before the wave was.
    wave = [d for d in services.store.rollout_devices(r.rollout_id) if d.stage == 0]
    current = services.rollouts.get(r.rollout_id)
    services.store.save_rollout(dataclasses.replace(current, revision=current.revision + 1),
                                devices=services.rollouts.marked(wave, "assigned", "", assigned_at=time.time()))
    assert services.store.deployment_devices(r.deployment_id) == []
    _look(services)
    assert {x.device_id for x in services.store.deployment_devices(r.deployment_id)} == {d.device_id for d in wave}
    for d in wave:
        assert services.store.assignment(d.device_id).document["version"] == v2
    # The same for a revert: marked reverting, never sent.
    current = services.rollouts.get(r.rollout_id)
    services.store.save_rollout(dataclasses.replace(current, state="aborted", revision=current.revision + 1),
                                devices=services.rollouts.marked(wave, "reverting", "aborted"))
    assert services.rollouts.recover() == len(wave)
    assert {services.store.assignment(d.device_id).document["version"] for d in wave} == {v1}
    assert {d.state for d in services.store.rollout_devices(r.rollout_id) if d.stage == 0} == {"reverted"}


def test_promote_full_puts_every_remaining_device_in_the_last_stage(services: Services) -> None:
    _, v2 = _fleet_on_v1(services)
    r = services.rollouts.start(model="digits", version=v2, target="all",
                                spec=spec_from({**SPEC, "stages": "1,2,3,100%"}))
    _look(services)
    services.rollouts.command(r.rollout_id, "promote", full=True)
    stages = services.store.rollout_stages(r.rollout_id)
    assert [s.state for s in stages] == ["passed", "passed", "passed", "pending"]
    assert {d.stage for d in services.store.rollout_devices(r.rollout_id) if d.state == "planned"} == {3}
    _look(services)
    assert services.rollouts.get(r.rollout_id).stage == 3
    assert set(_state(services, r.rollout_id).values()) == {"assigned"}


ACTIONS = ("pause", "resume", "promote", "promote_full", "abort", "undo", "look", "restart", "install", "serve_good",
           "serve_bad")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=10))
def test_random_commands_looks_and_restarts_keep_the_tables_promises(services: Services, actions: list[str]) -> None:
    from fleetcast.server.rollouts.service import Rollouts
    from fleetcast.server.rollouts.table import ROLLOUT_TRANSITIONS, RolloutEvent

    if services.store.device("x86-0") is None:
        _fleet_on_v1(services)
    for old in services.store.rollouts(states=["running", "paused"]):
        services.rollouts.command(old.rollout_id, "abort")
    r = services.rollouts.start(model="digits", version="2", target="all",
                                spec=spec_from({**SPEC, "soak_s": 0.05, "min_inferences": 10}))
    rollouts = services.rollouts
    for action in actions:
        if action == "restart":     # a new process: nothing but what the store holds
            before = (rollouts.get(r.rollout_id), _state(services, r.rollout_id))
            rollouts = Rollouts(store=services.store, deployments=services.deployments)
            rollouts.recover()
            assert (rollouts.get(r.rollout_id), _state(services, r.rollout_id)) == before
        elif action == "look":
            scheduler.tick(rollouts)
            assigner.drain(services.deployments)
        elif action == "install":
            for device_id, state in _state(services, r.rollout_id).items():
                if state == "assigned" and services.store.assignment(device_id).deployment_id == r.deployment_id:
                    _install(services, device_id)
        elif action.startswith("serve"):
            for device_id in FLEET:
                on = services.store.assignment(device_id).document["version"]
                slow = action == "serve_bad" and on == "2" and device_id.startswith("rk")
                _serve(services, device_id, on, latency_ms=25.0 if slow else 10.0, n=20)
        else:
            verb, full = ("promote", True) if action == "promote_full" else (action, False)
            try:
                rollouts.command(r.rollout_id, verb, full=full)
            except IllegalTransition:
                pass        # refused: nothing changed
        now = rollouts.get(r.rollout_id)
        log = services.store.rollout_log(r.rollout_id)
        for e in log:
            if e.event in set(RolloutEvent):
                assert ROLLOUT_TRANSITIONS[(e.from_state, RolloutEvent(e.event))] == e.to_state
            else:
                assert e.event in {"start", "cohort_held"} or e.event.startswith("stage_")
        if any(e.event == "gate_failed" for e in log):
            assert now.state in {"aborted", "rolled_back"}
        if now.state == "completed":
            assert {s.state for s in services.store.rollout_stages(r.rollout_id)} == {"passed"}
        assert len(services.store.rollout_devices(r.rollout_id)) == len(FLEET)


def test_a_failure_that_pauses_reverts_its_cohort_and_resume_tries_the_stage_again(services: Services) -> None:
    v1, v2 = _fleet_on_v1(services)
    r = services.rollouts.start(model="digits", version=v2, target="all",
                                spec=spec_from({**SPEC, "on_fail": "pause"}))
    _look(services)
    canaries = [d for d, s in _state(services, r.rollout_id).items() if s == "assigned"]
    for device_id in canaries:
        _install(services, device_id)
    _look(services)
    for device_id in FLEET:
        slow = device_id.startswith("rk") and device_id in canaries
        _serve(services, device_id, v2 if device_id in canaries else v1, latency_ms=20.0 if slow else 10.0)
    _look(services, 1)
    assert services.rollouts.get(r.rollout_id).state == "paused"
    rk = next(d for d in canaries if d.startswith("rk"))
    assert _state(services, r.rollout_id)[rk] == "reverted"
    assert services.store.assignment(rk).document["version"] == v1
    services.rollouts.command(r.rollout_id, "resume")
    _look(services)
    assert _state(services, r.rollout_id)[rk] == "assigned"
    assert services.store.assignment(rk).document["version"] == v2      # the same deployment, signed again
    assert services.store.deployment_device(r.deployment_id, rk).outcome == ""
