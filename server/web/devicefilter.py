"""The device table's URL: filters, order and page, parsed and checked, and written back.

Every filter lives in the query string (`?q=rk&liveness=late&hardware=rk3399&sort=last_seen
&order=desc&page=2`) so a filtered view can be bookmarked, shared and reloaded; the
same parameters select the rows of the CSV export. Unknown or malformed values are
refused with a message naming the parameter, never ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import urlencode

from fleetcast.server import liveness
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.store import DEVICE_SORTS, DeviceQuery

MAX_TEXT: Final = 64
MAX_PAGE: Final = 1_000_000
TEXT: Final = re.compile(r"^[A-Za-z0-9@._:-]*$")
KNOWN: Final = ("q", "liveness", "hardware", "group", "model", "sort", "order", "page", "per")


def _text(query: Mapping[str, str], name: str) -> str:
    value = query.get(name, "").strip()
    if len(value) > MAX_TEXT or not TEXT.fullmatch(value):
        raise InvalidRequest(f"filter {name!r} must be at most {MAX_TEXT} letters, digits or '@._:-'")
    return value


def _int(query: Mapping[str, str], name: str, *, default: int, high: int) -> int:
    raw = query.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise InvalidRequest(f"{name!r} must be a whole number from 1 to {high}, not {raw[:20]!r}")
    return int(raw)


@dataclass(frozen=True)
class DeviceFilter:
    q: str = ""
    liveness: str = ""          # "" | online | late | offline
    hardware: str = ""
    group: str = ""
    model: str = ""
    sort: str = "id"
    order: str = "asc"
    page: int = 1
    per: int = 50

    @classmethod
    def parse(cls, query: Mapping[str, str], *, default_per: int, max_per: int) -> "DeviceFilter":
        unknown = sorted(set(query) - set(KNOWN) - {"part"})   # part=live: the live-update fragment
        if unknown:
            raise InvalidRequest(f"unknown parameter {unknown[0][:40]!r}; the device table takes {', '.join(KNOWN)}")
        live = query.get("liveness", "")
        if live and live not in liveness.STATES:
            raise InvalidRequest(f"'liveness' must be one of {', '.join(liveness.STATES)}")
        sort = query.get("sort", "id") or "id"
        if sort not in DEVICE_SORTS:
            raise InvalidRequest(f"'sort' must be one of {', '.join(DEVICE_SORTS)}")
        order = query.get("order", "asc") or "asc"
        if order not in ("asc", "desc"):
            raise InvalidRequest("'order' must be asc or desc")
        return cls(q=_text(query, "q"), liveness=live, hardware=_text(query, "hardware"),
                   group=_text(query, "group"), model=_text(query, "model"), sort=sort, order=order,
                   page=_int(query, "page", default=1, high=MAX_PAGE),
                   per=_int(query, "per", default=default_per, high=max_per))

    def store_query(self, *, now: float, config: liveness.LivenessConfig) -> DeviceQuery:
        """The store's query for this page; liveness becomes last-seen bounds at `now`."""
        seen_since = unseen_since = None
        if self.liveness == "online":
            seen_since = now - config.expected_interval_s
        elif self.liveness == "late":
            seen_since, unseen_since = now - config.offline_after_s, now - config.expected_interval_s
        elif self.liveness == "offline":
            unseen_since = now - config.offline_after_s
        return DeviceQuery(text=self.q, hardware_class=self.hardware, group=self.group, active_model=self.model,
                           seen_since=seen_since, unseen_since=unseen_since, sort=self.sort,
                           descending=self.order == "desc", limit=self.per, offset=(self.page - 1) * self.per)

    def params(self, **changes: Any) -> dict[str, str]:
        """The non-default parameters of this filter (after `changes`), for a URL."""
        f, base = replace(self, **changes), DeviceFilter()
        return {k: str(getattr(f, k)) for k in KNOWN if getattr(f, k) != getattr(base, k)}

    def url(self, path: str, **changes: Any) -> str:
        params = self.params(**changes)
        return path + ("?" + urlencode(params) if params else "")

    def sort_url(self, path: str, column: str) -> str:
        """The header link: sort by `column`, flipping the order when it is already the sort."""
        order = "desc" if self.sort == column and self.order == "asc" else "asc"
        return self.url(path, sort=column, order=order, page=1)
