"""Throwaway databases on the PostgreSQL server the tests use (127.0.0.1:5432, trust auth).

Each database has a unique name and is dropped afterwards. When the server cannot be
reached the caller fails (never skips) with what to do; FLEETCAST_TEST_POSTGRES names
another server (a libpq URL without a database). `make test` starts a private cluster
when nothing answers on 5432 (tests/support/pg_cluster.sh) and leaves its URL in
.pg-test-url.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import psycopg
import pytest

_PRIVATE: Final = Path(__file__).resolve().parents[2] / ".pg-test-url"
SERVER: Final = (os.environ.get("FLEETCAST_TEST_POSTGRES")
                 or (_PRIVATE.read_text().strip() if _PRIVATE.is_file() else "postgresql://postgres@127.0.0.1:5432"))


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {SERVER} ({str(e).strip().splitlines()[0]}): the store tests "
                    "need it; run them with make test (which starts one), or start it (apt-get install postgresql; "
                    "trust auth for user postgres on 127.0.0.1), or set FLEETCAST_TEST_POSTGRES", pytrace=False)


@contextmanager
def database(prefix: str = "fleetcast_test") -> Iterator[str]:
    """A new empty database for the block; yields its URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{SERVER}/{name}"
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
