"""The local inference API on its Unix socket, through InferenceClient."""

from __future__ import annotations

import stat
from collections.abc import Iterator

import numpy as np
import pytest

from fleetcast.agent.datadir import DataDir
from fleetcast.agent.errors import InferenceError, NotServingError, ServerUnavailableError
from fleetcast.agent.local_api import InferenceClient, LocalApi, from_tensor, to_tensor
from fleetcast.agent.runtime import Runtime, load_model
from fleetcast.agent.slots import Slots
from fleetcast.agent.telemetry import Recorder
from fleetcast.proto.v1 import local_pb2
from tests.support import models


@pytest.fixture
def served(data: DataDir) -> Iterator[tuple[DataDir, Runtime]]:
    runtime = Runtime()
    api = LocalApi(data.socket, runtime, lambda: local_pb2.StatusResponse(device_id="dev-1", state="idle"))
    api.start()
    try:
        yield data, runtime
    finally:
        api.stop(0)


def test_socket_is_private_to_the_agent_user(served) -> None:
    data, _ = served
    assert stat.S_IMODE(data.socket.stat().st_mode) == 0o600


def test_infer_round_trips_tensors_through_the_model(served, artifact_v1) -> None:
    data, runtime = served
    installed = Slots(data).install("a", artifact_v1.assignment, model_file=artifact_v1.model_path,
                                    golden_file=artifact_v1.golden_path)
    runtime.swap(load_model(installed, recorder=Recorder("d"), threads=1, hardware_class="x86-cpu"))
    x = models.sample_input(rows=3)
    with InferenceClient(data.root) as client:
        out = client.infer({"input": x})
        assert client.status()["state"] == "idle"
    np.testing.assert_allclose(out["output"], runtime.infer({"input": x})["output"])
    assert out["output"].shape == (3, 4)


def test_infer_before_any_model_says_not_serving(served) -> None:
    data, _ = served
    with InferenceClient(data.root) as client, pytest.raises(NotServingError):
        client.infer({"input": models.sample_input()})


def test_tensor_whose_bytes_do_not_fill_its_shape_is_refused() -> None:
    tensor = to_tensor("x", np.zeros((2, 3), np.float32))
    tensor.shape[:] = [4, 3]
    with pytest.raises(InferenceError, match="do not fill"):
        from_tensor(tensor)
    tensor = to_tensor("x", np.zeros(2, np.float32))
    tensor.dtype = "object"
    with pytest.raises(InferenceError, match="not supported"):
        from_tensor(tensor)


def test_client_without_an_agent_says_so(tmp_path) -> None:
    with InferenceClient(tmp_path, timeout_s=2) as client, pytest.raises(ServerUnavailableError, match="running"):
        client.status()
