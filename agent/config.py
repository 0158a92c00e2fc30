"""The agent's configuration: one frozen dataclass, loaded once at the edge.

`load(args, environ)` takes the parsed command line (any object or mapping with the
attribute names below) and the environment; nothing below this module reads
`os.environ`. The enrollment token comes from a file (`--enroll-token-file`, read
here) or `FLEETCAST_ENROLL_TOKEN`, never from the command line, where any local user
could read it in the process list; the same holds for the MQTT password.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcast.proto.addresses import is_loopback
from fleetcast.proto import topics

logger = logging.getLogger(__name__)

HARDWARE_CLASSES = frozenset(
    {"x86-cpu", "arm-cpu", "rk3399", "rk3588", "rk3566", "jetson", "movidius", "phone-android", "phone-ios"}
)
_MAX_SECRET_BYTES = 4096
_SERVER_PATTERN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and what to do."""


@dataclass(frozen=True)
class AgentConfig:
    server: str                                  # gRPC control server, "host:port"
    data_dir: Path
    device_id: str
    hardware_class: str
    trust_root: Path                             # trust-root.json copied from the server
    enroll_token: str = ""                       # needed only until device.json holds a token
    mqtt_url: str | None = None                  # mqtt://host:port: notifications over MQTT
    artifacts_url: str | None = None             # HTTP base for Range downloads; None: gRPC Download
    telemetry_via_mqtt: bool = False             # publish telemetry batches to MQTT (needs mqtt_url)
    group: str = ""
    trial_s: float = 10.0
    trial_max_error_ratio: float = 0.05
    poll_interval_s: float = 60.0
    telemetry_interval_s: float = 10.0
    download_chunk_bytes: int = 256 * 1024
    download_rate_bps: int = 0                   # bytes per second for downloads; 0: as fast as the link
    max_artifact_bytes: int = 512 * 1024**2
    intra_op_threads: int = 1
    rpc_timeout_s: float = 10.0
    max_state_entries: int = 50                  # a state entered more often posts a loop event
    retry_backoff_max_s: float = 30.0
    max_spooled_batches: int = 10_000
    # Transport security (ADR 0005)
    server_ca: Path | None = None                # PEM CA the server's certificate must chain to;
                                                 # default: server-ca.pem next to the trust root
    insecure_loopback_plaintext: bool = False    # plaintext gRPC, only to a loopback server
    mqtt_ca: Path | None = None                  # CA of the broker's certificate; default: the server CA
    mqtt_username: str = ""                      # with mqtt_password: password login instead of
    mqtt_password: str = ""                      # the device certificate (mqtts://)
    backends: tuple[str, ...] = ()               # back ends this agent may use; empty: every one that probes
    bridge_allow_origins: tuple[str, ...] = ()   # H5 bridge: origins (with settings) it serves; none: no bridge
    bridge_port: int = 0                         # H5 bridge port on 127.0.0.1; 0: a free one (see bridge.json)

    @property
    def server_ca_path(self) -> Path:
        return self.server_ca or self.trust_root.parent / "server-ca.pem"

    @property
    def mqtt_ca_path(self) -> Path:
        return self.mqtt_ca or self.server_ca_path

    def __post_init__(self) -> None:
        topics.check_device_id(self.device_id)
        if not _SERVER_PATTERN.fullmatch(self.server):
            raise ConfigError(f"--server {self.server!r} must be HOST:PORT, e.g. 127.0.0.1:50051")
        if self.hardware_class not in HARDWARE_CLASSES:
            raise ConfigError(
                f"--hardware {self.hardware_class!r} is not one of {', '.join(sorted(HARDWARE_CLASSES))}"
            )
        if self.insecure_loopback_plaintext and not is_loopback(self.server.rpartition(":")[0].strip("[]")):
            raise ConfigError(f"--insecure-loopback-plaintext is refused for --server {self.server}: plaintext "
                              "is allowed only to a loopback address; drop the flag to use TLS")
        if self.telemetry_via_mqtt and not self.mqtt_url:
            raise ConfigError("telemetry over MQTT needs --mqtt URL")
        for name in ("trial_s", "poll_interval_s", "telemetry_interval_s", "rpc_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if not 0.0 <= self.trial_max_error_ratio <= 1.0:
            raise ConfigError("trial_max_error_ratio must be between 0 and 1")
        if self.download_rate_bps < 0:
            raise ConfigError("download_rate_bps must be 0 (no limit) or positive")
        if self.bridge_allow_origins:
            from fleetcast.agent.bridge_policy import PolicyError, parse_origins

            try:
                parse_origins(self.bridge_allow_origins)
            except PolicyError as e:
                raise ConfigError(str(e)) from e
        if not 0 <= self.bridge_port <= 65535:
            raise ConfigError("--bridge-port must be 0 (a free port) or 1..65535")
        if self.download_chunk_bytes <= 0 or self.max_artifact_bytes <= 0 or self.intra_op_threads <= 0:
            raise ConfigError("download_chunk_bytes, max_artifact_bytes and intra_op_threads must be positive")


def read_secret_file(path: Path, *, what: str, flag: str) -> str:
    """The first line of a secret file; the file should be private (0600)."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SECRET_BYTES + 1)
        mode = Path(path).stat().st_mode
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot read the {what} ({e.strerror or e})") from e
    if len(data) > _MAX_SECRET_BYTES:
        raise ConfigError(f"{flag} {path} is larger than {_MAX_SECRET_BYTES} bytes: it should hold only the {what}")
    if mode & 0o077:
        logger.warning("%s %s has mode %o: others may read the %s; chmod 600 it", flag, path, mode & 0o777, what)
    text = data.decode("utf-8", "replace").strip()
    if not text:
        raise ConfigError(f"{flag} {path} is empty: it should hold the {what}")
    return text.splitlines()[0].strip()


def load(args: Any, environ: Mapping[str, str]) -> AgentConfig:
    """Builds the config from parsed arguments (attributes or mapping) and the environment."""
    values = dict(args) if isinstance(args, Mapping) else dict(vars(args))
    fields = {f.name for f in dataclasses.fields(AgentConfig)}
    chosen = {k: v for k, v in values.items() if k in fields and v is not None}
    if values.get("enroll_token_file"):
        chosen["enroll_token"] = read_secret_file(Path(values["enroll_token_file"]), what="enroll token",
                                                  flag="--enroll-token-file")
    if not chosen.get("enroll_token"):
        chosen["enroll_token"] = environ.get("FLEETCAST_ENROLL_TOKEN", "")
    if values.get("mqtt_password_file"):
        chosen["mqtt_password"] = read_secret_file(Path(values["mqtt_password_file"]), what="MQTT password",
                                                   flag="--mqtt-password-file")
    if isinstance(chosen.get("backends"), str):
        chosen["backends"] = tuple(b.strip() for b in chosen["backends"].split(",") if b.strip())
    if "bridge_allow_origins" in chosen:
        chosen["bridge_allow_origins"] = tuple(chosen["bridge_allow_origins"])
    for key in ("data_dir", "trust_root", "server_ca", "mqtt_ca"):
        if key in chosen:
            chosen[key] = Path(chosen[key]).expanduser().resolve()
    try:
        return AgentConfig(**chosen)
    except topics.TopicError as e:
        raise ConfigError(str(e)) from e
    except TypeError as e:
        raise ConfigError(f"missing setting: {e}") from e
