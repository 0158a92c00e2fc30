from __future__ import annotations

import pytest

from fleetcast.agent.bridge_frames import BridgeError
from fleetcast.agent.bridge_policy import Gate, PolicyError, RateLimiter, canonical_origin, parse_origin, parse_origins


@pytest.mark.parametrize("text, canonical", [
    ("https://App.Example", "https://app.example"),
    ("https://app.example:443", "https://app.example"),
    ("https://app.example/", "https://app.example"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://[::1]:8080", "http://[::1]:8080"),
])
def test_origins_are_canonical_as_browsers_send_them(text: str, canonical: str) -> None:
    assert canonical_origin(text) == canonical


@pytest.mark.parametrize("text", ["*", "https://*.example", "app.example", "file:///x", "https://a/path",
                                  "https://a?q", "https://u@a", "https://a:99999", ""])
def test_wildcards_paths_and_other_schemes_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_origin(text)


def test_settings_parse_into_a_policy_and_unknown_ones_are_refused() -> None:
    p = parse_origin("https://partner.example methods=run,info rate=20/s max-input-bytes=1024")
    assert (p.origin, p.methods, p.rate_per_s, p.max_input_bytes) == (
        "https://partner.example", frozenset({"hello", "run", "info"}), 20.0, 1024)
    for bad in ("https://a methods=run,shell", "https://a speed=3", "https://a rate=x", "https://a max-input-bytes=0"):
        with pytest.raises(PolicyError):
            parse_origin(bad)
    with pytest.raises(PolicyError, match="twice"):
        parse_origins(["https://a", "https://a:443"])


def test_rate_limiter_refuses_past_the_burst_and_refills_with_time() -> None:
    now = [100.0]
    limiter = RateLimiter(parse_origins(["https://a rate=2", "https://b"]), clock=lambda: now[0])
    limiter.take("https://a"), limiter.take("https://a")
    with pytest.raises(BridgeError) as e:
        limiter.take("https://a")
    assert e.value.code == "RESOURCE_EXHAUSTED"
    for _ in range(100):
        limiter.take("https://b")        # no rate: never limited
    now[0] += 0.5
    limiter.take("https://a")
    with pytest.raises(BridgeError):
        limiter.take("https://a")


def test_gate_checks_host_then_origin_then_token() -> None:
    gate = Gate(address="127.0.0.1:5000", token="t" * 64, policies=parse_origins(["https://a"]))
    assert gate.admit(host="127.0.0.1:5000", origin="https://a", token="t" * 64).origin == "https://a"
    for kwargs, words in [
        (dict(host="localhost:5000", origin="https://a", token="t" * 64), "Host"),
        (dict(host=None, origin="https://a", token="t" * 64), "Host"),
        (dict(host="127.0.0.1:5000", origin="https://a.evil", token="t" * 64), "origin"),
        (dict(host="127.0.0.1:5000", origin="https://a", token=None), "token"),
        (dict(host="127.0.0.1:5000", origin="https://a", token="t" * 63), "token"),
    ]:
        with pytest.raises(BridgeError) as e:
            gate.admit(**kwargs)
        assert e.value.code == "PERMISSION_DENIED" and words in e.value.message
