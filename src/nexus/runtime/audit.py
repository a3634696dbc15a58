"""The tamper-evident audit: keyed hash chains and signed checkpoints.

Each session's events form a chain: an event's hash covers its fields (payload as
canonical JSON) and the previous event's hash. The hash is an HMAC-SHA256 under a key
kept outside the database (`NEXUS_HOME/audit.key`), so someone who can write the
database file but not the key file cannot recompute a chain after an edit. Rows
written before keys existed carry `key_id = ""` and a plain SHA-256; they stay
verifiable, and only as far as the first checkpoint vouched for them.

A checkpoint is an HMAC-signed record of every session's head (session id, last seq,
head hash) and their count, kept in the `checkpoints` table and, the newest, in
`NEXUS_HOME/audit-anchor.json`: deleting a session, its tail with its index row, or
the checkpoint rows themselves no longer passes `verify`. What this proves and what it
does not is in docs/audit.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus.errors import StorageCorrupt, StorageError
from nexus.events import STATUS_BY_KIND, STEP_OUTCOME_KINDS
from nexus.storage.base import CheckpointRow, EventRow, SessionRow, Store
from nexus.types import JSON, SessionStatus

KEY_FILE = "audit.key"
ANCHOR_FILE = "audit-anchor.json"

# One encoder, built once: json.dumps would rebuild it on every call (hot path).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_CHECKPOINT_DOMAIN = b"nexus.audit.checkpoint/1\n"  # a signature is never an event's hash


# -- the chain ----------------------------------------------------------------------


def event_hash(
    key: bytes | None,
    key_id: str,
    session_id: str,
    seq: int,
    ts: float,
    kind: str,
    tokens_in: int,
    tokens_out: int,
    cost_usd: float,
    latency_ms: float,
    prev_hash: str,
    payload: str,
) -> str:
    """An event's hash: HMAC-SHA256 under `key` (its id is hashed too), or the plain
    SHA-256 of a row from before keys when `key` is None."""
    fields: list[Any] = [
        session_id, seq, ts, kind, tokens_in, tokens_out, cost_usd, latency_ms, prev_hash
    ]  # fmt: skip
    if key is None:
        return hashlib.sha256(f"{_CANONICAL.encode(fields)}\n{payload}".encode()).hexdigest()
    fields.append(key_id)
    # hmac.digest is OpenSSL's one-shot HMAC: 2.5 us against 1.0 us for sha256 (measured).
    return hmac.digest(key, f"{_CANONICAL.encode(fields)}\n{payload}".encode(), "sha256").hex()


def chain_hash(row: EventRow, key: bytes | None = None) -> str:
    """The hash `row` must carry, given its fields, `prev_hash` and `key_id`: keyed rows
    need their `key`; without one, the unkeyed (pre-key) hash."""
    return event_hash(
        key if row.key_id else None,
        row.key_id,
        row.session_id,
        row.seq,
        row.ts,
        row.kind,
        row.tokens_in,
        row.tokens_out,
        row.cost_usd,
        row.latency_ms,
        row.prev_hash,
        row.payload,
    )


# -- keys ---------------------------------------------------------------------------


class AuditKeys:
    """The audit keys of a home: `audit.key` (0600, JSON `{"current": id, "keys": {id:
    hex}}`), created with a 256-bit key on first use. Rotation adds a key and keeps the
    old ones by id, so events signed before still verify. The anchor file lives beside it.

    Args:
        path: the key file; None keeps the keys in memory (the in-memory store).
        anchor: where the newest checkpoint of the database is anchored (default:
            `audit-anchor.json` beside the key file).
    """

    def __init__(self, path: Path | None, *, anchor: Path | None = None) -> None:
        self.path = path
        self.anchor = anchor if anchor is not None or path is None else path.parent / ANCHOR_FILE
        self._keys: dict[str, bytes] = {}
        self._current: str | None = None

    @classmethod
    def beside(cls, store: Store) -> AuditKeys:
        """The keys of the home holding `store`'s database (in memory for `:memory:`).
        One key serves a folder; each database there has its own anchor
        (`audit-anchor.json` for the home's `nexus.db`, `NAME-audit-anchor.json` else)."""
        if store.path == ":memory:":
            return cls(None)
        db = Path(store.path)
        anchor = ANCHOR_FILE if db.name == "nexus.db" else f"{db.stem}-{ANCHOR_FILE}"
        return cls(db.parent / KEY_FILE, anchor=db.parent / anchor)

    def exists(self) -> bool:
        """True once a key was made (the file exists, or a key is held in memory)."""
        return self._current is not None or (self.path is not None and self.path.exists())

    def current(self) -> tuple[str, bytes]:
        """The signing key `(id, key)`, creating the key file on first use."""
        if self._current is None:
            self._load(create=True)
        current = self._current
        if current is None or current not in self._keys:
            raise StorageError(f"the audit key file {self.path} names no current key")
        return current, self._keys[current]

    def get(self, key_id: str) -> bytes | None:
        """The key with this id (rereading the file: another process may have rotated)."""
        if key_id not in self._keys and self.path is not None and self.path.exists():
            self._load(create=False)
        return self._keys.get(key_id)

    def rotate(self) -> str:
        """Make a new signing key, keeping the old ones; returns its id."""
        self._load(create=True)
        key = secrets.token_bytes(32)
        self._keys[_key_id(key)] = key
        self._current = _key_id(key)
        if self.path is not None:
            _write_private(self.path, self._dump(), replace=True)
        return self._current

    def _load(self, *, create: bool) -> None:
        if self.path is None:
            if create and self._current is None:
                key = secrets.token_bytes(32)
                self._current, self._keys = _key_id(key), {_key_id(key): key}
            return
        if create and not self.path.exists():
            key = secrets.token_bytes(32)
            data = {"current": _key_id(key), "keys": {_key_id(key): key.hex()}}
            # Two processes starting together: the first link wins, the other reads it.
            with contextlib.suppress(FileExistsError):
                _write_private(self.path, _CANONICAL.encode(data), replace=False)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self._keys = {kid: bytes.fromhex(k) for kid, k in data["keys"].items()}
            self._current = str(data["current"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"cannot read the audit key file {self.path}: {exc}") from None

    def _dump(self) -> str:
        keys = {kid: key.hex() for kid, key in self._keys.items()}
        return _CANONICAL.encode({"current": self._current, "keys": keys})


def _key_id(key: bytes) -> str:
    """A key's public name: a fingerprint, so two homes never confuse their keys."""
    return "k" + hashlib.sha256(b"nexus.audit.key-id\n" + key).hexdigest()[:11]


def _write_private(path: Path, text: str, *, replace: bool) -> None:
    """Write `text` to `path` as 0600, atomically: a temporary file renamed (or, when
    `replace` is false, linked, which fails if `path` exists)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -- checkpoints ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A verified checkpoint: every session's `(seq, hash)` head, and the unkeyed
    prefixes (`legacy`) it vouches for, carried from the first checkpoint on."""

    id: int
    ts: float
    key_id: str
    heads: dict[str, tuple[int, str]]
    legacy: dict[str, tuple[int, str]]

    def to_dict(self) -> JSON:
        """As the audit report shows it."""
        return {"id": self.id, "ts": self.ts, "key_id": self.key_id, "sessions": len(self.heads)}


def write_checkpoint(store: Store, keys: AuditKeys) -> CheckpointRow:
    """Sign every session's head now: a row in `checkpoints` and the anchor file.

    Cost: one pass over the events index and O(sessions) JSON; schedule it (every N
    appends or T seconds, and at clean shutdown), never on the append path.
    """
    key_id, key = keys.current()
    previous = _newest_valid(store, keys)
    heads = store.heads()
    if previous is None:
        # The first checkpoint of a home: whatever is unkeyed now was written before
        # keys existed, and is vouched for as it stands; nothing unkeyed ever again.
        legacy = [[h.session_id, h.seq, h.hash] for h in heads if not h.key_id]
    else:
        legacy = [[sid, seq, digest] for sid, (seq, digest) in sorted(previous.legacy.items())]
    ts = time.time()
    body = _CANONICAL.encode(
        {
            "v": 1,
            "ts": ts,
            "key_id": key_id,
            "sessions": len(heads),
            "heads": [[h.session_id, h.seq, h.hash] for h in heads],
            "legacy": legacy,
        }
    )
    signature = _sign(key, body)
    checkpoint_id = store.add_checkpoint(ts, key_id, body, signature)
    if keys.anchor is not None:
        anchor = {"id": checkpoint_id, "key_id": key_id, "body": body, "signature": signature}
        _write_private(keys.anchor, _CANONICAL.encode(anchor), replace=True)
    return CheckpointRow(checkpoint_id, ts, key_id, body, signature)


def ensure_checkpoint(store: Store, keys: AuditKeys) -> None:
    """Write the first checkpoint of a home if there is none, before its first keyed
    event: it vouches for the rows written before keys."""
    anchored = keys.anchor is not None and keys.anchor.exists()
    if not anchored and store.checkpoint() is None:
        write_checkpoint(store, keys)


def _sign(key: bytes, body: str) -> str:
    return hmac.digest(key, _CHECKPOINT_DOMAIN + body.encode(), "sha256").hex()


def _parse(row: CheckpointRow, keys: AuditKeys) -> Checkpoint | None:
    """The checkpoint in `row` if its signature holds under its key, else None."""
    key = keys.get(row.key_id)
    if key is None or not hmac.compare_digest(_sign(key, row.body), row.signature):
        return None
    data = json.loads(row.body)
    return Checkpoint(
        row.id,
        float(data["ts"]),
        row.key_id,
        {str(s): (int(q), str(h)) for s, q, h in data["heads"]},
        {str(s): (int(q), str(h)) for s, q, h in data["legacy"]},
    )


def _newest_valid(store: Store, keys: AuditKeys) -> Checkpoint | None:
    row = store.checkpoint()
    return None if row is None else _parse(row, keys)


def _trusted(store: Store, keys: AuditKeys) -> tuple[Tamper | None, Checkpoint | None]:
    """The checkpoint to audit against, and what is wrong with the checkpoints (a
    forged or deleted row, an anchor that does not match)."""
    newest = store.checkpoint()
    checkpoint = None if newest is None else _parse(newest, keys)
    if newest is not None and checkpoint is None:
        return _at_large(f"checkpoint #{newest.id} is not signed by the audit key"), None
    if keys.anchor is None:
        return None, checkpoint
    if not keys.anchor.exists():
        if checkpoint is None and not keys.exists():
            return None, None  # nothing was ever signed here
        return _at_large(f"the anchor file {keys.anchor} is missing"), checkpoint
    try:
        data = json.loads(keys.anchor.read_text(encoding="utf-8"))
        anchor = CheckpointRow(
            int(data["id"]), 0.0, data["key_id"], data["body"], data["signature"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _at_large(f"the anchor file {keys.anchor} is unreadable: {exc}"), checkpoint
    anchored = _parse(anchor, keys)
    if anchored is None:
        return _at_large(f"the anchor file {keys.anchor} is not signed by the audit key"), None
    stored = store.checkpoint(anchor.id)
    if stored is None or (stored.body, stored.signature) != (anchor.body, anchor.signature):
        return (
            _at_large(
                f"checkpoint #{anchor.id} named by {keys.anchor} is not in the database "
                "(checkpoint rows deleted or replaced)"
            ),
            anchored,
        )
    # A newer, validly signed checkpoint than the anchor: a writer between its commit
    # and its anchor write. Only the key can sign one, so it is trusted.
    return None, checkpoint


def _at_large(problem: str) -> Tamper:
    return Tamper("", 0, problem)


# -- the report -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tamper:
    """The first problem found by an audit (`session_id` "" for the checkpoints)."""

    session_id: str
    seq: int
    problem: str

    def to_dict(self) -> JSON:
        """As plain data."""
        return {"session_id": self.session_id, "seq": self.seq, "problem": self.problem}


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The result of `verify`: what was walked, the first problem, and the checkpoint
    it was held against (with how many unkeyed, pre-key events it vouched for)."""

    sessions: int
    events: int
    first_problem: Tamper | None
    checkpoint: Checkpoint | None = None
    unkeyed_events: int = 0

    @property
    def ok(self) -> bool:
        """True when every chain is intact and agrees with the index and checkpoint."""
        return self.first_problem is None

    def to_dict(self) -> JSON:
        """As plain data."""
        return {
            "ok": self.ok,
            "sessions": self.sessions,
            "events": self.events,
            "first_problem": None if self.first_problem is None else self.first_problem.to_dict(),
            "checkpoint": None if self.checkpoint is None else self.checkpoint.to_dict(),
            "unkeyed_events": self.unkeyed_events,
        }


# -- verify ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Walk:
    """One session's chain as walked so far, with what its index row must say."""

    session_id: str
    expected_seq: int = 1
    prev: str = ""
    status: str | None = None
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0

    @property
    def last_seq(self) -> int:
        return self.expected_seq - 1


def verify(store: Store, keys: AuditKeys, session_id: str | None = None) -> AuditReport:
    """Audit the journal: the file is sound; every chain is whole and keyed (or an
    unkeyed prefix a checkpoint vouches for); the index agrees with the chains; every
    session of the newest checkpoint is still there with the same hash at its seq; the
    anchor file names that checkpoint. Reports the first problem found.

    Raises:
        StorageCorrupt: the database file is damaged (not tampering: say so apart).
    """
    damage = store.check_integrity()
    if damage is not None:
        raise StorageCorrupt(store.path, damage)
    problem, checkpoint = _trusted(store, keys)
    heads = {} if checkpoint is None else checkpoint.heads
    legacy = {} if checkpoint is None else checkpoint.legacy
    at = 0 if checkpoint is None else checkpoint.id
    rows = store.iter_all_events() if session_id is None else store.events(session_id)
    sessions = events = unkeyed = 0
    seen: set[str] = set()
    walk: _Walk | None = None

    def report(first: Tamper | None) -> AuditReport:
        return AuditReport(sessions, events, first, checkpoint, unkeyed)

    for row in rows:
        if walk is None or row.session_id != walk.session_id:
            if walk is not None and (bad := _close(store, walk, heads, at)):
                return report(bad)
            walk = _Walk(row.session_id)
            seen.add(row.session_id)
            sessions += 1
        events += 1
        unkeyed += not row.key_id
        if bad := _check_row(row, walk, keys, heads, legacy, at):
            return report(bad)
        _fold(walk, row)
    if walk is not None and (bad := _close(store, walk, heads, at)):
        return report(bad)
    # A session whose every event was deleted leaves no row to walk; the index and the
    # checkpoint, written apart from the events, still name it.
    indexed = [session_id] if session_id is not None else store.session_ids(list(_STATUSES))
    checkpointed = [session_id] if session_id is not None else sorted(heads)
    for sid in [*indexed, *checkpointed]:
        if sid not in seen and (bad := _close(store, _Walk(sid), heads, at)):
            return report(bad)
    return report(problem)


_STATUSES = tuple(s.value for s in SessionStatus)
_UNVOUCHED = "unkeyed event that no checkpoint vouches for (written without the key)"


def _check_row(
    row: EventRow,
    walk: _Walk,
    keys: AuditKeys,
    heads: dict[str, tuple[int, str]],
    legacy: dict[str, tuple[int, str]],
    checkpoint_id: int,
) -> Tamper | None:
    sid, expected = row.session_id, walk.expected_seq
    if row.seq > expected:
        # Report the first missing row, as the tail check does.
        return Tamper(sid, expected, f"missing event: expected seq {expected}, found {row.seq}")
    if row.seq < expected:
        return Tamper(sid, row.seq, f"unexpected seq {row.seq} where {expected} was expected")
    if row.prev_hash != walk.prev:
        return Tamper(
            sid, row.seq, "chain broken: prev_hash does not match the previous event (reordered?)"
        )
    if row.key_id:
        key = keys.get(row.key_id)
        if key is None:
            return Tamper(sid, row.seq, f"signed with audit key {row.key_id}, which is unknown")
    else:
        vouched = legacy.get(sid)
        if vouched is None or row.seq > vouched[0]:
            return Tamper(sid, row.seq, _UNVOUCHED)
        key = None
    if chain_hash(row, key) != row.hash:
        return Tamper(sid, row.seq, "tampered: content does not match its hash")
    for mark in (heads.get(sid), legacy.get(sid)):
        if mark is not None and mark[0] == row.seq and mark[1] != row.hash:
            return Tamper(
                sid, row.seq, f"history rewritten: hash differs from checkpoint #{checkpoint_id}"
            )
    return None


def _fold(walk: _Walk, row: EventRow) -> None:
    """Advance the walk past `row`, deriving what the index must hold."""
    walk.expected_seq, walk.prev = row.seq + 1, row.hash
    if row.kind == "session.created":
        walk.status = SessionStatus.QUEUED.value
    if (status := STATUS_BY_KIND.get(row.kind)) is not None:
        walk.status = status.value
    walk.steps += row.kind in STEP_OUTCOME_KINDS
    walk.tokens_in += row.tokens_in
    walk.tokens_out += row.tokens_out
    walk.cost_usd += row.cost_usd


def _close(
    store: Store, walk: _Walk, heads: dict[str, tuple[int, str]], checkpoint_id: int
) -> Tamper | None:
    """Check a walked session's end against its index row and the checkpoint."""
    sid, last = walk.session_id, walk.last_seq
    index = store.session(sid)
    # Deleting a session's newest events leaves an intact chain; the index's last_seq,
    # written in the same transaction, still tells (unless deleted too: the checkpoint).
    if index is not None and index.last_seq > last:
        # The scan reads one snapshot and the index is read now: a live session (or
        # one created since) has rows the scan did not see. Those are not missing if
        # the next one is there and chains onto the last one seen.
        after = store.events(sid, last, limit=1)
        if after and after[0].seq == last + 1 and after[0].prev_hash == walk.prev:
            return None
        return Tamper(sid, last + 1, f"missing event: seq {last + 1} to {index.last_seq} are gone")
    mark = heads.get(sid)
    if mark is not None and mark[0] > last:
        gone = "the whole session is gone" if last == 0 else f"seq {last + 1} to {mark[0]} are gone"
        return Tamper(sid, last + 1, f"missing event: {gone} (checkpoint #{checkpoint_id})")
    if last == 0:
        return None
    if index is None:
        return Tamper(sid, 0, "the session index has no row for this chain (deleted?)")
    if differs := _index_differs(index, walk):
        return Tamper(sid, 0, f"the session index disagrees with the chain: {differs}")
    return None


def _index_differs(index: SessionRow, walk: _Walk) -> str | None:
    derived: dict[str, Any] = {
        "last_seq": walk.last_seq,
        "status": walk.status or index.status,
        "steps": walk.steps,
        "tokens_in": walk.tokens_in,
        "tokens_out": walk.tokens_out,
    }
    wrong = [f"{k} {getattr(index, k)!r}, chain says {v!r}" for k, v in derived.items()
             if getattr(index, k) != v]  # fmt: skip
    # The index adds the same doubles in the same order; allow for a store that does not.
    if abs(index.cost_usd - walk.cost_usd) > 1e-9 * max(1.0, abs(walk.cost_usd)):
        wrong.append(f"cost_usd {index.cost_usd!r}, chain says {walk.cost_usd!r}")
    return "; ".join(wrong) or None


# -- scheduling -----------------------------------------------------------------------


class Checkpointer:
    """Writes a checkpoint after `every_appends` new events or, if anything was
    appended, `every_s` seconds, and a last one at `aclose` (clean shutdown). It reads
    the newest event id (every process's appends count), never touching the append path.

    The owner (worker, server) runs `run()` in its task group and awaits `aclose()`.
    """

    def __init__(
        self,
        store: Store,
        keys: AuditKeys,
        *,
        every_appends: int = 1000,
        every_s: float = 60.0,
        poll_s: float = 1.0,
    ) -> None:
        self.store, self.keys = store, keys
        self.every_appends, self.every_s, self.poll_s = every_appends, every_s, poll_s
        self._at_id = store.latest_event_id()
        self._at_time = time.monotonic()
        self._writing = threading.RLock()

    def due(self) -> bool:
        """True when enough was appended, or enough time passed with any append."""
        grown = self.store.latest_event_id() - self._at_id
        late = time.monotonic() - self._at_time >= self.every_s
        return grown >= self.every_appends or (grown > 0 and late)

    def write(self) -> CheckpointRow:
        """Write a checkpoint now (one at a time: a write left running by a
        cancelled `run()` finishes before `aclose` looks)."""
        with self._writing:
            latest = self.store.latest_event_id()
            row = write_checkpoint(self.store, self.keys)
            self._at_id, self._at_time = latest, time.monotonic()
            return row

    def _write_if_new(self) -> None:
        with self._writing:
            if self.store.latest_event_id() != self._at_id:
                self.write()

    async def run(self) -> None:
        """Check every `poll_s` and write when due (in a thread: it is O(sessions))."""
        while True:
            await asyncio.sleep(self.poll_s)
            if self.due():
                await asyncio.to_thread(self.write)

    async def aclose(self) -> None:
        """The clean-shutdown checkpoint, if anything was appended since the last."""
        await asyncio.to_thread(self._write_if_new)
