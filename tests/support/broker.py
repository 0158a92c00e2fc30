"""A real Mosquitto broker on a free loopback port, configured with the repo's own
config and ACL (deploy/mosquitto/), for integration and end-to-end tests.

The shipped config asks for TLS and client certificates from the Fleetcast device
CA. Each Broker makes a pair of Fleetcast CAs (`ca_dir`, the layout of a server's
DATA/tls/) and the broker's files from them; a `ServerProcess` given this broker's
URL starts from those CAs (`ca_dir_for`), so its agents' device certificates and
its own broker certificate are ones this broker accepts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from fleetcast.proto import identity
from fleetcast.server.brokerfiles import write_broker_files
from fleetcast.server.certificates import Certificates
from tests.support.waiting import WaitHopeless, free_port, log_tail, port_accepts, wait_for

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "mosquitto" / "fleetcast.conf"
ACL = REPO / "deploy" / "mosquitto" / "acl"
SHIPPED_DIR = "/etc/mosquitto/fleetcast/"
SHIPPED_LISTENER = "listener 8883"
SHIPPED_SERVER_LISTENER = "listener 8884 127.0.0.1"
NAMES = ("127.0.0.1", "localhost")
_BROKERS: dict[str, "Broker"] = {}


def broker_for(url: str | None) -> "Broker | None":
    """The test broker whose devices' URL is `url` (None for any other URL)."""
    return _BROKERS.get(url or "")


def server_url_for(url: str | None) -> str | None:
    """The URL of the servers' listener of the test broker whose device URL is `url`."""
    broker = _BROKERS.get(url or "")
    return url if broker is None else broker.server_url


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


def build_config(workdir: Path, port: int, files_dir: Path | None = None, server_port: int | None = None) -> str:
    """deploy/mosquitto/fleetcast.conf as shipped, its file paths pointing at `files_dir`
    (default workdir/files) and its two listeners on loopback ports: the only changes."""
    files = files_dir or workdir / "files"
    text = CONF.read_text()
    assert SHIPPED_DIR in text and SHIPPED_LISTENER in text and SHIPPED_SERVER_LISTENER in text, \
        "the shipped config changed its paths or listeners"
    text = text.replace(SHIPPED_DIR, f"{files}/").replace(SHIPPED_SERVER_LISTENER, f"listener {server_port or free_port()} 127.0.0.1")
    text = text.replace(SHIPPED_LISTENER, f"listener {port} 127.0.0.1")
    lines = [text.rstrip("\n"), f"pid_file {workdir / 'mosquitto.pid'}"]
    if os.geteuid() == 0:
        # As root Mosquitto would switch to a "mosquitto" user that may not read this dir.
        lines.append("user root")
    return "\n".join(lines) + "\n"


class Broker:
    """One Mosquitto process; `restart()` comes back on the same port."""

    def __init__(self, workdir: Path, *, port: int | None = None, verbose: bool = True) -> None:
        self.workdir = Path(workdir)
        self.verbose = verbose   # -v: every packet logged (the tests read the log; benchmarks do not)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.ca_dir = self.workdir / "fleet-ca"
        self.files_dir = self.workdir / "files"
        self.certificates = Certificates.open(self.ca_dir, names=NAMES)
        write_broker_files(self.certificates, self.files_dir, NAMES, ACL)
        self.server_port = free_port()
        _BROKERS[self.url] = self

    @property
    def url(self) -> str:
        """The devices' listener (a ServerProcess given it uses `server_url`)."""
        return f"mqtts://127.0.0.1:{self.port}"

    @property
    def server_url(self) -> str:
        """The servers' listener: client ids stay the server's own."""
        return f"mqtts://127.0.0.1:{self.server_port}"

    @property
    def ca_path(self) -> Path:
        """The CA of the broker's certificate (a client checks the broker with it)."""
        return self.certificates.server_ca_path

    def seed_server_data(self, data_dir: Path) -> None:
        """Gives a server's data dir (before its first start) this broker's Fleetcast CAs,
        so the certificates that server issues are ones this broker accepts."""
        tls = Path(data_dir) / "tls"
        if (tls / "device-ca.pem").exists():
            return
        Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        tls.mkdir(mode=0o700, exist_ok=True)
        for name in ("server-ca.pem", "server-ca.key", "device-ca.pem", "device-ca.key"):
            shutil.copy2(self.ca_dir / name, tls / name)

    def client_certificate(self, common_name: str) -> tuple[Path, Path]:
        """(certificate, key) files from the device CA for a test client named `common_name`."""
        out = self.workdir / "clients"
        out.mkdir(exist_ok=True)
        key = identity.generate_key()
        cert = self.certificates.device_ca.issue(common_name=common_name, public_key=key.public_key(), client=True)
        stem = out / f"{common_name}-{os.urandom(4).hex()}"
        cert_path, key_path = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert_path.write_bytes(cert)
        key_path.write_bytes(identity.key_pem(key))
        key_path.chmod(0o600)
        return cert_path, key_path

    def start(self) -> "Broker":
        binary = mosquitto_binary()
        self.conf_path.write_text(build_config(self.workdir, self.port, self.files_dir, self.server_port))
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.conf_path), *(["-v"] if self.verbose else [])], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        finally:
            log.close()
        wait_for(
            lambda: self._check_alive() and port_accepts("127.0.0.1", self.port)
            and port_accepts("127.0.0.1", self.server_port),
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
