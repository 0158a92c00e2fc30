"""Assignment notices on MQTT: a hint to look again, with an optional check window."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetcast.proto.topics import MAX_CHECK_WITHIN_MS, AssignmentNotice, TopicError


@given(version=st.integers(0, 2**40), deployment=st.text(max_size=128),
       within=st.integers(0, MAX_CHECK_WITHIN_MS))
def test_a_notice_round_trips(version: int, deployment: str, within: int) -> None:
    notice = AssignmentNotice(director_version=version, deployment_id=deployment, check_within_ms=within)
    assert AssignmentNotice.decode(notice.encode()) == notice


def test_a_notice_without_a_window_is_the_payload_older_servers_sent_and_agents_read() -> None:
    old = b'{"v":1,"director_version":7,"deployment_id":"dep-1"}'
    assert AssignmentNotice(director_version=7, deployment_id="dep-1").encode() == old
    assert AssignmentNotice.decode(old).check_within_ms == 0


def test_a_window_longer_than_any_device_waits_is_cut_to_the_bound() -> None:
    payload = json.dumps({"v": 1, "director_version": 1, "check_within_ms": 10**9}).encode()
    assert AssignmentNotice.decode(payload).check_within_ms == MAX_CHECK_WITHIN_MS


@pytest.mark.parametrize("window", [-1, "5000", 1.5, True, None])
def test_a_window_that_is_not_a_count_of_milliseconds_is_refused(window: object) -> None:
    payload = json.dumps({"v": 1, "director_version": 1, "check_within_ms": window}).encode()
    with pytest.raises(TopicError, match="check_within_ms"):
        AssignmentNotice.decode(payload)
