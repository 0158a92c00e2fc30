"""The local inference API: gRPC over the Unix socket `DATA/agent.sock` (mode 0600).

Apps on the device (and the H5 bridge) call `Infer` with named tensors and `Status`
to see what is served (proto/v1/local.proto). `InferenceClient` is the Python side:

    client = InferenceClient(Path("/var/lib/fleetcast-agent"))
    outputs = client.infer({"input": x})     # dict[str, np.ndarray]
    client.status()                          # {"state": "idle", "model": "digits", ...}

Errors from the client: NotServingError (no model yet), InferenceError (bad input or
the model failed), ServerUnavailableError (no agent listens on the socket).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any, Final

import grpc
import numpy as np

from fleetcast.agent.errors import AgentError, InferenceError, NotServingError, ServerUnavailableError
from fleetcast.agent.runtime import Runtime
from fleetcast.proto.v1 import local_pb2, local_pb2_grpc

logger = logging.getLogger(__name__)

SOCKET_NAME: Final = "agent.sock"
DTYPES: Final = frozenset({"float16", "float32", "float64", "int8", "uint8", "int16", "uint16",
                           "int32", "uint32", "int64", "uint64", "bool"})
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
MAX_TENSORS: Final = 64
MAX_RANK: Final = 16
_OPTIONS: Final = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]

StatusSource = Callable[[], local_pb2.StatusResponse]


def to_tensor(name: str, array: np.ndarray) -> local_pb2.Tensor:
    array = np.asarray(array)
    if array.dtype.name not in DTYPES:
        raise InferenceError(f"tensor {name!r} has dtype {array.dtype}, not one of {sorted(DTYPES)}")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return local_pb2.Tensor(name=name, dtype=array.dtype.name, shape=list(array.shape),
                            data=little.tobytes())


def from_tensor(tensor: local_pb2.Tensor) -> np.ndarray:
    """The tensor as an array; raises InferenceError on anything inconsistent."""
    if tensor.dtype not in DTYPES:
        raise InferenceError(f"tensor {tensor.name[:64]!r} dtype {tensor.dtype[:32]!r} is not supported")
    shape = list(tensor.shape)
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        raise InferenceError(f"tensor {tensor.name[:64]!r} has a bad shape")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    if math.prod(shape) * dtype.itemsize != len(tensor.data):
        raise InferenceError(f"tensor {tensor.name[:64]!r}: {len(tensor.data)} bytes do not fill shape {shape}")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def describe_serving(response: local_pb2.StatusResponse, runtime: Runtime) -> local_pb2.StatusResponse:
    """Fills the Status answer's part about what `runtime` serves (model, slot, tensors)."""
    current = runtime.current
    if current is not None:
        a = current.installed.assignment
        response.model, response.version, response.variant = a.model, a.version, a.variant
        response.sha256, response.backend, response.slot = a.sha256, current.key.backend, current.installed.slot
        for spec in current.session.inputs:
            response.inputs.add(name=spec.name, dtype=spec.dtype, shape=[str(d) for d in spec.shape])
        for spec in current.session.outputs:
            response.outputs.add(name=spec.name, dtype=spec.dtype, shape=[str(d) for d in spec.shape])
    return response


class LocalInferenceServicer(local_pb2_grpc.LocalInferenceServicer):
    def __init__(self, runtime: Runtime, status: StatusSource) -> None:
        self.runtime = runtime
        self.status = status

    def Infer(self, request: local_pb2.InferRequest, context: grpc.ServicerContext) -> local_pb2.InferResponse:
        try:
            if len(request.inputs) > MAX_TENSORS:
                raise InferenceError(f"more than {MAX_TENSORS} input tensors")
            inputs = {t.name: from_tensor(t) for t in request.inputs}
            outputs = self.runtime.infer(inputs)
            return local_pb2.InferResponse(outputs=[to_tensor(n, a) for n, a in outputs.items()])
        except NotServingError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except AgentError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)[:2000])
        raise AssertionError("unreachable")

    def Status(self, request: local_pb2.StatusRequest, context: grpc.ServicerContext) -> local_pb2.StatusResponse:
        return self.status()


class LocalApi:
    """The gRPC server on the socket; `start()` returns once it accepts calls."""

    def __init__(self, socket_path: Path, runtime: Runtime, status: StatusSource, *, workers: int = 4) -> None:
        self.socket_path = socket_path
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                             thread_name_prefix="local-api"),
                                  options=_OPTIONS)
        local_pb2_grpc.add_LocalInferenceServicer_to_server(LocalInferenceServicer(runtime, status), self.server)

    def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)     # left by an agent that was killed
        old_umask = os.umask(0o177)                  # the socket is created 0600
        try:
            if not self.server.add_insecure_port(f"unix:{self.socket_path}"):
                raise OSError(f"cannot listen on {self.socket_path}")
            self.server.start()
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        logger.info("local API listening socket=%s", self.socket_path)

    def stop(self, grace_s: float = 2.0) -> None:
        self.server.stop(grace_s).wait(grace_s + 1)
        self.socket_path.unlink(missing_ok=True)


class InferenceClient:
    """Talks to the agent whose data dir is `data_dir`, over its Unix socket."""

    def __init__(self, data_dir: Path, *, timeout_s: float = 30.0) -> None:
        self.socket_path = Path(data_dir) / SOCKET_NAME
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(f"unix:{self.socket_path}", options=_OPTIONS)
        self._stub = local_pb2_grpc.LocalInferenceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = local_pb2.InferRequest(inputs=[to_tensor(n, a) for n, a in inputs.items()])
        response = self._call(self._stub.Infer, request)
        return {t.name: from_tensor(t) for t in response.outputs}

    def status(self) -> dict[str, Any]:
        r = self._call(self._stub.Status, local_pb2.StatusRequest())
        doc: dict[str, Any] = {f: getattr(r, f) for f in (
            "device_id", "state", "deployment_id", "model", "version", "variant", "sha256",
            "backend", "slot", "last_error")}
        for kind in ("inputs", "outputs"):
            doc[kind] = [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in getattr(r, kind)]
        return doc

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise NotServingError(e.details()) from e
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InferenceError(e.details()) from e
            raise ServerUnavailableError(
                f"no agent answers on {self.socket_path} ({code.name}): is `fleetcast agent` running?") from e
