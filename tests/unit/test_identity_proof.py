"""Proof of possession for re-enrollment (fleetcast.proto.identity)."""

from __future__ import annotations

import pytest

from fleetcast.proto import identity


def _public_pem(key) -> str:  # noqa: ANN001
    return identity.public_key_pem(identity.load_request(identity.certificate_request(key, "dev-1")))


def test_only_a_fresh_signature_by_the_recorded_key_over_this_request_passes() -> None:
    key, other = identity.generate_key(), identity.generate_key()
    csr = identity.certificate_request(key, "dev-1")
    at = 1_000_000
    proof = identity.sign_proof(key, "dev-1", csr, at)
    identity.verify_proof(_public_pem(key), proof, device_id="dev-1", csr_pem=csr, at=at, now=at + 10)
    cases = [
        dict(public=_public_pem(other), device_id="dev-1", csr=csr, now=at, words="not made with the key"),
        dict(public=_public_pem(key), device_id="dev-2", csr=csr, now=at, words="not made with the key"),
        dict(public=_public_pem(key), device_id="dev-1", csr=identity.certificate_request(other, "dev-1"), now=at,
             words="not made with the key"),
        dict(public=_public_pem(key), device_id="dev-1", csr=csr, now=at + identity.PROOF_WINDOW_S + 1,
             words="clock"),
    ]
    for case in cases:
        with pytest.raises(identity.IdentityError, match=case["words"]):
            identity.verify_proof(case["public"], proof, device_id=case["device_id"], csr_pem=case["csr"], at=at,
                                  now=case["now"])
    with pytest.raises(identity.IdentityError, match="no proof"):
        identity.verify_proof(_public_pem(key), b"", device_id="dev-1", csr_pem=csr, at=at, now=at)


def test_malformed_requests_are_refused_by_name() -> None:
    for data in (b"", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                 b"x" * (identity.MAX_CSR_BYTES + 1)):
        with pytest.raises(identity.IdentityError):
            identity.load_request(data)
