"""JSON request bodies: bounded depth, refused with InvalidRequest (400), never a crash."""

from __future__ import annotations

import pytest

from fleetcast.server.api.bodies import MAX_DEPTH, nesting_depth, parse_json
from fleetcast.server.errors import InvalidRequest


def test_a_50k_deep_body_is_refused_as_invalid_not_crashed() -> None:
    body = b"[" * 50_000 + b"]" * 50_000
    with pytest.raises(InvalidRequest, match="nested 50000 levels deep"):
        parse_json(body, hint="{}")


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    body = b'{"model": "[[[[{{{{\\"[[[", "target": {"a": [1, [2]]}}'
    assert nesting_depth(body) == 4
    assert parse_json(body, hint="{}")["target"] == {"a": [1, [2]]}


@pytest.mark.parametrize("body", [b'{"a": NaN}', b'{"a": Infinity}', b"\xff\xfe{", b'{"a": 1', b""])
def test_bodies_that_are_not_strict_json_are_refused(body: bytes) -> None:
    with pytest.raises(InvalidRequest, match="not JSON"):
        parse_json(body, hint="{}")


def test_a_body_at_the_depth_limit_is_accepted() -> None:
    body = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert nesting_depth(body) == MAX_DEPTH
    parse_json(body, hint="{}")
