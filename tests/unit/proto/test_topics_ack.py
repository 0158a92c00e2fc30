"""The ack topic's payload: round trips, and refuses what is not an ack."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetcast.proto import topics
from fleetcast.proto.topics import TopicError, UplinkAck

acks = st.builds(
    UplinkAck,
    kind=st.sampled_from(sorted(topics.ACK_KINDS)),
    id=st.text(min_size=1, max_size=topics.MAX_ACK_ID_CHARS),
    result=st.sampled_from(sorted(topics.ACK_RESULTS)),
    reason=st.text(max_size=200),
)


@given(acks)
def test_ack_round_trips(ack: UplinkAck) -> None:
    assert UplinkAck.decode(ack.encode()) == ack


@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_raises_only_topic_error(data: bytes) -> None:
    try:
        UplinkAck.decode(data)
    except TopicError:
        pass


@pytest.mark.parametrize("payload", [
    b'{"v": 2, "kind": "telemetry", "id": "b"}',
    b'{"v": 1, "kind": "assignment", "id": "b"}',
    b'{"v": 1, "kind": "telemetry", "id": ""}',
    b'{"v": 1, "kind": "telemetry", "id": "b", "result": "maybe"}',
    b'{"v": 1, "kind": "telemetry", "id": 7}',
    b"[" * 50_000,
    b'{"v": 1, "kind": "status", "id": "' + b"x" * 5000 + b'"}',
])
def test_malformed_acks_are_refused_with_topic_error(payload: bytes) -> None:
    with pytest.raises(TopicError):
        UplinkAck.decode(payload)


def test_ack_topic_is_per_device_and_checked() -> None:
    assert topics.device_ack("dev-1") == "fleetcast/v1/devices/dev-1/ack"
    assert topics.device_of("fleetcast/v1/devices/dev-1/ack") == ("dev-1", "ack")
    with pytest.raises(TopicError):
        topics.device_ack("dev/+")


def test_status_ack_id_depends_on_every_byte() -> None:
    assert topics.status_ack_id(b"a") == topics.status_ack_id(b"a")
    assert topics.status_ack_id(b"a") != topics.status_ack_id(b"b")
