"""state.json, the update flow's saved record; what parses must round-trip."""

from __future__ import annotations

from fleetcast.agent.flow import Record


def test_one_input(data: bytes) -> None:
    try:
        record = Record.from_json(data)
    except ValueError:
        return
    again = Record.from_json(record.to_json())
    assert again == record, (record, again)
