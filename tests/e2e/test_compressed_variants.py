"""Push with --compress: the server builds measured, signed variants in the background,
and each device receives, installs and serves the one its hardware class prefers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetcast.server.compress.levels import choose_variant
from tests.support import models
from tests.support.deployments import deploy_and_install, show, wait_serving
from tests.support.processes import Fleet, ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"
LEVELS = ("lossless", "fp16", "balanced", "smallest")
BUILT = {"original", *LEVELS}
HARDWARE = {"dev-rk3399": "rk3399", "dev-x86": "x86-cpu", "dev-jetson": "jetson"}
# What levels.PREFERENCE gives each class when every level was built: checked, not assumed.
# x86-cpu is the build machine's class: it gets the variant measured fastest here instead.
EXPECTED = {"dev-rk3399": "smallest", "dev-x86": "balanced", "dev-jetson": "fp16"}


def test_compressed_variants_are_measured_signed_and_each_device_serves_its_hardware_choice(
    new_server, tmp_path: Path
) -> None:
    assert {d: choose_variant(h, BUILT) for d, h in HARDWARE.items()} == EXPECTED
    server: ServerProcess = new_server(extra_args=["--compress-calibration-samples", "64",
                                                 "--compress-latency-s", "0.1"])
    with server.client() as fc:
        pushed = fc.push_model(DIGITS / "digits.onnx", name="digits", compress=LEVELS,
                               calibration=DIGITS / "calibration", eval=DIGITS / "eval")
        assert pushed.compression_status == "running", show(pushed.raw)   # the upload did not wait for it
        assert [v.variant for v in pushed.variants] == ["original"]
        version = fc.wait_compression("digits", pushed.version, timeout_s=60, poll_s=0.3)
    doc = version.raw
    assert version.compression_status == "done", show(doc)
    assert doc["compression"]["levels"] == [{"level": x, "error": None} for x in LEVELS], show(doc)
    variants = {v.variant: v for v in version.variants}
    assert set(variants) == BUILT, show(doc)
    assert variants["smallest"].format == "fcpack"
    for name in LEVELS:
        m = variants[name].metrics
        assert m["accuracy_pct"] is not None and m["accuracy_pct"] > 90, show(m)
        assert m["size_bytes"] > 0 and m["packed_bytes"] > 0 and m["latency_ratio"] > 0, show(m)
    goldens = {v["variant"]: v["golden"] for v in doc["variants"]}
    assert all(goldens[name] is not None for name in LEVELS), show(goldens)   # each level checks its own outputs
    assert goldens["fp16"]["atol"] > goldens["lossless"]["atol"]
    assert variants["smallest"].length * 5 < variants["original"].length, show(doc)

    fits = [v for v in variants.values() if v.metrics.get("within_budget") is not False]
    fastest = min(fits, key=lambda v: 1.0 if v.variant == "original" else v.metrics["latency_ratio"])
    chosen = {**EXPECTED, "dev-x86": fastest.variant}
    test = np.load(DIGITS / "test.npz")
    x, y = test["x"].astype(np.float32), test["y"]
    with Fleet(tmp_path / "agents", server, HARDWARE.items()) as fleet:
        def enrolled() -> bool | None:
            with server.client() as fc:
                return set(HARDWARE) <= {d.id for d in fc.list_devices()} or None
        wait_for(enrolled, timeout_s=30, what="the three agents to enroll", context=fleet.log_tails)
        deploy_and_install(server, fleet.agents, "digits", version.version)
        for agent in fleet:
            wait_serving(agent, "digits", version.version)
            expected = variants[chosen[agent.device_id]]
            manifest = agent.active_manifest() or {}
            assert (manifest.get("variant"), manifest.get("sha256"), manifest.get("format")) == (
                expected.variant, expected.sha256, expected.format), agent.log_tail()
            assert models.sha256_of(agent.active_model_path()) == expected.sha256
            outputs = agent.infer({"input": x})
            accuracy = 100.0 * float(np.mean(np.argmax(outputs["probabilities"], axis=1) == y))
            measured = expected.metrics["accuracy_pct"]
            assert accuracy >= measured - 1.0, f"{agent.device_id} {expected.variant}: {accuracy} vs {measured}"
