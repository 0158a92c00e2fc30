"""The serving runtime: swap under load without a failed call; the smoke test."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest

from fleetcast.agent.datadir import DataDir
from fleetcast.agent.errors import ActivationError, NotServingError
from fleetcast.agent.runtime import LoadedModel, Runtime, load_model, smoke_test
from fleetcast.agent.slots import Slots
from fleetcast.agent.telemetry import Recorder
from tests.support import models

from tests.unit.agent.conftest import make_assignment, write_artifact


def loaded(data: DataDir, artifact, slot: str, recorder: Recorder) -> LoadedModel:
    installed = Slots(data).install(slot, artifact.assignment, model_file=artifact.model_path,
                                    golden_file=artifact.golden_path)
    return load_model(installed, recorder=recorder, threads=1, hardware_class="x86-cpu")


def test_smoke_test_passes_on_the_model_that_made_the_golden(data, artifact_v1) -> None:
    smoke_test(loaded(data, artifact_v1, "a", Recorder("dev-1")))


def test_smoke_test_mismatch_raises_activation_error_naming_the_output(data, tmp_path) -> None:
    model_bytes = models.to_bytes(models.tiny_classifier(3))
    x = models.sample_input(rows=2)
    buf = io.BytesIO()
    np.savez(buf, **{"input:input": x, "output:output": np.full((2, 4), 0.25, np.float32) + 0.5})
    (tmp_path / "m.onnx").write_bytes(model_bytes)
    (tmp_path / "g.npz").write_bytes(buf.getvalue())
    assignment = make_assignment(model_bytes, buf.getvalue())
    installed = Slots(data).install("a", assignment, model_file=tmp_path / "m.onnx",
                                    golden_file=tmp_path / "g.npz")
    model = load_model(installed, recorder=Recorder("dev-1"), threads=1, hardware_class="x86-cpu")
    with pytest.raises(ActivationError, match=r"output 'output' differs.*max abs diff"):
        smoke_test(model)


def test_smoke_test_fails_for_a_nondeterministic_model(data, tmp_path) -> None:
    from tests.unit.agent.conftest import golden_bytes
    model_bytes = models.to_bytes(models.nondeterministic_model())
    golden = golden_bytes(model_bytes)
    (tmp_path / "m.onnx").write_bytes(model_bytes)
    (tmp_path / "g.npz").write_bytes(golden)
    installed = Slots(data).install("b", make_assignment(model_bytes, golden),
                                    model_file=tmp_path / "m.onnx", golden_file=tmp_path / "g.npz")
    with pytest.raises(ActivationError):
        smoke_test(load_model(installed, recorder=Recorder("d"), threads=1, hardware_class="x86-cpu"))


def test_infer_without_a_model_says_nothing_is_served() -> None:
    with pytest.raises(NotServingError):
        Runtime().infer({"input": models.sample_input()})


def test_swap_under_concurrent_load_fails_no_inference(data, tmp_path: Path) -> None:
    recorder = Recorder("dev-1")
    v1 = loaded(data, write_artifact(tmp_path / "s1", 1), "a", recorder)
    v2 = loaded(data, write_artifact(tmp_path / "s2", 2, version="2"), "b", recorder)
    x = models.sample_input(rows=1)
    expected = {id(m): m.session.run({"input": x})["output"] for m in (v1, v2)}
    runtime = Runtime()
    runtime.swap(v1)
    stop = threading.Event()
    failures: list[BaseException] = []
    results: list[int] = []

    def client() -> None:
        while not stop.is_set():
            try:
                out = runtime.infer({"input": x})["output"]
                results.append(0 if np.array_equal(out, expected[id(v1)]) else
                               1 if np.array_equal(out, expected[id(v2)]) else 2)
            except BaseException as e:  # noqa: BLE001 (any failure is what we look for)
                failures.append(e)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(40):
        runtime.swap(v2 if i % 2 == 0 else v1)
        threading.Event().wait(0.005)
    runtime.swap(v2)
    threading.Event().wait(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert 2 not in results and 0 in results and 1 in results
    assert results[-1] == 1
    inferences = sum(m.counters.totals()[0] for m in (v1, v2))
    assert inferences == len(results)


def test_infer_errors_are_counted_against_the_model(data, artifact_v1) -> None:
    recorder = Recorder("dev-1")
    runtime = Runtime()
    runtime.swap(loaded(data, artifact_v1, "a", recorder))
    with pytest.raises(Exception):
        runtime.infer({"wrong": np.zeros((1, 16), np.float32)})
    runtime.infer({"input": models.sample_input()})
    batch = recorder.close_window()
    assert batch is not None and len(batch.stats) == 1
    stats = batch.stats[0]
    assert (stats.inferences, stats.errors, stats.backend) == (2, 1, "onnxruntime")
    assert sum(stats.latency.counts) == 2 and recorder.close_window() is None
