"""Many simulated devices in one process: enroll them, run them, summarise what happened.

Devices share a few gRPC channels (`devices_per_channel`), so ten thousand devices
need tens of connections, not ten thousand; each device still has its own token,
watch stream and trusted metadata.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from fleetcast.server.simulator.cohort import Cohort
from fleetcast.server.simulator.device import DeviceConfig, SimulatedDevice, SimulatorError, connect
from fleetcast.server.simulator.direct import DirectDownloads
from fleetcast.server.simulator.mqtt import DeviceKey, DeviceLink, Links, MqttConfig, client_context
from fleetcast.server.simulator.verify import SignatureCache

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwarmConfig:
    grpc_target: str
    cohorts: Sequence[Cohort]
    device: DeviceConfig
    prefix: str = "sim-"
    devices_per_channel: int = 50
    enroll_concurrency: int = 100
    seed: int = 0
    server_ca: bytes | None = None      # PEM: the server's CA (DATA/server-ca.pem); None: plaintext
    mqtt: MqttConfig | None = None      # notices from this broker instead of gRPC watch streams
    grpc_targets: Sequence[str] = ()    # server replicas: devices take them in turn (instead of grpc_target)


class Swarm:
    def __init__(self, config: SwarmConfig) -> None:
        self.config = config
        self.cache = SignatureCache()
        self.channels: list[grpc.aio.Channel] = []
        self.devices: list[SimulatedDevice] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._telemetry: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.direct = DirectDownloads()
        self.links: Links | None = None
        targets = list(config.grpc_targets) or [config.grpc_target]
        current: list[grpc.aio.Channel | None] = [None] * len(targets)
        n = 0
        for cohort in config.cohorts:
            for device_id in cohort.device_ids(config.prefix):
                t, k = n % len(targets), n // len(targets)     # device n on target n mod T
                if k % max(1, config.devices_per_channel) == 0:
                    current[t] = connect(targets[t], config.server_ca)
                    self.channels.append(current[t])
                self.devices.append(SimulatedDevice(
                    device_id=device_id, cohort=cohort, config=config.device, channel=current[t],
                    cache=self.cache, seed=config.seed * 1_000_003 + n, direct=self.direct))
                n += 1

    async def enroll(self) -> float:
        """Enrolls every device, `enroll_concurrency` at a time; returns the seconds it took."""
        gate = asyncio.Semaphore(self.config.enroll_concurrency)
        start = time.perf_counter()

        async def one(device: SimulatedDevice) -> None:
            async with gate:
                try:
                    if self.config.mqtt is not None and device.key is None:
                        device.key = DeviceKey.make(device.device_id)   # its MQTT login: a certificate
                    await device.enroll()
                except SimulatorError as e:
                    device.record.errors.append(str(e)[:300])
        await asyncio.gather(*(one(d) for d in self.devices))
        return time.perf_counter() - start

    def start(self, *, telemetry: bool = True) -> None:
        """Starts every enrolled device's watch (gRPC stream or MQTT link) and update loops
        (and telemetry)."""
        for d in self.enrolled():
            self._tasks.append(asyncio.create_task(d.update_loop(), name=d.device_id))
            if self.config.mqtt is None:
                self._tasks.append(asyncio.create_task(d.watch(), name=d.device_id))
            if telemetry:
                self._telemetry.append(asyncio.create_task(d.telemetry_loop(self._stop), name=d.device_id))
        if self.config.mqtt is not None:
            self.links = Links(self.config.mqtt, [self._link(d, self.config.mqtt) for d in self.enrolled()])
            self._tasks.append(asyncio.create_task(self.links.connect(), name="mqtt-connect"))

    def _link(self, device: SimulatedDevice, config: MqttConfig) -> DeviceLink:
        assert device.key is not None
        return DeviceLink(
            device_id=device.device_id, config=config, loop=asyncio.get_running_loop(),
            context=client_context(config, device.certificate, device.key.key_pem, device.device_id),
            on_notice=device.heard_over_mqtt, on_subscribed=device.subscribed,
            on_error=lambda message: device.record.errors.append(message[:300]))

    async def wait_watching(self, timeout_s: float) -> bool:
        """Until every started device has had its first notice from the watch stream (or
        its MQTT subscriptions granted)."""
        return await self._until(lambda d: d.record.watching_at is not None, timeout_s)

    async def wait_noticed(self, deployment_id: str, timeout_s: float) -> bool:
        return await self._until(lambda d: deployment_id in d.record.notices, timeout_s)

    async def wait_finished(self, deployment_id: str, timeout_s: float) -> bool:
        return await self._until(lambda d: deployment_id in d.record.finished, timeout_s)

    async def _until(self, done: Callable[[SimulatedDevice], bool], timeout_s: float) -> bool:
        """Polls only the devices not done yet: with 10,000 devices, polling all of them
        every 50 ms took a twentieth of the loop the devices share."""
        deadline = time.monotonic() + timeout_s
        waiting = self.enrolled()
        while waiting := [d for d in waiting if not done(d)]:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def enrolled(self) -> list[SimulatedDevice]:
        return [d for d in self.devices if d.record.enrolled_at is not None]

    async def close(self, *, grace_s: float = 30.0) -> None:
        """Lets telemetry in flight finish (up to `grace_s`), then stops every device."""
        self._stop.set()
        if self._telemetry:
            await asyncio.wait(self._telemetry, timeout=grace_s)
        self._tasks += self._telemetry
        if self.links is not None:
            await self.links.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()
        await self.direct.close()

    def summary(self, deployment_id: str = "", *, since: float | None = None) -> dict[str, Any]:
        """Counts and timings; notice and finish times are seconds after `since` (monotonic)."""
        records = [d.record for d in self.devices]
        out: dict[str, Any] = {
            "devices": len(records),
            "enrolled": sum(r.enrolled_at is not None for r in records),
            "errors": sum(len(r.errors) for r in records),
            "first_errors": [e for r in records for e in r.errors][:5],
            "retries": sum(r.retries for r in records),
            "bytes_downloaded": sum(r.bytes_downloaded for r in records),
            "telemetry_batches": sum(r.telemetry_batches for r in records),
            "telemetry_inferences": sum(r.telemetry_sent for r in records),
            "telemetry_errors": sum(r.telemetry_errors for r in records),
            "calls": _sum_calls(records),
        }
        if deployment_id:
            base = since if since is not None else 0.0
            notices = sorted(r.notices[deployment_id] - base for r in records if deployment_id in r.notices)
            finished = [r.finished[deployment_id] for r in records if deployment_id in r.finished]
            outcomes: dict[str, int] = {}
            for _, outcome in finished:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            out |= {
                "noticed": len(notices), "notice_p50_s": _quantile(notices, 0.5), "notice_p99_s": _quantile(notices, 0.99),
                "outcomes": outcomes,
                "last_finished_s": max((t - base for t, _ in finished), default=None),
            }
        return out


def _sum_calls(records: Sequence[Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in records:
        for rpc, n in r.calls.items():
            total[rpc] = total.get(rpc, 0) + n
    return total


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q * 100) - 1))]
