"""A `fleetcast server --store postgresql://...` process: the dashboard's device table and
overview, /metrics, and a staged rollout started, read, paused and listed over REST, all
served from the PostgreSQL store (the rows checked in the database afterwards)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.server.store.open import open_store
from tests.integration.server.conftest import RunningServer, launch
from tests.integration.server.test_dashboard_http import Visitor
from tests.support import models, postgres

HARDWARE = ("x86-cpu", "rk3399")
DEVICES = [(f"pg-{i:02d}", HARDWARE[i % 2]) for i in range(6)]


@pytest.fixture
def on_postgres(tmp_path: Path) -> Iterator[tuple[RunningServer, str]]:
    with postgres.database() as url, launch(tmp_path, "--store", url) as server:
        for device_id, hardware in DEVICES:
            server.stub().Enroll(pb.EnrollRequest(device_id=device_id, hardware_class=hardware,
                                                  backends=["onnxruntime"], enroll_token=server.enroll_token,
                                                  group="pg"), timeout=10)
        yield server, url


def test_a_server_on_postgresql_serves_the_device_table_and_a_rollout(on_postgres, tmp_path: Path) -> None:
    server, url = on_postgres
    v = Visitor(server)
    v.login(server.operator_token)
    status, _, page = v.get("/ui/devices?group=pg&hardware=x86-cpu&sort=id&order=desc&per=2")
    assert status == 200, page
    assert re.findall(r'<tr data-device="([^"]+)"', page) == ["pg-04", "pg-02"]
    assert '<b id="device-total">3</b>' in page
    assert v.get("/ui/")[0] == 200                      # the overview's tally
    assert v.get("/ui/devices/pg-01")[0] == 200         # a device's page and its deployments
    status, _, metrics = server.request("GET", "/metrics")
    assert status == 200 and 'fleetcast_devices{' in metrics.decode()

    status, _ = server.upload("pg-model", {"model": models.to_bytes(models.tiny_classifier(seed=5))})
    assert status == 201
    status, started = server.json("POST", "/v1/rollouts", {"model": "pg-model", "target": "group:pg",
                                                           "stages": "1,100%", "soak_s": 60})
    assert status == 201, started
    status, doc = server.json("GET", f"/v1/rollouts/{started['id']}")
    assert status == 200, doc
    assert doc["state"] == "running" and [s["size"] for s in doc["stages"]] == ["1", "100%"]
    assert doc["log"][0]["event"] == "start" and doc["devices"]["total"] == len(DEVICES)
    status, paused = server.json("POST", f"/v1/rollouts/{started['id']}/pause")
    assert status == 200 and paused["state"] == "paused", paused
    status, listed = server.json("GET", "/v1/rollouts?state=paused")
    assert status == 200 and [r["id"] for r in listed["rollouts"]] == [started["id"]]

    store = open_store(url)
    try:
        rollout = store.rollout(started["id"])
        assert rollout.state == "paused" and rollout.revision >= 1   # every save went through the compare-and-set
        assert {d.device_id for d in store.rollout_devices(rollout.rollout_id)} == {d for d, _ in DEVICES}
        events = [e.event for e in store.rollout_log(rollout.rollout_id)]
        assert events[0] == "start" and events[-1] == "pause"
    finally:
        store.close()
