"""CredentialCache: bounded, expiring, and never keeping a lookup that raced a drop."""

from __future__ import annotations

from fleetcast.server.credential_cache import TOPIC, CredentialCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_expires_after_its_ttl() -> None:
    clock = Clock()
    cache = CredentialCache(ttl_s=10.0, clock=clock)
    cache.keep("t1", "dev-1", generation=cache.generation())
    clock.now = 9.9
    assert cache.device_for("t1") == "dev-1"
    clock.now = 10.0
    assert cache.device_for("t1") is None


def test_a_lookup_that_raced_a_drop_is_not_kept() -> None:
    cache = CredentialCache()
    generation = cache.generation()       # the store lookup begins ...
    cache.forget("dev-1")                 # ... the device enrolls again meanwhile ...
    cache.keep("old", "dev-1", generation=generation)
    assert cache.device_for("old") is None


def test_a_notice_drops_the_device_and_a_gap_drops_everything() -> None:
    listeners = []

    class Changes:
        def subscribe(self, listener) -> None:  # noqa: ANN001
            listeners.append(listener)
    cache = CredentialCache(changes=Changes())
    for i in range(3):
        cache.keep(f"t{i}", f"dev-{i}", generation=cache.generation())
    listeners[0](TOPIC, "dev-0")
    assert cache.device_for("t0") is None and cache.device_for("t1") == "dev-1"
    listeners[0]("", "")
    assert cache.device_for("t1") is None and cache.device_for("t2") is None


def test_one_token_per_device_and_at_most_max_entries() -> None:
    cache = CredentialCache(max_entries=2)
    cache.keep("a", "dev-1", generation=0)
    cache.keep("b", "dev-1", generation=0)      # a new token replaces the device's old one
    assert cache.device_for("a") is None and cache.device_for("b") == "dev-1"
    cache.keep("c", "dev-2", generation=0)
    cache.keep("d", "dev-3", generation=0)
    assert cache.device_for("b") is None and cache.device_for("d") == "dev-3"
