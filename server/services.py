"""Everything one server process shares: the store, the blobs, the signer and the domain.

The HTTP app and the gRPC servicer both take one `Services`; neither builds its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fleetcast.server import datadir
from fleetcast.server.blobs import BlobStore
from fleetcast.server.config import ServerConfig
from fleetcast.server.deployments import Deployments
from fleetcast.server.fleet import Fleet
from fleetcast.server.ingest import TelemetryWriter
from fleetcast.server.metadata_cache import MetadataCache
from fleetcast.server.notify import Hub
from fleetcast.server.registry import Registry, pipeline_compressor
from fleetcast.server.samples import SampleLimits
from fleetcast.server.signing import Signer
from fleetcast.server.store.sqlite import SqliteStore
from fleetcast.server.telemetry import Telemetry

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

    def close(self) -> None:
        self.store.close()


def open_services(config: ServerConfig) -> Services:
    """Opens (on first start: creates) the data dir, keys, tokens and trust root."""
    data: Path = config.data_dir
    datadir.prepare(data)
    store = SqliteStore(config.db_path)
    try:
        blobs = BlobStore(config.blobs_dir)
        swept = blobs.sweep_temp()
        if swept:
            logger.info("temp uploads removed count=%d", swept)
        signer = Signer.open(config.keys_dir, MetadataCache(store), config.signing)
        operator_token = datadir.ensure_token(data / "operator-token")
        enroll_token = datadir.ensure_token(data / "enroll-token")
        datadir.write_atomic(data / "trust-root.json", signer.trust_root())
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
    )
    interrupted = registry.fail_interrupted()
    if interrupted:
        logger.warning("compression jobs interrupted by the last stop count=%d", interrupted)
    return Services(
        config=config, store=store, blobs=blobs, signer=signer, hub=hub,
        fleet=Fleet(store=store, enroll_token=enroll_token), registry=registry,
        deployments=Deployments(store=store, signer=signer, registry=registry, hub=hub),
        telemetry=Telemetry(store=store), operator_token=operator_token, ingest=TelemetryWriter(store=store),
    )
