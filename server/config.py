"""Server configuration: one frozen dataclass, loaded once at the edge (the CLI).

Nothing below this module reads the environment; everything is passed down.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from fleetcast.proto.addresses import is_loopback
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.liveness import LivenessConfig
from fleetcast.server.signing import SigningConfig

logger = logging.getLogger(__name__)

MiB = 1024**2


@dataclass(frozen=True)
class DashboardConfig:
    """The web dashboard's bounds (fleetcast.server.web)."""

    session_ttl_s: float = 12 * 3600.0        # a login lasts this long
    max_sessions: int = 10_000                # the oldest session is dropped past this
    login_failures: int = 5                   # failed logins per address within login_window_s ...
    login_window_s: float = 60.0              # ... before further attempts get 429
    login_failure_delay_s: float = 0.5        # every failed login answers this much later
    page_size: int = 50                       # device table rows per page (default)
    max_page_size: int = 500
    max_csv_rows: int = 100_000               # one CSV export
    max_event_subscribers: int = 64           # open server-sent event streams; more get 503
    event_poll_s: float = 1.0                 # how often the event source looks for changes
    event_heartbeat_s: float = 15.0           # a comment line keeps idle streams open through proxies


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    http_host: str = "127.0.0.1"
    http_port: int = 8470
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 8471
    mqtt_url: str | None = None
    max_upload_bytes: int = 512 * MiB
    max_golden_bytes: int = 64 * MiB
    signing: SigningConfig = field(default_factory=SigningConfig)
    refresh_interval_s: float = 3600.0  # 0 disables the periodic timestamp refresh
    rollout_look_s: float = 0.5         # how often the rollout scheduler looks at running rollouts
    public_url: str | None = None  # base URL devices use for HTTP artifact downloads
    grpc_grace_s: float = 2.0
    # Calibration and evaluation uploads for --compress (one .npz each).
    max_samples_bytes: int = 256 * MiB           # each upload, as sent
    max_samples: int = 10_000                    # samples in one upload
    # The background compression job (fleetcast.server.compress.pipeline.CompressConfig).
    compress_calibration_samples: int = 128      # of the uploaded ones, the first N calibrate
    compress_eval_samples: int = 2000            # and the first N measure quality
    compress_budget_pp: float = 1.0              # allowed quality drop, percentage points
    compress_latency_s: float = 1.0              # timing per latency measurement
    compress_stop_grace_s: float = 30.0          # shutdown waits this long for a job to stop
    # Transport security (ADR 0005): TLS on REST and gRPC unless plaintext was asked for,
    # which only loopback addresses allow.
    insecure_loopback_plaintext: bool = False
    tls_cert: Path | None = None                 # the operator's certificate chain (PEM) ...
    tls_key: Path | None = None                  # ... and its key; default: issued by DATA/tls/server-ca
    tls_names: tuple[str, ...] = ()              # extra DNS names / IPs for the issued certificate
    # The upload check (test inference, golden outputs) runs in a child process bounded by these.
    upload_check_time_s: float = 60.0            # wall time of one check
    upload_check_memory_bytes: int = 4 * 1024 * MiB   # address space of the check's process
    upload_checks: int = 2                       # uploads checked at once; more wait their turn
    max_golden_unpacked_bytes: int = 256 * MiB   # a golden .npz's arrays, unpacked (given or computed)
    orphan_blob_grace_s: float = 3600.0          # unreferenced blobs older than this are removed at start
    # Where blobs live (fleetcast.server.blobs.open_blobs): "" for DATA/blobs/, a directory, or s3://BUCKET/PREFIX.
    blobs_url: str = ""
    # AWS_REGION, which boto3 does not read itself (it reads AWS_DEFAULT_REGION and the config file).
    s3_region: str | None = None
    # Devices download artifacts from here when set: BASE/sha256/ab/<sha256> (a CDN in front of the blobs) ...
    download_base_url: str | None = None
    # ... else, for an object store, from presigned URLs valid this long.
    download_url_expires_s: int = 900
    allow_shared_data_dir: bool = False          # start even when others can read the data dir
    # When a device counts as online, late or offline (fleetcast.server.liveness).
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    # Where state lives (fleetcast.server.store.open): None is DATA/fleetcast.db; replicas
    # share one postgresql:// store and one blob store, `blobs_url` (ADR 0006).
    store_url: str | None = None
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "fleetcast.db"

    @property
    def store(self) -> str:
        return self.store_url or f"sqlite://{self.db_path.resolve()}"

    @property
    def shared_store(self) -> bool:
        """Other server processes may write the same store (PostgreSQL replicas)."""
        return not self.store.startswith("sqlite:")

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def tls(self) -> bool:
        return not self.insecure_loopback_plaintext


def parse_address(text: str, *, what: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); port 0 means "pick a free one"."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidRequest(f"{what} address {text!r} is not HOST:PORT; use for example 127.0.0.1:8470")
    return host.strip("[]"), int(port)


def load(
    *,
    data_dir: Path,
    http: str | None = None,
    grpc: str | None = None,
    mqtt_url: str | None = None,
    timestamp_expiry_s: float | None = None,
    refresh_interval_s: float | None = None,
    public_url: str | None = None,
    max_upload_bytes: int | None = None,
    compress_calibration_samples: int | None = None,
    compress_eval_samples: int | None = None,
    compress_latency_s: float | None = None,
    upload_check_time_s: float | None = None,
    upload_check_memory_bytes: int | None = None,
    allow_shared_data_dir: bool = False,
    device_interval_s: float | None = None,
    device_offline_after_s: float | None = None,
    environ: Mapping[str, str] | None = None,
    insecure_loopback_plaintext: bool = False,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_names: tuple[str, ...] = (),
    blobs_url: str | None = None,
    download_base_url: str | None = None,
    download_url_expires_s: int | None = None,
    store_url: str | None = None,
) -> ServerConfig:
    """Builds the config from command-line values, falling back to FLEETCAST_* variables."""
    env = dict(environ or {})
    config = ServerConfig(data_dir=Path(data_dir))
    http = http or env.get("FLEETCAST_HTTP")
    grpc = grpc or env.get("FLEETCAST_GRPC")
    if http:
        host, port = parse_address(http, what="HTTP")
        config = replace(config, http_host=host, http_port=port)
    if grpc:
        host, port = parse_address(grpc, what="gRPC")
        config = replace(config, grpc_host=host, grpc_port=port)
    mqtt_url = mqtt_url or env.get("FLEETCAST_MQTT_URL")
    if mqtt_url:
        config = replace(config, mqtt_url=mqtt_url)
    if timestamp_expiry_s is not None:
        if timestamp_expiry_s <= 0:
            raise InvalidRequest("--timestamp-expiry-s must be positive")
        config = replace(config, signing=replace(config.signing, timestamp_expiry_s=timestamp_expiry_s))
    if refresh_interval_s is not None:
        if refresh_interval_s < 0:
            raise InvalidRequest("--refresh-interval-s must be 0 (off) or positive")
        config = replace(config, refresh_interval_s=refresh_interval_s)
    if max_upload_bytes is not None:
        if max_upload_bytes <= 0:
            raise InvalidRequest("--max-upload-bytes must be positive")
        config = replace(config, max_upload_bytes=max_upload_bytes)
    for flag, value in (("calibration", compress_calibration_samples), ("eval", compress_eval_samples)):
        if value is not None:
            if value <= 0:
                raise InvalidRequest(f"--compress-{flag}-samples must be positive")
            config = replace(config, **{f"compress_{flag}_samples": value})
    if compress_latency_s is not None:
        if compress_latency_s <= 0:
            raise InvalidRequest("--compress-latency-s must be positive")
        config = replace(config, compress_latency_s=compress_latency_s)
    config = _with_transport(config, insecure_loopback_plaintext=insecure_loopback_plaintext,
                             tls_cert=tls_cert, tls_key=tls_key, tls_names=tls_names)
    if upload_check_time_s is not None:
        if upload_check_time_s <= 0:
            raise InvalidRequest("--upload-check-time-s must be positive")
        config = replace(config, upload_check_time_s=upload_check_time_s)
    if upload_check_memory_bytes is not None:
        if upload_check_memory_bytes < 256 * MiB:
            raise InvalidRequest("--upload-check-memory-bytes must be at least 268435456 (256 MiB)")
        config = replace(config, upload_check_memory_bytes=upload_check_memory_bytes)
    if allow_shared_data_dir:
        config = replace(config, allow_shared_data_dir=True)
    if device_interval_s is not None or device_offline_after_s is not None:
        interval = config.liveness.expected_interval_s if device_interval_s is None else device_interval_s
        offline = 5 * interval if device_offline_after_s is None else device_offline_after_s
        if not 0 < interval < offline:
            raise InvalidRequest("--device-interval-s must be positive and below --device-offline-after-s")
        config = replace(config, liveness=LivenessConfig(expected_interval_s=interval, offline_after_s=offline))
    config = _with_downloads(config, blobs_url=blobs_url or env.get("FLEETCAST_BLOBS", ""),
                             download_base_url=download_base_url or env.get("FLEETCAST_DOWNLOAD_BASE_URL"),
                             download_url_expires_s=download_url_expires_s, s3_region=env.get("AWS_REGION"))
    store_url = store_url or env.get("FLEETCAST_STORE")
    if store_url:
        config = replace(config, store_url=store_url)
    public_url = public_url or env.get("FLEETCAST_PUBLIC_URL")
    if public_url:
        config = replace(config, public_url=public_url.rstrip("/"))
    return config


def _with_downloads(config: ServerConfig, *, blobs_url: str, download_base_url: str | None,
                    download_url_expires_s: int | None, s3_region: str | None) -> ServerConfig:
    if "://" in blobs_url and not blobs_url.startswith("s3://"):
        raise InvalidRequest(f"--blobs {blobs_url[:80]!r} is not a blob store: use a directory or s3://BUCKET/PREFIX")
    if download_base_url:
        parts = urllib.parse.urlsplit(download_base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.query:
            raise InvalidRequest(f"--download-base-url {download_base_url[:80]!r} must be https://HOST/PREFIX "
                                 "with no credentials or query")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise InvalidRequest(f"--download-base-url {download_base_url[:80]!r} is plain http off loopback; "
                                 "devices fetch only over https (http is allowed for 127.0.0.1 and localhost)")
        config = replace(config, download_base_url=download_base_url.rstrip("/"))
    if download_url_expires_s is not None:
        if not 60 <= download_url_expires_s <= 7 * 86400:
            raise InvalidRequest("--download-url-expires-s must be between 60 and 604800 (S3's limit, 7 days)")
        config = replace(config, download_url_expires_s=download_url_expires_s)
    return replace(config, blobs_url=blobs_url, s3_region=s3_region or None)


def _with_transport(config: ServerConfig, *, insecure_loopback_plaintext: bool, tls_cert: Path | None,
                    tls_key: Path | None, tls_names: tuple[str, ...]) -> ServerConfig:
    if insecure_loopback_plaintext:
        for what, host in (("--http", config.http_host), ("--grpc", config.grpc_host)):
            if not is_loopback(host):
                raise InvalidRequest(f"--insecure-loopback-plaintext is refused for {what} {host}: plaintext is "
                                     "allowed only on loopback addresses such as 127.0.0.1; drop the flag to "
                                     "serve TLS")
    if (tls_cert is None) != (tls_key is None):
        raise InvalidRequest("--tls-cert and --tls-key go together: give both or neither")
    for path in (tls_cert, tls_key):
        if path is not None and not Path(path).is_file():
            raise InvalidRequest(f"{path} does not exist or is not a file")
    return replace(config, insecure_loopback_plaintext=insecure_loopback_plaintext,
                   tls_cert=None if tls_cert is None else Path(tls_cert),
                   tls_key=None if tls_key is None else Path(tls_key), tls_names=tuple(tls_names))
