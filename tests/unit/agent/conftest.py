"""Fixtures for the agent's unit tests: real small ONNX models, golden files, assignments."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from fleetcast.agent.datadir import DataDir
from fleetcast.agent.trust import VerifiedAssignment
from tests.support import models

DEVICE_ID = "dev-1"


@dataclass(frozen=True)
class Artifact:
    """A model and its golden file on disk, with the assignment a verifier would return."""

    model_path: Path
    golden_path: Path
    assignment: VerifiedAssignment


def golden_bytes(model_bytes: bytes, *, seed: int = 0) -> bytes:
    x = models.sample_input(rows=3, seed=seed)
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (y,) = session.run(["output"], {"input": x})
    buf = io.BytesIO()
    np.savez(buf, **{"input:input": x, "output:output": y})
    return buf.getvalue()


def make_assignment(model_bytes: bytes, golden: bytes | None, *, deployment_id: str = "dep-1",
                    version: str = "1", atol: float = 1e-5) -> VerifiedAssignment:
    sha = hashlib.sha256(model_bytes).hexdigest()
    golden_ref = None
    if golden is not None:
        gsha = hashlib.sha256(golden).hexdigest()
        golden_ref = {"path": f"artifacts/{gsha}", "sha256": gsha, "length": len(golden),
                      "atol": atol, "rtol": 1e-4}
    return VerifiedAssignment.from_saved({
        "deployment_id": deployment_id, "device_id": DEVICE_ID, "model": "tiny",
        "version": version, "variant": "original", "format": "onnx",
        "target_path": f"artifacts/{sha}", "sha256": sha, "length": len(model_bytes),
        "golden": golden_ref, "inputs": {"input": {"dtype": "float32", "shape": ["N", 16]}},
        "director_version": 1,
    })


def write_artifact(directory: Path, seed: int, *, deployment_id: str = "dep-1",
                   version: str = "1") -> Artifact:
    directory.mkdir(parents=True, exist_ok=True)
    model_bytes = models.to_bytes(models.tiny_classifier(seed))
    golden = golden_bytes(model_bytes)
    model_path = directory / f"model-{seed}.onnx"
    golden_path = directory / f"golden-{seed}.npz"
    model_path.write_bytes(model_bytes)
    golden_path.write_bytes(golden)
    return Artifact(model_path, golden_path,
                    make_assignment(model_bytes, golden, deployment_id=deployment_id, version=version))


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    return DataDir(tmp_path / "data").create()


@pytest.fixture
def artifact_v1(tmp_path: Path) -> Artifact:
    return write_artifact(tmp_path / "src", 1, deployment_id="dep-1", version="1")


@pytest.fixture
def artifact_v2(tmp_path: Path) -> Artifact:
    return write_artifact(tmp_path / "src", 2, deployment_id="dep-2", version="2")
