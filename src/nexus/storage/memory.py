"""The in-memory store: the `Store` contract without a database, for unit tests
of components above storage and as the reference the SQLite and PostgreSQL stores
are tested against (`tests/storage/test_store_contract.py`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from nexus.errors import JournalError, SchemaVersionError
from nexus.storage.base import (
    FINISHED_STATUSES,
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
from nexus.storage.wake import Wakeup
from nexus.storage.workers import ALIVE, DEAD, LEFT, STOPPED, by_worker, fenced

KEEP_CHECKPOINTS = 8  # as the SQLite store


class MemoryStore:
    """`Store` in process memory; thread-safe; gone when the process ends."""

    def __init__(self) -> None:
        self.path = ":memory:"
        self._wakeup = Wakeup()
        self._lock = threading.Lock()
        self._events: list[EventRow] = []
        self._by_session: dict[str, list[EventRow]] = {}
        self._sessions: dict[str, SessionRow] = {}
        self._schemas: dict[str, int] = {}
        self._commands: list[CommandRow] = []
        self._checkpoints: list[CheckpointRow] = []
        self._owners: dict[str, tuple[int, str | None]] = {}  # session: (epoch, worker)
        self._workers: dict[str, WorkerRow] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # name: (holder, expires at)

    # -- journal --------------------------------------------------------------------

    def append(self, row: EventRow, change: SessionChange) -> int:
        (result,) = self.append_many([(row, change)])
        if isinstance(result, Exception):
            raise result
        return result

    def append_many(self, items: Sequence[tuple[EventRow, SessionChange]]) -> list[int | Exception]:
        with self._lock:
            # All or nothing first, as one transaction would; then one by one.
            if self._acceptable(items):
                return [self._insert(row, change) for row, change in items]
            results: list[int | Exception] = [0] * len(items)
            groups: dict[str, list[int]] = {}
            for i, (row, _) in enumerate(items):
                groups.setdefault(row.session_id, []).append(i)
            for indexes in groups.values():  # each session's rows: all or nothing
                part = [items[i] for i in indexes]
                if self._acceptable(part):
                    ids: list[int | Exception] = [self._insert(r, c) for r, c in part]
                else:
                    first = next(p for r, c in part if (p := self._refusal(r, c)))
                    ids = [first] * len(part)
                for i, result in zip(indexes, ids, strict=True):
                    results[i] = result
            return results

    def _acceptable(self, items: Sequence[tuple[EventRow, SessionChange]]) -> bool:
        seen: set[tuple[str, int]] = set()
        created: set[str] = set()
        for row, change in items:
            key = (row.session_id, row.seq)
            if key in seen or self._refusal(row, change) is not None:
                return False
            if change.create is not None:
                if row.session_id in created:
                    return False
                created.add(row.session_id)
            seen.add(key)
        return True

    def _refusal(self, row: EventRow, change: SessionChange) -> JournalError | None:
        if change.epoch is not None and self._owners.get(row.session_id, (0,))[0] != change.epoch:
            return fenced(row, change.epoch)  # before a clash, as the SQL stores decide
        rows = self._by_session.get(row.session_id, ())
        clash = any(r.seq == row.seq for r in rows)
        if clash or (change.create is not None and row.session_id in self._sessions):
            return JournalError(
                f"cannot append {row.kind} #{row.seq} to session {row.session_id}: "
                "UNIQUE constraint failed"
            )
        return None

    def _insert(self, row: EventRow, change: SessionChange) -> int:
        stored = replace(row, id=len(self._events) + 1)
        self._events.append(stored)
        self._by_session.setdefault(row.session_id, []).append(stored)
        if change.create is not None:
            c = change.create
            self._sessions[row.session_id] = SessionRow(
                row.session_id, c["agent"], c["goal"], c["status"], c["priority"],
                dict(c["labels"]), row.ts, row.ts, None, 0, 0, 0, 0.0, 0,
            )  # fmt: skip
        s = self._sessions.get(row.session_id)
        if s is not None:
            self._sessions[row.session_id] = replace(
                s,
                updated_at=row.ts,
                last_seq=row.seq,
                steps=s.steps + change.steps,
                tokens_in=s.tokens_in + row.tokens_in,
                tokens_out=s.tokens_out + row.tokens_out,
                cost_usd=s.cost_usd + row.cost_usd,
                status=change.status or s.status,
                reason=s.reason if change.reason is None else change.reason,
            )
        return stored.id

    def head(self, session_id: str) -> tuple[int, str]:
        with self._lock:
            rows = self._by_session.get(session_id)
            if not rows:
                return (0, "")
            last = max(rows, key=lambda r: r.seq)
            return (last.seq, last.hash)

    def events(
        self, session_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[EventRow]:
        with self._lock:
            rows = sorted(
                (r for r in self._by_session.get(session_id, ()) if r.seq > after_seq),
                key=lambda r: r.seq,
            )
        return rows if limit is None else rows[:limit]

    def events_after(self, after_id: int, limit: int = 1000) -> list[EventRow]:
        with self._lock:
            return self._events[after_id : after_id + limit]

    def latest_event_id(self) -> int:
        with self._lock:
            return len(self._events)

    def iter_all_events(self) -> Iterator[EventRow]:
        with self._lock:
            rows = sorted(self._events, key=lambda r: (r.session_id, r.seq, r.id))
        yield from rows

    def heads(self) -> list[Head]:
        with self._lock:
            lasts = [max(rows, key=lambda r: r.seq) for rows in self._by_session.values()]
        return sorted(
            (Head(r.session_id, r.seq, r.hash, r.key_id) for r in lasts),
            key=lambda h: h.session_id,
        )

    def add_checkpoint(self, ts: float, key_id: str, body: str, signature: str) -> int:
        with self._lock:
            last = self._checkpoints[-1].id if self._checkpoints else 0
            self._checkpoints.append(CheckpointRow(last + 1, ts, key_id, body, signature))
            del self._checkpoints[:-KEEP_CHECKPOINTS]
            return last + 1

    def checkpoint(self, checkpoint_id: int | None = None) -> CheckpointRow | None:
        with self._lock:
            if checkpoint_id is None:
                return self._checkpoints[-1] if self._checkpoints else None
            return next((c for c in self._checkpoints if c.id == checkpoint_id), None)

    # -- session index --------------------------------------------------------------

    def session(self, session_id: str) -> SessionRow | None:
        with self._lock:
            return self._sessions.get(session_id)

    def sessions(self, query: SessionQuery) -> list[SessionRow]:
        rows = self._selected(query)
        key, descending = _ORDER[query.sort.lstrip("-")], query.sort.startswith("-")
        # Two stable sorts: by id the other way, then by key (the SQL orders' ties).
        rows.sort(key=lambda r: r.id, reverse=not descending)
        rows.sort(key=key, reverse=descending)
        return rows[query.offset : query.offset + query.limit]

    def session_totals(self, query: SessionQuery) -> SessionTotals:
        rows = self._selected(query)
        return SessionTotals(
            count=len(rows),
            finished=sum(1 for r in rows if r.status in FINISHED_STATUSES),
            failed=sum(1 for r in rows if r.status == "failed"),
            tokens_in=sum(r.tokens_in for r in rows),
            tokens_out=sum(r.tokens_out for r in rows),
            cost_usd=sum(r.cost_usd for r in rows),
        )

    def _selected(self, query: SessionQuery) -> list[SessionRow]:
        """The sessions a query's filters select, in no order."""
        with self._lock:
            rows = list(self._sessions.values())
        return [r for r in rows if _matches(r, query)]

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        with self._lock:
            return sorted(i for i in self._sessions if i.startswith(prefix))[:limit]

    def session_ids(self, status: Sequence[str]) -> list[str]:
        with self._lock:
            rows = [r for r in self._sessions.values() if r.status in status]
        return [r.id for r in sorted(rows, key=lambda r: r.created_at)]

    def count_sessions(self, status: Sequence[str] = ()) -> int:
        with self._lock:
            return sum(1 for r in self._sessions.values() if not status or r.status in status)

    # -- schema and life ------------------------------------------------------------

    def migrate(self, schema: Schema) -> int:
        known = max((v for v, _ in schema.migrations), default=0)
        with self._lock:
            current = self._schemas.get(schema.subsystem, 0)
            if current > known:
                raise SchemaVersionError(
                    f"the {schema.subsystem} tables have schema version {current}, but this "
                    f"NEXUS knows versions up to {known}: upgrade NEXUS"
                )
            self._schemas[schema.subsystem] = max(current, known)
            return self._schemas[schema.subsystem]

    def ping(self) -> None:
        """Always answers: memory does not go away."""

    # -- control channel ------------------------------------------------------------

    def post_command(
        self, session_id: str, kind: str, by: str, reason: str, data: dict[str, object]
    ) -> CommandRow:
        with self._lock:
            row = CommandRow(
                len(self._commands) + 1, session_id, kind, by, reason, dict(data), time.time()
            )
            self._commands.append(row)
        return row

    def commands(self, session_id: str, after_id: int = 0) -> list[CommandRow]:
        with self._lock:
            return [c for c in self._commands[after_id:] if c.session_id == session_id]

    def commands_after(self, after_id: int, limit: int = 1000) -> list[CommandRow]:
        with self._lock:
            return self._commands[after_id : after_id + limit]

    def latest_command_id(self) -> int:
        with self._lock:
            return len(self._commands)

    # -- workers --------------------------------------------------------------------

    def beat(self, worker_id: str, *, host: str, pid: int, role: str, starting: bool) -> str | None:
        now = time.time()
        with self._lock:
            old = self._workers.get(worker_id)
            started = now if old is None or starting else old.started_at
            self._workers[worker_id] = WorkerRow(worker_id, host, pid, role, started, now, ALIVE, 0)
        return None if old is None else old.status

    def leave(self, worker_id: str) -> None:
        with self._lock:
            old = self._workers.get(worker_id)
            if old is not None and old.status == ALIVE:
                self._workers[worker_id] = replace(old, status=STOPPED)

    def workers(self) -> list[WorkerRow]:
        now = time.time()
        with self._lock:
            rows = sorted(self._workers.values(), key=lambda w: w.id)
        return [replace(w, age_s=max(0.0, now - w.heartbeat_at)) for w in rows]

    def declare_gone(self, timeout_s: float) -> list[str]:
        now = time.time()
        gone = []
        with self._lock:
            for w in self._workers.values():
                if w.status == STOPPED or (w.status == ALIVE and w.heartbeat_at < now - timeout_s):
                    self._workers[w.id] = replace(w, status=LEFT if w.status == STOPPED else DEAD)
                    gone.append(w.id)
        return sorted(gone)

    def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        now = time.time()
        with self._lock:
            current = self._leases.get(name)
            if current is not None and current[0] != holder and current[1] >= now:
                return False
            self._leases[name] = (holder, now + ttl_s)
            return True

    def claim_session(self, session_id: str, worker_id: str) -> int:
        with self._lock:
            if session_id not in self._sessions:
                raise JournalError(f"cannot claim session {session_id}: no such session")
            epoch = self._owners.get(session_id, (0, None))[0] + 1
            self._owners[session_id] = (epoch, worker_id)
            return epoch

    def session_owner(self, session_id: str) -> tuple[int, str | None]:
        with self._lock:
            return self._owners.get(session_id, (0, None))

    def running_by_worker(self) -> dict[str, list[str]]:
        with self._lock:
            rows = [
                (worker, sid)
                for sid, (_, worker) in sorted(self._owners.items(), key=lambda o: (o[1][1], o[0]))
                if worker is not None and self._sessions[sid].status == "running"
            ]
        return by_worker(rows)

    def check_integrity(self) -> str | None:
        """Memory is never damaged."""
        return None

    def wakeup(self) -> Wakeup:
        """Rung by this process's journal (no other process sees this store)."""
        return self._wakeup

    def close(self) -> None:
        """Nothing to release."""


_ORDER: dict[str, Callable[[SessionRow], float]] = {
    "created": lambda r: r.created_at,
    "cost": lambda r: r.cost_usd,
    "steps": lambda r: r.steps,
    "tokens": lambda r: r.tokens_in + r.tokens_out,
    "duration": lambda r: r.updated_at - r.created_at,
}


def _matches(row: SessionRow, query: SessionQuery) -> bool:
    """Whether a session passes a query's filters, as the SQL stores decide it."""
    if query.status and row.status not in query.status:
        return False
    if query.agent and row.agent != query.agent:
        return False
    if query.label and row.labels.get(query.label[0]) != query.label[1]:
        return False
    # SQL `LIKE` folds the case of ASCII letters only.
    if query.q and _ascii_lower(query.q) not in _ascii_lower(row.goal):
        return False
    if query.created_after is not None and row.created_at < query.created_after:
        return False
    return query.created_before is None or row.created_at < query.created_before


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)
