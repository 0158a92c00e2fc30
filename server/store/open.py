"""One place that turns a store URL into a `Store`.

| URL                              | store                                      |
|----------------------------------|--------------------------------------------|
| `sqlite:///ABSOLUTE/PATH.db`     | `SqliteStore` on that file (one process)   |
| `postgresql://USER@HOST:PORT/DB` | `PostgresStore`, shared by replicas        |

A PostgreSQL URL never carries a password (it would sit on a command line and in the
process list): libpq reads it from PGPASSFILE or ~/.pgpass (mode 0600). Off loopback
the connection must be TLS: `?sslmode=verify-full` (or verify-ca, require).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from fleetcast.proto.addresses import is_loopback
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.store import Store

TLS_MODES: Final = frozenset({"require", "verify-ca", "verify-full"})
EXAMPLES: Final = "sqlite:///var/lib/fleetcast/fleetcast.db or postgresql://fleetcast@db.example:5432/fleetcast"


def open_store(url: str) -> Store:
    """Opens (on first use: creates and migrates) the store `url` names; raises
    InvalidRequest for a URL it cannot use and StoreUnavailable for a database it cannot reach."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from fleetcast.server.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from fleetcast.server.store.postgres import PostgresStore

        check_postgres_url(url)
        return PostgresStore(url)
    raise InvalidRequest(f"store URL {url[:80]!r} is not one Fleetcast opens: use {EXAMPLES}")


def sqlite_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or parts.query:
        raise InvalidRequest(f"SQLite store URL {url[:80]!r} must be sqlite:///ABSOLUTE/PATH (three slashes)")
    return Path(parts.path)


def check_postgres_url(url: str) -> None:
    import psycopg.conninfo

    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise InvalidRequest(f"PostgreSQL store URL is not valid: {e}") from e
    if params.get("password"):
        raise InvalidRequest("the PostgreSQL store URL holds a password: remove it and put it in PGPASSFILE "
                             "or ~/.pgpass (mode 0600), where libpq reads it")
    hosts = str(params.get("host") or "localhost").split(",")
    remote = [h for h in hosts if not (h.startswith("/") or is_loopback(h))]
    if remote and params.get("sslmode") not in TLS_MODES:
        raise InvalidRequest(f"the PostgreSQL store at {remote[0]} is off loopback: add ?sslmode=verify-full "
                             "(and sslrootcert=FILE) so the connection is TLS")
