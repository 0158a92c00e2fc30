"""TLS on every hop (issue 8, item 2): plaintext clients get nothing from the server's
ports, and an agent talks only to a server its pinned CA vouches for."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

import grpc
import pytest

from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.proto.v1 import device_pb2_grpc as pb_grpc
from fleetcast.server.certificates import Certificates
from tests.support.processes import ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_a_plaintext_client_gets_nothing_from_the_grpc_and_rest_ports(shared_server: ServerProcess) -> None:
    server = shared_server
    stub = pb_grpc.DeviceServiceStub(grpc.insecure_channel(server.grpc))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Enroll(pb.EnrollRequest(device_id="relay-1", hardware_class="x86-cpu",
                                     enroll_token=server.enroll_token), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    connection = http.client.HTTPConnection("127.0.0.1", _port(server.http), timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError, socket.timeout)):
        connection.request("GET", "/v1/openapi.json")
        connection.getresponse().read()
    connection.close()

    with server.client() as fc:   # over TLS, pinned to the server CA, the same server answers
        assert "relay-1" not in {d.id for d in fc.list_devices()}


def test_the_agent_refuses_a_server_whose_certificate_the_pinned_ca_did_not_sign(
    shared_server: ServerProcess, new_agent, tmp_path: Path
) -> None:
    other = Certificates.open(tmp_path / "other-tls", names=["127.0.0.1", "localhost"])
    agent = new_agent(shared_server, "pinned-1", extra_args=["--server-ca", str(other.server_ca_path)],
                      expect_enrollment=False)
    wait_for(lambda: "pinned server CA" in agent.log_path.read_text(errors="replace"), timeout_s=30,
             what="the agent to refuse the server's certificate", context=agent.log_tail)
    assert not (agent.data_dir / "device.json").exists()
    with shared_server.client() as fc:
        assert "pinned-1" not in {d.id for d in fc.list_devices()}
