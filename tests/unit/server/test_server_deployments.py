from __future__ import annotations

import asyncio

import pytest

from fleetcast.proto.topics import AssignmentNotice
from fleetcast.server import assigner, documents
from fleetcast.server.deployments import StatusUpdate
from fleetcast.server.errors import DeviceNotFound, InvalidRequest, ModelNotFound, TargetEmpty
from fleetcast.server.fleet import Enrollment
from fleetcast.server.notify import check_window_ms
from fleetcast.server.services import Services
from fleetcast.server.store import Deployment
from tests.support import models


def _enroll(services: Services, device_id: str, group: str = "lab", hw: str = "x86-cpu") -> str:
    enroll_token = (services.config.data_dir / "enroll-token").read_text().strip()
    return services.fleet.enroll(Enrollment(device_id=device_id, hardware_class=hw, enroll_token=enroll_token,
                                            backends=("onnxruntime",), group=group))


def _upload(services: Services, seed: int) -> str:
    data = models.to_bytes(models.tiny_classifier(seed=seed))
    staged = services.blobs.stage(len(data))
    staged.write(data)
    return services.registry.add_version("digits", staged).version


def _deploy(services: Services, **kw: object) -> Deployment:
    """Creates the deployment and signs its devices' directors, as the server's assigner does."""
    deployment = services.deployments.create(**kw)  # type: ignore[arg-type]
    assigner.drain(services.deployments)
    return deployment


def _director_target(services: Services, device_id: str) -> dict | None:
    target = services.signer.director_entry(device_id)
    return None if target is None else target.unrecognized_fields["custom"]["fleetcast"]


def test_deployment_signs_each_device_and_records_it_assigned(services: Services) -> None:
    _enroll(services, "dev-1")
    _enroll(services, "dev-2", group="field")
    version = _upload(services, 1)
    d = _deploy(services, model="digits", version=None, target="group:lab")
    doc = documents.deployment(services.store, d)
    assert doc["status"] == "active" and doc["version"] == version
    rows = documents.deployment_devices(services.store, d.deployment_id, after="", limit=10)["devices"]
    assert [(x["device_id"], x["state"]) for x in rows] == [("dev-1", "assigned")]
    assert doc["counts"] == {"total": 1, "pending": 1}
    assert _director_target(services, "dev-1")["deployment_id"] == d.deployment_id
    assert services.signer.director_entry("dev-2") is None
    notice = services.deployments.current_notice("dev-1")
    assert notice.deployment_id == d.deployment_id and notice.director_version >= 1


def test_watchers_are_told_of_a_new_assignment(services: Services) -> None:
    _enroll(services, "dev-1")
    _upload(services, 1)

    async def scenario() -> int:
        services.hub.bind(asyncio.get_running_loop())
        with services.hub.watch("dev-1") as watcher:
            await asyncio.to_thread(_deploy, services, model="digits", version="1", target="all")
            notice = await asyncio.wait_for(watcher.next(), 5)
            return notice.director_version

    assert asyncio.run(scenario()) == services.signer.director_version("dev-1")


class SigningWitness:
    """A notice sink that looks, at the moment each notice goes out, at what the device
    would fetch and at what the server has recorded."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.seen: list[tuple[str, str, str]] = []
        self.windows: list[int] = []

    def device_notices(self, notices: list[tuple[str, AssignmentNotice]]) -> None:
        for device_id, notice in notices:
            entry = _director_target(self.services, device_id)
            recorded = self.services.store.assignment(device_id)
            self.seen.append((notice.deployment_id, entry["deployment_id"] if entry else "",
                              recorded.deployment_id if recorded else ""))
            self.windows.append(notice.check_within_ms)

    def fleet_notice(self) -> None:
        pass


def test_devices_are_told_once_their_entry_is_signed_and_before_the_bookkeeping(services: Services) -> None:
    for i in range(5):
        _enroll(services, f"dev-{i}")
    _upload(services, 1)
    witness = SigningWitness(services)
    services.hub.add_sink(witness)
    d = _deploy(services, model="digits", version=None, target="all")
    # What a told device fetches is already its new entry; the assignment document (which no
    # device reads) is recorded after the notice, so it does not hold the notice back.
    assert witness.seen == [(d.deployment_id, d.deployment_id, "")] * 5
    assert witness.windows == [check_window_ms(5)] * 5   # told together: asked to spread their checks
    assert services.store.assignment("dev-0").deployment_id == d.deployment_id


def test_targets_that_name_nothing_or_unknown_devices_are_refused(services: Services) -> None:
    _upload(services, 1)
    with pytest.raises(TargetEmpty):
        _deploy(services, model="digits", version=None, target="all")
    _enroll(services, "dev-1")
    with pytest.raises(DeviceNotFound, match="ghost"):
        _deploy(services, model="digits", version=None, target="device:dev-1,ghost")
    with pytest.raises(TargetEmpty):
        _deploy(services, model="digits", version=None, target="group:nobody")
    with pytest.raises(InvalidRequest, match="target"):
        _deploy(services, model="digits", version=None, target="everyone")
    with pytest.raises(ModelNotFound):
        _deploy(services, model="digits", version="7", target="all")


def test_status_follows_final_reports(services: Services) -> None:
    for d in ("dev-1", "dev-2"):
        _enroll(services, d)
    _upload(services, 1)
    dep = _deploy(services, model="digits", version=None, target="all")
    services.deployments.apply_status("dev-1", StatusUpdate(dep.deployment_id, "download", "success"))
    assert services.deployments.get(dep.deployment_id).status == "active"
    services.deployments.apply_status("dev-1", StatusUpdate(dep.deployment_id, "idle", "success",
                                                            active_model="digits@1", final=True, outcome="installed"))
    services.deployments.apply_status("dev-2", StatusUpdate(dep.deployment_id, "idle", "failure", reason="smoke test",
                                                            final=True, outcome="rolled_back"))
    doc = documents.deployment(services.store, services.deployments.get(dep.deployment_id))
    assert doc["status"] == "partial"
    assert doc["counts"] == {"total": 2, "pending": 0, "installed": 1, "rolled_back": 1}
    assert services.store.device("dev-1").active_model == "digits@1"
    with pytest.raises(InvalidRequest, match="outcome"):
        services.deployments.apply_status("dev-1", StatusUpdate(dep.deployment_id, "idle", final=True, outcome="maybe"))


def test_a_refusal_reported_after_the_deployment_closed_shows_on_the_device(services: Services) -> None:
    _enroll(services, "dev-1")
    _upload(services, 1)
    dep = _deploy(services, model="digits", version=None, target="all")
    services.deployments.apply_status("dev-1", StatusUpdate(dep.deployment_id, "idle", "success",
                                                            active_model="digits@1", final=True, outcome="installed"))
    assert services.store.device("dev-1").last_error == ""
    # Later the device refuses replayed metadata naming the same, closed deployment.
    services.deployments.apply_status("dev-1", StatusUpdate(dep.deployment_id, "verify", "failure",
                                                            reason="director metadata is older (rollback refused)"))
    device = services.store.device("dev-1")
    assert "rollback refused" in device.last_error and device.last_error_at is not None
    row = documents.deployment_devices(services.store, dep.deployment_id, after="", limit=10)["devices"][0]
    assert row["outcome"] == "installed"             # the closed row itself does not change


def test_a_device_enrolled_later_joins_the_newest_deployment_to_all(services: Services) -> None:
    _enroll(services, "dev-1")
    _upload(services, 1)
    dep = _deploy(services, model="digits", version=None, target="all")
    services.deployments.apply_status("dev-1", StatusUpdate(dep.deployment_id, "idle", "success",
                                                            active_model="digits@1", final=True, outcome="installed"))
    assert services.deployments.get(dep.deployment_id).status == "succeeded"

    _enroll(services, "dev-late")
    assert services.deployments.join("dev-late").deployment_id == dep.deployment_id
    assert _director_target(services, "dev-late")["deployment_id"] == dep.deployment_id
    doc = documents.deployment(services.store, services.deployments.get(dep.deployment_id))
    rows = documents.deployment_devices(services.store, dep.deployment_id, after="", limit=10)["devices"]
    assert {d["device_id"] for d in rows} == {"dev-1", "dev-late"}
    assert doc["status"] == "active"                   # open again until dev-late reports
    assert services.deployments.join("dev-late") is None   # already assigned: nothing to join


def test_a_device_joins_only_deployments_aimed_at_its_group_and_not_cancelled(services: Services) -> None:
    _enroll(services, "dev-1", group="lab")
    _upload(services, 1)
    _deploy(services, model="digits", version=None, target="group:lab")
    _enroll(services, "dev-field", group="field")
    assert services.deployments.join("dev-field") is None
    assert _director_target(services, "dev-field") is None

    field = _deploy(services, model="digits", version=None, target="device:dev-1")
    assert field.target == "device:dev-1"
    _enroll(services, "dev-lab", group="lab")
    joined = services.deployments.join("dev-lab")
    assert joined is not None and joined.target == "group:lab"   # device targets are never joined

    cancelled = _deploy(services, model="digits", version=None, target="all")
    services.deployments.cancel(cancelled.deployment_id)
    _enroll(services, "dev-new", group="field")
    assert services.deployments.join("dev-new") is None


def test_cancel_gives_devices_their_previous_assignment_back(services: Services) -> None:
    _enroll(services, "dev-1")
    _enroll(services, "dev-2")
    _upload(services, 1)
    _upload(services, 2)
    first = _deploy(services, model="digits", version="1", target="device:dev-1")
    services.deployments.apply_status("dev-1", StatusUpdate(first.deployment_id, "idle", final=True, outcome="installed"))
    second = _deploy(services, model="digits", version="2", target="all")
    services.deployments.cancel(second.deployment_id)
    assert services.deployments.get(second.deployment_id).status == "cancelled"
    assert _director_target(services, "dev-1")["version"] == "1"
    assert _director_target(services, "dev-2") is None
    assert services.store.assignment("dev-2") is None


def test_a_newer_deployment_supersedes_an_open_one(services: Services) -> None:
    _enroll(services, "dev-1")
    _upload(services, 1)
    first = _deploy(services, model="digits", version=None, target="all")
    _deploy(services, model="digits", version=None, target="all")
    [row] = services.store.deployment_devices(first.deployment_id)
    assert row.outcome == "superseded"
    assert services.deployments.get(first.deployment_id).status == "failed"


def test_reenrolling_after_approval_rotates_the_device_token(services: Services) -> None:
    from fleetcast.server.errors import AlreadyEnrolled
    old = _enroll(services, "dev-1")
    with pytest.raises(AlreadyEnrolled, match="fleetcast device reprovision dev-1"):
        _enroll(services, "dev-1", hw="arm-cpu")
    services.fleet.approve_reprovision("dev-1")
    new = _enroll(services, "dev-1", hw="arm-cpu")
    assert services.fleet.authenticate(new) == "dev-1"
    from fleetcast.server.errors import Unauthenticated
    with pytest.raises(Unauthenticated):
        services.fleet.authenticate(old)
    with pytest.raises(Unauthenticated):
        services.fleet.enroll(Enrollment(device_id="dev-9", hardware_class="x86-cpu", enroll_token="wrong"))
    with pytest.raises(InvalidRequest, match="hardware class"):
        _enroll(services, "dev-3", hw="toaster")
    with pytest.raises(InvalidRequest, match="device id"):
        _enroll(services, "dev/3")


def test_a_deploy_returns_before_signing_and_the_assigner_signs_each_device(services: Services) -> None:
    for d in ("dev-1", "dev-2", "dev-3"):
        _enroll(services, d)
    _upload(services, 1)
    dep = services.deployments.create(model="digits", version=None, target="all")
    assert services.signer.director_entry("dev-1") is None          # recorded, not yet signed
    assert [r.device_id for r in services.store.unsigned_rows(limit=10)] == ["dev-1", "dev-2", "dev-3"]
    assert services.deployments.sign_pending(limit=2) == 2
    assert assigner.drain(services.deployments) == 1
    assert services.store.unsigned_rows(limit=10) == []
    assert all(_director_target(services, d)["deployment_id"] == dep.deployment_id for d in ("dev-1", "dev-2", "dev-3"))


def test_cancelling_before_signing_leaves_devices_as_they_were(services: Services) -> None:
    _enroll(services, "dev-1")
    _upload(services, 1)
    _upload(services, 2)
    first = _deploy(services, model="digits", version="1", target="all")
    services.deployments.apply_status("dev-1", StatusUpdate(first.deployment_id, "idle", final=True, outcome="installed"))
    version_before = services.signer.director_version("dev-1")
    second = services.deployments.create(model="digits", version="2", target="all")
    services.deployments.cancel(second.deployment_id)
    assert assigner.drain(services.deployments) == 0
    assert services.signer.director_version("dev-1") == version_before
    assert _director_target(services, "dev-1")["version"] == "1"


def test_status_counts_follow_each_report_without_reading_the_rows(services: Services) -> None:
    for d in ("dev-1", "dev-2", "dev-3"):
        _enroll(services, d)
    _upload(services, 1)
    dep = _deploy(services, model="digits", version=None, target="all")
    counts = services.store.deployment_counts
    assert counts(dep.deployment_id) == {"": 3}
    services.deployments.apply_status("dev-1", StatusUpdate(dep.deployment_id, "idle", final=True, outcome="installed"))
    services.deployments.apply_status("dev-1", StatusUpdate(dep.deployment_id, "idle", final=True, outcome="failed"))
    services.deployments.apply_status("dev-2", StatusUpdate(dep.deployment_id, "idle", final=True, outcome="failed"))
    assert counts(dep.deployment_id) == {"": 1, "installed": 1, "failed": 1}   # a closed row stays closed
    assert services.deployments.get(dep.deployment_id).status == "active"
    services.deployments.apply_status("dev-3", StatusUpdate(dep.deployment_id, "idle", final=True, outcome="installed"))
    assert services.deployments.get(dep.deployment_id).status == "partial"
    newer = _deploy(services, model="digits", version=None, target="device:dev-1")
    assert counts(dep.deployment_id) == {"installed": 2, "failed": 1}          # closed rows are not superseded
    assert counts(newer.deployment_id) == {"": 1}


def test_rows_left_unsigned_by_a_stop_are_signed_after_the_next_start(tmp_path) -> None:
    from fleetcast.server.config import ServerConfig
    from fleetcast.server.services import open_services

    config = ServerConfig(data_dir=tmp_path / "data", max_upload_bytes=1024 * 1024)
    first = open_services(config)
    try:
        _enroll(first, "dev-1")
        _upload(first, 1)
        dep = first.deployments.create(model="digits", version=None, target="all")
    finally:
        first.close()                                   # stopped before the assigner ran
    second = open_services(config)
    try:
        assert assigner.drain(second.deployments) == 1
        assert _director_target(second, "dev-1")["deployment_id"] == dep.deployment_id
    finally:
        second.close()


def test_undo_gives_every_device_its_previous_assignment_and_refuses_twice(services: Services) -> None:
    from fleetcast.server.errors import IllegalTransition

    for device_id in ("dev-1", "dev-2"):
        _enroll(services, device_id)
    _upload(services, 1)
    first = _deploy(services, model="digits", version="1", target="all")
    def signed() -> dict:   # what each device is told to run ("why" is kept beside it, never signed)
        return {d: {k: v for k, v in services.store.assignment(d).document.items() if k != "why"}
                for d in ("dev-1", "dev-2")}

    before = signed()
    _upload(services, 2)
    second = _deploy(services, model="digits", version="2", target="all")
    services.deployments.apply_status("dev-1", StatusUpdate(deployment_id=second.deployment_id, state="idle",
                                                            final=True, outcome="installed",
                                                            active_model="digits@2"))
    undone = services.deployments.undo(second.deployment_id)
    assert undone.status == "reverted"
    assert signed() == before
    assert _director_target(services, "dev-1")["deployment_id"] == first.deployment_id
    assert {r.outcome for r in services.store.deployment_devices(second.deployment_id)} == {"reverted"}
    with pytest.raises(IllegalTransition, match="nothing to undo"):
        services.deployments.undo(second.deployment_id)
