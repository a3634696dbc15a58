"""One connection to the store's database for an observability subsystem's own
tables (the rollup, the budget ledger), with statements written once with `?`.

The SQL stores open it with `connect()` (their door for subsystem tables) after
applying the subsystem's `Schema`; the in-memory store has no database, so the same
tables live in a private in-memory SQLite one. A connection that fails is dropped
and opened again at the next statement (a restarted PostgreSQL ends every
connection); a transaction that fails raises and rolls back.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from nexus.storage.base import Schema, Store
from nexus.storage.migrations import Dialect, dialect_sql, statements


class Database:
    """A subsystem's door to the store's database.

    Args:
        store: the runtime's store.
        schema: the subsystem's tables (migrated here).
        shared: on SQLite, use the journal's own connection under its writer lock
            (`SQLiteStore.writer`), for short writes on the hot path.
    """

    def __init__(self, store: Store, schema: Schema, *, shared: bool = False) -> None:
        self.dialect: Dialect = "postgresql" if "://" in store.path else "sqlite"
        connect: Callable[[], Any] | None = getattr(store, "connect", None)
        writer = getattr(store, "writer", None) if shared else None
        self._outer: Any = None  # the store's writer lock, held by the outermost call
        self._depth = 0
        # SQLite's statements on the journal's connection are microseconds of work
        # that holds the GIL: callers run them in place, as the journal commits (a
        # thread hop cost more than the transaction). A network database's round
        # trips are waits: callers run them in a thread.
        self.inline = writer is not None or connect is None
        if writer is not None:
            store.migrate(schema)
            conn, self._outer = writer()
            self._connect: Callable[[], Any] = lambda: conn
        elif connect is None:
            private = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            for _, sql in sorted(schema.migrations):
                text = dialect_sql(sql, "sqlite", subsystem=schema.subsystem)
                for statement in statements(text):
                    private.execute(statement)
            self._connect = lambda: private
        else:
            store.migrate(schema)
            self._connect = connect
        self._conn: Any = None
        self._lock = threading.RLock()

    @property
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """This door's lock (and the store's writer lock, when shared), reentrant."""
        with self._lock:
            if self._outer is not None and self._depth == 0:
                self._outer.acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._outer is not None and self._depth == 0:
                    self._outer.release()

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def sql(self, text: str) -> str:
        """`text` in this dialect's placeholders."""
        return text if self.dialect == "sqlite" else text.replace("?", "%s")

    def rows(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one statement (outside a transaction: once more on a new
        connection if the first fails)."""
        with self.lock:
            try:
                return self._rows(text, params)
            except Exception:
                if self._in_transaction:
                    raise
                self._drop()
            return self._rows(text, params)

    def _rows(self, text: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        cursor = self.conn.execute(self.sql(text), params)
        return list(cursor.fetchall()) if cursor.description else []

    _in_transaction = False

    @contextlib.contextmanager
    def transaction(self, *, lock: int | None = None) -> Iterator[None]:
        """One transaction; `lock` takes a transaction-scoped advisory lock on
        PostgreSQL (SQLite's `BEGIN IMMEDIATE` holds the write lock already)."""
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            except Exception:
                self._drop()
                self.conn.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            self._in_transaction = True
            try:
                if lock is not None and self.dialect == "postgresql":
                    self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
                yield
            except BaseException:
                self._in_transaction = False
                try:
                    self.conn.execute("ROLLBACK")
                except Exception:
                    self._drop()
                raise
            self._in_transaction = False
            self.conn.execute("COMMIT")

    def execute(self, text: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; its row count."""
        with self.lock:
            return int(self.conn.execute(self.sql(text), params).rowcount)

    def executemany(self, text: str, params: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each parameter set."""
        with self.lock:
            if self.dialect == "sqlite":
                self.conn.executemany(text, params)
            else:
                with self.conn.cursor() as cursor:
                    cursor.executemany(self.sql(text), params)

    def _drop(self) -> None:
        if self._conn is not None and self.dialect == "postgresql":
            with contextlib.suppress(Exception):
                self._conn.close()
        if self.dialect == "postgresql":
            self._conn = None

    def close(self) -> None:
        """Close the connection (a shared one stays the store's)."""
        with self.lock, contextlib.suppress(Exception):
            if self._conn is not None and self._outer is None:
                self._conn.close()
            self._conn = None
