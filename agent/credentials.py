"""The device's own credential and the TLS settings it talks to the server with (ADR 0005).

```
DATA/device-key.pem    ECDSA P-256 key made here on first enrollment (0600); never leaves the device
DATA/device-cert.pem   the certificate the server's device CA issued for it (CN = device id)
```
The server's CA comes from the provisioning bundle (`server-ca.pem` next to
trust-root.json, or --server-ca): the agent accepts only a server whose certificate
that CA signed. Plaintext is used only for a loopback server and only when
--insecure-loopback-plaintext asks for it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

import grpc

from fleetcast.agent.config import AgentConfig
from fleetcast.agent.datadir import read_bounded, write_atomic
from fleetcast.agent.errors import EnrollmentError
from fleetcast.proto import identity

logger = logging.getLogger(__name__)

MAX_PEM_BYTES: Final = 64 * 1024
_WARN_EVERY_S: Final = 300.0
_last_warning: list[float] = []   # monotonic time of the last WARNING, shared by every caller


def credential_refused(error: grpc.RpcError, device_id: str) -> bool:
    """True when the server refused this device's credential; says so at WARNING, with
    what to do (again at most every five minutes, at INFO in between)."""
    code = error.code() if isinstance(error, grpc.Call) else None
    if code not in {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}:
        return False
    now = time.monotonic()
    level = logging.WARNING if not _last_warning or now - _last_warning[-1] >= _WARN_EVERY_S else logging.INFO
    if level == logging.WARNING:
        _last_warning[:] = [now]
    who = device_id or "this device"
    logger.log(
        level, "the server no longer accepts the credential of %s (%s): another enrollment may have taken over "
        "the id. The operator checks `fleetcast device show %s`; if this is the real device, they run "
        "`fleetcast device reprovision %s` and this agent is started again with an empty data dir and an "
        "enroll token file", who, (error.details() or "")[:200], who, who)
    return True


@dataclass(frozen=True)
class Request:
    """What an enrollment sends for the key: its CSR and, when the key predates this
    enrollment, the proof that we still hold it."""

    csr: bytes
    proof: bytes
    proof_time: int


class Credentials:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.key_path = config.data_dir / "device-key.pem"
        self.cert_path = config.data_dir / "device-cert.pem"

    # the device's key and certificate

    def request(self) -> Request:
        """A CSR for the device key (made now when there is none) and, for an existing
        key, a proof of possession the server checks on re-enrollment."""
        existing = self.key_path.exists()
        if existing:
            try:
                key = identity.load_key(read_bounded(self.key_path, MAX_PEM_BYTES))
            except (identity.IdentityError, ValueError) as e:
                raise EnrollmentError(f"{self.key_path} is unreadable ({e}): move it away to make a new key, "
                                      f"and ask the operator to run `fleetcast device reprovision "
                                      f"{self.config.device_id}`") from e
        else:
            key = identity.generate_key()
            write_atomic(self.key_path, identity.key_pem(key), mode=0o600)
            logger.info("device key created path=%s", self.key_path)
        csr = identity.certificate_request(key, self.config.device_id)
        if not existing:
            return Request(csr=csr, proof=b"", proof_time=0)
        at = int(time.time())
        return Request(csr=csr, proof=identity.sign_proof(key, self.config.device_id, csr, at), proof_time=at)

    def save_certificate(self, pem: bytes) -> None:
        if pem:
            write_atomic(self.cert_path, pem, mode=0o644)

    def client_pair(self) -> tuple[bytes, bytes] | None:
        """(key PEM, certificate PEM) once enrolled; None before."""
        if not (self.key_path.exists() and self.cert_path.exists()):
            return None
        return read_bounded(self.key_path, MAX_PEM_BYTES), read_bounded(self.cert_path, MAX_PEM_BYTES)

    # the server's CA

    def server_ca(self) -> bytes:
        path = self.config.server_ca_path
        try:
            pem = read_bounded(path, MAX_PEM_BYTES)
        except FileNotFoundError as e:
            raise EnrollmentError(
                f"the server CA {path} does not exist: copy DATA/server-ca.pem from the server next to "
                f"trust-root.json, or give --server-ca FILE") from e
        if b"BEGIN CERTIFICATE" not in pem:
            raise EnrollmentError(f"{path} is not a PEM certificate: copy DATA/server-ca.pem from the server")
        return pem

    def channel(self, options: list[tuple[str, int]]) -> grpc.Channel:
        """A gRPC channel to the server: TLS pinned to the server CA, showing the device
        certificate once there is one."""
        if self.config.insecure_loopback_plaintext:
            return grpc.insecure_channel(self.config.server, options=options)
        pair = self.client_pair()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.server_ca(),
            private_key=None if pair is None else pair[0], certificate_chain=None if pair is None else pair[1])
        return grpc.secure_channel(self.config.server, credentials, options=options)
