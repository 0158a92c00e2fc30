"""Request bodies parsed with bounds: size (the app's client_max_size) and nesting depth.

Python's json module recurses once per nesting level, so a 50,000-deep body would end
in RecursionError (a 500); `parse_json` measures the depth first, without recursion,
and refuses anything deeper than `MAX_DEPTH` with InvalidRequest (a 400).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from fleetcast.server.errors import InvalidRequest

MAX_DEPTH: Final = 32
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET: Final = re.compile(rb"[\[\]{}]")


def nesting_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings skipped)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', body)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_json(body: bytes, *, hint: str, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed body; raises InvalidRequest naming what is wrong and `hint` (what to send)."""
    depth = nesting_depth(body)
    if depth > max_depth:
        raise InvalidRequest(f"the JSON body is nested {depth} levels deep, more than {max_depth}; send {hint}")
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:   # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise InvalidRequest(f"the body is not JSON ({str(e)[:200]}); send {hint}") from e


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
