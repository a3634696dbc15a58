"""The shared store: PostgreSQL through psycopg 3 and a small connection pool.

The same contract as `SQLiteStore`, statement for statement: an event and its
session change commit in one transaction, a group commit retries each session's rows
as a group when one row is refused, and a repeated `(session_id, seq)` is a
`JournalError` (the UNIQUE constraint decides between processes).

Appends take one transaction-scoped advisory lock before they insert. SQLite's
single writer gives row ids in commit order for free; PostgreSQL hands out identity
values when a row is inserted, so without the lock a transaction could commit id 11
before another commits id 10, and a reader following `events_after(10)` would skip
10 for ever. The lock costs one statement per transaction and serialises writers,
as SQLite's write lock does.

The same transactions `NOTIFY` (delivered at commit, to every process): one
`Listener` per store holds a dedicated connection that `LISTEN`s and wakes this
process's live readers (`nexus.storage.wake`).

Needs the `postgres` extra: `pip install 'nexus-runtime[postgres]'`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import select
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.pq import ExecStatus
from psycopg_pool import ConnectionPool

from nexus.errors import JournalError, SchemaVersionError, StorageError
from nexus.storage.base import (
    FINISHED_STATUSES,
    SESSION_ORDER,
    CheckpointRow,
    CommandRow,
    EventRow,
    Head,
    Schema,
    SessionChange,
    SessionQuery,
    SessionRow,
    SessionTotals,
    WorkerRow,
)
from nexus.storage.migrations import LATEST, POSTGRES_MIGRATIONS, dialect_sql
from nexus.storage.wake import COMMANDS, EVENTS, Channel, Wakeup
from nexus.storage.workers import (
    by_worker,
    commit_isolated,
    fenced,
    index_update,
    queries,
    session_values,
    worker_row,
)

_WORKERS = queries("postgresql")

# Advisory lock keys (any bigint; these spell "nxevents", "nxcmnds", "nxschema").
EVENTS_LOCK = 0x6E786576656E7473
COMMANDS_LOCK = 0x6E78636D6E6473
SCHEMA_LOCK = 0x6E78736368656D61

# As the SQLite store: the newest checkpoint counts, a few more cover racing writers.
KEEP_CHECKPOINTS = 8
CONNECT_TIMEOUT_S = 10

# LISTEN/NOTIFY channels (scoped to the database): a commit of events or of a
# command notifies one; the notification carries nothing (readers read after their
# last id), so PostgreSQL may merge or a dropped connection may lose it.
NOTIFY_CHANNELS: dict[Channel, str] = {EVENTS: "nexus_events", COMMANDS: "nexus_commands"}
LISTEN_APP = "nexus-listen"  # the listen connection's application_name (pg_stat_activity)

# A listen connection to a vanished server is known dead in about 25 s (10 idle,
# then 3 probes 5 s apart), instead of the kernel's default two hours.
_KEEPALIVES = dict(keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)

log = logging.getLogger("nexus.storage")

_EVENT_COLS = (
    "id, session_id, seq, ts, kind, payload, tokens_in, tokens_out, cost_usd, "
    "latency_ms, prev_hash, hash, key_id"
)
_SESSION_COLS = (
    "id, agent, goal, status, priority, labels, created_at, updated_at, reason, steps, "
    "tokens_in, tokens_out, cost_usd, last_seq"
)
_COMMAND_COLS = "id, session_id, kind, by, reason, data, ts"
_INSERT_SESSION = (
    f"INSERT INTO sessions ({_SESSION_COLS}) "
    "VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, NULL, 0, 0, 0, 0, 0)"
)
_APPEND_EVENT = (  # then ` WHERE ...` (a run's append) and ` RETURNING id`
    f"INSERT INTO events ({_EVENT_COLS.removeprefix('id, ')}) "
    "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
)
_COUNTERS = (
    "UPDATE sessions SET updated_at = %s, last_seq = %s, steps = steps + %s, "
    "tokens_in = tokens_in + %s, tokens_out = tokens_out + %s, cost_usd = cost_usd + %s"
)
_UPDATE_COUNTERS = _COUNTERS + " WHERE id = %s"
_IN_EPOCH = " AND epoch = %s"  # a run's append: only while its epoch is the session's
_UPDATE_STATUS = (
    _COUNTERS + ", status = coalesce(%s, status), "
    "reason = CASE WHEN %s::text IS NULL THEN reason ELSE %s END WHERE id = %s"
)

# What a row of a refused append raises: a constraint (a repeated seq or session) or
# a value PostgreSQL cannot store (a NUL character in a text column).
_REFUSED = (psycopg.IntegrityError, psycopg.DataError)


def masked(url: str) -> str:
    """`url` with its password replaced by `***` (in the user part and in a
    `password=` query parameter), for messages and `Store.path`."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:***@{host}"
        query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)])
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "postgresql://***"  # unparsable: show nothing that could be a secret


class PostgresStore:
    """`Store` on one PostgreSQL database.

    Args:
        url: a libpq URL, `postgresql://user:password@host:port/dbname`.
        min_size: connections the pool keeps open.
        max_size: connections it may open (a worker's appends are serialised by the
            events lock anyway; reads of the API share the rest).
        listen: wake this process's readers on other processes' commits (one
            more connection, opened when the first reader waits).

    Raises:
        StorageError: the database cannot be reached or migrated (one line, the
            password masked).
        SchemaVersionError: the database was migrated by a newer NEXUS.
    """

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 4, listen: bool = True
    ) -> None:
        self._url = url
        self.path = masked(url)
        # `listen=False`: no listen connection, readers poll (the baseline of
        # `bench.live`; also for a pooler that cannot LISTEN, like PgBouncer in
        # transaction mode).
        self._wakeup = Listener(url, self.path) if listen else Wakeup()
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as db:
                self._migrate(db)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open database {self.path}: {_one_line(exc)}") from None
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            # A connection the server dropped (a restart) is replaced, not handed out.
            check=_usable,
            # How long a call waits for a connection: as long as one takes to open,
            # not psycopg_pool's 30 s (with the server gone, every store call on an
            # event loop held it that long before failing).
            timeout=CONNECT_TIMEOUT_S,
            open=False,
            name="nexus-store",
        )
        self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)

    # -- schema -----------------------------------------------------------------

    def _migrate(self, db: psycopg.Connection[Any]) -> None:
        """Bring the kernel's tables to `LATEST` in one transaction under the schema
        lock: workers opening a fresh database together wait for the first, then find
        nothing left to do (DDL is transactional in PostgreSQL)."""
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = _scalar(db, "SELECT coalesce(max(version), 0) FROM schema_version")
            if current > LATEST:
                raise SchemaVersionError(
                    f"database {self.path} has schema version {current}, but this NEXUS "
                    f"knows versions up to {LATEST}: upgrade NEXUS (pip install -U nexus-runtime)"
                )
            for version, sql in POSTGRES_MIGRATIONS:
                if version > current:
                    db.execute(sql)
                    db.execute("INSERT INTO schema_version VALUES (%s, %s)", (version, time.time()))

    def migrate(self, schema: Schema) -> int:
        """Apply a subsystem's pending migrations (one transaction, under the schema
        lock); returns its version."""
        known = max((v for v, _ in schema.migrations), default=0)
        name = schema.subsystem
        with self._pool.connection() as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            db.execute(
                "CREATE TABLE IF NOT EXISTS subsystem_schema (subsystem TEXT NOT NULL, "
                "version BIGINT NOT NULL, applied_at DOUBLE PRECISION NOT NULL, "
                "PRIMARY KEY (subsystem, version))"
            )
            current = _scalar(
                db,
                "SELECT coalesce(max(version), 0) FROM subsystem_schema WHERE subsystem = %s",
                (name,),
            )
            if current > known:
                raise SchemaVersionError(
                    f"database {self.path}: the {name} tables have schema version "
                    f"{current}, but this NEXUS knows versions up to {known}: upgrade NEXUS"
                )
            for version, sql in sorted(schema.migrations, key=lambda m: m[0]):
                if version > current:
                    db.execute(dialect_sql(sql, "postgresql", subsystem=name))
                    db.execute(
                        "INSERT INTO subsystem_schema VALUES (%s, %s, %s)",
                        (name, version, time.time()),
                    )
        return max(current, known)

    def schema_version(self) -> int:
        """The highest applied migration."""
        with self._pool.connection() as db:
            return _scalar(db, "SELECT max(version) FROM schema_version")

    def connect(self) -> psycopg.Connection[Any]:
        """A new connection to this database (autocommit), for a subsystem's own
        queries; the caller closes it."""
        return psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)

    def wakeup(self) -> Wakeup:
        """This process's readers' doorbells, rung by every process's commits."""
        return self._wakeup

    # -- journal ------------------------------------------------------------------

    def append(self, row: EventRow, change: SessionChange) -> int:
        (result,) = self.append_many([(row, change)])
        if isinstance(result, Exception):
            raise result
        return result

    def append_many(self, items: Sequence[tuple[EventRow, SessionChange]]) -> list[int | Exception]:
        return commit_isolated(items, self._transaction)

    def _transaction(
        self, items: Sequence[tuple[EventRow, SessionChange]]
    ) -> list[int | Exception]:
        # A connection per attempt: a refusal closes the one it failed on.
        with self._pool.connection() as db:
            return _transaction(db, items)

    def head(self, session_id: str) -> tuple[int, str]:
        if _has_nul(session_id):
            return (0, "")
        with self._pool.connection() as db:
            found = db.execute(
                "SELECT seq, hash FROM events WHERE session_id = %s ORDER BY seq DESC LIMIT 1",
                (session_id,),
            ).fetchone()
        return (0, "") if found is None else (int(found[0]), str(found[1]))

    def events(
        self, session_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[EventRow]:
        if _has_nul(session_id):
            return []
        with self._pool.connection() as db:
            rows = db.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE session_id = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (session_id, after_seq, limit),
            ).fetchall()
        return [EventRow(*r) for r in rows]

    def events_after(self, after_id: int, limit: int = 1000) -> list[EventRow]:
        with self._pool.connection() as db:
            rows = db.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE id > %s ORDER BY id LIMIT %s",
                (after_id, limit),
            ).fetchall()
        return [EventRow(*r) for r in rows]

    def latest_event_id(self) -> int:
        with self._pool.connection() as db:
            return _scalar(db, "SELECT coalesce(max(id), 0) FROM events")

    def iter_all_events(self) -> Iterator[EventRow]:
        # A server-side cursor on a connection of its own, outside the pool: audits
        # may walk millions of rows and must not hold a pooled connection meanwhile.
        with self.connect() as db, db.transaction(), db.cursor(name="nexus_audit") as cursor:
            cursor.itersize = 2000
            cursor.execute(f"SELECT {_EVENT_COLS} FROM events ORDER BY session_id, seq, id")
            for r in cursor:
                yield EventRow(*r)

    def heads(self) -> list[Head]:
        # Driven by the events, not the index: a session whose index row was deleted
        # still has a head to checkpoint.
        with self._pool.connection() as db:
            rows = db.execute(
                "SELECT DISTINCT ON (session_id) session_id, seq, hash, key_id FROM events "
                "ORDER BY session_id, seq DESC"
            ).fetchall()
        return [Head(*r) for r in rows]

    # -- audit checkpoints ----------------------------------------------------------

    def add_checkpoint(self, ts: float, key_id: str, body: str, signature: str) -> int:
        with self._pool.connection() as db, db.transaction():
            checkpoint_id = _scalar(
                db,
                "INSERT INTO checkpoints (ts, key_id, body, signature) "
                "VALUES (%s, %s, %s, %s) RETURNING id",
                (ts, key_id, body, signature),
            )
            db.execute(
                "DELETE FROM checkpoints WHERE id <= %s", (checkpoint_id - KEEP_CHECKPOINTS,)
            )
        return checkpoint_id

    def checkpoint(self, checkpoint_id: int | None = None) -> CheckpointRow | None:
        sql = "SELECT id, ts, key_id, body, signature FROM checkpoints"
        with self._pool.connection() as db:
            if checkpoint_id is None:
                r = db.execute(sql + " ORDER BY id DESC LIMIT 1").fetchone()
            else:
                r = db.execute(sql + " WHERE id = %s", (checkpoint_id,)).fetchone()
        return None if r is None else CheckpointRow(*r)

    # -- session index --------------------------------------------------------------

    def session(self, session_id: str) -> SessionRow | None:
        if _has_nul(session_id):
            return None
        with self._pool.connection() as db:
            r = db.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE id = %s", (session_id,)
            ).fetchone()
        return None if r is None else SessionRow(*r)

    def sessions(self, query: SessionQuery) -> list[SessionRow]:
        if _has_nul(query.agent or "", query.q or "", *query.status, *(query.label or ())):
            return []  # PostgreSQL text holds no NUL: no session can match
        where, args = _where(query)
        sql = f"SELECT {_SESSION_COLS} FROM sessions{where} ORDER BY {SESSION_ORDER[query.sort]} "
        sql += "LIMIT %s OFFSET %s"
        with self._pool.connection() as db:
            rows = db.execute(sql, [*args, query.limit, query.offset]).fetchall()
        return [SessionRow(*r) for r in rows]

    def session_totals(self, query: SessionQuery) -> SessionTotals:
        if _has_nul(query.agent or "", query.q or "", *query.status, *(query.label or ())):
            return SessionTotals(0, 0, 0, 0, 0, 0.0)
        where, args = _where(query)
        sql = (
            "SELECT count(*), count(*) FILTER (WHERE status = ANY(%s)), "
            "count(*) FILTER (WHERE status = 'failed'), coalesce(sum(tokens_in), 0), "
            f"coalesce(sum(tokens_out), 0), coalesce(sum(cost_usd), 0.0) FROM sessions{where}"
        )
        with self._pool.connection() as db:
            r = db.execute(sql, [list(FINISHED_STATUSES), *args]).fetchone()
        assert r is not None
        return SessionTotals(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5]))

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        # A range on the primary key (ids are ASCII, "C" collation): no scan.
        with self._pool.connection() as db:
            rows = db.execute(
                "SELECT id FROM sessions WHERE id >= %s AND id < %s ORDER BY id LIMIT %s",
                (prefix, prefix + "\x7f", limit),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def session_ids(self, status: Sequence[str]) -> list[str]:
        with self._pool.connection() as db:
            rows = db.execute(
                "SELECT id FROM sessions WHERE status = ANY(%s) ORDER BY created_at, id",
                (list(status),),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def count_sessions(self, status: Sequence[str] = ()) -> int:
        """How many sessions (optionally with one of these statuses)."""
        with self._pool.connection() as db:
            if not status:
                return _scalar(db, "SELECT count(*) FROM sessions")
            return _scalar(
                db, "SELECT count(*) FROM sessions WHERE status = ANY(%s)", (list(status),)
            )

    # -- workers ----------------------------------------------------------------------

    def beat(self, worker_id: str, *, host: str, pid: int, role: str, starting: bool) -> str | None:
        q = _WORKERS
        with self._pool.connection() as db, db.transaction():
            found = db.execute(q.status + " FOR UPDATE", (worker_id,)).fetchone()
            if found is None:
                db.execute(q.insert + " ON CONFLICT (id) DO NOTHING", (worker_id, host, pid, role))
            else:
                db.execute(q.beat, (host, pid, role, starting, worker_id))
        return None if found is None else str(found[0])

    def leave(self, worker_id: str) -> None:
        with self._pool.connection() as db:
            db.execute(_WORKERS.leave, (worker_id,))

    def workers(self) -> list[WorkerRow]:
        with self._pool.connection() as db:
            rows = db.execute(_WORKERS.workers).fetchall()
        return [worker_row(r) for r in rows]

    def declare_gone(self, timeout_s: float) -> list[str]:
        with self._pool.connection() as db:
            rows = db.execute(_WORKERS.declare_gone, (timeout_s,)).fetchall()
        return sorted(str(r[0]) for r in rows)

    def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        with self._pool.connection() as db:
            found = db.execute(_WORKERS.hold_lease, (name, holder, ttl_s)).fetchone()
        return found is not None

    def claim_session(self, session_id: str, worker_id: str) -> int:
        with self._pool.connection() as db:
            found = None
            if not _has_nul(session_id):
                found = db.execute(_WORKERS.claim, (worker_id, session_id)).fetchone()
        if found is None:
            raise JournalError(f"cannot claim session {session_id}: no such session")
        return int(found[0])

    def session_owner(self, session_id: str) -> tuple[int, str | None]:
        if _has_nul(session_id):
            return (0, None)
        with self._pool.connection() as db:
            found = db.execute(_WORKERS.owner, (session_id,)).fetchone()
        return (0, None) if found is None else (int(found[0]), found[1])

    def running_by_worker(self) -> dict[str, list[str]]:
        with self._pool.connection() as db:
            rows = db.execute(_WORKERS.running).fetchall()
        return by_worker(rows)

    # -- control channel ------------------------------------------------------------

    def post_command(
        self, session_id: str, kind: str, by: str, reason: str, data: dict[str, Any]
    ) -> CommandRow:
        ts = time.time()
        with self._pool.connection() as db, db.transaction():
            # Ids in commit order, for `commands_after` (see the module docstring);
            # the notification goes out at commit.
            db.execute(
                "SELECT pg_advisory_xact_lock(%s), pg_notify(%s, '')",
                (COMMANDS_LOCK, NOTIFY_CHANNELS[COMMANDS]),
            )
            command_id = _scalar(
                db,
                "INSERT INTO commands (session_id, kind, by, reason, data, ts) "
                "VALUES (%s, %s, %s, %s, %s::jsonb, %s) RETURNING id",
                (session_id, kind, by, reason, json.dumps(data), ts),
            )
        return CommandRow(command_id, session_id, kind, by, reason, dict(data), ts)

    def commands(self, session_id: str, after_id: int = 0) -> list[CommandRow]:
        if _has_nul(session_id):
            return []
        with self._pool.connection() as db:
            rows = db.execute(
                f"SELECT {_COMMAND_COLS} FROM commands WHERE session_id = %s AND id > %s "
                "ORDER BY id",
                (session_id, after_id),
            ).fetchall()
        return [CommandRow(*r) for r in rows]

    def commands_after(self, after_id: int, limit: int = 1000) -> list[CommandRow]:
        with self._pool.connection() as db:
            rows = db.execute(
                f"SELECT {_COMMAND_COLS} FROM commands WHERE id > %s ORDER BY id LIMIT %s",
                (after_id, limit),
            ).fetchall()
        return [CommandRow(*r) for r in rows]

    def latest_command_id(self) -> int:
        with self._pool.connection() as db:
            return _scalar(db, "SELECT coalesce(max(id), 0) FROM commands")

    # -- health ---------------------------------------------------------------------

    def ping(self) -> None:
        """A trivial query: raises if the database is unusable."""
        with self._pool.connection() as db:
            db.execute("SELECT 1 FROM sessions LIMIT 1").fetchall()

    def check_integrity(self) -> str | None:
        """None when `SELECT 1` answers. PostgreSQL has no `quick_check`: it checks its
        own pages (checksums, WAL) and the server reports damage in its errors, so there
        is nothing more a client can scan here. An unreachable server raises; that is
        not damage."""
        with self._pool.connection() as db:
            db.execute("SELECT 1").fetchall()
        return None

    def close(self) -> None:
        self._wakeup.close()
        self._pool.close()


class Listener(Wakeup):
    """The `Wakeup` of a `PostgresStore`: one dedicated autocommit connection (one
    per store, so one per process, whatever the number of readers) `LISTEN`s on the
    store's channels in a daemon thread and rings this process's waiters at each
    notification. The thread starts when the first reader waits.

    If the connection drops (the server restarts, an operator terminates it, the
    network fails) `live` turns false, so readers poll at their own intervals, and
    the thread reconnects with backoff (`BACKOFF_S` doubling to `MAX_BACKOFF_S`).
    Once it listens again it rings every waiter: what committed in between notified
    nobody here. TCP keepalives bound how long a silently dead connection counts as
    live; readers' `safety_s` reads cover that time.
    """

    BACKOFF_S = 0.1
    MAX_BACKOFF_S = 5.0
    TICK_S = 0.5  # how often the thread looks whether the store was closed

    def __init__(self, url: str, path: str) -> None:
        super().__init__()
        self._conninfo = make_conninfo(url, application_name=LISTEN_APP, **_KEEPALIVES)
        self._path = path  # the URL with its password masked, for messages
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._live = False

    @property
    def live(self) -> bool:
        """Whether the listen connection is up."""
        return self._live

    def close(self) -> None:
        """Stop listening (the thread ends within `TICK_S`, closing its connection)."""
        self._closed.set()

    def _watched(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, name=LISTEN_APP, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        delay, failing = self.BACKOFF_S, False
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                ) as db:
                    for name in NOTIFY_CHANNELS.values():
                        db.execute(f"LISTEN {name}")
                    if failing:
                        log.info("listening to %s again", self._path)
                    delay, failing = self.BACKOFF_S, False
                    self._listen(db)
            except psycopg.Error as exc:
                if not failing and not self._closed.is_set():
                    log.warning(
                        "the listen connection to %s failed (%s): live readers poll until "
                        "it is back",
                        self._path,
                        _one_line(exc),
                    )
                failing = True
            self._live = False
            self.ring_all()  # the readers read now, then poll at their own pace
            self._closed.wait(delay)
            delay = min(delay * 2, self.MAX_BACKOFF_S)

    def _listen(self, db: psycopg.Connection[Any]) -> None:
        channel_of = {name: channel for channel, name in NOTIFY_CHANNELS.items()}
        self._live = True
        self.ring_all()  # whatever committed while nobody here listened
        while not self._closed.is_set():
            for note in db.notifies(timeout=self.TICK_S):
                self.ring(channel_of[note.channel])


def _transaction(
    db: psycopg.Connection[Any], items: Sequence[tuple[EventRow, SessionChange]]
) -> list[int | Exception]:
    """Insert `items` and apply their session changes in one transaction; a refused
    row rolls all of them back and raises `JournalError` naming it. A run's row whose
    epoch is no longer the session's is not written and comes back as `SessionFenced`
    (with every other row of its session: they carry the same epoch).

    One round trip: BEGIN, the statements and COMMIT go out in pipeline mode and
    are synced once. The transaction is explicit: the implicit one of a pipeline
    would commit what was sent before an error raised here (a value psycopg refuses
    to send, such as a NUL) at the sync that follows.

    After a refusal the connection is closed (the pool opens another): psycopg
    counts as prepared a statement whose pipeline an error aborted before the
    server prepared it ("prepared statement _pg3_2 does not exist" at its next
    use), and a new connection starts with nothing prepared. Refusals are rare (a
    race for one seq, a value PostgreSQL cannot store); prepared appends are every
    time (half the server's time per append)."""
    pending: list[psycopg.Cursor[Any]] = []
    refused: psycopg.Error | None = None
    try:
        with db.pipeline() as pipeline:
            # Refusals are caught inside: a pipeline left by an exception logs a
            # warning of its own.
            try:
                db.execute("BEGIN")
                # The lock before any row lock (no deadlock with another appender),
                # the notification in its statement (sent only if this commits).
                db.execute(
                    "SELECT pg_advisory_xact_lock(%s), pg_notify(%s, '')",
                    (EVENTS_LOCK, NOTIFY_CHANNELS[EVENTS]),
                )
                for row, change in items:
                    if change.create is not None:
                        args = session_values(row, change.create)
                        db.execute(_INSERT_SESSION, args)
                    pending.append(db.execute(*_append(row, change)))
                db.execute("COMMIT")
                pipeline.sync()
            except _REFUSED as exc:  # by the database, or a value psycopg won't send
                refused = exc
                # Drain the aborted pipeline (the error may surface at any execute,
                # as results arrive), so that it ends cleanly.
                with contextlib.suppress(psycopg.Error):
                    pipeline.sync()
    except _REFUSED as exc:  # at the pipeline's end (its last sync)
        refused = refused or exc
    except BaseException:
        _discard(db)
        raise
    if refused is not None:
        _discard(db)
        which = _refused(items, pending)
        raise JournalError(f"cannot append {which}: {_one_line(refused)}") from None
    ids: list[int | Exception] = []
    for (row, change), cursor in zip(items, pending, strict=True):
        found = cursor.fetchone()
        ids.append(int(found[0]) if found is not None else fenced(row, change.epoch or 0))
    return ids


def _discard(db: psycopg.Connection[Any]) -> None:
    """Close a connection whose transaction failed: the server rolls it back, and the
    pool replaces the connection."""
    with contextlib.suppress(Exception):
        db.close()


def _append(row: EventRow, change: SessionChange) -> tuple[str, tuple[object, ...]]:
    """One statement for an event and its session-index change: the UPDATE in a CTE,
    then the INSERT. A run's append (an epoch) inserts only if the UPDATE found the
    session at that epoch: none of a stale run's rows is written, and it can never
    collide with the new run's rows (same seq) first."""
    update, update_args = index_update(row, change, _UPDATE_COUNTERS, _UPDATE_STATUS, _IN_EPOCH)
    when = "" if change.epoch is None else " WHERE EXISTS (SELECT 1 FROM changed)"
    sql = f"WITH changed AS ({update} RETURNING 1) {_APPEND_EVENT}{when} RETURNING id"
    return sql, (*update_args, *row.values())


def _refused(
    items: Sequence[tuple[EventRow, SessionChange]],
    pending: Sequence[psycopg.Cursor[Any]],
) -> str:
    """`kind #seq to session id` of the row the database refused: the first whose
    statement has no result (the pipeline stops at the error)."""
    done = sum(
        1 for c in pending if c.pgresult is not None and c.pgresult.status == ExecStatus.TUPLES_OK
    )
    row = items[min(done, len(items) - 1)][0]
    return f"{row.kind} #{row.seq} to session {row.session_id}"


def _usable(conn: psycopg.Connection[Any]) -> None:
    """The pool's check of a connection it hands out, without a round trip for one
    that is fine. An idle connection has nothing to read: a readable socket means the
    server wrote to it while idle (its goodbye at a restart or a
    `pg_terminate_backend`, or a stray notice), and only then is the server asked; a
    dead connection raises and the pool replaces it. (`check_connection` on every
    hand-out cost a round trip per store call: 17 per agent run.)"""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)


def _scalar(db: psycopg.Connection[Any], sql: str, args: Sequence[object] = ()) -> int:
    """The integer in the first column of the first row of `sql`."""
    found = db.execute(sql, args).fetchone()
    if found is None:
        raise StorageError(f"no row from: {sql}")
    return int(found[0])


def _has_nul(*texts: str) -> bool:
    """Whether any text holds a NUL: PostgreSQL cannot store or compare one."""
    return any("\x00" in t for t in texts)


def _one_line(exc: BaseException) -> str:
    """A driver error as one line (libpq's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


_LIKE_SPECIAL = re.compile(r"[\\%_]")


def _where(query: SessionQuery) -> tuple[str, list[object]]:
    """The `WHERE` clause of a query's filters, as the SQLite store's: user text is
    only ever a bound value."""
    where: list[str] = []
    args: list[object] = []
    if query.status:
        where.append("status = ANY(%s)")
        args.append(list(query.status))
    if query.agent:
        where.append("agent = %s")
        args.append(query.agent)
    if query.label:
        # User text is only ever a bound value, never a JSON path.
        where.append("labels @> jsonb_build_object(%s::text, %s::text)")
        args.extend(query.label)
    if query.q:
        # SQLite's LIKE ignores the case of ASCII letters only; so does this.
        where.append('lower(goal COLLATE "C") LIKE lower(%s COLLATE "C") ESCAPE \'\\\'')
        args.append("%" + _LIKE_SPECIAL.sub(r"\\\g<0>", query.q) + "%")
    if query.created_after is not None:
        where.append("created_at >= %s")
        args.append(query.created_after)
    if query.created_before is not None:
        where.append("created_at < %s")
        args.append(query.created_before)
    return (" WHERE " + " AND ".join(where) if where else ""), args
