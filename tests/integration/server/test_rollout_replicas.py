"""Two replicas (two Services on one PostgreSQL database and one data dir) asked at the
same moment to start a rollout of one model: exactly one starts, the other is refused."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fleetcast.server.config import ServerConfig
from fleetcast.server.errors import Conflict
from fleetcast.server.fleet import Enrollment
from fleetcast.server.rollouts.spec import RolloutSpec
from fleetcast.server.services import Services, open_services
from fleetcast.server.store import Rollout
from tests.support import models, postgres


def test_replicas_starting_rollouts_of_one_model_at_once_start_exactly_one(tmp_path: Path) -> None:
    with postgres.database() as url:
        config = ServerConfig(data_dir=tmp_path / "data", store_url=url)
        replicas = [open_services(config), open_services(config)]
        try:
            first = replicas[0]
            token = (config.data_dir / "enroll-token").read_text().strip()
            for i in range(40):
                first.fleet.enroll(Enrollment(device_id=f"race-{i:02d}", hardware_class="x86-cpu",
                                              enroll_token=token, backends=("onnxruntime",)))
            data = models.to_bytes(models.tiny_classifier(seed=1))
            staged = first.blobs.stage(len(data))
            staged.write(data)
            first.registry.add_version("raced", staged)
            for _ in range(3):
                outcomes = _race(replicas, tries=4)
                started = [o for o in outcomes if isinstance(o, Rollout)]
                refused = [o for o in outcomes if isinstance(o, Conflict)]
                assert len(started) == 1 and len(refused) == 3, outcomes
                running = first.store.rollouts(states=["running", "paused"])
                assert [r.rollout_id for r in running] == [started[0].rollout_id]
                first.rollouts.command(started[0].rollout_id, "abort")   # so the next attempt may start one
        finally:
            for s in replicas:
                s.close()


def _race(replicas: list[Services], *, tries: int) -> list[object]:
    start = threading.Barrier(tries)

    def one(i: int) -> object:
        start.wait()
        try:
            return replicas[i % 2].rollouts.start(model="raced", version=None, target="all",
                                                  spec=RolloutSpec(stages="10%,100%"))
        except Conflict as e:
            return e
    with ThreadPoolExecutor(max_workers=tries) as pool:
        return list(pool.map(one, range(tries)))
