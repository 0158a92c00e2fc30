"""Device identity (issue 8, item 1): an enroll token admits new devices but never
re-issues an enrolled one; re-provisioning is the operator's decision."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from fleetcast.proto import identity
from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.proto.v1 import device_pb2_grpc as pb_grpc
from fleetcast.sdk import cli
from tests.support import models
from tests.support.deployments import deploy_and_install, push, wait_serving
from tests.support.processes import AgentProcess, ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def _stub(server: ServerProcess) -> pb_grpc.DeviceServiceStub:
    credentials = grpc.ssl_channel_credentials(server.server_ca.read_bytes())
    return pb_grpc.DeviceServiceStub(grpc.secure_channel(server.grpc, credentials))


def _enrolled(agent: AgentProcess) -> None:
    wait_for(lambda: (agent.data_dir / "device.json").exists(), timeout_s=30,
             what=f"{agent.label} to enroll", context=agent.log_tail)


def _log_says(agent: AgentProcess, words: str, timeout_s: float = 30) -> None:
    wait_for(lambda: words in agent.log_path.read_text(errors="replace"), timeout_s=timeout_s,
             what=f"{agent.label} to log {words!r}", context=agent.log_tail)


def _impostor(started, tmp_path: Path, server: ServerProcess, name: str, device_id: str) -> AgentProcess:  # noqa: ANN001
    agent = AgentProcess(tmp_path / name, server=server, device_id=device_id, hardware="x86-cpu",
                         trust_root=server.trust_root, enroll_token=server.enroll_token, expect_enrollment=False)
    started.add(agent)
    return agent.start()


def test_takeover_with_the_fleet_token_is_refused_while_the_real_device_keeps_working(
    new_server, new_agent, started, tmp_path: Path
) -> None:
    server: ServerProcess = new_server()
    real = new_agent(server, "dev-a")
    _enrolled(real)
    v1 = push(server, models.write(models.tiny_classifier(1), tmp_path / "v1.onnx"), name="classifier").version
    deploy_and_install(server, [real], "classifier", v1)

    # Enroll with the fleet token and a key of the attacker's own: refused, saying what to do.
    stub = _stub(server)
    attacker_key = identity.generate_key()
    csr = identity.certificate_request(attacker_key, "dev-a")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Enroll(pb.EnrollRequest(device_id="dev-a", hardware_class="x86-cpu", enroll_token=server.enroll_token,
                                     csr=csr), timeout=10)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "fleetcast device reprovision dev-a" in (refused.value.details() or "")
    # A "proof" made with the attacker's key is not the device's.
    at = int(time.time())
    with pytest.raises(grpc.RpcError) as forged:
        stub.Enroll(pb.EnrollRequest(device_id="dev-a", hardware_class="x86-cpu", enroll_token=server.enroll_token,
                                     csr=csr, proof=identity.sign_proof(attacker_key, "dev-a", csr, at),
                                     proof_time=at), timeout=10)
    assert forged.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # A whole agent claiming the id waits for the operator, says so, and gets no token.
    impostor = _impostor(started, tmp_path, server, "impostor", "dev-a")
    _log_says(impostor, "already enrolled")
    assert "WARNING" in impostor.log_tail()
    assert not (impostor.data_dir / "device.json").exists()

    # The real device still gets, installs and serves the next version.
    v2 = push(server, models.write(models.tiny_classifier(2), tmp_path / "v2.onnx"), name="classifier").version
    deploy_and_install(server, [real], "classifier", v2)
    wait_serving(real, "classifier", v2)

    # The real device lost its token but kept its key: it proves possession and re-enrolls.
    real.stop()
    (real.data_dir / "device.json").unlink()
    real.start()
    _enrolled(real)
    v3 = push(server, models.write(models.tiny_classifier(3), tmp_path / "v3.onnx"), name="classifier").version
    deploy_and_install(server, [real], "classifier", v3)


def test_reprovision_admits_a_replacement_and_the_old_credential_says_what_to_do(
    new_server, new_agent, started, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server: ServerProcess = new_server()
    old = new_agent(server, "cam-1")
    _enrolled(old)

    rc = cli.main(["device", "reprovision", "cam-1", "--data", str(server.data_dir)])
    assert rc == 0, capsys.readouterr().err
    replacement = _impostor(started, tmp_path, server, "replacement", "cam-1")
    _enrolled(replacement)
    # The approval was for one enrollment only.
    third = _impostor(started, tmp_path, server, "third", "cam-1")
    _log_says(third, "already enrolled")

    # The old device's token no longer works: it says so at WARNING, with what to do.
    _log_says(old, "no longer accepts the credential")
    assert "fleetcast device reprovision cam-1" in old.log_tail(200)

    v1 = push(server, models.write(models.tiny_classifier(1), tmp_path / "v1.onnx"), name="classifier").version
    deploy_and_install(server, [replacement], "classifier", v1)
