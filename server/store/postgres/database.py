"""The PostgreSQL connection side of the store: a pool, transactions, locks, change notices.

- Every store call is one transaction on a pooled connection (psycopg_pool).
- `exclusive(name)` holds a lock across every store on the database (every replica): a
  transaction-scoped advisory lock on a connection kept for the block. Threads of one
  process queue on a per-name gate first, so waiting never takes more than one
  connection per name from the pool; the gate is re-entrant, as the signer needs.
- `announce` / `subscribe`: NOTIFY on one channel, delivered in commit order by one
  LISTEN thread per store to its listeners, for changes made by other store instances.
  After the listening connection drops, listeners get the topic "" (anything may
  have changed while nobody listened).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from fleetcast.server.errors import StoreUnavailable
from fleetcast.server.store.postgres import schema

logger = logging.getLogger(__name__)

CHANNEL: Final = "fleetcast_changes"
Listener = Callable[[str, str], None]


class Database:
    """The pool and the shared primitives every table family uses."""

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout_s: float = 5.0) -> None:
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self.origin = secrets.token_hex(6)   # tells this store's own notices from others'
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(connect_timeout_s))) as conn:
                schema.migrate(conn)
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"cannot open the PostgreSQL store: {_first_line(e)}; check the --store URL, "
                                   "that the server is running and that the database exists") from e
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=False, name="fleetcast-store",
                                    kwargs={"row_factory": dict_row}, timeout=30.0)
        self._pool.open(wait=True, timeout=connect_timeout_s)
        self._gates: dict[str, threading.RLock] = {}
        self._gates_lock = threading.Lock()
        self._holders: dict[str, int] = {}   # name -> thread id, written only under its gate
        self._listeners: list[Listener] = []
        self._listening: threading.Thread | None = None
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()
        self._pool.close()
        if self._listening is not None:
            self._listening.join(timeout=5.0)

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                yield cur
        except (psycopg.OperationalError, PoolTimeout) as e:
            raise StoreUnavailable(f"the PostgreSQL store is unavailable: {_first_line(e)}") from e

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._tx() as c:
            return c.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        with self._tx() as c:
            return c.execute(sql, params).fetchone()

    @staticmethod
    def _lock(c: psycopg.Cursor[Any], name: str) -> None:
        """Holds the advisory lock `name` until the transaction of `c` ends."""
        c.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("fleetcast:" + name,))

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        with self._gates_lock:
            gate = self._gates.setdefault(name, threading.RLock())
        with gate:
            me = threading.get_ident()
            if self._holders.get(name) == me:   # re-entered by the thread that holds it
                yield
                return
            with self._tx() as c:
                self._lock(c, name)
                self._holders[name] = me
                try:
                    yield
                finally:
                    del self._holders[name]

    def applied_migrations(self) -> list[str]:
        return [r["name"] for r in self._all("SELECT name FROM migrations ORDER BY position")]

    # -- change notices ---------------------------------------------------------------
    def announce(self, topic: str, *details: str) -> None:
        """One NOTIFY per detail, all in one transaction (a deploy tells 10,000 devices:
        one commit, not 10,000), delivered in order."""
        with self._tx() as c:
            for start in range(0, len(details), 10_000):
                c.execute("SELECT pg_notify(%s, %s || x) FROM unnest(%s::text[]) WITH ORDINALITY AS u(x, n) ORDER BY n",
                          (CHANNEL, f"{self.origin}\n{topic}\n", list(details[start:start + 10_000])))

    def _notify(self, c: psycopg.Cursor[Any], topic: str, detail: str) -> None:
        c.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{self.origin}\n{topic}\n{detail}"))

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)
        if self._listening is None:
            ready = threading.Event()
            self._listening = threading.Thread(target=self._listen, args=(ready,), name="fleetcast-store-listen",
                                               daemon=True)
            self._listening.start()
            ready.wait(timeout=self._connect_timeout_s)

    def _listen(self, ready: threading.Event) -> None:
        first = True
        while not self._closed.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, application_name=f"fleetcast-listen-{self.origin}",
                                     connect_timeout=max(1, int(self._connect_timeout_s))) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    ready.set()
                    if not first:
                        self._deliver("", "")   # notices may have been missed while disconnected
                    first = False
                    while not self._closed.is_set():
                        for notice in conn.notifies(timeout=0.5):
                            origin, _, rest = notice.payload.partition("\n")
                            if origin != self.origin:
                                topic, _, detail = rest.partition("\n")
                                self._deliver(topic, detail)
            except psycopg.OperationalError as e:
                if self._closed.is_set():
                    return
                logger.warning("store change notices interrupted, reconnecting: %s", _first_line(e))
                first = False
                time.sleep(1.0)

    def _deliver(self, topic: str, detail: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(topic, detail)
            except Exception:
                logger.exception("store change listener failed topic=%s", topic)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
