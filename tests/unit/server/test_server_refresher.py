from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from fleetcast.server import assigner, refresher
from fleetcast.server.config import ServerConfig
from fleetcast.server.fleet import Enrollment
from fleetcast.server.services import open_services
from fleetcast.server.signing import SigningConfig
from fleetcast.proto.topics import AssignmentNotice
from fleetcast.server.notify import check_window_ms
from tests.support import models


class _Recorder:
    """A notice sink (`notify.Sink`) that keeps what it was told."""

    def __init__(self, told: list[tuple[str, AssignmentNotice]]) -> None:
        self.told = told

    def device_notices(self, notices: list[tuple[str, AssignmentNotice]]) -> None:
        self.told.extend(notices)

    def fleet_notice(self) -> None:
        pass


def test_refresh_resigns_the_director_timestamp_near_expiry_and_tells_every_device(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path / "data", signing=replace(SigningConfig(), timestamp_expiry_s=2.0))
    services = open_services(config)
    try:
        token = (config.data_dir / "enroll-token").read_text().strip()
        for device_id in ("dev-1", "dev-2"):
            services.fleet.enroll(Enrollment(device_id=device_id, hardware_class="x86-cpu", enroll_token=token))
        data = models.to_bytes(models.tiny_classifier(seed=1))
        staged = services.blobs.stage(len(data))
        staged.write(data)
        services.registry.add_version("digits", staged)
        services.deployments.create(model="digits", version=None, target="device:dev-1")
        assigner.drain(services.deployments)
        assert refresher.refresh(services) == []  # nothing is due yet
        before = services.store.get_metadata("director", "timestamp.json")
        time.sleep(1.2)  # past half of the 2 s timestamp lifetime
        told: list[tuple[str, AssignmentNotice]] = []
        services.hub.add_sink(_Recorder(told))
        assert sorted(refresher.refresh(services)) == ["dev-1", "dev-2"]
        assert sorted((d, n.deployment_id) for d, n in told) == [("dev-1", services.store.assignment(
            "dev-1").deployment_id), ("dev-2", "")]
        assert {n.check_within_ms for _, n in told} == {check_window_ms(2)}
        assert all(n.director_version == services.signer.director_version(d) for d, n in told)
        assert services.store.get_metadata("director", "timestamp.json") != before
        assert refresher.period_s(services) == 0.5
    finally:
        services.close()


def test_prune_drops_metadata_replaced_longer_ago_than_configured_and_keeps_what_devices_read(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path / "data", signing=replace(SigningConfig(), superseded_keep_s=60.0))
    services = open_services(config)
    try:
        token = (config.data_dir / "enroll-token").read_text().strip()
        services.fleet.enroll(Enrollment(device_id="dev-1", hardware_class="x86-cpu", enroll_token=token))
        for seed in (1, 2):
            data = models.to_bytes(models.tiny_classifier(seed=seed))
            staged = services.blobs.stage(len(data))
            staged.write(data)
            services.registry.add_version("digits", staged)
            services.deployments.create(model="digits", version=None, target="device:dev-1")
            assigner.drain(services.deployments)
        before = services.signer.director_entry("dev-1")
        assert refresher.prune(services) == 0                          # replaced under a minute ago
        assert refresher.prune(services, now=time.time() + 61) > 0     # a minute on
        assert services.store.get_metadata("director", "1.snapshot.json") is None
        assert services.signer.director_entry("dev-1") == before       # the current files stay
        assert services.store.get_metadata("director", "1.root.json") is not None
    finally:
        services.close()
