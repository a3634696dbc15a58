"""The journal: one append-only, hash-chained log of everything a session does.

Each session's events form a keyed chain (HMAC-SHA256 under the home's audit key):
an event's hash covers its own fields (payload as canonical JSON) and the previous
event's hash, so editing, dropping or reordering a row is detected by
`Journal.verify`, which also holds the chains against the session index and the
signed checkpoints (`nexus.runtime.audit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from nexus.events import STATUS_BY_KIND, STEP_OUTCOME_KINDS
from nexus.runtime import audit
from nexus.runtime.audit import AuditKeys, AuditReport, Tamper, chain_hash, event_hash
from nexus.runtime.redact import Redactor
from nexus.storage.base import EventRow, SessionChange, Store
from nexus.storage.wake import EVENTS
from nexus.types import JSON, Event, SessionStatus

# One encoder, built once: json.dumps would rebuild it on every call (hot path).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(data: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 kept as is."""
    return _CANONICAL.encode(data)


@dataclass(eq=False, slots=True)
class _Entry:
    """An event on its way into the store."""

    row: EventRow
    change: SessionChange
    clean: JSON
    error: Exception | None = None
    committed: bool = False
    waiter: asyncio.Future[None] | None = None  # set for writers that did not lead
    carried: list[_Entry] = field(default_factory=list)  # deferred events it commits


__all__ = ["STATUS_BY_KIND", "AuditReport", "Journal", "Tamper", "canonical", "chain_hash"]


class Journal:
    """Append and read journal events; redacts before writing, signs with the audit key.

    Args:
        store: where events go.
        redactor: masks secrets before anything is written.
        keys: the audit keys (default: `audit.key` beside the store's database).
    """

    def __init__(
        self, store: Store, redactor: Redactor | None = None, *, keys: AuditKeys | None = None
    ) -> None:
        self.store = store
        self.redactor = redactor or Redactor()
        self.keys = keys or AuditKeys.beside(store)
        self._wakeup = store.wakeup()
        self._signer: tuple[str, bytes] | None = None
        # Chain heads of sessions this process writes; a session is written by one
        # worker at a time, and a miss falls back to the database.
        self._heads: dict[str, tuple[int, str]] = {}
        self._listeners: list[Callable[[Event], None]] = []
        self._pending: list[_Entry] = []
        self._flushing = False
        # Events appended with `defer=True`, by session: committed with that
        # session's next append, in the same transaction.
        self._deferred: dict[str, list[_Entry]] = {}
        # The epoch of each session this process runs (`Store.claim_session`): its
        # appends commit only while the session's epoch is still that one.
        self._epochs: dict[str, int] = {}

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call `listener(event)` after each append made through this journal (this
        process); returns a function that unsubscribes. Listeners must be cheap and
        must not raise: they run on the appending task."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def append(
        self,
        session_id: str,
        kind: str,
        payload: JSON,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost_usd: float = 0.0,
        latency_ms: float = 0.0,
        reason: str | None = None,
    ) -> Event:
        """Redact, hash and commit one event now (with any the session deferred);
        returns it as stored.

        The event is durable when this returns (subject to the durability setting).
        """
        entry = self._prepare(
            session_id, kind, payload, tokens_in, tokens_out, cost_usd, latency_ms, reason
        )
        entry.carried = self._deferred.pop(session_id, [])
        self._commit([*entry.carried, entry])
        return self._finish(entry)

    async def append_async(
        self,
        session_id: str,
        kind: str,
        payload: JSON,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost_usd: float = 0.0,
        latency_ms: float = 0.0,
        reason: str | None = None,
        defer: bool = False,
    ) -> Event:
        """Like `append`, with group commit: appends made by concurrent sessions in
        the same turn of the event loop share one transaction. Each caller still
        resumes only after its own event is committed.

        `defer=True` returns at once with the event as it will be stored and commits
        it with the session's next append, in that append's transaction: a step's
        outcome rides with the next step's intent, which is committed before the
        next step starts, so "a result is durable before anything else happens" still
        holds at one transaction per step instead of two. The caller appends again
        (the agent loop always does: the next intent, or the session's end), or
        `discard`s them if it stops first.
        """
        entry = self._prepare(
            session_id, kind, payload, tokens_in, tokens_out, cost_usd, latency_ms, reason
        )
        if defer:
            self._deferred.setdefault(session_id, []).append(entry)
            return _event(entry.row, entry.clean)
        carried = self._deferred.pop(session_id, None)
        if carried:
            entry.carried = carried
            self._pending.extend(carried)
        self._pending.append(entry)
        if not self._flushing:
            # This caller leads: let the other ready tasks queue their events, then
            # commit everything queued. The commit runs even if the leader is
            # cancelled, so followers are never left waiting.
            self._flushing = True
            try:
                await asyncio.sleep(0)
            finally:
                try:
                    while self._pending:
                        batch, self._pending = self._pending, []
                        self._commit(batch)
                finally:
                    self._flushing = False
        if not entry.committed:
            entry.waiter = asyncio.get_running_loop().create_future()
            await entry.waiter
        return self._finish(entry)

    def fence(self, session_id: str, epoch: int | None) -> None:
        """Make this process's appends to a session conditional on its run epoch
        (`SessionFenced` once another worker's claim has moved it on); None lifts it."""
        if epoch is None:
            self._epochs.pop(session_id, None)
        else:
            self._epochs[session_id] = epoch

    def epoch(self, session_id: str) -> int | None:
        """The run epoch this process's appends to the session carry, if any."""
        return self._epochs.get(session_id)

    def discard(self, session_id: str) -> None:
        """Drop a session's deferred events (never committed) and its cached head:
        its runner stopped before appending again."""
        if self._deferred.pop(session_id, None):
            self._heads.pop(session_id, None)

    def _prepare(
        self,
        session_id: str,
        kind: str,
        payload: JSON,
        tokens_in: int,
        tokens_out: int,
        cost_usd: float,
        latency_ms: float,
        reason: str | None,
    ) -> _Entry:
        head = self._heads.get(session_id)
        if head is None:
            head = self.store.head(session_id)
        key_id, key = self._signer or self._first_signer()
        text = canonical(payload)
        clean = payload
        if self.redactor.needed(text):
            clean = self.redactor.data(payload)
            text = canonical(clean)
        seq, prev, ts, latency = head[0] + 1, head[1], time.time(), round(latency_ms, 3)
        digest = event_hash(
            key, key_id, session_id, seq, ts, kind, tokens_in, tokens_out, cost_usd, latency,
            prev, text,
        )  # fmt: skip
        row = EventRow(
            0,
            session_id,
            seq,
            ts,
            kind,
            text,
            tokens_in,
            tokens_out,
            cost_usd,
            latency,
            prev,
            digest,
            key_id,
        )
        status = STATUS_BY_KIND.get(kind)
        change = SessionChange(
            create=_creation(clean) if kind == "session.created" else None,
            status=None if status is None else status.value,
            reason=None if reason is None else self.redactor.text(reason),
            steps=1 if kind in STEP_OUTCOME_KINDS else 0,
            epoch=self._epochs.get(session_id),
        )
        # Chain the next event of this session onto this one before it commits
        # (group commit); a failed commit drops the cached head.
        self._heads[session_id] = (row.seq, row.hash)
        return _Entry(row, change, clean)

    def _first_signer(self) -> tuple[str, bytes]:
        """Resolve the signing key once per journal (creating it on first use), after
        making sure a checkpoint vouches for the rows written before keys."""
        signer = self.keys.current()
        audit.ensure_checkpoint(self.store, self.keys)
        self._signer = signer
        return signer

    def _commit(self, batch: list[_Entry]) -> None:
        try:
            results = self.store.append_many([(e.row, e.change) for e in batch])
        except Exception as exc:  # the store failed as a whole: every writer hears it
            results = [exc] * len(batch)
        # This process's live readers read now (other processes' hear the store's
        # NOTIFY on PostgreSQL, or poll).
        self._wakeup.ring(EVENTS)
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                entry.error = result
                self._heads.pop(entry.row.session_id, None)
            entry.committed = True
            if entry.waiter is not None and not entry.waiter.done():
                entry.waiter.set_result(None)

    def _finish(self, entry: _Entry) -> Event:
        for done in (*entry.carried, entry):
            if done.error is not None:
                raise done.error
        for carried in entry.carried:
            for listener in self._listeners:
                listener(_event(carried.row, carried.clean))
        event = _event(entry.row, entry.clean)
        for listener in self._listeners:
            listener(event)
        return event

    def stored_status(self, session_id: str) -> SessionStatus | None:
        """The session's status as the database has it now (None if unknown)."""
        row = self.store.session(session_id)
        return None if row is None else SessionStatus(row.status)

    def forget(self, session_id: str) -> None:
        """Drop the cached chain head of a finished session."""
        self._heads.pop(session_id, None)

    def resume_after(self, session_id: str, events: list[Event]) -> None:
        """Take the chain head from `events`, all of a session's events as read after
        this run's claim (no other run can append after it): the run's first append
        then needs no read of the head."""
        if events:
            self._heads[session_id] = (events[-1].seq, events[-1].hash)
        else:
            self._heads[session_id] = (0, "")

    def events(self, session_id: str, after_seq: int = 0) -> list[Event]:
        """A session's events after `after_seq`, in order."""
        return [_event(r) for r in self.store.events(session_id, after_seq)]

    async def follow(
        self, session_id: str, after_seq: int = 0, *, poll_s: float = 0.05
    ) -> AsyncIterator[Event]:
        """Yield a session's events as they are appended, until it finishes.

        Woken by the store's `Wakeup` (any process's commit on PostgreSQL, this
        process's elsewhere); unwoken it reads every `poll_s`, or at the slow safety
        interval while other processes' commits wake it."""
        wakeup = self._wakeup
        waiter = wakeup.async_waiter(EVENTS)
        try:
            while True:
                waiter.clear()  # before the read: a commit after it rings again
                batch = self.events(session_id, after_seq)
                for event in batch:
                    after_seq = event.seq
                    yield event
                if not batch:
                    row = self.store.session(session_id)
                    if row is None or SessionStatus(row.status).finished:
                        # One last read: the final event may have landed meanwhile.
                        for event in self.events(session_id, after_seq):
                            yield event
                        return
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wakeup.timeout(poll_s)):
                            await waiter.wait()
        finally:
            waiter.close()

    def verify(self, session_id: str | None = None) -> AuditReport:
        """Audit the chains (all, or one session's) under the audit keys, against the
        session index and the newest signed checkpoint; report the first problem.

        Raises:
            StorageCorrupt: the database file is damaged.
        """
        return audit.verify(self.store, self.keys, session_id)


def _creation(payload: JSON) -> JSON:
    return {
        "agent": payload.get("agent", ""),
        "goal": payload.get("goal", ""),
        "status": SessionStatus.QUEUED.value,
        "priority": int(payload.get("priority", 0)),
        "labels": payload.get("labels", {}),
    }


def _event(row: EventRow, payload: JSON | None = None) -> Event:
    return Event(
        session_id=row.session_id,
        seq=row.seq,
        ts=row.ts,
        kind=row.kind,
        payload=json.loads(row.payload) if payload is None else payload,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        cost_usd=row.cost_usd,
        latency_ms=row.latency_ms,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )
