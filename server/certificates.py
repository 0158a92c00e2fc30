"""The server's two certificate authorities and the certificates they issue (ADR 0005).

```
DATA/tls/                 0700
  server-ca.pem, .key     signs the certificates servers show: REST, gRPC, the broker
  server.pem, .key        this server's TLS certificate (or the operator's, --tls-cert/--tls-key)
  device-ca.pem, .key     signs device certificates (CN = device id) and the server's
                          broker client certificate (CN = fleetcast-server)
  mqtt-client.pem, .key   what the server shows the broker
DATA/server-ca.pem        copy of tls/server-ca.pem: the operator copies it to devices
                          next to trust-root.json, and to operator machines
```
Keys are ECDSA P-256 in 0600 files written atomically. The first start creates
what is missing; later starts load it. Files someone else put here first (a
shared CA, or the operator's own) are used as they are.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetcast.agent.datadir import write_atomic
from fleetcast.proto import identity
from fleetcast.server.errors import InvalidRequest

logger = logging.getLogger(__name__)

CA_DAYS: Final = 3650
LEAF_DAYS: Final = 825
DEFAULT_NAMES: Final = ("localhost", "127.0.0.1", "::1")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *, common_name: str, public_key: ec.EllipticCurvePublicKey, client: bool,
              names: Sequence[str] = ()) -> bytes:
        """A leaf certificate (PEM) for a TLS client or server."""
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _create_authority(name: str) -> Authority:
    key = identity.generate_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def _load_or_create_authority(directory: Path, stem: str, name: str) -> Authority:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        return Authority(cert, identity.load_key(key_path.read_bytes()))
    authority = _create_authority(name)
    write_atomic(key_path, identity.key_pem(authority.key), mode=0o600)
    write_atomic(cert_path, authority.pem, mode=0o600)
    logger.info("certificate authority created path=%s", cert_path)
    return authority


def _load_or_issue(directory: Path, stem: str, authority: Authority, *, common_name: str, client: bool,
                   names: Sequence[str] = ()) -> tuple[bytes, bytes]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path.read_bytes(), key_path.read_bytes()
    key = identity.generate_key()
    cert = authority.issue(common_name=common_name, public_key=key.public_key(), client=client, names=names)
    write_atomic(key_path, identity.key_pem(key), mode=0o600)
    write_atomic(cert_path, cert, mode=0o600)
    logger.info("certificate issued path=%s names=%s", cert_path, ",".join(names) or common_name)
    return cert, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())


def server_names(hosts: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The names a server certificate covers: loopback, this host, the bound hosts, the extra ones."""
    names = [*DEFAULT_NAMES, socket.gethostname()]
    for host in [*hosts, *extra]:
        if host and host not in {"0.0.0.0", "::"}:
            names.append(host)
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Certificates:
    server_ca: Authority
    device_ca: Authority
    server_cert: bytes      # PEM chain this server shows
    server_key: bytes
    mqtt_client_cert: bytes
    mqtt_client_key: bytes
    directory: Path

    @classmethod
    def open(cls, directory: Path, *, names: Sequence[str], given_cert: Path | None = None,
             given_key: Path | None = None) -> "Certificates":
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        server_ca = _load_or_create_authority(directory, "server-ca", "Fleetcast server CA")
        device_ca = _load_or_create_authority(directory, "device-ca", "Fleetcast device CA")
        if given_cert is not None and given_key is not None:
            cert, key = given_cert.read_bytes(), given_key.read_bytes()
        else:
            cert, key = _load_or_issue(directory, "server", server_ca, common_name="fleetcast server",
                                       client=False, names=names)
        mqtt_cert, mqtt_key = _load_or_issue(directory, "mqtt-client", device_ca,
                                             common_name=identity.SERVER_IDENTITY, client=True)
        return cls(server_ca, device_ca, cert, key, mqtt_cert, mqtt_key, directory)

    @property
    def server_ca_path(self) -> Path:
        return self.directory / "server-ca.pem"

    @property
    def mqtt_client_paths(self) -> tuple[Path, Path]:
        return self.directory / "mqtt-client.pem", self.directory / "mqtt-client.key"

    def issue_device(self, device_id: str, csr_pem: bytes) -> tuple[bytes, str]:
        """(certificate PEM, public key PEM) for a device's request; CN is always the device id."""
        try:
            csr = identity.load_request(csr_pem)
        except identity.IdentityError as e:
            raise InvalidRequest(f"{e}: the agent makes this request itself; upgrade the agent") from e
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # load_request checked it
        cert = self.device_ca.issue(common_name=device_id, public_key=key, client=True)
        return cert, identity.public_key_pem(csr)
