"""The worker registry's SQL, one text for both SQL stores (`WorkerStore`).

Each statement is written once with `?` placeholders and `{now}` for the database's
clock; `queries(dialect)` gives the dialect's text (PostgreSQL's `%s`). Every
statement is a single one with `RETURNING` where the caller needs to know what it
changed, so two processes racing for a lease or a dead worker never both win.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from nexus.errors import JournalError, SessionFenced
from nexus.storage.base import EventRow, SessionChange, WorkerRow
from nexus.storage.migrations import NOW, Dialect

ALIVE, STOPPED, DEAD, LEFT = "alive", "stopped", "dead", "left"


@dataclass(frozen=True, slots=True)
class WorkerQueries:
    """The statements of `WorkerStore`, in one dialect."""

    status: str
    insert: str
    beat: str
    leave: str
    workers: str
    declare_gone: str
    hold_lease: str
    claim: str
    owner: str
    running: str


_TEXT = WorkerQueries(
    status="SELECT status FROM workers WHERE id = ?",
    insert=(
        "INSERT INTO workers (id, host, pid, role, started_at, heartbeat_at, status) "
        "VALUES (?, ?, ?, ?, {now}, {now}, 'alive')"
    ),
    beat=(
        "UPDATE workers SET host = ?, pid = ?, role = ?, heartbeat_at = {now}, "
        "status = 'alive', started_at = CASE WHEN ? THEN {now} ELSE started_at END "
        "WHERE id = ?"
    ),
    leave="UPDATE workers SET status = 'stopped' WHERE id = ? AND status = 'alive'",
    workers=(
        "SELECT id, host, pid, role, started_at, heartbeat_at, status, "
        "{now} - heartbeat_at FROM workers ORDER BY id"
    ),
    declare_gone=(
        "UPDATE workers SET status = CASE WHEN status = 'alive' THEN 'dead' "
        "ELSE 'left' END WHERE (status = 'alive' AND heartbeat_at < {now} - ?) "
        "OR status = 'stopped' RETURNING id"
    ),
    hold_lease=(
        "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, {now} + ?) "
        "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
        "expires_at = excluded.expires_at "
        "WHERE leases.holder = excluded.holder OR leases.expires_at < {now} "
        "RETURNING holder"
    ),
    claim="UPDATE sessions SET epoch = epoch + 1, worker = ? WHERE id = ? RETURNING epoch",
    owner="SELECT epoch, worker FROM sessions WHERE id = ?",
    running=(
        "SELECT worker, id FROM sessions WHERE status = 'running' AND worker IS NOT NULL "
        "ORDER BY worker, id"
    ),
)


def queries(dialect: Dialect) -> WorkerQueries:
    """The registry's statements in `dialect`'s SQL."""
    texts = {}
    for f in fields(WorkerQueries):
        text = getattr(_TEXT, f.name).replace("{now}", NOW[dialect])
        texts[f.name] = text.replace("?", "%s") if dialect == "postgresql" else text
    return WorkerQueries(**texts)


def worker_row(found: Sequence[Any]) -> WorkerRow:
    """A `workers` row (with its age) as a `WorkerRow`."""
    id_, host, pid, role, started, beat, status, age = found
    return WorkerRow(
        str(id_), str(host), int(pid), str(role), float(started), float(beat), str(status),
        max(0.0, float(age)),
    )  # fmt: skip


def by_worker(rows: Sequence[Sequence[Any]]) -> dict[str, list[str]]:
    """`(worker, session id)` rows grouped by worker."""
    grouped: dict[str, list[str]] = {}
    for worker, session_id in rows:
        grouped.setdefault(str(worker), []).append(str(session_id))
    return grouped


def fenced(row: EventRow, epoch: int) -> SessionFenced:
    """The refusal of a stale run's append."""
    return SessionFenced(
        f"session {row.session_id}: this run (epoch {epoch}) was taken over by another "
        f"worker; {row.kind} #{row.seq} refused"
    )


def index_update(
    row: EventRow, change: SessionChange, counters: str, status: str, in_epoch: str
) -> tuple[str, tuple[object, ...]]:
    """The session-index UPDATE of one append, in a store's own statements: the
    counters alone for most events, with the status for those that change it, and
    fenced by the run's epoch when the append is a run's (a row count of 0 then
    means `fenced`)."""
    common = (row.ts, row.seq, change.steps, row.tokens_in, row.tokens_out, row.cost_usd)
    if change.status is None and change.reason is None:
        # Most events: leave status alone so its index entry is not rewritten.
        sql = counters
        args: tuple[object, ...] = (*common, row.session_id)
    else:
        sql = status
        args = (*common, change.status, change.status, change.reason, row.session_id)
    if change.epoch is not None:
        return sql + in_epoch, (*args, change.epoch)
    return sql, args


def session_values(row: EventRow, create: dict[str, Any]) -> tuple[object, ...]:
    """The new index row of a `session.created` append (`SessionChange.create`): id,
    agent, goal, status, priority, labels (JSON), created and updated at the event's
    time; the stores' INSERT gives the rest their zeros."""
    c = create
    labels = json.dumps(c["labels"])
    return (
        row.session_id,
        c["agent"],
        c["goal"],
        c["status"],
        c["priority"],
        labels,
        row.ts,
        row.ts,
    )


Appends = Sequence[tuple[EventRow, SessionChange]]


def commit_isolated(
    items: Appends, transaction: Callable[[Appends], list[int | Exception]]
) -> list[int | Exception]:
    """A group commit in a store's `transaction`: all of `items` at once; when that
    refuses a row (`JournalError`), each session's rows again on their own, so the
    other sessions' still commit. A session's rows stay all or nothing: a step's
    deferred outcome and the next step's intent chain onto each other."""
    try:
        return transaction(items)
    except JournalError as exc:
        if len(items) == 1:
            return [exc]
    groups: dict[str, list[int]] = {}
    for i, (row, _) in enumerate(items):
        groups.setdefault(row.session_id, []).append(i)
    results: list[int | Exception] = [0] * len(items)
    for indexes in groups.values():
        try:
            ids = transaction([items[i] for i in indexes])
        except JournalError as exc:
            ids = [exc] * len(indexes)
        for i, result in zip(indexes, ids, strict=True):
            results[i] = result
    return results
