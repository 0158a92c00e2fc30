"""The hub: notices published from worker threads reach the watchers on the event loop."""

from __future__ import annotations

import asyncio
import threading

from fleetcast.proto.topics import MAX_CHECK_WITHIN_MS, AssignmentNotice
from fleetcast.server.notify import Hub, check_window_ms


class RecordingSink:
    def __init__(self) -> None:
        self.notices: list[tuple[str, AssignmentNotice]] = []

    def device_notices(self, notices: list[tuple[str, AssignmentNotice]]) -> None:
        self.notices.extend(notices)

    def fleet_notice(self) -> None:
        pass


def test_publish_many_from_a_thread_tells_each_watching_device_and_every_sink_once() -> None:
    hub, sink = Hub(), RecordingSink()
    hub.add_sink(sink)
    notices = [(f"dev-{i}", AssignmentNotice(director_version=i + 2, deployment_id="dep-1")) for i in range(300)]

    async def scenario() -> list[AssignmentNotice | None]:
        hub.bind(asyncio.get_running_loop())
        with hub.watch("dev-7") as seven, hub.watch("dev-299") as last, hub.watch("dev-absent") as absent:
            thread = threading.Thread(target=hub.publish_many, args=(notices,))
            thread.start()
            thread.join()
            got = [await asyncio.wait_for(w.next(), 5) for w in (seven, last)]
            try:
                await asyncio.wait_for(absent.next(), 0.2)
                got.append(AssignmentNotice(director_version=-1))
            except TimeoutError:
                got.append(None)
            return got

    seven, last, absent = asyncio.run(scenario())
    assert seven == notices[7][1] and last == notices[299][1] and absent is None
    assert sink.notices == notices


def test_the_check_window_grows_with_the_devices_told_at_once_and_stays_bounded() -> None:
    assert check_window_ms(1) == 0                       # one device checks at once
    assert check_window_ms(1_000) == 500 and check_window_ms(10_000) == 5_000
    assert check_window_ms(10**9) == MAX_CHECK_WITHIN_MS


def test_notices_relayed_one_by_one_reach_their_streams_in_order_and_not_the_sinks() -> None:
    hub, sink = Hub(), RecordingSink()
    hub.add_sink(sink)
    relayed = [(f"dev-{i % 50}", AssignmentNotice(director_version=i, deployment_id=f"dep-{i}")) for i in range(5000)]

    async def scenario() -> list[AssignmentNotice | None]:
        hub.bind(asyncio.get_running_loop())
        with hub.watch("dev-3") as three, hub.watch("dev-49") as last:
            thread = threading.Thread(target=lambda: [hub.tell_watchers(d, n) for d, n in relayed])
            thread.start()
            thread.join()
            return [await asyncio.wait_for(w.next(), 5) for w in (three, last)]

    three, last = asyncio.run(scenario())
    assert three == relayed[-47][1] and last == relayed[-1][1]     # each stream sees its latest notice
    assert sink.notices == []                                       # the replica that signed told the sinks
