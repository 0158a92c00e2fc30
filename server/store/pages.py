"""The device table's page as SQL both stores run: the WHERE clause of a `DeviceQuery`
and its ORDER BY, from a fixed column table (no name from a request reaches the SQL).

Only the placeholder differs between the stores (`?` for SQLite, `%s` for psycopg).
"""

from __future__ import annotations

from typing import Any, Final

from fleetcast.server.store import DeviceQuery

# DeviceQuery.sort -> column: a fixed table, so no name from a request reaches the SQL.
DEVICE_SORT_COLUMNS: Final = {"id": "device_id", "last_seen": "last_seen", "hardware_class": "hardware_class",
                              "group": "grp", "active_model": "active_model", "state": "state",
                              "enrolled_at": "enrolled_at"}


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def device_filter(q: DeviceQuery, *, mark: str) -> tuple[str, list[Any]]:
    """The WHERE clause of a device query (placeholders `mark`) and its parameters."""
    terms: list[str] = []
    params: list[Any] = []
    if q.text:
        terms.append(f"LOWER(device_id) LIKE {mark} ESCAPE '\\'")
        params.append(_like(q.text.lower()))
    for column, value in (("hardware_class", q.hardware_class), ("grp", q.group)):
        if value:
            terms.append(f"{column} = {mark}")
            params.append(value)
    if q.active_model:
        if "@" in q.active_model:
            terms.append(f"active_model = {mark}")
            params.append(q.active_model)
        else:
            terms.append(f"active_model LIKE {mark} ESCAPE '\\'")
            params.append(_like(q.active_model + "@")[1:])
    if q.seen_since is not None:
        terms.append(f"last_seen >= {mark}")
        params.append(q.seen_since)
    if q.unseen_since is not None:
        terms.append(f"(last_seen IS NULL OR last_seen < {mark})")
        params.append(q.unseen_since)
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


def device_order(q: DeviceQuery) -> str:
    """The ORDER BY of a device query: its column, ties broken by id, never seen as the oldest."""
    column = DEVICE_SORT_COLUMNS[q.sort]
    direction = "DESC" if q.descending else "ASC"
    order = f"{column} {direction}" if column == "device_id" else f"{column} {direction}, device_id {direction}"
    if q.sort == "last_seen":   # never seen sorts as the oldest
        order = f"last_seen IS NULL {'ASC' if q.descending else 'DESC'}, {order}"
    return order
