"""Open watch streams are stamped together: one store write per interval, however many."""

from __future__ import annotations

from collections.abc import Sequence

from fleetcast.server.liveness import Presence


class RecordingStore:
    """Implements liveness.Toucher: records each write."""

    def __init__(self) -> None:
        self.writes: list[tuple[list[str], float]] = []

    def touch_devices(self, device_ids: Sequence[str], at: float) -> None:
        self.writes.append((list(device_ids), at))


def test_every_open_stream_is_stamped_in_one_write_and_a_closed_one_is_not() -> None:
    presence = Presence()
    store = RecordingStore()
    with presence.watching("dev-b"), presence.watching("dev-a"), presence.watching("dev-a"):
        with presence.watching("dev-c"):
            pass
        assert presence.touch_open(store, 10.0) == 2
    assert store.writes == [(["dev-a", "dev-b"], 10.0)]
    assert presence.touch_open(store, 11.0) == 0
    assert len(store.writes) == 1          # nothing open: no write at all
