"""Uploads cannot stop the server: hostile models are refused by the bounded check while a
device keeps receiving deployments, and concurrent uploads to one model get distinct versions."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.server.conftest import multipart
from tests.support import hostile, models
from tests.support.deployments import deploy_and_install, push, wait_serving
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.e2e

MiB = 1024**2
CHECK_TIME_S = 3
CHECK_MEMORY_BYTES = 1024 * MiB
BOUNDED = ["--upload-check-time-s", str(CHECK_TIME_S), "--upload-check-memory-bytes", str(CHECK_MEMORY_BYTES)]
RSS_GROWTH_LIMIT_BYTES = 400 * MiB   # a ConstantOfShape check in the server itself grows it by gigabytes


def upload(server: ServerProcess, name: str, fields: dict[str, bytes | str]) -> tuple[int, dict[str, Any]]:
    body, content_type = multipart(fields)
    request = urllib.request.Request(f"{server.http}/v1/models/{name}", data=body, method="POST", headers={
        "Authorization": f"Bearer {server.operator_token}", "Content-Type": content_type})
    context = ssl.create_default_context(cafile=str(server.server_ca))
    try:
        with urllib.request.urlopen(request, timeout=120, context=context) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssWatch(threading.Thread):
    """Samples a process's resident memory until stopped; keeps the largest."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, rss_bytes(pid), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, rss_bytes(self.pid))


def test_eight_hostile_uploads_in_parallel_are_refused_while_a_device_receives_a_deployment(
    new_server, new_agent, tmp_path: Path
) -> None:
    server: ServerProcess = new_server(extra_args=BOUNDED)
    agent = new_agent(server, "dev-busy")
    good = push(server, models.write(models.tiny_classifier(11), tmp_path / "good.onnx"), name="busy").version
    assert server.pid is not None
    baseline = rss_bytes(server.pid)
    watch = RssWatch(server.pid)
    watch.start()
    loop, huge = models.to_bytes(hostile.endless_loop()), models.to_bytes(hostile.huge_constant())
    bomb = hostile.npz_bomb("input", unpacked_mib=1024)
    hostile_uploads = [{"model": loop}] * 4 + [{"model": huge}] * 3 + [
        {"model": models.to_bytes(models.tiny_classifier(12)), "golden": bomb}]
    with ThreadPoolExecutor(max_workers=len(hostile_uploads)) as pool:
        futures = [pool.submit(upload, server, "hostile", fields) for fields in hostile_uploads]
        time.sleep(0.5)
        assert not all(f.done() for f in futures), "the hostile uploads ended before the deployment started"
        deploy_and_install(server, [agent], "busy", good, timeout_s=90)
        wait_serving(agent, "busy", good)
        results = [f.result() for f in futures]
    watch.done.set()
    watch.join()
    codes = sorted((status, doc["error"]["code"]) for status, doc in results)
    assert codes == sorted([(422, "model_too_costly")] * 7 + [(400, "invalid_request")]), codes
    for status, doc in results:
        assert "--upload-check" in doc["error"]["message"] or "unpacks to" in doc["error"]["message"], doc
    assert watch.peak - baseline < RSS_GROWTH_LIMIT_BYTES, (
        f"server RSS grew from {baseline} to {watch.peak} bytes during the hostile uploads")
    with server.client() as fc:
        assert [m.name for m in fc.list_models()] == ["busy"]


def test_fifty_concurrent_uploads_to_one_model_each_get_a_distinct_version_or_a_clear_error(
    new_server, tmp_path: Path
) -> None:
    server: ServerProcess = new_server()
    start = threading.Barrier(50)

    def one(i: int) -> tuple[int, dict[str, Any]]:
        fields: dict[str, bytes | str] = {"model": models.to_bytes(models.tiny_classifier(2000 + i))}
        if i % 10 == 0:
            fields["version"] = "named"   # five uploads race for one name: one wins
        start.wait()
        return upload(server, "race", fields)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    statuses = sorted({status for status, _ in results})
    assert set(statuses) <= {201, 409}, [doc for status, doc in results if status not in {201, 409}][:3]
    versions = [doc["version"] for status, doc in results if status == 201]
    assert len(versions) == len(set(versions)) == 46, sorted(versions)
    assert sorted(v for v in versions if v != "named") == sorted(str(n) for n in range(1, 46))
    for status, doc in results:
        if status == 409:
            assert doc["error"]["code"] == "version_exists" and "named" in doc["error"]["message"]
    with server.client() as fc:
        listed = next(m for m in fc.list_models() if m.name == "race")
    assert listed.versions == 46
