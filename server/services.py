"""Everything one server process shares: the store, the blobs, the signer and the domain.

The HTTP app and the gRPC servicer both take one `Services`; neither builds its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fleetcast.server import datadir
from fleetcast.server.blobs import BlobStore
from fleetcast.server.certificates import Certificates, server_names
from fleetcast.server.config import ServerConfig
from fleetcast.server.deployments import Deployments
from fleetcast.server.fleet import Fleet
from fleetcast.server.ingest import TelemetryWriter
from fleetcast.server.liveness import Presence
from fleetcast.server.metadata_cache import MetadataCache
from fleetcast.server.notify import Hub
from fleetcast.server.registry import Registry, pipeline_compressor
from fleetcast.server.rollouts.service import Rollouts
from fleetcast.server.samples import SampleLimits
from fleetcast.server.signing import Signer
from fleetcast.server.store.sqlite import SqliteStore
from fleetcast.server.telemetry import Telemetry
from fleetcast.server.upload_check import CheckLimits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    config: ServerConfig
    store: SqliteStore
    blobs: BlobStore
    signer: Signer
    hub: Hub
    fleet: Fleet
    registry: Registry
    deployments: Deployments
    telemetry: Telemetry
    operator_token: str
    ingest: TelemetryWriter   # group commit of device telemetry (the gRPC path)
    rollouts: Rollouts        # staged rollouts, each stage a wave of `deployments`
    certificates: Certificates | None = None
    metrics_token: str = ""  # read-only: GET /metrics only (DATA/metrics-token)
    presence: Presence = field(default_factory=Presence)  # devices with an open watch stream

    def close(self) -> None:
        self.registry.uploads.shutdown(wait=True, cancel_futures=True)
        self.store.close()


def open_services(config: ServerConfig) -> Services:
    """Opens (on first start: creates) the data dir, keys, tokens and trust root."""
    data: Path = config.data_dir
    datadir.prepare(data, allow_shared=config.allow_shared_data_dir)
    store = SqliteStore(config.db_path)
    try:
        blobs = BlobStore(config.blobs_dir)
        swept = blobs.sweep_temp()
        if swept:
            logger.info("temp uploads removed count=%d", swept)
        orphans = blobs.sweep_orphans(lambda sha256: store.artifact(sha256) is not None,
                                      grace_s=config.orphan_blob_grace_s)
        if orphans:
            logger.warning("blobs no record refers to were removed count=%d (left by a crash mid-upload)", orphans)
        signer = Signer.open(config.keys_dir, MetadataCache(store), config.signing)
        operator_token = datadir.ensure_token(data / "operator-token")
        enroll_token = datadir.ensure_token(data / "enroll-token")
        metrics_token = datadir.ensure_token(data / "metrics-token")
        datadir.write_atomic(data / "trust-root.json", signer.trust_root())
        certificates = Certificates.open(
            config.tls_dir, names=server_names([config.http_host, config.grpc_host], config.tls_names),
            given_cert=config.tls_cert, given_key=config.tls_key)
        # Next to the trust root: what the operator copies to devices and operator machines.
        datadir.write_atomic(data / "server-ca.pem", certificates.server_ca.pem)
    except BaseException:
        store.close()
        raise
    hub = Hub()
    registry = Registry(
        store=store, blobs=blobs, signer=signer,
        compressor=pipeline_compressor(calibration_samples=config.compress_calibration_samples,
                                       eval_samples=config.compress_eval_samples, budget_pp=config.compress_budget_pp,
                                       latency_s=config.compress_latency_s),
        calibration_limits=SampleLimits(max_bytes=config.max_samples_bytes, max_samples=config.max_samples,
                                        keep=config.compress_calibration_samples),
        eval_limits=SampleLimits(max_bytes=config.max_samples_bytes, max_samples=config.max_samples,
                                 keep=config.compress_eval_samples),
        check_limits=CheckLimits(time_s=config.upload_check_time_s, memory_bytes=config.upload_check_memory_bytes,
                                 max_output_bytes=config.max_golden_unpacked_bytes),
        upload_workers=config.upload_checks,
    )
    interrupted = registry.fail_interrupted()
    if interrupted:
        logger.warning("compression jobs interrupted by the last stop count=%d", interrupted)
    deployments = Deployments(store=store, signer=signer, registry=registry, hub=hub)
    return Services(
        config=config, store=store, blobs=blobs, signer=signer, hub=hub,
        fleet=Fleet(store=store, enroll_token=enroll_token, certificates=certificates), registry=registry,
        deployments=deployments, rollouts=Rollouts(store=store, deployments=deployments),
        telemetry=Telemetry(store=store), operator_token=operator_token, ingest=TelemetryWriter(store=store),
        certificates=certificates, metrics_token=metrics_token,
    )
