"""The embedded store: SQLite in WAL mode. Every SQL statement of NEXUS lives here.

One connection per store, guarded by a lock: a journal append is one short
transaction (tens of microseconds in WAL mode), cheaper to run inline than to hand
to a thread. Several processes may open the same file; `busy_timeout` serialises
their writers.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from nexus.errors import JournalError, SchemaVersionError, StorageCorrupt, StorageError
from nexus.storage.base import (
    FINISHED_STATUSES,
    SESSION_ORDER,
    CheckpointRow,
    CommandRow,
    Durability,
    EventRow,
    Head,
    Schema,
    SessionChange,
    SessionQuery,
    SessionRow,
    SessionTotals,
    WorkerRow,
)
from nexus.storage.migrations import LATEST, MIGRATIONS, dialect_sql, statements
from nexus.storage.wake import Wakeup
from nexus.storage.workers import (
    by_worker,
    commit_isolated,
    fenced,
    index_update,
    queries,
    session_values,
    worker_row,
)

_WORKERS = queries("sqlite")

P = ParamSpec("P")
R = TypeVar("R")

_EVENT_COLS = (
    "id, session_id, seq, ts, kind, payload, tokens_in, tokens_out, cost_usd, "
    "latency_ms, prev_hash, hash, key_id"
)

# Files that only a NEXUS home that has been used holds. Beside any of them, an empty
# (zero-length or table-less) nexus.db is a truncated or replaced one, not a new one:
# taking it for new would silently drop every session.
HOME_STATE = ("dbos.sqlite", "api-token", "audit.key", "audit-anchor.json")

# `PRAGMA quick_check` reads every page: 0.14 s for a 110 MB journal (warm cache,
# measured 2026-12 on the 2-core dev box; integrity_check took 0.27 s). Up to this size
# the whole file is checked at open; a larger one gets a bounded check at open (the
# schema pages) and the full check in `nexus audit verify`, `check_integrity()` and
# after any database error.
FULL_CHECK_AT_OPEN_BYTES = 128 * 1024 * 1024

# How many checkpoints the table keeps: the newest is the one that counts (and the
# anchor file names it); a few more cover a writer racing another.
KEEP_CHECKPOINTS = 8
_SESSION_COLS = (
    "id, agent, goal, status, priority, labels, created_at, updated_at, reason, steps, "
    "tokens_in, tokens_out, cost_usd, last_seq"
)


_COMMAND_COLS = "id, session_id, kind, by, reason, data, ts"
_INSERT_EVENT = f"INSERT INTO events ({_EVENT_COLS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_EVENT = (
    f"INSERT INTO events ({_EVENT_COLS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COUNTERS = (
    "UPDATE sessions SET updated_at = ?, last_seq = ?, steps = steps + ?, "
    "tokens_in = tokens_in + ?, tokens_out = tokens_out + ?, cost_usd = cost_usd + ?"
)
_UPDATE_COUNTERS = _COUNTERS + " WHERE id = ?"
_IN_EPOCH = " AND epoch = ?"  # a run's append: only while its epoch is the session's
_UPDATE_STATUS = (
    _COUNTERS + ", status = coalesce(?, status), "
    "reason = CASE WHEN ? IS NULL THEN reason ELSE ? END WHERE id = ?"
)


def _diagnosed(
    method: Callable[Concatenate[SQLiteStore, P], R],
) -> Callable[Concatenate[SQLiteStore, P], R]:
    """Turn a database error of `method` into `StorageCorrupt` when the file is damaged."""

    def checked(self: SQLiteStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise self._diagnose(exc) from exc

    functools.update_wrapper(checked, method)
    return checked


class SQLiteStore:
    """`Store` on one SQLite file.

    The file is checked when the store opens (`FULL_CHECK_AT_OPEN_BYTES`) and again on
    any database error: a damaged file raises `StorageCorrupt` naming it, and from then
    on the store refuses every write, so nothing new lands in a file being lost.
    """

    def __init__(self, path: Path, *, durability: Durability = "normal") -> None:
        self.path = str(path)
        self._synchronous = "FULL" if durability == "full" else "NORMAL"
        self._damage: str | None = None
        self._wakeup = Wakeup()
        path.parent.mkdir(parents=True, exist_ok=True)
        # A file that is not there yet is new; one that is there must hold a database.
        self._existed = path.exists()
        empty = self._existed and path.stat().st_size == 0
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from None
        self._lock = threading.Lock()
        try:
            try:
                if empty:
                    # Before WAL mode writes a header into it.
                    self._refuse_if_used_home()
                _enable_wal(self._db)
                self._db.execute(f"PRAGMA synchronous={self._synchronous}")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._check_at_open(path)
            except sqlite3.DatabaseError as exc:
                failure = self._diagnose(exc)
                if isinstance(failure, StorageError):
                    raise failure from None
                raise StorageError(f"cannot open database {self.path}: {exc}") from None
            self._migrate()
        except BaseException:
            # A refused database must not stay open (and locked) behind the error.
            self._db.close()
            raise

    # -- integrity --------------------------------------------------------------

    def _check_at_open(self, path: Path) -> None:
        if path.stat().st_size <= FULL_CHECK_AT_OPEN_BYTES:
            detail = _quick_check(self._db)
        else:
            # Bounded: the schema pages only; the full check runs in the audit.
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            detail = None
        if detail is not None:
            self._damage = detail
            raise StorageCorrupt(self.path, detail)

    def check_integrity(self) -> str | None:
        """Check every page of the file (`PRAGMA quick_check`, about 1.3 ms per MB):
        what is damaged, or None when the file is sound. For `/readyz` and the audit."""
        detail = self._damage
        if detail is None:
            # On a connection of its own: a WAL reader does not hold up the appends.
            db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
            try:
                detail = _quick_check(db)
            finally:
                db.close()
        self._damage = detail
        return detail

    def _diagnose(self, exc: sqlite3.DatabaseError) -> Exception:
        """The error to raise for `exc`: `StorageCorrupt` when the file turns out to be
        damaged, else `exc` itself (a busy or locked database is not damage)."""
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            return exc  # a refused row, or a closed connection: the file is not at fault
        if self._damage is None:
            with self._lock:
                self._damage = _quick_check(self._db)
        if self._damage is None:
            return exc
        return StorageCorrupt(self.path, self._damage)

    def _refuse_if_used_home(self) -> None:
        """Refuse a table-less database (a zero-length file opens as one) in a home
        that other NEXUS state shows to have been used: it lost its data."""
        home = Path(self.path).parent
        found = [name for name in HOME_STATE if (home / name).exists()]
        if found:
            raise StorageCorrupt(
                self.path,
                f"it is empty, but {home} holds {', '.join(found)} of a NEXUS home in use",
            )

    # -- schema -----------------------------------------------------------------

    def _migrate(self) -> None:
        try:
            self._create_schema_table()
            (current,) = self._db.execute(
                "SELECT coalesce(max(version), 0) FROM schema_version"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            failure = self._diagnose(exc)
            if isinstance(failure, StorageError):
                raise failure from None
            raise StorageError(f"cannot read database {self.path}: {exc}") from None
        if current > LATEST:
            raise SchemaVersionError(
                f"database {self.path} has schema version {current}, but this NEXUS knows "
                f"versions up to {LATEST}: upgrade NEXUS (pip install -U nexus-runtime)"
            )
        for version, sql in MIGRATIONS:
            if version > current:
                self._apply(
                    sql,
                    ("SELECT 1 FROM schema_version WHERE version = ?", (version,)),
                    ("INSERT INTO schema_version VALUES (?, ?)", (version, time.time())),
                )

    def _create_schema_table(self) -> None:
        """Create `schema_version` in a fresh database, deciding "fresh" under the write
        lock: processes opening a new home together see each other's tables, and an
        empty file in a used home is refused instead (`_refuse_if_used_home`)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            (tables,) = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if tables == 0 and self._existed:
                self._refuse_if_used_home()
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _apply(
        self,
        sql: str,
        applied: tuple[str, tuple[object, ...]],
        record: tuple[str, tuple[object, ...]],
    ) -> None:
        """Run one migration in its own transaction, unless `applied` finds it done:
        another process may have applied it between our read and our write lock
        (workers starting together on a fresh file)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute(*applied).fetchone():
                    self._db.execute("ROLLBACK")
                    return
                for statement in statements(sql):
                    self._db.execute(statement)
                self._db.execute(*record)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @_diagnosed
    def migrate(self, schema: Schema) -> int:
        """Apply a subsystem's pending migrations, each in its own transaction."""
        known = max((v for v, _ in schema.migrations), default=0)
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS subsystem_schema (subsystem TEXT NOT NULL, "
                "version INTEGER NOT NULL, applied_at REAL NOT NULL, "
                "PRIMARY KEY (subsystem, version))"
            )
            (current,) = self._db.execute(
                "SELECT coalesce(max(version), 0) FROM subsystem_schema WHERE subsystem = ?",
                (schema.subsystem,),
            ).fetchone()
        if current > known:
            raise SchemaVersionError(
                f"database {self.path}: the {schema.subsystem} tables have schema version "
                f"{current}, but this NEXUS knows versions up to {known}: upgrade NEXUS"
            )
        name = schema.subsystem
        for version, sql in sorted(schema.migrations):
            if version > current:
                self._apply(
                    dialect_sql(sql, "sqlite", subsystem=name),
                    (
                        "SELECT 1 FROM subsystem_schema WHERE subsystem = ? AND version = ?",
                        (name, version),
                    ),
                    (
                        "INSERT INTO subsystem_schema VALUES (?, ?, ?)",
                        (name, version, time.time()),
                    ),
                )
        return int(max(current, known))

    def writer(self) -> tuple[sqlite3.Connection, threading.Lock]:
        """The journal's own connection and the lock its writes hold, for a
        subsystem's short transactions on the hot path (a budget hold per LLM call):
        taking the lock queues them behind the journal's commits in this process,
        where a second connection would meet SQLite's busy lock and sleep a
        millisecond or more each time. Hold the lock for the whole transaction."""
        return self._db, self._lock

    def connect(self) -> sqlite3.Connection:
        """A new connection to this database, for a subsystem's own queries (WAL
        lets it read and write beside the journal's connection)."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        db.execute("PRAGMA foreign_keys=ON")
        # The journal's durability, not SQLite's default FULL: an fsync per commit
        # made a subsystem's write (a budget hold) cost a millisecond.
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        return db

    @_diagnosed
    def schema_version(self) -> int:
        """The highest applied migration."""
        (version,) = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(version)

    # -- journal ------------------------------------------------------------------

    def append(self, row: EventRow, change: SessionChange) -> int:
        (result,) = self.append_many([(row, change)])
        if isinstance(result, Exception):
            raise result
        return result

    def append_many(self, items: Sequence[tuple[EventRow, SessionChange]]) -> list[int | Exception]:
        # Not `_diagnosed`: the hot path keeps its one frame (a try costs nothing).
        if self._damage is not None:
            raise StorageCorrupt(self.path, self._damage)
        try:
            return self._append_many(items)
        except sqlite3.DatabaseError as exc:
            raise self._diagnose(exc) from exc

    def _append_many(
        self, items: Sequence[tuple[EventRow, SessionChange]]
    ) -> list[int | Exception]:
        with self._lock:
            return commit_isolated(items, self._transaction)

    def _transaction(
        self, items: Sequence[tuple[EventRow, SessionChange]]
    ) -> list[int | Exception]:
        db = self._db
        ids: list[int | Exception] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for row, change in items:
                if change.create is not None:
                    c = change.create
                    db.execute(
                        f"INSERT INTO sessions ({_SESSION_COLS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, 0, 0, 0, 0, 0)",
                        session_values(row, c),
                    )
                # The index change first: a stale run is refused by its epoch before
                # its row could collide with the new run's rows (same seq).
                sql, args = index_update(row, change, _UPDATE_COUNTERS, _UPDATE_STATUS, _IN_EPOCH)
                if db.execute(sql, args).rowcount == 0 and change.epoch is not None:
                    raise fenced(row, change.epoch)
                cur = db.execute(_INSERT_EVENT, row.values())
                ids.append(int(cur.lastrowid or 0))
        except sqlite3.IntegrityError as exc:
            db.execute("ROLLBACK")
            row = items[len(ids)][0]
            raise JournalError(
                f"cannot append {row.kind} #{row.seq} to session {row.session_id}: {exc}"
            ) from None
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return ids

    @_diagnosed
    def head(self, session_id: str) -> tuple[int, str]:
        with self._lock:
            found = self._db.execute(
                "SELECT seq, hash FROM events WHERE session_id = ? ORDER BY seq DESC LIMIT 1",
                (session_id,),
            ).fetchone()
        return (0, "") if found is None else (int(found[0]), str(found[1]))

    @_diagnosed
    def events(
        self, session_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[EventRow]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE session_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (session_id, after_seq, -1 if limit is None else limit),
            ).fetchall()
        return [EventRow(*r) for r in rows]

    @_diagnosed
    def events_after(self, after_id: int, limit: int = 1000) -> list[EventRow]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [EventRow(*r) for r in rows]

    @_diagnosed
    def latest_event_id(self) -> int:
        with self._lock:
            (latest,) = self._db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        return int(latest)

    @_diagnosed
    def count_sessions(self, status: Sequence[str] = ()) -> int:
        """How many sessions (optionally with one of these statuses)."""
        sql, args = "SELECT count(*) FROM sessions", list(status)
        if status:
            sql += f" WHERE status IN ({','.join('?' * len(status))})"
        with self._lock:
            (n,) = self._db.execute(sql, args).fetchone()
        return int(n)

    @_diagnosed
    def ping(self) -> None:
        """A trivial query: raises if the database is unusable."""
        with self._lock:
            self._db.execute("SELECT 1 FROM sessions LIMIT 1").fetchall()

    def iter_all_events(self) -> Iterator[EventRow]:
        # A separate cursor on a snapshot: audits may walk millions of rows.
        reader = sqlite3.connect(self.path, timeout=30.0)
        try:
            for r in reader.execute(
                f"SELECT {_EVENT_COLS} FROM events ORDER BY session_id, seq, id"
            ):
                yield EventRow(*r)
        except sqlite3.DatabaseError as exc:
            raise self._diagnose(exc) from exc
        finally:
            reader.close()

    @_diagnosed
    def heads(self) -> list[Head]:
        # Driven by the events, not the index: a session whose index row was deleted
        # still has a head to checkpoint.
        with self._lock:
            rows = self._db.execute(
                "SELECT e.session_id, e.seq, e.hash, e.key_id FROM events e JOIN "
                "(SELECT session_id, max(seq) AS seq FROM events GROUP BY session_id) h "
                "ON e.session_id = h.session_id AND e.seq = h.seq ORDER BY e.session_id"
            ).fetchall()
        return [Head(*r) for r in rows]

    # -- audit checkpoints ------------------------------------------------------------

    @_diagnosed
    def add_checkpoint(self, ts: float, key_id: str, body: str, signature: str) -> int:
        if self._damage is not None:
            raise StorageCorrupt(self.path, self._damage)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute(
                    "INSERT INTO checkpoints (ts, key_id, body, signature) VALUES (?, ?, ?, ?)",
                    (ts, key_id, body, signature),
                )
                checkpoint_id = int(cur.lastrowid or 0)
                db.execute(
                    "DELETE FROM checkpoints WHERE id <= ?", (checkpoint_id - KEEP_CHECKPOINTS,)
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return checkpoint_id

    @_diagnosed
    def checkpoint(self, checkpoint_id: int | None = None) -> CheckpointRow | None:
        sql = "SELECT id, ts, key_id, body, signature FROM checkpoints"
        with self._lock:
            if checkpoint_id is None:
                r = self._db.execute(sql + " ORDER BY id DESC LIMIT 1").fetchone()
            else:
                r = self._db.execute(sql + " WHERE id = ?", (checkpoint_id,)).fetchone()
        return None if r is None else CheckpointRow(*r)

    # -- session index --------------------------------------------------------------

    @_diagnosed
    def session(self, session_id: str) -> SessionRow | None:
        with self._lock:
            r = self._db.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
        return None if r is None else _session(r)

    @_diagnosed
    def sessions(self, query: SessionQuery) -> list[SessionRow]:
        where, args = _where(query)
        sql = f"SELECT {_SESSION_COLS} FROM sessions{where} ORDER BY {SESSION_ORDER[query.sort]} "
        sql += "LIMIT ? OFFSET ?"
        with self._lock:
            rows = self._db.execute(sql, [*args, query.limit, query.offset]).fetchall()
        return [_session(r) for r in rows]

    @_diagnosed
    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        # A range on the primary key (ids are ASCII): no scan, whatever the count.
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM sessions WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                (prefix, prefix + "\x7f", limit),
            ).fetchall()
        return [str(r[0]) for r in rows]

    @_diagnosed
    def session_totals(self, query: SessionQuery) -> SessionTotals:
        where, args = _where(query)
        finished = ",".join("?" * len(FINISHED_STATUSES))
        sql = (
            f"SELECT count(*), coalesce(sum(status IN ({finished})), 0), "
            "coalesce(sum(status = 'failed'), 0), coalesce(sum(tokens_in), 0), "
            f"coalesce(sum(tokens_out), 0), coalesce(sum(cost_usd), 0.0) FROM sessions{where}"
        )
        with self._lock:
            r = self._db.execute(sql, [*FINISHED_STATUSES, *args]).fetchone()
        return SessionTotals(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5]))

    @_diagnosed
    def session_ids(self, status: Sequence[str]) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM sessions WHERE status IN ({','.join('?' * len(status))}) "
                "ORDER BY created_at",
                list(status),
            ).fetchall()
        return [str(r[0]) for r in rows]

    # -- workers ----------------------------------------------------------------------

    @_diagnosed
    def beat(self, worker_id: str, *, host: str, pid: int, role: str, starting: bool) -> str | None:
        q = _WORKERS
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                found = self._db.execute(q.status, (worker_id,)).fetchone()
                if found is None:
                    self._db.execute(q.insert, (worker_id, host, pid, role))
                else:
                    self._db.execute(q.beat, (host, pid, role, starting, worker_id))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return None if found is None else str(found[0])

    @_diagnosed
    def leave(self, worker_id: str) -> None:
        with self._lock:
            self._db.execute(_WORKERS.leave, (worker_id,))

    @_diagnosed
    def workers(self) -> list[WorkerRow]:
        with self._lock:
            rows = self._db.execute(_WORKERS.workers).fetchall()
        return [worker_row(r) for r in rows]

    @_diagnosed
    def declare_gone(self, timeout_s: float) -> list[str]:
        with self._lock:
            rows = self._db.execute(_WORKERS.declare_gone, (timeout_s,)).fetchall()
        return sorted(str(r[0]) for r in rows)

    @_diagnosed
    def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        with self._lock:
            found = self._db.execute(_WORKERS.hold_lease, (name, holder, ttl_s)).fetchone()
        return found is not None

    @_diagnosed
    def claim_session(self, session_id: str, worker_id: str) -> int:
        with self._lock:
            found = self._db.execute(_WORKERS.claim, (worker_id, session_id)).fetchone()
        if found is None:
            raise JournalError(f"cannot claim session {session_id}: no such session")
        return int(found[0])

    @_diagnosed
    def session_owner(self, session_id: str) -> tuple[int, str | None]:
        with self._lock:
            found = self._db.execute(_WORKERS.owner, (session_id,)).fetchone()
        return (0, None) if found is None else (int(found[0]), found[1])

    @_diagnosed
    def running_by_worker(self) -> dict[str, list[str]]:
        with self._lock:
            rows = self._db.execute(_WORKERS.running).fetchall()
        return by_worker(rows)

    # -- control channel ------------------------------------------------------------

    @_diagnosed
    def post_command(
        self, session_id: str, kind: str, by: str, reason: str, data: dict[str, object]
    ) -> CommandRow:
        if self._damage is not None:
            raise StorageCorrupt(self.path, self._damage)
        ts = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO commands (session_id, kind, by, reason, data, ts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, kind, by, reason, json.dumps(data), ts),
            )
        return CommandRow(int(cur.lastrowid or 0), session_id, kind, by, reason, dict(data), ts)

    @_diagnosed
    def commands(self, session_id: str, after_id: int = 0) -> list[CommandRow]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COMMAND_COLS} FROM commands WHERE session_id = ? AND id > ? ORDER BY id",
                (session_id, after_id),
            ).fetchall()
        return [_command(r) for r in rows]

    @_diagnosed
    def commands_after(self, after_id: int, limit: int = 1000) -> list[CommandRow]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COMMAND_COLS} FROM commands WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [_command(r) for r in rows]

    @_diagnosed
    def latest_command_id(self) -> int:
        with self._lock:
            (latest,) = self._db.execute("SELECT coalesce(max(id), 0) FROM commands").fetchone()
        return int(latest)

    def wakeup(self) -> Wakeup:
        """Rung by this process's journal only: other processes' commits are found
        by the readers' polling (SQLite has no notifications between processes)."""
        return self._wakeup

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _enable_wal(db: sqlite3.Connection, attempts: int = 50) -> None:
    """Switch to WAL, retrying on SQLITE_BUSY.

    Changing the journal mode of a fresh file needs an exclusive lock, and SQLite
    reports BUSY at once (without calling the busy handler) when another connection
    is doing the same, so processes opening a new database together must retry.
    """
    for attempt in range(attempts):
        try:
            (mode,) = db.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.005 * (attempt + 1))


def check_sqlite_file(path: Path) -> str | None:
    """What is damaged in the SQLite file at `path` (`PRAGMA quick_check`), or None when
    it is sound. Opens it read-only and changes nothing; a missing file is not damaged
    (it is new). For the other SQLite files of a home, e.g. DBOS's `dbos.sqlite`."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    try:
        return _quick_check(db)
    finally:
        db.close()


def _quick_check(db: sqlite3.Connection) -> str | None:
    """`PRAGMA quick_check` on `db`: its first finding (and how many more), or None."""
    try:
        rows = db.execute("PRAGMA quick_check(20)").fetchall()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None  # another writer holds it: that is not damage
        return str(exc)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    # One finding per line; a "*** in database main ***" line heads them.
    found = [
        line.strip()
        for (text,) in rows
        for line in str(text).splitlines()
        if line.strip() and not line.startswith("***")
    ]
    if found == ["ok"]:
        return None
    more = f" and {len(found) - 1} more problems" if len(found) > 1 else ""
    return f"{found[0]}{more}" if found else "quick_check failed"


_LIKE_SPECIAL = re.compile(r"[\\%_]")  # escaped with a backslash: `q` is plain text

# Each order is one index of migration 5 (or 2, for `created`) read forwards or
# backwards: the expressions must match the indexed ones exactly.


def _where(query: SessionQuery) -> tuple[str, list[object]]:
    """The `WHERE` clause of a query's filters and its bound values. User text is
    only ever a bound value: never spliced into SQL or a JSON path (a NUL in a key
    made json_extract fail with a 500)."""
    where: list[str] = []
    args: list[object] = []
    if query.status:
        where.append(f"status IN ({','.join('?' * len(query.status))})")
        args.extend(query.status)
    if query.agent:
        where.append("agent = ?")
        args.append(query.agent)
    if query.label:
        where.append(
            "EXISTS (SELECT 1 FROM json_each(sessions.labels) "
            "WHERE json_each.key = ? AND json_each.value = ?)"
        )
        args.extend(query.label)
    if query.q:
        where.append("goal LIKE ? ESCAPE '\\'")
        args.append("%" + _LIKE_SPECIAL.sub(r"\\\g<0>", query.q) + "%")
    if query.created_after is not None:
        where.append("created_at >= ?")
        args.append(query.created_after)
    if query.created_before is not None:
        where.append("created_at < ?")
        args.append(query.created_before)
    return (" WHERE " + " AND ".join(where) if where else ""), args


def _session(r: tuple[object, ...]) -> SessionRow:
    values = list(r)
    values[5] = json.loads(str(values[5]))
    return SessionRow(*values)  # type: ignore[arg-type]


def _command(r: tuple[object, ...]) -> CommandRow:
    values = list(r)
    values[5] = json.loads(str(values[5]))
    return CommandRow(*values)  # type: ignore[arg-type]
