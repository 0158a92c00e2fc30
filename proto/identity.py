"""Device identity on the wire: the device key pair, its certificate request and the
proof of possession a device gives when it enrolls again (ADR 0005).

Both sides import this module; it depends only on `cryptography`.

- A device makes an ECDSA P-256 key pair on first start and keeps the private key
  in its data dir (0600). `certificate_request` turns it into a PEM CSR the server's
  device CA signs; the certificate's common name is the device id.
- Enrolling an id that already holds a live credential needs either the operator's
  re-provisioning approval or `sign_proof` with the key the server has on record:
  an ECDSA signature over `proof_message(device_id, csr, at)`.

Errors: `IdentityError` (a ValueError) for a malformed key, request or proof.
"""

from __future__ import annotations

import hashlib
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# The identity the server uses towards the broker; no device may enroll under it.
SERVER_IDENTITY: Final = "fleetcast-server"
RESERVED_IDS: Final = frozenset({SERVER_IDENTITY})
MAX_CSR_BYTES: Final = 8 * 1024
MAX_PROOF_BYTES: Final = 256
PROOF_WINDOW_S: Final = 300.0
_PROOF_CONTEXT: Final = b"fleetcast-reenroll-v1"


class IdentityError(ValueError):
    """A key, certificate request or proof that is malformed or does not check."""


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise IdentityError(f"the device key is not a PEM private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError("the device key must be an ECDSA P-256 key")
    return key


def certificate_request(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    """PEM CSR with CN = device id, signed by the device's key."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def load_request(pem: bytes) -> x509.CertificateSigningRequest:
    """A CSR whose self-signature checks and whose key is ECDSA P-256; raises IdentityError."""
    if not pem or len(pem) > MAX_CSR_BYTES:
        raise IdentityError(f"a certificate request of at most {MAX_CSR_BYTES} bytes is required")
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as e:
        raise IdentityError(f"the certificate request is not a PEM CSR: {e}") from e
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError("the certificate request must carry an ECDSA P-256 key")
    if not csr.is_signature_valid:
        raise IdentityError("the certificate request's signature does not check")
    return csr


def public_key_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def proof_message(device_id: str, csr_pem: bytes, at: int) -> bytes:
    digest = hashlib.sha256(csr_pem).hexdigest()
    return b"\0".join([_PROOF_CONTEXT, device_id.encode(), digest.encode(), str(int(at)).encode()])


def sign_proof(key: ec.EllipticCurvePrivateKey, device_id: str, csr_pem: bytes, at: int) -> bytes:
    return key.sign(proof_message(device_id, csr_pem, at), ec.ECDSA(hashes.SHA256()))


def verify_proof(public_pem: str, proof: bytes, *, device_id: str, csr_pem: bytes, at: int, now: float) -> None:
    """Raises IdentityError unless `proof` is the recorded key's signature, made recently."""
    if not proof or len(proof) > MAX_PROOF_BYTES:
        raise IdentityError("no proof of possession of the device's key was given")
    if abs(now - at) > PROOF_WINDOW_S:
        raise IdentityError(f"the proof's time is more than {PROOF_WINDOW_S:.0f}s from the server's clock: "
                            "check the device's clock")
    try:
        key = serialization.load_pem_public_key(public_pem.encode())
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(proof, proof_message(device_id, csr_pem, at), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, AssertionError) as e:
        raise IdentityError("the proof was not made with the key this device enrolled with") from e
