"""A model served in this process the agent's way: installed in a slot, loaded by its
back end, behind a real `Runtime`; plus the status document the agent would give."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from fleetcast.agent.datadir import DataDir
from fleetcast.agent.local_api import describe_serving
from fleetcast.agent.runtime import LoadedModel, Runtime, load_model
from fleetcast.agent.slots import Slots
from fleetcast.agent.telemetry import Recorder
from fleetcast.agent.trust import VerifiedAssignment
from fleetcast.proto.v1 import local_pb2


def loaded(path: Path, work: Path, *, model: str, version: str, slot: str = "a",
           recorder: Recorder | None = None) -> LoadedModel:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    # What a verifier hands the flow, read back from a saved document as the agent does on restart.
    assignment = VerifiedAssignment.from_saved({
        "deployment_id": f"d-{version}", "device_id": "dev-1", "model": model, "version": version,
        "variant": "original", "format": "onnx", "target_path": f"artifacts/{sha}", "sha256": sha,
        "length": len(data), "golden": None, "inputs": {}, "director_version": 1,
    })
    slots = Slots(DataDir(work).create())
    installed = slots.install(slot, assignment, model_file=path, golden_file=None)
    return load_model(installed, recorder=recorder or Recorder("dev-1"), threads=1, hardware_class="x86-cpu")


def status_of(runtime: Runtime, state: Callable[[], str] = lambda: "idle") -> Callable[[], local_pb2.StatusResponse]:
    """The agent's Status answer for what `runtime` serves (agent/service.py builds the same)."""

    def status() -> local_pb2.StatusResponse:
        return describe_serving(local_pb2.StatusResponse(device_id="dev-1", state=state()), runtime)

    return status
