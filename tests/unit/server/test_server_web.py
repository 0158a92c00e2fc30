"""The dashboard's parts without a server: sessions, the login throttle, the device
table's URL and the bounded event source."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleetcast.server import liveness
from fleetcast.server.errors import InvalidRequest, TooManyRequests, Unavailable
from fleetcast.server.web.devicefilter import DeviceFilter
from fleetcast.server.web.events import QUEUE_EVENTS, Events
from fleetcast.server.web.sessions import LoginThrottle, Sessions, same_token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ends_at_its_expiry_at_logout_and_when_the_oldest_is_dropped() -> None:
    clock = Clock()
    sessions = Sessions(ttl_s=60, max_sessions=2, clock=clock)
    first, s1 = sessions.open("viewer")
    second, _ = sessions.open("operator")
    assert sessions.get(first) == s1 and not s1.can_change
    assert sessions.get(second).can_change
    third, _ = sessions.open("viewer")
    assert sessions.get(first) is None and len(sessions) == 2      # bounded: the oldest went
    sessions.close(second)
    assert sessions.get(second) is None
    clock.now += 61
    assert sessions.get(third) is None
    assert sessions.get("") is None and sessions.get(None) is None


def test_secrets_compare_only_when_equal_and_never_against_nothing() -> None:
    assert same_token("abc", "abc") and not same_token("abd", "abc") and not same_token("", "")


def test_failed_logins_are_refused_past_the_limit_until_the_window_slides() -> None:
    clock = Clock()
    throttle = LoginThrottle(failures=3, window_s=60, clock=clock)
    for _ in range(3):
        throttle.check("10.0.0.1")
        throttle.failed("10.0.0.1")
    with pytest.raises(TooManyRequests, match="wait 61 s"):
        throttle.check("10.0.0.1")
    throttle.check("10.0.0.2")                       # another address is not held back
    clock.now += 61
    throttle.check("10.0.0.1")
    throttle.failed("10.0.0.1")
    throttle.succeeded("10.0.0.1")
    throttle.check("10.0.0.1")


def test_the_device_filter_round_trips_through_its_url() -> None:
    query = {"q": "rk", "liveness": "late", "hardware": "rk3399", "model": "digits@2", "sort": "last_seen",
             "order": "desc", "page": "3", "per": "20"}
    f = DeviceFilter.parse(query, default_per=50, max_per=500)
    assert f.params() == query
    assert DeviceFilter.parse(f.params(page=4), default_per=50, max_per=500) == DeviceFilter(**{**f.__dict__, "page": 4})
    assert f.sort_url("/ui/devices", "last_seen").endswith("sort=last_seen&per=20")   # flips to asc, page 1
    assert DeviceFilter().url("/ui/devices") == "/ui/devices"


@pytest.mark.parametrize("query, words", [
    ({"liveness": "gone"}, "liveness"), ({"sort": "token_sha256"}, "sort"), ({"order": "up"}, "order"),
    ({"page": "0"}, "page"), ({"per": "501"}, "per"), ({"q": "a'; DROP"}, "'q'"), ({"colour": "red"}, "colour"),
    ({"hardware": "x" * 65}, "hardware"),
])
def test_a_bad_device_filter_is_refused_naming_the_parameter(query: dict[str, str], words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        DeviceFilter.parse(query, default_per=50, max_per=500)


def test_liveness_filters_become_last_seen_bounds() -> None:
    config = liveness.LivenessConfig(expected_interval_s=60, offline_after_s=300)
    late = DeviceFilter(liveness="late", page=2, per=10).store_query(now=1000.0, config=config)
    assert (late.seen_since, late.unseen_since, late.offset, late.limit) == (700.0, 940.0, 10, 10)
    offline = DeviceFilter(liveness="offline").store_query(now=1000.0, config=config)
    assert (offline.seen_since, offline.unseen_since) == (None, 700.0)


def test_events_are_bounded_send_changes_only_and_drop_a_subscriber_that_falls_behind() -> None:
    async def scenario() -> None:
        events = Events(snapshot=lambda: {}, max_subscribers=2, poll_s=0.01)
        with events.subscribe() as fast, events.subscribe() as slow:
            with pytest.raises(Unavailable, match="2 live-update streams"):
                with events.subscribe():
                    pass
            assert events.publish({"fleet": {"online": 1}}) == ["fleet"]
            assert events.publish({"fleet": {"online": 1}}) == []          # unchanged: nothing sent
            event = fast.queue.get_nowait()
            assert (event.topic, json.loads(event.data)) == ("fleet", {"online": 1})
            for i in range(QUEUE_EVENTS + 1):
                events.publish({"fleet": {"online": i + 2}})
                while not fast.queue.empty():
                    fast.queue.get_nowait()
            assert events.subscribers == 1                               # the slow one was dropped ...
            drained = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
            assert drained[-1] is None                                   # ... and told to end
            with events.subscribe() as late:                             # a newcomer starts from now
                assert json.loads(late.queue.get_nowait().data) == {"online": QUEUE_EVENTS + 2}

    asyncio.run(scenario())
