"""The storage interface the runtime speaks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from nexus.storage.migrations import Sql
from nexus.storage.wake import Wakeup


@dataclass(frozen=True, slots=True)
class EventRow:
    """A journal row exactly as stored (payload as its canonical JSON text).

    `key_id` names the audit key whose HMAC is `hash`; `""` marks a row written
    before the chain was keyed (plain SHA-256, `nexus.runtime.audit`).
    """

    id: int
    session_id: str
    seq: int
    ts: float
    kind: str
    payload: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: float
    prev_hash: str
    hash: str
    key_id: str = ""

    def values(self) -> tuple[object, ...]:
        """Every column but `id` (the database assigns it), in the order of the
        stores' INSERT."""
        return (
            self.session_id,
            self.seq,
            self.ts,
            self.kind,
            self.payload,
            self.tokens_in,
            self.tokens_out,
            self.cost_usd,
            self.latency_ms,
            self.prev_hash,
            self.hash,
            self.key_id,
        )


@dataclass(frozen=True, slots=True)
class Head:
    """The newest event of one session's chain."""

    session_id: str
    seq: int
    hash: str
    key_id: str


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A signed audit checkpoint as stored: `body` is its canonical JSON text and
    `signature` the HMAC of `body` under the key `key_id` (`nexus.runtime.audit`)."""

    id: int
    ts: float
    key_id: str
    body: str
    signature: str


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A session as the index keeps it: a projection of its journal."""

    id: str
    agent: str
    goal: str
    status: str
    priority: int
    labels: dict[str, str]
    created_at: float
    updated_at: float
    reason: str | None
    steps: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    last_seq: int

    def to_dict(self) -> dict[str, Any]:
        """The session as plain data."""
        return {f: getattr(self, f) for f in self.__slots__}


SessionSort = Literal[
    "-created", "created", "-cost", "cost", "-steps", "steps",
    "-tokens", "tokens", "-duration", "duration",
]  # fmt: skip
"""How a session list is ordered: a key, descending with a leading `-`. `tokens` is
`tokens_in + tokens_out`; `duration` is `updated_at - created_at` (to the last change).
Ties go by id, ascending under a descending key and descending under an ascending
one, so each order is the exact reverse of the other."""


@dataclass(frozen=True, slots=True)
class SessionQuery:
    """Filters, order and paging for listing sessions (newest first by default).

    `q` matches goals containing it, ASCII letters in any case (SQL `LIKE`);
    `created_after` and `created_before` bound `created_at` to `[after, before)`.
    """

    status: Sequence[str] = ()
    agent: str | None = None
    label: tuple[str, str] | None = None
    q: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    sort: SessionSort = "-created"
    limit: int = 50
    offset: int = 0


def _orders() -> dict[str, str]:
    keys = {
        "created": "created_at",
        "cost": "cost_usd",
        "steps": "steps",
        "tokens": "(tokens_in + tokens_out)",
        "duration": "(updated_at - created_at)",
    }
    orders = {f"-{key}": f"{expr} DESC, id" for key, expr in keys.items()}
    orders.update({key: f"{expr}, id DESC" for key, expr in keys.items()})
    return orders


SESSION_ORDER: dict[str, str] = _orders()
"""The SQL `ORDER BY` of each `SessionQuery.sort`, the same on every SQL store: each
off an index (migration 5), ties by id, each order the exact reverse of the other."""


FINISHED_STATUSES = ("completed", "failed", "killed")


@dataclass(frozen=True, slots=True)
class SessionTotals:
    """Sums over the sessions a query's filters select (its order and paging aside)."""

    count: int
    finished: int  # completed, failed or killed
    failed: int
    tokens_in: int
    tokens_out: int
    cost_usd: float

    def to_dict(self) -> dict[str, Any]:
        """The totals as plain data."""
        return {f: getattr(self, f) for f in self.__slots__}


@dataclass(frozen=True, slots=True)
class SessionChange:
    """How one journal event changes its session's index row."""

    create: dict[str, Any] | None = None
    status: str | None = None
    reason: str | None = None
    steps: int = 0
    # The run's epoch (`WorkerStore.claim_session`): the append commits only while the
    # session's epoch is still this one, else `SessionFenced`. None: not a run's append.
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class CommandRow:
    """A command posted for a session on the control channel."""

    id: int
    session_id: str
    kind: str
    by: str
    reason: str
    data: dict[str, Any]
    ts: float

    def to_dict(self) -> dict[str, Any]:
        """The command as plain data."""
        return {f: getattr(self, f) for f in self.__slots__}


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A worker process as the registry has it. `age_s` is the time since its last
    heartbeat by the database's clock (the same clock for every machine).

    `status`: `alive` (beating), `stopped` (left cleanly; its unfinished sessions
    not handed over yet), `dead` (declared dead: its heartbeat stopped), `left`
    (stopped, and its sessions handed over)."""

    id: str
    host: str
    pid: int
    role: str  # "worker" (serves the queue) or "run" (`nexus run`: one session)
    started_at: float
    heartbeat_at: float
    status: str
    age_s: float

    def to_dict(self) -> dict[str, Any]:
        """The worker as plain data."""
        return {f: getattr(self, f) for f in self.__slots__}


@dataclass(frozen=True, slots=True)
class Schema:
    """A subsystem's own tables: versioned migrations applied in order, tracked
    apart from the kernel's (`subsystem_schema`), so a feature (memory, vault,
    plugins, breakers) adds its tables without editing `storage/`.

    Attributes:
        subsystem: its name, e.g. `"breakers"`.
        migrations: `(version, sql)` pairs, versions from 1, never edited once released;
            `sql` may hold several statements separated by `;`. It is one text when the
            SQL is portable, else a mapping `{"sqlite": ..., "postgresql": ...}`.
    """

    subsystem: str
    migrations: tuple[tuple[int, Sql], ...]


class EventStore(Protocol):
    """The journal's events: append-only rows, chained per session."""

    def append(self, row: EventRow, change: SessionChange) -> int:
        """Insert one event and apply its session change in one transaction.

        Returns the row id. Raises `JournalError` if `(session_id, seq)` exists.
        """
        ...

    def append_many(self, items: Sequence[tuple[EventRow, SessionChange]]) -> list[int | Exception]:
        """Commit several events in one transaction (group commit). If one is
        refused, each is retried alone, so only the bad one fails: the result
        holds a row id or the `JournalError` per item, in order."""
        ...

    def head(self, session_id: str) -> tuple[int, str]:
        """The last `(seq, hash)` of a session, `(0, "")` if it has none."""
        ...

    def events(
        self, session_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[EventRow]:
        """A session's events with `seq > after_seq`, in order."""
        ...

    def events_after(self, after_id: int, limit: int = 1000) -> list[EventRow]:
        """Events of all sessions with row id > `after_id`, in commit order."""
        ...

    def latest_event_id(self) -> int:
        """The row id of the newest event (0 when empty)."""
        ...

    def iter_all_events(self) -> Iterator[EventRow]:
        """Every event, ordered by session then seq (for audits)."""
        ...

    def heads(self) -> list[Head]:
        """The newest event of every session that has events, by session id."""
        ...


class SessionIndex(Protocol):
    """The session index: one row per session, a projection of its journal kept
    in the same transactions as the events (`SessionChange`)."""

    def session(self, session_id: str) -> SessionRow | None:
        """One session, or None."""
        ...

    def sessions(self, query: SessionQuery) -> list[SessionRow]:
        """Sessions matching `query`, newest first."""
        ...

    def session_ids(self, status: Sequence[str]) -> list[str]:
        """Ids of sessions with one of these statuses, oldest first."""
        ...

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Session ids starting with `prefix`, in order (at most `limit`)."""
        ...

    def count_sessions(self, status: Sequence[str] = ()) -> int:
        """How many sessions (optionally with one of these statuses)."""
        ...

    def session_totals(self, query: SessionQuery) -> SessionTotals:
        """Count, statuses, tokens and cost of the sessions `query` selects."""
        ...


class CommandStore(Protocol):
    """The control channel's inbox: commands any process posts for a session,
    applied (and journaled) by the session's runner. Rows are never changed: what
    a runner applied is in its journal."""

    def post_command(
        self, session_id: str, kind: str, by: str, reason: str, data: dict[str, Any]
    ) -> CommandRow:
        """Store a command durably; returns it with its id (increasing)."""
        ...

    def commands(self, session_id: str, after_id: int = 0) -> list[CommandRow]:
        """A session's commands with id > `after_id`, oldest first."""
        ...

    def commands_after(self, after_id: int, limit: int = 1000) -> list[CommandRow]:
        """Commands of all sessions with id > `after_id`, oldest first."""
        ...

    def latest_command_id(self) -> int:
        """The id of the newest command (0 when none)."""
        ...


class WorkerStore(Protocol):
    """The worker registry and session ownership: heartbeats, the supervisor's
    lease, and each session's run epoch (the fencing token every append of a run
    is checked against). Times are the database's clock, so machines whose clocks
    differ still agree on who is late."""

    def beat(self, worker_id: str, *, host: str, pid: int, role: str, starting: bool) -> str | None:
        """Record a heartbeat (and, when `starting`, a fresh start); returns the
        worker's status before it (None for a new worker; `dead` when it had been
        declared dead: its sessions moved on)."""
        ...

    def leave(self, worker_id: str) -> None:
        """Mark a worker `stopped` (a clean stop): its unfinished sessions are
        handed over at the supervisor's next round."""
        ...

    def workers(self) -> list[WorkerRow]:
        """Every worker known, by id."""
        ...

    def declare_gone(self, timeout_s: float) -> list[str]:
        """Mark `dead` every `alive` worker whose heartbeat is older than `timeout_s`,
        and `left` every `stopped` one, in one statement; returns their ids (whose
        unfinished sessions the caller hands over). Two callers never get one id."""
        ...

    def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease `name` for `ttl_s` seconds; False while another
        holder's lease has not expired."""
        ...

    def claim_session(self, session_id: str, worker_id: str) -> int:
        """Start a run of a session on `worker_id`: its epoch goes up by one and is
        returned. Appends made with an older epoch are refused from now on."""
        ...

    def session_owner(self, session_id: str) -> tuple[int, str | None]:
        """The session's current `(epoch, worker id)` (`(0, None)` if never run)."""
        ...

    def running_by_worker(self) -> dict[str, list[str]]:
        """Ids of the `running` sessions, by the worker whose run owns them."""
        ...


class Store(EventStore, SessionIndex, CommandStore, WorkerStore, Protocol):
    """Durable storage: the journal's events and the session index (written
    together: an event and its index change commit in one transaction), the
    control channel's commands, the worker registry, plus the schemas of
    subsystems. Implemented by SQLite, PostgreSQL and in memory."""

    path: str

    def migrate(self, schema: Schema) -> int:
        """Apply a subsystem's pending migrations; returns its version. A database
        holding a newer version than `schema` knows is refused (`SchemaVersionError`)."""
        ...

    def ping(self) -> None:
        """A trivial query: raises if the database is unusable."""
        ...

    def check_integrity(self) -> str | None:
        """A full check of the database file: what is damaged, or None when sound."""
        ...

    def add_checkpoint(self, ts: float, key_id: str, body: str, signature: str) -> int:
        """Store a signed audit checkpoint, dropping all but the newest few; returns its id."""
        ...

    def checkpoint(self, checkpoint_id: int | None = None) -> CheckpointRow | None:
        """One checkpoint by id, or the newest (None when there is none)."""
        ...

    def wakeup(self) -> Wakeup:
        """This process's doorbells for live readers (`nexus.storage.wake`): readers
        wait on them between reads, with a timeout. Rung by this process's journal
        after each commit; on PostgreSQL also by every process's commits (NOTIFY), so
        readers there poll only at a slow safety interval."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


Durability = Literal["normal", "full"]


def open_store(path: Path, durability: Durability = "normal", *, url: str | None = None) -> Store:
    """Open (creating and migrating if needed) the store at `path`; `":memory:"`
    gives the in-memory store.

    `url` is `settings.database_url`: a `postgresql://` URL selects the PostgreSQL
    store (and `path` is not used); a database that cannot be reached fails with one
    `StorageError` line naming NEXUS_DATABASE_URL.
    """
    if url is not None:
        from nexus.errors import SchemaVersionError, StorageError
        from nexus.storage.postgres import PostgresStore

        try:
            return PostgresStore(url)
        except SchemaVersionError:
            raise
        except StorageError as exc:
            raise StorageError(f"NEXUS_DATABASE_URL: {exc}") from None
    if str(path) == ":memory:":
        from nexus.storage.memory import MemoryStore

        return MemoryStore()
    from nexus.storage.sqlite import SQLiteStore

    return SQLiteStore(path, durability=durability)
