"""The Fleetcast server and agents as real subprocesses on 127.0.0.1.

Each process logs to a file beside its data dir; every failed wait shows the log's tail.
Processes run in their own session so a kill reaches everything they started, and
nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support.broker import broker_for, server_url_for
from tests.support.waiting import WaitHopeless, log_tail, port_accepts, wait_for

START_TIMEOUT_S = 60.0  # imports of onnx/onnxruntime/grpc on a loaded 2-core machine
STOP_TIMEOUT_S = 20.0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class _Process:
    """A subprocess with a log file, started in its own session."""

    label = "process"

    def __init__(self, data_dir: Path) -> None:
        self.env: dict[str, str] = {}   # added to the test runner's environment
        self.data_dir = Path(data_dir)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # subclasses: the command line and the readiness check
    def command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "_Process":
        """Starts the process and waits (bounded) until it says it serves."""
        self.launch()
        self.wait_ready()
        return self

    def launch(self) -> None:
        """Starts the process without waiting for it to serve."""
        assert not self.running, f"{self.label} is already running"
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)   # a server refuses a dir others can read
        self.starts += 1
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1", **self.env)
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        def ready() -> bool:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise WaitHopeless(f"{self.label} exited with {code} before it served\n{self.log_tail()}")
            return self._ready()

        wait_for(ready, timeout_s=timeout_s, what=f"{self.label} to serve", context=self.log_tail)

    def stop(self) -> int | None:
        """SIGTERM, then wait for the exit; returns the exit code."""
        return self._end(signal.SIGTERM)

    def kill(self) -> int | None:
        """SIGKILL to the process and everything it started."""
        return self._end(signal.SIGKILL)

    def restart(self) -> "_Process":
        self.stop()
        return self.start()

    def _end(self, sig: int) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT_S)
                raise AssertionError(f"{self.label} ignored signal {sig} for {STOP_TIMEOUT_S}s\n{self.log_tail()}")
        if sig == signal.SIGKILL:
            # The session may have children that outlived the leader: end them too.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc = None
        return proc.returncode

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines=lines, label=f"{self.label} log ({self.log_path})")

    def __enter__(self) -> "_Process":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess(_Process):
    """`fleetcast server` with its own data dir; restarts come back on the same ports."""

    label = "server"

    def __init__(self, data_dir: Path, *, mqtt_url: str | None = None, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir)
        self.env = dict(env or {})
        self.mqtt_url = mqtt_url
        self.extra_args = list(extra_args)
        self.http_address = "127.0.0.1:0"
        self.grpc_address = "127.0.0.1:0"
        self.info: dict[str, Any] = {}

    def launch(self) -> None:
        # A test broker accepts certificates from its own Fleetcast CAs: start from them.
        broker = broker_for(self.mqtt_url)
        if broker is not None:
            broker.seed_server_data(self.data_dir)
        super().launch()

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "fleetcast.sdk.console", "server", "--data", str(self.data_dir),
            "--http", self.http_address, "--grpc", self.grpc_address,
        ]
        if self.mqtt_url:
            cmd += ["--mqtt", server_url_for(self.mqtt_url) or self.mqtt_url]
        return cmd + ["-v"] + self.extra_args

    @property
    def server_json(self) -> Path:
        return self.data_dir / "server.json"

    def _ready(self) -> bool:
        doc = _read_json(self.server_json)
        if not doc or doc.get("pid") != self.pid or not doc.get("http") or not doc.get("grpc"):
            return False
        self.info = doc
        host, _, port = str(doc["grpc"]).rpartition(":")
        return port_accepts(host.strip("[]") or "127.0.0.1", int(port))

    def start(self) -> "ServerProcess":
        super().start()
        # Later starts reuse the ports this one got, so agents find it again.
        self.http_address = self.http.split("://", 1)[-1].rstrip("/")
        self.grpc_address = self.grpc
        return self

    @property
    def http(self) -> str:
        return str(self.info["http"]).rstrip("/")

    @property
    def grpc(self) -> str:
        return str(self.info["grpc"])

    @property
    def operator_token(self) -> str:
        return (self.data_dir / "operator-token").read_text().strip()

    @property
    def enroll_token(self) -> str:
        return (self.data_dir / "enroll-token").read_text().strip()

    @property
    def trust_root(self) -> Path:
        return self.data_dir / "trust-root.json"

    @property
    def server_ca(self) -> Path:
        """The CA the server's TLS certificate chains to (agents and clients pin it)."""
        return self.data_dir / "server-ca.pem"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "fleetcast.db"

    def client(self) -> Any:
        """An operator SDK client for this server (close it, or use it in a `with`)."""
        from fleetcast.sdk import Client

        return Client(self.http, self.operator_token, ca=self.server_ca)


class AgentProcess(_Process):
    """`fleetcast agent` for one device, with fast trial, poll and telemetry periods."""

    label = "agent"

    def __init__(
        self,
        data_dir: Path,
        *,
        server: ServerProcess | str,
        device_id: str,
        hardware: str,
        trust_root: Path,
        enroll_token: str,
        mqtt_url: str | None = None,
        extra_args: Sequence[str] = (),
        expect_enrollment: bool = True,
    ) -> None:
        super().__init__(data_dir)
        self.expect_enrollment = expect_enrollment
        self.server = server
        self.device_id = device_id
        self.hardware = hardware
        self.trust_root = Path(trust_root)
        self.enroll_token = enroll_token
        self.mqtt_url = mqtt_url
        self.extra_args = list(extra_args)
        self.label = f"agent {device_id}"
        self.info: dict[str, Any] = {}

    @property
    def enroll_token_file(self) -> Path:
        """Where the enroll token is written (0600) for --enroll-token-file: never on argv."""
        return self.data_dir.parent / f"{self.data_dir.name}.enroll-token"

    def command(self) -> list[str]:
        grpc = self.server.grpc if isinstance(self.server, ServerProcess) else self.server
        fd = os.open(self.enroll_token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.enroll_token + "\n")
        cmd = [
            sys.executable, "-m", "fleetcast.sdk.console", "agent",
            "--server", grpc, "--data", str(self.data_dir), "--device-id", self.device_id,
            "--hardware", self.hardware, "--trust-root", str(self.trust_root),
            "--enroll-token-file", str(self.enroll_token_file),
            "--trial-s", "1", "--poll-interval-s", "5", "--telemetry-interval-s", "1",
        ]
        if isinstance(self.server, ServerProcess):
            cmd += ["--server-ca", str(self.server.server_ca)]
        if self.mqtt_url:
            cmd += ["--mqtt", self.mqtt_url]
        return cmd + ["-v"] + self.extra_args

    @property
    def agent_json(self) -> Path:
        return self.data_dir / "agent.json"

    def _ready(self) -> bool:
        doc = _read_json(self.agent_json)
        if not doc or doc.get("pid") != self.pid:
            return False
        self.info = doc
        if not Path(str(doc.get("socket", self.data_dir / "agent.sock"))).exists():
            return False
        # Serving means enrolled too, when the server is up: a deployment may follow at once.
        server_up = isinstance(self.server, ServerProcess) and self.server.running
        return not (self.expect_enrollment and server_up) or (self.data_dir / "device.json").exists()

    def start(self) -> "AgentProcess":
        super().start()
        return self

    # what the device holds and serves

    def active_slot(self) -> str | None:
        try:
            return (self.data_dir / "active").read_text().strip() or None
        except FileNotFoundError:
            return None

    def active_model_path(self) -> Path | None:
        """The active slot's model file: model.onnx, or model.<format> as its manifest says."""
        slot = self.active_slot()
        if slot is None:
            return None
        manifest = self.active_manifest() or {}
        return self.data_dir / "slots" / slot / f"model.{manifest.get('format') or 'onnx'}"

    def active_manifest(self) -> dict[str, Any] | None:
        slot = self.active_slot()
        return None if slot is None else _read_json(self.data_dir / "slots" / slot / "manifest.json")

    def inference_client(self) -> Any:
        from fleetcast.agent.local_api import InferenceClient

        return InferenceClient(self.data_dir)

    def status(self) -> dict[str, Any]:
        """What the running agent says it serves (its local API): model, version, state, last_error..."""
        with self.inference_client() as client:
            return client.status()

    def infer(self, inputs: Any) -> dict[str, Any]:
        """One inference through the agent's local API: {output name: array}."""
        with self.inference_client() as client:
            return client.infer(inputs)


class Fleet:
    """N agents of one server, started together; a context manager that stops them."""

    def __init__(
        self,
        root: Path,
        server: ServerProcess,
        devices: Iterable[tuple[str, str]],
        *,
        mqtt_url: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.agents = [
            AgentProcess(
                Path(root) / device_id, server=server, device_id=device_id, hardware=hardware,
                trust_root=server.trust_root, enroll_token=server.enroll_token,
                mqtt_url=mqtt_url, extra_args=extra_args,
            )
            for device_id, hardware in devices
        ]

    def __iter__(self) -> Iterator[AgentProcess]:
        return iter(self.agents)

    def __getitem__(self, device_id: str) -> AgentProcess:
        return next(a for a in self.agents if a.device_id == device_id)

    def start(self) -> "Fleet":
        for agent in self.agents:  # launch all first: they import in parallel
            agent.launch()
        for agent in self.agents:
            agent.wait_ready()
        return self

    def stop(self) -> None:
        errors = []
        for agent in self.agents:
            try:
                agent.stop()
            except AssertionError as e:
                errors.append(str(e))
        if errors:
            raise AssertionError("\n".join(errors))

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(a.log_tail(lines) for a in self.agents)

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
