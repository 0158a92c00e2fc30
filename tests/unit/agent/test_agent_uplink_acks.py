"""The spool forgets a batch or status only on the server's ack, whatever the broker loses.

`LossyServer` implements `telemetry.Uplink` the way MQTT with application acks
behaves: a message may be lost before the server (broker crash), stored with its
ack lost, or stored and acknowledged; the server counts each batch id once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcast.agent.errors import BrokerUnavailableError
from fleetcast.agent.receipts import Receipts
from fleetcast.agent.telemetry import ModelKey, Recorder, Sender, Spool, send_one_by_one
from fleetcast.proto.topics import UplinkAck
from fleetcast.proto.v1 import device_pb2

KEY = ModelKey("tiny", "1", "original", "onnxruntime")
LOST, STORED_ACK_LOST, ACKED = "lost", "stored-ack-lost", "acked"


class LossyServer:
    """Implements telemetry.Uplink; `fates` decides what happens to each message sent."""

    def __init__(self) -> None:
        self.fates: list[str] = []
        self.counted: dict[str, int] = {}       # batch id -> inferences, stored once
        self.statuses: list[bytes] = []         # distinct reports applied, in order
        self.copies = 0

    def _fate(self) -> str:
        return self.fates.pop(0) if self.fates else ACKED

    def send_status(self, report: device_pb2.StatusReport) -> None:
        fate = self._fate()
        if fate == LOST:
            raise BrokerUnavailableError("broker crashed")
        data = report.SerializeToString()
        if data not in self.statuses:
            self.statuses.append(data)
        if fate == STORED_ACK_LOST:
            raise BrokerUnavailableError("ack lost")

    def send_statuses(self, reports: Sequence[device_pb2.StatusReport]) -> int:
        return send_one_by_one(self.send_status, reports)

    def send_batches(self, batches: Sequence[device_pb2.TelemetryBatch]) -> Iterator[str]:
        acked = []
        for batch in batches:
            self.copies += 1
            fate = self._fate()
            if fate != LOST:
                self.counted.setdefault(batch.batch_id, sum(s.inferences for s in batch.stats))
            if fate == ACKED:
                acked.append(batch.batch_id)
        if not acked:
            raise BrokerUnavailableError("no ack within the timeout")
        yield from acked


def add_window(recorder: Recorder, spool: Spool, inferences: int) -> str:
    counters = recorder.counters_for(KEY)
    for i in range(inferences):
        counters.record(1.0 + i, ok=True)
    batch = recorder.close_window()
    assert batch is not None
    spool.add_batch(batch)
    return batch.batch_id


def spooled_ids(spool: Spool) -> set[str]:
    return {b.batch_id for b in spool.pending_batches(limit=10_000)}


steps = st.lists(
    st.one_of(
        st.tuples(st.just("window"), st.integers(1, 5)),
        st.tuples(st.just("flush"), st.lists(st.sampled_from([LOST, STORED_ACK_LOST, ACKED]), max_size=8)),
        st.tuples(st.just("status"), st.integers(0, 3)),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_nothing_leaves_the_spool_unstored_and_every_inference_is_counted_once(
    tmp_path_factory, steps: list[tuple[str, object]]
) -> None:
    path = tmp_path_factory.mktemp("spool") / "telemetry.db"
    server, recorder = LossyServer(), Recorder("dev-1")
    spool = Spool(path)
    sender = Sender(spool=spool, recorder=recorder, uplink=server, interval_s=1.0, stop=threading.Event())
    made, reports, created = 0, [], set()
    for op, arg in steps:
        if op == "window":
            created.add(add_window(recorder, spool, arg))  # type: ignore[arg-type]
            made += arg  # type: ignore[operator]
        elif op == "status":
            report = device_pb2.StatusReport(deployment_id=f"d{len(reports)}", state="install", timestamp_ms=arg)  # type: ignore[arg-type]
            reports.append(report.SerializeToString())
            spool.add_status(report)
        elif op == "flush":
            server.fates = list(arg)  # type: ignore[call-overload]
            sender.flush()
        else:   # the agent restarts: the spool is reopened from disk
            spool.close()
            spool = Spool(path)
            sender.spool = spool
        # Whatever left the spool is stored on the server; nothing is stored twice.
        assert created - spooled_ids(spool) <= set(server.counted)
        assert sum(server.counted.values()) <= made
    server.fates = []
    assert sender.flush() is True
    assert spool.counts() == (0, 0)
    assert sum(server.counted.values()) == made
    assert server.statuses == reports      # every status, in order, once
    spool.close()


def test_a_batch_whose_ack_was_lost_is_sent_again_and_counted_once(tmp_path: Path) -> None:
    server, recorder, spool = LossyServer(), Recorder("dev-1"), Spool(tmp_path / "t.db")
    add_window(recorder, spool, 7)
    sender = Sender(spool=spool, recorder=recorder, uplink=server, interval_s=1.0, stop=threading.Event())
    server.fates = [STORED_ACK_LOST]
    assert sender.flush() is False
    assert spool.counts() == (1, 0)          # stored on the server, but not acknowledged: kept
    server.fates = [LOST]
    assert sender.flush() is False
    assert sender.flush() is True
    assert spool.counts() == (0, 0)
    assert server.copies == 3 and sum(server.counted.values()) == 7


class BrokenThenWorking(LossyServer):
    """An uplink with a bug in it for the first calls: raises what no uplink should."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def send_batches(self, batches: Sequence[device_pb2.TelemetryBatch]) -> Iterator[str]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("The client is not currently connected.")
        yield from super().send_batches(batches)


def test_the_sender_thread_survives_unexpected_uplink_errors(tmp_path: Path) -> None:
    server, recorder, stop = BrokenThenWorking(failures=2), Recorder("dev-1"), threading.Event()
    spool = Spool(tmp_path / "t.db")
    sender = Sender(spool=spool, recorder=recorder, uplink=server, interval_s=0.05, stop=stop)
    sender.start()
    try:
        recorder.counters_for(KEY).record(1.0, ok=True)
        for _ in range(300):
            if server.counted:
                break
            stop.wait(0.02)
    finally:
        stop.set()
        sender.join(5)
    assert server.failures == 0 and sum(server.counted.values()) == 1
    assert spool.counts() == (0, 0)


def test_receipts_wait_returns_as_soon_as_every_ack_is_in() -> None:
    receipts = Receipts()
    threading.Timer(0.05, receipts.record, [UplinkAck(kind="telemetry", id="b1")]).start()
    receipts.record(UplinkAck(kind="telemetry", id="b2", result="duplicate"))
    got = receipts.wait("telemetry", ["b1", "b2"], timeout_s=10)
    assert {i: a.result for i, a in got.items()} == {"b1": "stored", "b2": "duplicate"}


def test_receipts_wait_gives_what_arrived_by_the_timeout_and_keeps_late_acks() -> None:
    receipts = Receipts()
    receipts.record(UplinkAck(kind="status", id="s1"))
    assert set(receipts.wait("status", ["s1", "s2"], timeout_s=0.05)) == {"s1"}
    assert receipts.wait("telemetry", ["s1"], timeout_s=0.01) == {}    # kinds are apart
    receipts.record(UplinkAck(kind="status", id="s2"))                 # late: kept for the next round
    assert receipts.get("status", "s2") is not None
    receipts.forget("status", ["s1", "s2"])
    assert receipts.get("status", "s1") is None


def test_receipts_are_bounded_oldest_first() -> None:
    receipts = Receipts(max_receipts=3)
    for i in range(5):
        receipts.record(UplinkAck(kind="telemetry", id=f"b{i}"))
    assert [receipts.get("telemetry", f"b{i}") is not None for i in range(5)] == [False, False, True, True, True]


def test_closing_receipts_ends_a_wait_at_once() -> None:
    receipts = Receipts()
    threading.Timer(0.05, receipts.close).start()
    assert receipts.wait("telemetry", ["never"], timeout_s=30) == {}
