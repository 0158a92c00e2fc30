"""MQTT: the topic a message came on, assignment notices (agent side) and status
payloads (server side). The first byte picks which."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from fleetcast.proto import topics
from fleetcast.proto.v1 import device_pb2
from fleetcast.server.deployments import StatusUpdate
from fleetcast.server.errors import InvalidRequest


def test_one_input(data: bytes) -> None:
    kind, payload = data[:1], data[1:]
    try:
        if kind == b"t":
            device_id, _ = topics.device_of(payload.decode("utf-8", "replace"))
            assert topics.device_status(device_id).split("/")[3] == device_id
        elif kind == b"s":
            StatusUpdate.from_message(device_pb2.StatusReport.FromString(payload)).check()
        else:
            notice = topics.AssignmentNotice.decode(payload)
            assert topics.AssignmentNotice.decode(notice.encode()) == notice
    except (topics.TopicError, DecodeError, InvalidRequest):
        return
