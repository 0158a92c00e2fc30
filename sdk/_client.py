"""`Client`: the operator's side of the REST API (docs/architecture.md, "REST API").

One method per operation, typed results, errors from `_errors`. Uploads and
downloads are streamed: a model file is never held in memory whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import quote, urlencode

import httpx

from fleetcast.sdk import _samples
from fleetcast.sdk._errors import (
    CompressionTimeoutError,
    ConfigError,
    DeploymentTimeoutError,
    IntegrityError,
    RolloutTimeoutError,
    TransportError,
    api_error,
)
from fleetcast.sdk._models import Deployment, Device, Model, ModelSummary, ModelVersion, Rollout, Variant

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
_CHUNK_BYTES = 64 * 1024


class Client:
    """A connection to one Fleetcast server, authenticated with the operator token.

    Example:
        with Client.from_data_dir(Path("/var/lib/fleetcast")) as fc:
            version = fc.push_model(Path("digits.onnx"), name="digits")
            deployment = fc.wait_deployment(fc.deploy("digits").id, timeout_s=300)
    """

    def __init__(
        self,
        server: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        ca: Path | None = None,
    ) -> None:
        """`ca`: the server's CA (DATA/server-ca.pem) an https:// server must chain to;
        without it the system's CAs are used."""
        if not server:
            raise ConfigError("no server address: pass the server's URL, e.g. http://127.0.0.1:8080")
        if not token:
            raise ConfigError("no operator token: it is in the server data dir's operator-token file")
        self.server = server.rstrip("/")
        verify: ssl.SSLContext | bool = True
        if ca is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca))
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"the server CA {ca} cannot be read ({e}): copy DATA/server-ca.pem "
                                  "from the server") from e
        self._http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
            verify=verify,
        )

    @classmethod
    def from_data_dir(
        cls, path: Path, *, timeout_s: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> Client:
        """A client for the server running from the local data dir `path`."""
        server, token = read_data_dir(path)
        ca = path / "server-ca.pem"
        return cls(server, token, timeout_s=timeout_s, transport=transport, ca=ca if ca.exists() else None)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # models

    def push_model(
        self,
        path: Path,
        *,
        name: str,
        version: str | None = None,
        golden: Path | None = None,
        compress: Sequence[str] = (),
        calibration: Path | None = None,
        eval: Path | None = None,
        progress: Progress | None = None,
        targets: Sequence[str] = (),
    ) -> ModelVersion:
        """Upload a model file (and optional golden npz); returns the new version.

        `compress` names levels the server builds in the background from the
        `calibration` and `eval` sample directories (one .npz/.npy per sample, optional
        labels.npy; packed here into the one-.npz upload form); `wait_compression`
        waits for them. The multipart body is streamed from disk; `progress(sent,
        total)` is called as its bytes go out.
        """
        data: dict[str, str] = {}
        if version is not None:
            data["version"] = version
        if compress:
            data["compress"] = ",".join(compress)
        if targets:   # per-target builds: mnn, openvino, rknn-<platform>
            data["targets"] = ",".join(targets)
        with contextlib.ExitStack() as files_open:
            files: dict[str, tuple[str, IO[bytes], str]] = {}
            for field_name, file_path in (("model", path), ("golden", golden)):
                if file_path is not None:
                    opened = files_open.enter_context(_open(file_path))
                    files[field_name] = (file_path.name, opened, "application/octet-stream")
            for field_name, directory in (("calibration", calibration), ("eval", eval)):
                if directory is not None:
                    packed = files_open.enter_context(_samples.pack(directory))
                    files[field_name] = (f"{field_name}.npz", packed, "application/octet-stream")
            request = self._http.build_request(
                "POST", f"/v1/models/{_seg(name)}", data=data, files=files
            )
            if progress is not None:
                total = int(request.headers.get("Content-Length", 0))
                request.stream = _CountingStream(request.stream, total=total, progress=progress)
            logger.info("push model=%s file=%s bytes=%d", name, path, path.stat().st_size)
            return ModelVersion.from_json(self._send(request))

    def wait_compression(self, name: str, version: str, *, timeout_s: float, poll_s: float = 1.0) -> ModelVersion:
        """Poll until the version's compression is no longer "running"; returns the version.

        A version pushed without levels returns at once. Raises `CompressionTimeoutError`.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.get_version(name, version)
            if current.compression_status != "running":
                return current
            if time.monotonic() + poll_s > deadline:
                raise CompressionTimeoutError(
                    f"{name}@{version} is still compressing after {timeout_s:.0f}s", version=current)
            time.sleep(poll_s)

    def list_models(self) -> list[ModelSummary]:
        doc = self._get("/v1/models")
        return [ModelSummary.from_json(m) for m in doc.get("models", ())]

    def get_model(self, name: str) -> Model:
        return Model.from_json(self._get(f"/v1/models/{_seg(name)}"))

    def get_version(self, name: str, version: str) -> ModelVersion:
        return ModelVersion.from_json(self._get(f"/v1/models/{_seg(name)}/versions/{_seg(version)}"))

    def download_model(
        self, name: str, version: str, dest: Path, *, variant: str = "original"
    ) -> Path:
        """Download one variant to `dest` (a file, or a directory to put it in).

        The bytes are checked against the sha256 and length the server published for
        the variant before `dest` appears; a mismatch raises `IntegrityError`.
        """
        published = self.get_version(name, version).variant(variant)
        if dest.is_dir():
            suffix = f".{published.format}" if published and published.format else ""
            dest = dest / f"{name}-{version}-{variant}{suffix}"
        url = f"/v1/models/{_seg(name)}/versions/{_seg(version)}/download"
        request = self._http.build_request("GET", url, params={"variant": variant})
        response = self._send_raw(request, stream=True)
        try:
            digest, length = _write_atomically(response.iter_bytes(_CHUNK_BYTES), dest, published)
        finally:
            response.close()
        logger.info("downloaded model=%s version=%s variant=%s bytes=%d sha256=%s",
                    name, version, variant, length, digest)
        return dest

    # deployments

    def deploy(self, model: str, *, version: str | None = None, to: str = "all") -> Deployment:
        """Start a deployment of `model` (latest version unless given) to a target:
        `all`, `group:G` or `device:ID[,ID...]`."""
        body: dict[str, Any] = {"model": model, "target": to}
        if version is not None:
            body["version"] = version
        return Deployment.from_json(self._send(self._http.build_request("POST", "/v1/deployments", json=body)))

    def get_deployment(self, id: str, *, devices: bool = True) -> Deployment:
        """The deployment and its counts; with `devices`, every device's row too (read page by page)."""
        doc = self._get(f"/v1/deployments/{_seg(id)}")
        if devices:
            doc = {**doc, "devices": list(self.deployment_devices(id))}
        return Deployment.from_json(doc)

    def deployment_devices(self, id: str, *, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """The deployment's device rows by device id, fetched `page_size` at a time."""
        return self._pages(f"/v1/deployments/{_seg(id)}/devices", page_size)

    def list_deployments(self) -> list[Deployment]:
        doc = self._get("/v1/deployments")
        return [Deployment.from_json(d) for d in doc.get("deployments", ())]

    def pin_variant(self, name: str, scope: str, variant: str | None) -> dict[str, str]:
        """Pins `variant` of model `name` for `scope` ("group:G" or "hardware:CLASS"), or
        removes the pin with None; returns the model's pins. Applies to deployments made after."""
        url = f"/v1/models/{_seg(name)}/pins/{_seg(scope)}"
        if variant is None:
            request = self._http.build_request("DELETE", url)
        else:
            request = self._http.build_request("PUT", url, json={"variant": variant})
        return dict(self._send(request)["pins"])

    def pins(self, name: str) -> dict[str, str]:
        return dict(self._get(f"/v1/models/{_seg(name)}/pins")["pins"])

    def cancel_deployment(self, id: str) -> Deployment:
        request = self._http.build_request("POST", f"/v1/deployments/{_seg(id)}/cancel")
        return Deployment.from_json(self._send(request))

    def wait_deployment(
        self,
        id: str,
        *,
        timeout_s: float,
        poll_s: float = 0.5,
        on_update: Callable[[Deployment], None] | None = None,
    ) -> Deployment:
        """Poll until every device has a final outcome; `on_update` sees each change.

        Raises `DeploymentTimeoutError` (carrying the last state) after `timeout_s`.
        """
        # Polls the counts only; the device rows are read once, at the end.
        current = _poll(lambda: self.get_deployment(id, devices=False), timeout_s=timeout_s, poll_s=poll_s,
                        on_update=on_update)
        full = self.get_deployment(id)
        if current.finished:
            return full
        raise DeploymentTimeoutError(
            f"deployment {id} did not finish within {timeout_s:g} s: {full.pending} of "
            f"{full.total} devices have no outcome yet; "
            f"follow it with `fleetcast deploy status {id} --wait`",
            deployment=full,
        )

    def undo_deployment(self, id: str) -> Deployment:
        """Every device of the deployment goes back to the version it ran before."""
        request = self._http.build_request("POST", f"/v1/deployments/{_seg(id)}/undo")
        return Deployment.from_json(self._send(request))

    # rollouts

    def start_rollout(self, model: str, *, version: str | None = None, to: str = "all",
                      options: Mapping[str, Any] | None = None) -> Rollout:
        """Start a staged rollout. `options` are the REST body's (stages, soak_s, gates,
        min_inferences, on_inconclusive, on_fail, hold_back, device_timeout_s, ...)."""
        return Rollout.from_json(self._send(self._http.build_request(
            "POST", "/v1/rollouts", json=_rollout_body(model, version, to, options))))

    def plan_rollout(self, model: str, *, version: str | None = None, to: str = "all",
                     options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The dry run: which devices each stage would reach, per cohort."""
        return self._send(self._http.build_request("POST", "/v1/rollout-plans",
                                                   json=_rollout_body(model, version, to, options)))

    def get_rollout(self, id: str) -> Rollout:
        return Rollout.from_json(self._get(f"/v1/rollouts/{_seg(id)}"))

    def list_rollouts(self, *, state: str | None = None) -> list[Rollout]:
        doc = self._get("/v1/rollouts" + (f"?state={_seg(state)}" if state else ""))
        return [Rollout.from_json(r) for r in doc.get("rollouts", ())]

    def rollout_command(self, id: str, verb: str, *, full: bool = False) -> Rollout:
        """pause | resume | promote (full: every remaining device at once) | abort | undo."""
        if verb not in {"pause", "resume", "promote", "abort", "undo"}:
            raise ValueError(f"rollout verb {verb!r}: use pause, resume, promote, abort or undo")
        url = f"/v1/rollouts/{_seg(id)}/{verb}" + ("?full=1" if full else "")
        return Rollout.from_json(self._send(self._http.build_request("POST", url)))

    def wait_rollout(self, id: str, *, timeout_s: float, poll_s: float = 1.0,
                     on_update: Callable[[Rollout], None] | None = None) -> Rollout:
        """Poll until the rollout ends (completed, aborted or rolled back); `on_update` sees
        each change. Raises `RolloutTimeoutError` (carrying the last state) after `timeout_s`."""
        current = _poll(lambda: self.get_rollout(id), timeout_s=timeout_s, poll_s=poll_s, on_update=on_update)
        if current.finished:
            return current
        raise RolloutTimeoutError(
            f"rollout {id} is still {current.state} (stage {current.stage}) after {timeout_s:g} s; "
            f"follow it with `fleetcast rollout status {id} --watch`", rollout=current)

    # devices

    def reprovision_device(self, id: str) -> dict[str, Any]:
        """Approves one re-enrollment of `id` with a new key (a replaced or reset device)."""
        return self._send(self._http.build_request("POST", f"/v1/devices/{_seg(id)}/reprovision"))

    def create_enroll_token(self, *, group: str = "", expires_s: float | None = None,
                            uses: int | None = None) -> dict[str, Any]:
        """A new enrollment token: `{"token", "name", "group", "expires_at", "uses_left"}`;
        the token is shown only in this answer."""
        body: dict[str, Any] = {"group": group}
        if expires_s is not None:
            body["expires_s"] = expires_s
        if uses is not None:
            body["uses"] = uses
        return self._send(self._http.build_request("POST", "/v1/enroll-tokens", json=body))

    def list_enroll_tokens(self) -> list[dict[str, Any]]:
        return list(self._get("/v1/enroll-tokens").get("enroll_tokens", ()))

    def list_devices(self, *, page_size: int = 1000) -> list[Device]:
        """Every enrolled device by id, read `page_size` at a time."""
        return [Device.from_json(d) for d in self._pages("/v1/devices", page_size)]

    def get_device(self, id: str) -> Device:
        return Device.from_json(self._get(f"/v1/devices/{_seg(id)}"))

    # plumbing

    def _pages(self, path: str, page_size: int) -> Iterator[dict[str, Any]]:
        """The items of a paged list (`{"devices": [...], "next": cursor}`), page after page."""
        after = ""
        while True:
            page = self._get(f"{path}?{urlencode({'limit': page_size, **({'after': after} if after else {})})}")
            yield from page.get("devices", ())
            after = page.get("next") or ""
            if not after:
                return

    def _get(self, url: str) -> dict[str, Any]:
        return self._send(self._http.build_request("GET", url))

    def _send(self, request: httpx.Request) -> dict[str, Any]:
        response = self._send_raw(request, stream=False)
        try:
            doc = response.json()
        except ValueError as e:
            raise TransportError(
                f"{request.method} {request.url.path}: the server's answer is not JSON; "
                f"is {self.server} a Fleetcast server?"
            ) from e
        if not isinstance(doc, dict):
            raise TransportError(f"{request.method} {request.url.path}: expected a JSON object")
        return doc

    def _send_raw(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        try:
            response = self._http.send(request, stream=stream)
        except httpx.TimeoutException as e:
            raise TransportError(
                f"the server at {self.server} did not answer {request.method} "
                f"{request.url.path} in time ({e.__class__.__name__}); retry, or raise the timeout"
            ) from e
        except httpx.TransportError as e:
            raise TransportError(
                f"cannot reach the Fleetcast server at {self.server}: {e}; "
                "check that it is running and that the address is right"
            ) from e
        logger.debug("%s %s -> %d", request.method, request.url, response.status_code)
        if response.is_success:
            return response
        if stream:
            response.read()
            response.close()
        raise _error_from(response)


def _rollout_body(model: str, version: str | None, to: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {**(options or {}), "model": model, "target": to}
    if version is not None:
        body["version"] = version
    return body


def read_data_dir(path: Path) -> tuple[str, str]:
    """(server URL, operator token) of a local server's data dir."""
    try:
        server = json.loads((path / "server.json").read_text())["http"]
    except FileNotFoundError as e:
        raise ConfigError(
            f"{path / 'server.json'} does not exist: is a server running with --data {path}?"
        ) from e
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path / 'server.json'} has no \"http\" address: {e}") from e
    token = read_token_file(path / "operator-token")
    return str(server), token


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the operator token from {path}: {e.strerror}") from e
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


def _error_from(response: httpx.Response) -> Exception:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code = f"http_{response.status_code}"
        message = response.text.strip()[:200] or response.reason_phrase
    return api_error(status=response.status_code, code=code, message=message)


def _seg(value: str) -> str:
    """One URL path segment: a name can never reach another route."""
    return quote(str(value), safe="")


class _CountingStream(httpx.SyncByteStream):
    """Wraps a request body and reports `(sent, total)` as it is read."""

    def __init__(self, inner: Any, *, total: int, progress: Progress) -> None:
        self._inner = inner
        self._total = total
        self._progress = progress

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        self._progress(0, self._total)
        for chunk in self._inner:
            sent += len(chunk)
            self._progress(sent, self._total)
            yield chunk

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as e:
        raise ConfigError(f"cannot open {path}: {e.strerror}") from e


def _write_atomically(chunks: Iterator[bytes], dest: Path, published: Variant | None) -> tuple[str, int]:
    """Write chunks to a temp file beside `dest`, check them, fsync, rename."""
    digest = hashlib.sha256()
    length = 0
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                length += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if published is not None and published.sha256:
            if digest.hexdigest() != published.sha256 or (published.length and length != published.length):
                raise IntegrityError(
                    f"downloaded {length} bytes with sha256 {digest.hexdigest()}, but the server "
                    f"published {published.length} bytes with sha256 {published.sha256}; "
                    "the file was not written; retry the download"
                )
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest(), length


class _Polled(Protocol):
    raw: Any

    @property
    def finished(self) -> bool: ...


P = TypeVar("P", bound=_Polled)


def _poll(get: Callable[[], P], *, timeout_s: float, poll_s: float, on_update: Callable[[P], None] | None) -> P:
    """Reads `get()` every `poll_s` until it is finished or `timeout_s` would pass; returns the
    last reading (finished or not). `on_update` sees each reading that changed."""
    deadline = time.monotonic() + timeout_s
    last: P | None = None
    while True:
        current = get()
        if on_update is not None and (last is None or current.raw != last.raw):
            on_update(current)
        last = current
        if current.finished or time.monotonic() + poll_s > deadline:
            return current
        time.sleep(poll_s)
