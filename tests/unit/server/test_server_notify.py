"""The hub: notices published from worker threads reach the watchers on the event loop."""

from __future__ import annotations

import asyncio
import threading

from fleetcast.proto.topics import AssignmentNotice
from fleetcast.server.notify import Hub


class RecordingSink:
    def __init__(self) -> None:
        self.notices: list[tuple[str, AssignmentNotice]] = []

    def device_notice(self, device_id: str, notice: AssignmentNotice) -> None:
        self.notices.append((device_id, notice))

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
