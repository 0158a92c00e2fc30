"""A real Mosquitto broker on a free loopback port, configured with the repo's own
config and ACL (deploy/mosquitto/), for integration and end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.support.waiting import WaitHopeless, free_port, log_tail, port_accepts, wait_for

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "mosquitto" / "fleetcast.conf"
ACL = REPO / "deploy" / "mosquitto" / "acl"


class BrokerMissing(RuntimeError):
    """Mosquitto is not installed: the tests that need it fail with this message."""


def mosquitto_binary() -> str:
    for candidate in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerMissing(
        "the Mosquitto broker is not installed (looked for /usr/sbin/mosquitto and `mosquitto` on PATH); "
        "run `make broker` (apt-get install mosquitto) and run the tests again"
    )


def build_config(workdir: Path, port: int) -> str:
    """deploy/mosquitto/fleetcast.conf with the ACL path filled in and a loopback listener."""
    text = CONF.read_text().replace("ACL_FILE", str(ACL))
    lines = [text.rstrip("\n"), f"listener {port} 127.0.0.1", f"pid_file {workdir / 'mosquitto.pid'}"]
    if os.geteuid() == 0:
        # As root Mosquitto would switch to a "mosquitto" user that may not read this dir.
        lines.append("user root")
    return "\n".join(lines) + "\n"


class Broker:
    """One Mosquitto process; `restart()` comes back on the same port."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        binary = mosquitto_binary()
        self.conf_path.write_text(build_config(self.workdir, self.port))
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.conf_path), "-v"], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        finally:
            log.close()
        wait_for(
            lambda: self._check_alive() and port_accepts("127.0.0.1", self.port),
            timeout_s=15,
            what=f"mosquitto to accept connections on 127.0.0.1:{self.port}",
            context=self.log_tail,
        )
        return self

    def _check_alive(self) -> bool:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise WaitHopeless(f"mosquitto exited with {code} at start\n{self.log_tail()}")
        return True

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        # The port was ours a moment ago; wait until it is free again before reusing it.
        wait_for(lambda: not port_accepts("127.0.0.1", self.port), timeout_s=10, what="the broker port to close")
        self.start()

    def _end(self, sig: int) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None

    def log_tail(self) -> str:
        return log_tail(self.log_path, label="mosquitto log")

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
