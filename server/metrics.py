"""`GET /metrics`: the fleet and this process in the Prometheus text format (prometheus-client).

`FleetCollector` reads the store at every scrape, so the figures are those every
replica would give and no device id ever becomes a label (its cardinality is the
fleet's size). Series, all in base units:

| series                                                  | type      | labels                                     |
|---------------------------------------------------------|-----------|--------------------------------------------|
| fleetcast_devices                                       | gauge     | state (online/late/offline), hardware_class|
| fleetcast_devices_serving                               | gauge     | model, version                             |
| fleetcast_deployments                                   | gauge     | status                                     |
| fleetcast_deployment_devices                            | gauge     | deployment_id, model, version, outcome     |
| fleetcast_inference_duration_seconds (_bucket/_count/_sum) | histogram | model, version, variant, hardware_class, backend |
| fleetcast_inferences_total, fleetcast_inference_errors_total | counter | model, version, variant, hardware_class, backend |
| fleetcast_http_requests_total                           | counter   | method, route, status                      |
| fleetcast_http_request_duration_seconds                 | histogram | method, route                              |
| process_*, python_gc_*, python_info                     | (prometheus-client's own collectors)           |

Histogram buckets are the shared fixed latency buckets (`fleetcast.proto.telemetry`)
converted to seconds, so `histogram_quantile()` over any sum of series is an exact
merge of bucket counts. `fleetcast_deployment_devices` covers deployments still
active; `outcome` is `pending` until a device's outcome is final.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from fleetcast.proto import telemetry as buckets
from fleetcast.server import liveness
from fleetcast.server.store import DeviceTally, FleetAggregate, Store

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
INFERENCE_LABELS: Final = ("model", "version", "variant", "hardware_class", "backend")
BOUNDS_S: Final = tuple(b / 1000.0 for b in buckets.LATENCY_BOUNDS_MS)
HTTP_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ACTIVE_DEPLOYMENT_LIMIT: Final = 200


class FleetCollector(Collector):
    """Fleet gauges and inference series, built from the store at each scrape."""

    def __init__(self, store: Store, *, config: liveness.LivenessConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    def describe(self) -> list[Metric]:
        return []  # collected lazily: registering must not read the store

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        # Counted by the store (GROUP BY), never by loading every device: a scrape of a
        # 10,000-device fleet reads a few hundred rows.
        tally = self.store.device_tally(online_since=now - self.config.expected_interval_s,
                                        late_since=now - self.config.offline_after_s)
        yield self._devices(tally)
        yield self._serving(tally)
        yield from self._deployments()
        yield from self._inference(self.store.fleet_aggregates())

    def _devices(self, tally: list[DeviceTally]) -> GaugeMetricFamily:
        family = GaugeMetricFamily("fleetcast_devices", "Enrolled devices by liveness state and hardware class",
                                   labels=("state", "hardware_class"))
        counts = Counter[tuple[str, str]]()
        for t in tally:
            counts[(t.liveness, t.hardware_class)] += t.devices
        for hardware_class in sorted({t.hardware_class for t in tally}):
            for state in liveness.STATES:  # every state present, zeros included, so sums never miss one
                family.add_metric((state, hardware_class), counts[(state, hardware_class)])
        return family

    def _serving(self, tally: list[DeviceTally]) -> GaugeMetricFamily:
        family = GaugeMetricFamily("fleetcast_devices_serving", "Devices whose active model is this version",
                                   labels=("model", "version"))
        counts = Counter[tuple[str, str]]()
        for t in tally:
            if "@" in t.active_model:
                model, _, version = t.active_model.partition("@")
                counts[(model, version)] += t.devices
        for (model, version), n in sorted(counts.items()):
            family.add_metric((model, version), n)
        return family

    def _deployments(self) -> Iterator[Metric]:
        deployments = self.store.deployments(limit=ACTIVE_DEPLOYMENT_LIMIT)
        by_status = GaugeMetricFamily("fleetcast_deployments", "Recent deployments by status", labels=("status",))
        for status, n in sorted(Counter(d.status for d in deployments).items()):
            by_status.add_metric((status,), n)
        yield by_status
        progress = GaugeMetricFamily(
            "fleetcast_deployment_devices", "Devices of each active deployment by outcome (pending until final)",
            labels=("deployment_id", "model", "version", "outcome"))
        for d in deployments:
            if d.status != "active":
                continue
            outcomes = {k or "pending": n for k, n in self.store.deployment_counts(d.deployment_id).items() if n}
            for outcome, n in sorted(outcomes.items()):
                progress.add_metric((d.deployment_id, d.model, d.version, outcome), n)
        yield progress

    def _inference(self, totals: list[FleetAggregate]) -> Iterator[Metric]:
        duration = HistogramMetricFamily(
            "fleetcast_inference_duration_seconds",
            "On-device inference latency, merged over devices from the shared fixed buckets",
            labels=INFERENCE_LABELS, unit="seconds")
        inferences = CounterMetricFamily("fleetcast_inferences", "Inferences devices counted", labels=INFERENCE_LABELS)
        errors = CounterMetricFamily("fleetcast_inference_errors", "Inferences that failed", labels=INFERENCE_LABELS)
        for t in totals:
            key = (t.model, t.version, t.variant, t.hardware_class, t.backend)
            cumulative, running = [], 0
            for bound, count in zip((*BOUNDS_S, float("inf")), t.histogram, strict=True):
                running += count
                cumulative.append((_le(bound), running))
            duration.add_metric(key, cumulative, sum_value=t.latency_sum_ms / 1000.0)
            inferences.add_metric(key, t.inferences)
            errors.add_metric(key, t.errors)
        yield duration
        yield inferences
        yield errors


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Metrics:
    """One registry per app: the fleet collector, process collectors and HTTP request metrics."""

    def __init__(self, store: Store, *, config: liveness.LivenessConfig) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(store, config=config))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = PromCounter("fleetcast_http_requests", "HTTP requests served",
                                    ("method", "route", "status"), registry=self.registry)
        self.durations = Histogram("fleetcast_http_request_duration_seconds", "HTTP request handling time",
                                   ("method", "route"), buckets=HTTP_BUCKETS_S, registry=self.registry)

    def observe_request(self, *, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.durations.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        """The text exposition (blocking: it reads the store)."""
        return generate_latest(self.registry)
