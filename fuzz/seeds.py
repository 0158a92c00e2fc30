"""Writes the seed corpus, `fuzz/corpus/NAME/`: small valid inputs for each harness.

    python -m fuzz.seeds

Deterministic: running it again writes the same files.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from fleetcast.agent.flow import Event, Outcome, Record, State
from fleetcast.proto import fcpack, telemetry as buckets, topics
from fleetcast.proto.v1 import device_pb2

ROOT = Path(__file__).resolve().parent / "corpus"


def model(values: np.ndarray) -> onnx.ModelProto:
    weight = helper.make_tensor("w", onnx.TensorProto.FLOAT, list(values.shape), values.reshape(-1).tolist())
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, values.shape[0]])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, values.shape[1]])], [weight])
    return helper.make_model(graph)


def fcpack_seeds() -> dict[str, bytes]:
    raw = np.arange(16, dtype=np.float32).reshape(4, 4)
    sparse = np.where(np.arange(64) % 3 == 0, 0.5, 0.0).astype(np.float32).reshape(8, 8)
    seeds = {}
    for label, values in (("raw", raw), ("masked-codebook", sparse)):
        package = fcpack.encode(model(values), level=3)
        header, body = fcpack.read_header_and_body(package)
        seeds[f"{label}-package"] = b"\0" + package
        seeds[f"{label}-parts"] = b"\1" + json.dumps(header).encode() + b"\n--body--\n" + body
    return seeds


def assignment(golden: bool) -> dict:
    sha = hashlib.sha256(b"model").hexdigest()
    gsha = hashlib.sha256(b"golden").hexdigest()
    return {
        "deployment_id": "d-1", "device_id": "dev-1", "model": "digits", "version": "3",
        "variant": "original", "format": "onnx", "target_path": f"artifacts/{sha}", "sha256": sha,
        "length": 1234, "director_version": 7,
        "golden": {"path": f"artifacts/{gsha}", "sha256": gsha, "length": 99, "atol": 1e-4, "rtol": 1e-3}
        if golden else None,
        "inputs": {"input": {"dtype": "float32", "shape": [None, 16]}},
    }


def manifest_seeds() -> dict[str, bytes]:
    return {f"golden-{g}": json.dumps(assignment(g), sort_keys=True).encode() for g in (False, True)}


def state_seeds() -> dict[str, bytes]:
    busy = Record(state=State.TRIAL, deployment_id="d-1", manifest_digest="ab" * 32, enter_count=2, steps=5,
                  event=Event.SUCCESS, assignment=assignment(True), from_slot="a", to_slot="b",
                  not_installed=("d-0",))
    done = Record(outcome=Outcome.FAILED, reason="smoke test failed", not_installed=("d-0", "d-1"))
    return {"idle": Record().to_json(), "trial": busy.to_json(), "ended": done.to_json()}


def telemetry_seeds() -> dict[str, bytes]:
    batch = device_pb2.TelemetryBatch(batch_id="b-1", device_id="dev-fuzz")
    stats = batch.stats.add(model="digits", version="3", variant="original", inferences=10, errors=1,
                            latency_sum_ms=12.5)
    stats.latency.counts.extend([1] * buckets.BUCKETS)
    return {"batch": batch.SerializeToString(), "empty": device_pb2.TelemetryBatch(batch_id="b-2").SerializeToString()}


def mqtt_seeds() -> dict[str, bytes]:
    report = device_pb2.StatusReport(deployment_id="d-1", state="trial", event="success", model="digits",
                                     version="3", final=True, outcome="installed", active_model="digits@3")
    return {
        "topic-status": b"t" + topics.device_status("dev-1").encode(),
        "topic-telemetry": b"t" + topics.device_telemetry("dev-1").encode(),
        "notice": b"n" + topics.AssignmentNotice(director_version=3, deployment_id="d-1").encode(),
        "status": b"s" + report.SerializeToString(),
    }


def upload_seeds() -> dict[str, bytes]:
    buffer = io.BytesIO()
    np.savez(buffer, **{"input:input": np.zeros((1, 16), np.float32), "output:output": np.ones((1, 4), np.float32)})
    return {"fields": b"fdigits\x003\x00balanced,fp16", "golden": b"g" + buffer.getvalue()}


SEEDS = {"fcpack": fcpack_seeds, "manifest": manifest_seeds, "state": state_seeds,
         "telemetry": telemetry_seeds, "mqtt": mqtt_seeds, "upload": upload_seeds}


def main() -> None:
    for name, make in SEEDS.items():
        folder = ROOT / name
        folder.mkdir(parents=True, exist_ok=True)
        for label, data in make().items():
            (folder / f"seed-{label}").write_bytes(data)
        print(f"{name}: {len(list(folder.iterdir()))} seeds in {folder}")


if __name__ == "__main__":
    main()
