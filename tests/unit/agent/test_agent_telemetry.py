"""Telemetry spool and sender: batches survive restarts and go only when acknowledged."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from fleetcast.agent.errors import ServerUnavailableError
from fleetcast.agent.telemetry import ModelKey, Recorder, Sender, Spool, send_one_by_one
from fleetcast.proto import telemetry as buckets
from fleetcast.proto.v1 import device_pb2

KEY = ModelKey("tiny", "1", "original", "onnxruntime")


class FakeUplink:
    """Implements telemetry.Uplink; acks only the batch ids it is told to."""

    def __init__(self) -> None:
        self.online = True
        self.ack_only: set[str] | None = None
        self.statuses: list[device_pb2.StatusReport] = []
        self.sent: list[str] = []

    def send_status(self, report: device_pb2.StatusReport) -> None:
        if not self.online:
            raise ServerUnavailableError("offline")
        self.statuses.append(report)

    def send_statuses(self, reports: Sequence[device_pb2.StatusReport]) -> int:
        return send_one_by_one(self.send_status, reports)

    def send_batches(self, batches: Sequence[device_pb2.TelemetryBatch]) -> Iterator[str]:
        if not self.online:
            raise ServerUnavailableError("offline")
        for batch in batches:
            self.sent.append(batch.batch_id)
            if self.ack_only is None or batch.batch_id in self.ack_only:
                yield batch.batch_id


def spool_with_batches(path: Path, n: int) -> tuple[Spool, list[str]]:
    spool = Spool(path)
    recorder = Recorder("dev-1")
    ids = []
    for i in range(n):
        recorder.counters_for(KEY).record(1.0 + i, ok=True)
        batch = recorder.close_window()
        assert batch is not None
        spool.add_batch(batch)
        ids.append(batch.batch_id)
    return spool, ids


def test_window_counts_latency_into_the_shared_buckets() -> None:
    recorder = Recorder("dev-1")
    counters = recorder.counters_for(KEY)
    for latency in (0.5, 0.5, 30.0):
        counters.record(latency, ok=True)
    counters.record(2.0, ok=False)
    batch = recorder.close_window()
    stats = batch.stats[0]
    assert (stats.inferences, stats.errors) == (4, 1)
    assert len(stats.latency.counts) == buckets.BUCKETS
    assert stats.latency.counts[buckets.bucket_of(0.5)] == 2
    assert batch.device_id == "dev-1" and len(batch.batch_id) == 32


def test_spooled_batches_survive_a_restart_in_order(tmp_path: Path) -> None:
    spool, ids = spool_with_batches(tmp_path / "telemetry.db", 3)
    spool.close()
    reopened = Spool(tmp_path / "telemetry.db")
    assert [b.batch_id for b in reopened.pending_batches()] == ids


def test_batches_are_deleted_only_after_their_ack(tmp_path: Path) -> None:
    spool, ids = spool_with_batches(tmp_path / "telemetry.db", 3)
    uplink = FakeUplink()
    uplink.ack_only = {ids[1]}
    sender = Sender(spool=spool, recorder=Recorder("dev-1"), uplink=uplink, interval_s=60,
                    stop=threading.Event())
    sender.flush()
    assert [b.batch_id for b in spool.pending_batches()] == [ids[0], ids[2]]
    uplink.ack_only = None
    assert sender.flush()
    assert spool.pending_batches() == []
    assert uplink.sent[:3] == ids       # oldest first


def test_offline_uplink_keeps_everything_spooled(tmp_path: Path) -> None:
    spool, ids = spool_with_batches(tmp_path / "telemetry.db", 2)
    uplink = FakeUplink()
    uplink.online = False
    sender = Sender(spool=spool, recorder=Recorder("dev-1"), uplink=uplink, interval_s=60,
                    stop=threading.Event())
    sender.report(device_pb2.StatusReport(deployment_id="d1", state="download"))
    assert not sender.flush()
    assert spool.counts() == (2, 1)


def test_status_reports_made_offline_are_sent_later_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "telemetry.db")
    uplink = FakeUplink()
    uplink.online = False
    sender = Sender(spool=spool, recorder=Recorder("d"), uplink=uplink, interval_s=60, stop=threading.Event())
    for state in ("download", "verify", "install"):
        sender.report(device_pb2.StatusReport(deployment_id="d1", state=state))
    sender.flush()
    spool.close()
    spool = Spool(tmp_path / "telemetry.db")
    uplink.online = True
    Sender(spool=spool, recorder=Recorder("d"), uplink=uplink, interval_s=60, stop=threading.Event()).flush()
    assert [r.state for r in uplink.statuses] == ["download", "verify", "install"]
    assert spool.counts() == (0, 0)


class PartialUplink(FakeUplink):
    """Takes several reports per call and acknowledges only the first `take` of each call."""

    def __init__(self, take: int) -> None:
        super().__init__()
        self.take = take
        self.calls: list[int] = []

    def send_statuses(self, reports: Sequence[device_pb2.StatusReport]) -> int:
        self.calls.append(len(reports))
        self.statuses.extend(reports[:self.take])
        return min(self.take, len(reports))


def test_spooled_reports_go_in_one_call_and_only_acknowledged_ones_leave_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "telemetry.db")
    uplink = PartialUplink(take=2)
    sender = Sender(spool=spool, recorder=Recorder("d"), uplink=uplink, interval_s=60, stop=threading.Event())
    for state in ("download", "verify", "install", "activate", "trial"):
        spool.add_status(device_pb2.StatusReport(deployment_id="d1", state=state))

    assert sender.flush()

    assert uplink.calls == [5, 3, 1]          # what was not acknowledged was offered again, in order
    assert [r.state for r in uplink.statuses] == ["download", "verify", "install", "activate", "trial"]
    assert spool.counts() == (0, 0)


def test_full_spool_drops_the_oldest_batches(tmp_path: Path) -> None:
    spool, ids = spool_with_batches(tmp_path / "telemetry.db", 5)
    spool.max_batches = 3
    spool_more, more = spool_with_batches(tmp_path / "other.db", 1)
    spool.add_batch(spool_more.pending_batches()[0])
    assert [b.batch_id for b in spool.pending_batches()] == [*ids[3:], more[0]]


def test_sender_thread_closes_windows_and_sends_them(tmp_path: Path) -> None:
    recorder = Recorder("dev-1")
    uplink = FakeUplink()
    stop = threading.Event()
    sender = Sender(spool=Spool(tmp_path / "t.db"), recorder=recorder, uplink=uplink,
                    interval_s=0.05, stop=stop)
    sender.start()
    recorder.counters_for(KEY).record(1.0, ok=True)
    for _ in range(100):
        if uplink.sent:
            break
        stop.wait(0.02)
    stop.set()
    sender.join(5)
    assert len(uplink.sent) == 1
