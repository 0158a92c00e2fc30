"""The H5 bridge: web pages inside an app call the model this agent serves.

An aiohttp server on 127.0.0.1 only (random or configured port) with two ways in:

- `GET /v1/ws`: a WebSocket of binary frames (agent/bridge_frames.py); the token
  travels as the subprotocol `fleetcast.token.<token>` beside `fleetcast.v1`, since a
  page cannot set headers on a WebSocket. `modelUpdated` events are pushed on it.
- `POST /v1/call`: one frame in, one frame out; the token as `Authorization: Bearer`.

Every request passes `bridge_policy.Gate` first (Host, Origin, token), then per call
the method list, size cap and rate limit of its origin. Refusals before a frame is read
answer JSON `{"v": 1, "error": {"code", "message", "retryable"}}` with the HTTP status
of the code, readable by the refused page (so it can show the documented code; the
document holds nothing else); answers to frames are frames, granted by CORS only to
the allowed origin. A refused WebSocket upgrade is a plain 403: the SDK then asks
`POST /v1/call` for the code. Bridge calls are counted in the served model's telemetry
under the caller label "bridge" (never the page URL); the server sums them into the
same histograms as every other caller's. Inference goes through
the agent's `Runtime` like every other caller's.

`bridge.json` in the data dir (0600, written atomically once the bridge serves,
removed when it stops) tells the app where the bridge is and the per-session token:
`{"v": 1, "url", "ws", "call", "token", "pid", "origins"}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import WSMsgType, web

from fleetcast.agent.bridge_frames import CODES, BridgeError, Frame, decode, encode, tensor_doc, tensor_from
from fleetcast.agent.bridge_images import preprocess
from fleetcast.agent.bridge_policy import Gate, OriginPolicy
from fleetcast.agent.datadir import write_atomic
from fleetcast.agent.errors import AgentError, FatalError, InferenceError
from fleetcast.agent.runtime import LoadedModel, Runtime, counted_as, infer_on
from fleetcast.agent.telemetry import Recorder
from fleetcast.proto.v1 import local_pb2

logger = logging.getLogger(__name__)

BRIDGE_JSON: Final = "bridge.json"
SUBPROTOCOL: Final = "fleetcast.v1"
TOKEN_PROTOCOL_PREFIX: Final = "fleetcast.token."
FEATURES: Final = ("run", "tensors", "image", "events", "timeout")
CALLER: Final = "bridge"      # the telemetry label of bridge calls; the page URL is never recorded
_IDLE_STATE: Final = "idle"
_FRAME_TYPE: Final = "application/x-fleetcast-frame"

StatusSource = Callable[[], local_pb2.StatusResponse]


@dataclass(frozen=True)
class BridgeConfig:
    origins: tuple[OriginPolicy, ...]
    port: int = 0                                 # 0: a free port, written to bridge.json
    max_frame_bytes: int = 64 * 1024**2           # the largest frame read at all, whatever the origin
    default_timeout_ms: int = 30_000
    max_timeout_ms: int = 300_000
    event_poll_s: float = 0.1                     # how often the served model is compared for modelUpdated
    workers: int = 4


def _json_error(error: BridgeError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"v": 1, "error": error.document()}, status=CODES[error.code].http_status,
                             headers=headers)


class Bridge:
    """Serves the bridge on its own thread and event loop; `start` returns once it listens."""

    def __init__(self, *, config: BridgeConfig, runtime: Runtime, status: StatusSource,
                 data_dir: Path, hardware_class: str, recorder: Recorder) -> None:
        self.config = config
        self.runtime = runtime
        self.recorder = recorder
        self._views: dict[int, tuple[LoadedModel, LoadedModel]] = {}
        self.status = status
        self.hardware_class = hardware_class
        self.json_path = Path(data_dir) / BRIDGE_JSON
        self.token = secrets.token_hex(32)
        self.gate: Gate | None = None
        self.port = 0
        self._pool = futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="bridge")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bridge", daemon=True)
        self._runner: web.AppRunner | None = None
        self._sockets: set[tuple[web.WebSocketResponse, asyncio.Lock]] = set()
        self._watch: asyncio.Task[None] | None = None

    # ---- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Listens and writes bridge.json; raises FatalError when it cannot listen."""
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        except OSError as e:
            raise FatalError(f"the H5 bridge cannot listen on 127.0.0.1:{self.config.port}: {e.strerror or e}; "
                             "choose another --bridge-port or leave it out for a free one") from e
        write_atomic(self.json_path, json.dumps(self.address_doc()).encode(), mode=0o600)
        logger.info("bridge listening address=127.0.0.1:%d origins=%s", self.port,
                    ",".join(p.origin for p in self.config.origins))

    def address_doc(self) -> dict[str, Any]:
        base = f"127.0.0.1:{self.port}"
        return {"v": 1, "url": f"http://{base}", "ws": f"ws://{base}/v1/ws", "call": f"http://{base}/v1/call",
                "token": self.token, "pid": os.getpid(), "origins": [p.origin for p in self.config.origins]}

    async def _serve(self) -> None:
        app = web.Application(client_max_size=self.config.max_frame_bytes)
        app.router.add_get("/v1/ws", self._ws)
        app.router.add_post("/v1/call", self._post)
        app.router.add_route("OPTIONS", "/v1/call", self._preflight)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.config.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.gate = Gate(address=f"127.0.0.1:{self.port}", token=self.token, policies=self.config.origins)
        self._watch = asyncio.ensure_future(self._watch_model())

    def stop(self) -> None:
        self.json_path.unlink(missing_ok=True)
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for ws, _ in list(self._sockets):
            await ws.close(code=1001, message=b"agent stopping")
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- the gate ---------------------------------------------------------------

    def _admit(self, request: web.Request, token: str | None) -> OriginPolicy:
        assert self.gate is not None
        policy = self.gate.admit(host=request.headers.get("Host"), origin=request.headers.get("Origin"),
                                 token=token)
        return policy

    @staticmethod
    def _cors(policy: OriginPolicy) -> dict[str, str]:
        return {"Access-Control-Allow-Origin": policy.origin, "Vary": "Origin"}

    async def _preflight(self, request: web.Request) -> web.Response:
        # A preflight only asks whether the page may send: it is granted to any origin so
        # that the refusal of the real request (403 with its code) is readable by the page.
        # Nothing is served before Host, Origin and token pass on the request itself.
        headers = dict(self._echo(request), **{
            "Access-Control-Allow-Methods": "POST", "Access-Control-Max-Age": "600",
            "Access-Control-Allow-Headers": "authorization, content-type"})
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"
        return web.Response(status=204, headers=headers)

    @staticmethod
    def _echo(request: web.Request) -> dict[str, str]:
        """CORS headers that let a page read a refusal (never an answer) of its request."""
        origin = request.headers.get("Origin")
        if not origin or origin == "null" or len(origin) > 300 or any(c in origin for c in "\r\n,"):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    # ---- HTTP -------------------------------------------------------------------

    async def _post(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        try:
            policy = self._admit(request, auth[7:] if auth.startswith("Bearer ") else None)
        except BridgeError as e:
            self._log_refusal(request, e)
            return _json_error(e, self._echo(request))
        cors = self._cors(policy)
        length = request.content_length
        if length is None or length > min(policy.max_input_bytes, self.config.max_frame_bytes):
            e = BridgeError("RESOURCE_EXHAUSTED", f"request of {length} bytes is over this origin's cap of "
                            f"{policy.max_input_bytes} bytes (or has no Content-Length)")
            return _json_error(e, cors)
        body = await request.read()
        answer = await self._answer(policy, body)
        return web.Response(body=answer, content_type=_FRAME_TYPE, headers=cors)

    # ---- WebSocket --------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        token = next((p[len(TOKEN_PROTOCOL_PREFIX):] for p in offered if p.startswith(TOKEN_PROTOCOL_PREFIX)),
                     None)
        try:
            policy = self._admit(request, token)
            if SUBPROTOCOL not in offered:
                raise BridgeError("INVALID_ARGUMENT", f"the WebSocket must offer the {SUBPROTOCOL} subprotocol")
        except BridgeError as e:   # refused on the upgrade itself: no socket is opened
            self._log_refusal(request, e)
            return _json_error(e, self._echo(request))
        # No permessage-deflate: tensors barely compress, and deflating them costs more than sending.
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=self.config.max_frame_bytes,
                                   heartbeat=30.0, compress=False)
        await ws.prepare(request)
        entry = (ws, asyncio.Lock())
        self._sockets.add(entry)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    task = asyncio.ensure_future(self._reply(entry, policy, msg.data))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif msg.type == WSMsgType.TEXT:
                    await self._send(entry, self._error_frame(None, BridgeError(
                        "INVALID_ARGUMENT", "text messages are not frames: send binary frames")))
        finally:
            self._sockets.discard(entry)
        return ws

    async def _reply(self, entry: tuple[web.WebSocketResponse, asyncio.Lock], policy: OriginPolicy,
                     data: bytes) -> None:
        await self._send(entry, await self._answer(policy, data))

    @staticmethod
    async def _send(entry: tuple[web.WebSocketResponse, asyncio.Lock], frame: bytes) -> None:
        ws, lock = entry
        async with lock:
            if not ws.closed:
                await ws.send_bytes(frame)

    # ---- calls ------------------------------------------------------------------

    @staticmethod
    def _error_frame(call_id: Any, error: BridgeError) -> bytes:
        return encode({"id": call_id, "error": error.document()})

    async def _answer(self, policy: OriginPolicy, data: bytes) -> bytes:
        """The answer frame to one call frame; never raises."""
        call_id = None
        try:
            frame = decode(data, max_bytes=self.config.max_frame_bytes)
            call_id = frame.header.get("id")
            if not isinstance(call_id, (int, str)) or isinstance(call_id, bool) or len(str(call_id)) > 64:
                call_id = None
                raise BridgeError("INVALID_ARGUMENT", "frame id must be a number or a string of <= 64 chars")
            method = frame.header.get("method")
            if not isinstance(method, str):
                raise BridgeError("INVALID_ARGUMENT", "frame method must be a string")
            assert self.gate is not None
            self.gate.check_call(policy, method, len(data))
            params = frame.header.get("params", {})
            if not isinstance(params, dict):
                raise BridgeError("INVALID_ARGUMENT", "frame params must be an object")
            header, buffers = await self._dispatch(policy, method, params, frame)
            return encode(dict(header, id=call_id), buffers)
        except BridgeError as e:
            return self._error_frame(call_id, e)
        except Exception as e:  # a bug: answered, logged, the bridge keeps serving
            logger.exception("bridge call failed")
            return self._error_frame(call_id, BridgeError("INTERNAL", f"internal error: {type(e).__name__}"))

    async def _dispatch(self, policy: OriginPolicy, method: str, params: dict[str, Any],
                        frame: Frame) -> tuple[dict[str, Any], list[bytes | memoryview]]:
        if method == "hello":
            return {"result": {"protocol": 1, "methods": sorted(policy.methods), "features": list(FEATURES),
                               "model": self._info_or_none()}}, []
        if method == "listModels":
            info = self._info_or_none()
            return {"result": {"models": [info] if info else []}}, []
        if method == "info":
            return {"result": self._info(params.get("model"))}, []
        return await self._run(params, frame)

    def _info_or_none(self) -> dict[str, Any] | None:
        status = self.status()
        return self._info_of(status) if status.model else None

    def _info(self, model: Any) -> dict[str, Any]:
        status = self.status()
        if not status.model:
            raise self._not_serving(status.state)
        if model is not None and model != status.model:
            raise BridgeError("NOT_FOUND", f"model {str(model)[:100]!r} is not on this device; "
                              f"it serves {status.model!r}")
        return self._info_of(status)

    def _info_of(self, s: local_pb2.StatusResponse) -> dict[str, Any]:
        return {"model": s.model, "version": s.version, "sha256": s.sha256, "variant": s.variant,
                "backend": s.backend, "hardware": self.hardware_class,
                "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in s.inputs],
                "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in s.outputs]}

    @staticmethod
    def _not_serving(state: str) -> BridgeError:
        if state != _IDLE_STATE:
            return BridgeError("MODEL_LOADING", f"no model is served yet; an update is in state {state!r}")
        return BridgeError("UNAVAILABLE", "no model is served on this device yet")

    async def _run(self, params: dict[str, Any], frame: Frame) -> tuple[dict[str, Any], list[bytes | memoryview]]:
        current = self.runtime.current
        if current is None:
            raise self._not_serving(self.status().state)
        name = params.get("model")
        if name is not None and name != current.key.model:
            raise BridgeError("NOT_FOUND", f"model {str(name)[:100]!r} is not on this device; "
                              f"it serves {current.key.model!r}")
        inputs = params.get("inputs")
        if not isinstance(inputs, dict) or not inputs:
            raise BridgeError("INVALID_ARGUMENT", "run needs inputs: {name: tensor or {image, preprocess}}")
        wanted = params.get("outputs")
        if wanted is not None and (not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted)):
            raise BridgeError("INVALID_ARGUMENT", "outputs must be a list of output names")
        timeout_ms = params.get("timeoutMs", self.config.default_timeout_ms)
        if not isinstance(timeout_ms, (int, float)) or not 0 < timeout_ms <= self.config.max_timeout_ms:
            raise BridgeError("INVALID_ARGUMENT", f"timeoutMs must be in (0, {self.config.max_timeout_ms}]")
        arrays = {str(k): self._input(str(k)[:64], v, frame) for k, v in inputs.items()}
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            outputs = await asyncio.wait_for(loop.run_in_executor(self._pool, infer_on, self._view(current), arrays),
                                             timeout_ms / 1000.0)
        except asyncio.TimeoutError as e:
            raise BridgeError("TIMEOUT", f"the model did not answer within {timeout_ms} ms") from e
        except InferenceError as e:
            raise BridgeError("INFERENCE_ERROR", str(e)[:2000]) from e
        except AgentError as e:
            raise BridgeError("INTERNAL", str(e)[:2000]) from e
        latency_ms = (time.perf_counter() - started) * 1000.0
        if wanted is not None:
            missing = set(wanted) - set(outputs)
            if missing:
                raise BridgeError("NOT_FOUND", f"the model has no outputs {sorted(missing)}")
            outputs = {k: outputs[k] for k in wanted}
        buffers: list[bytes | memoryview] = []
        docs = {k: tensor_doc(v, buffers) for k, v in outputs.items()}
        return {"result": {"outputs": docs, "latencyMs": latency_ms, "model": current.key.model,
                           "version": current.key.version}}, buffers

    def _view(self, model: LoadedModel) -> LoadedModel:
        """`model` with its bridge calls counted under the bridge's label (same session)."""
        entry = self._views.get(id(model))
        if entry is None or entry[0] is not model:
            if len(self._views) >= 4:
                self._views.clear()
            entry = (model, counted_as(model, CALLER, self.recorder))
            self._views[id(model)] = entry
        return entry[1]

    @staticmethod
    def _input(name: str, doc: Any, frame: Frame) -> Any:
        if isinstance(doc, dict) and "image" in doc:
            pixels = tensor_from(doc["image"], frame, f"input {name!r} image")
            return preprocess(pixels, doc.get("preprocess", {}))
        return tensor_from(doc, frame, f"input {name!r}")

    # ---- events -----------------------------------------------------------------

    async def _watch_model(self) -> None:
        """Pushes modelUpdated to every socket once a different model version serves."""
        served = self.runtime.current
        while True:
            await asyncio.sleep(self.config.event_poll_s)
            current = self.runtime.current
            if current is served:
                continue
            before, served = served, current
            if current is None or (before is not None
                                   and before.installed.assignment.sha256 == current.installed.assignment.sha256):
                continue
            info = self._info_or_none()
            if info is None:
                continue
            event = encode({"event": "modelUpdated", "data": info})
            for entry in list(self._sockets):
                try:
                    await self._send(entry, event)
                except ConnectionError:
                    pass
            logger.info("bridge modelUpdated model=%s version=%s sockets=%d", info["model"], info["version"],
                        len(self._sockets))

    @staticmethod
    def _log_refusal(request: web.Request, error: BridgeError) -> None:
        # The page URL is never logged or counted: only the code and the origin.
        logger.warning("bridge refused code=%s origin=%s: %s", error.code,
                       str(request.headers.get("Origin"))[:100], error.message)
