"""Versioned schema migrations: one history for both stores.

Append new versions; never edit a released one. Each applied version is recorded
in `schema_version`; an older database is migrated on open, a newer one refused.

`MIGRATIONS` holds SQLite's statements, byte for byte as released (existing files
must not change); `POSTGRES_MIGRATIONS` holds the same versions in PostgreSQL's
types (BIGINT counters and identity ids, DOUBLE PRECISION for REAL, JSONB for
labels and command data). `events.payload` stays TEXT on both: the chain hashes its
exact canonical text, so it must come back byte for byte.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Literal, TypeAlias

from nexus.errors import StorageError

Dialect: TypeAlias = Literal["sqlite", "postgresql"]
# A migration's SQL: one text for both stores, or one per dialect where types differ.
Sql: TypeAlias = str | Mapping[str, str]

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE sessions (
            id          TEXT PRIMARY KEY,
            agent       TEXT NOT NULL,
            goal        TEXT NOT NULL,
            status      TEXT NOT NULL,
            priority    INTEGER NOT NULL DEFAULT 0,
            labels      TEXT NOT NULL DEFAULT '{}',
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL,
            reason      TEXT,
            steps       INTEGER NOT NULL DEFAULT 0,
            tokens_in   INTEGER NOT NULL DEFAULT 0,
            tokens_out  INTEGER NOT NULL DEFAULT 0,
            cost_usd    REAL NOT NULL DEFAULT 0,
            last_seq    INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX sessions_created ON sessions (created_at DESC);
        CREATE INDEX sessions_status ON sessions (status, created_at DESC);
        CREATE TABLE events (
            id          INTEGER PRIMARY KEY,
            session_id  TEXT NOT NULL,
            seq         INTEGER NOT NULL,
            ts          REAL NOT NULL,
            kind        TEXT NOT NULL,
            payload     TEXT NOT NULL,
            tokens_in   INTEGER NOT NULL DEFAULT 0,
            tokens_out  INTEGER NOT NULL DEFAULT 0,
            cost_usd    REAL NOT NULL DEFAULT 0,
            latency_ms  REAL NOT NULL DEFAULT 0,
            prev_hash   TEXT NOT NULL,
            hash        TEXT NOT NULL,
            UNIQUE (session_id, seq)
        );
        """,
    ),
]

MIGRATIONS.append(
    (
        2,
        # Listing sessions newest first with a stable tie-break, straight off an index.
        """
        DROP INDEX sessions_created;
        CREATE INDEX sessions_created ON sessions (created_at DESC, id);
        """,
    )
)

MIGRATIONS.append(
    (
        3,
        # The keyed audit chain: the key id each event's HMAC used ('' = a row written
        # before keys, plain SHA-256), and signed checkpoints of every session's head.
        """
        ALTER TABLE events ADD COLUMN key_id TEXT NOT NULL DEFAULT '';
        CREATE TABLE checkpoints (
            id          INTEGER PRIMARY KEY,
            ts          REAL NOT NULL,
            key_id      TEXT NOT NULL,
            body        TEXT NOT NULL,
            signature   TEXT NOT NULL
        );
        """,
    )
)

MIGRATIONS.append(
    (
        4,
        # The control channel: commands for a session (kill, pause, resume, …) posted
        # by any process; the session's runner applies them and journals the effect.
        """
        CREATE TABLE commands (
            id          INTEGER PRIMARY KEY,  -- never deleted: ids only grow
            session_id  TEXT NOT NULL,
            kind        TEXT NOT NULL,
            by          TEXT NOT NULL,
            reason      TEXT NOT NULL,
            data        TEXT NOT NULL DEFAULT '{}',
            ts          REAL NOT NULL
        );
        CREATE INDEX commands_session ON commands (session_id, id);
        """,
    )
)

MIGRATIONS.append(
    (
        5,
        # The sessions list's other orders (`SessionQuery.sort`), each straight off an
        # index read forwards or backwards: a page of 50 of 10,000 sessions sorted by
        # cost stays a 50-row index walk, not a sort of the table (bench.api).
        """
        CREATE INDEX sessions_cost ON sessions (cost_usd DESC, id);
        CREATE INDEX sessions_steps ON sessions (steps DESC, id);
        CREATE INDEX sessions_tokens ON sessions ((tokens_in + tokens_out) DESC, id);
        CREATE INDEX sessions_duration ON sessions ((updated_at - created_at) DESC, id);
        """,
    )
)

MIGRATIONS.append(
    (
        6,
        # Many workers: each session's run epoch and owner (every append of a run is
        # checked against the epoch: the fencing token), the worker registry with
        # heartbeats, and leases (the one supervisor at a time).
        """
        ALTER TABLE sessions ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE sessions ADD COLUMN worker TEXT;
        CREATE INDEX sessions_worker ON sessions (worker) WHERE status = 'running';
        CREATE TABLE workers (
            id            TEXT PRIMARY KEY,
            host          TEXT NOT NULL,
            pid           INTEGER NOT NULL,
            role          TEXT NOT NULL,
            started_at    REAL NOT NULL,
            heartbeat_at  REAL NOT NULL,
            status        TEXT NOT NULL
        );
        CREATE TABLE leases (
            name        TEXT PRIMARY KEY,
            holder      TEXT NOT NULL,
            expires_at  REAL NOT NULL
        );
        """,
    )
)

POSTGRES_MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE sessions (
            id          TEXT COLLATE "C" PRIMARY KEY,
            agent       TEXT NOT NULL,
            goal        TEXT NOT NULL,
            status      TEXT NOT NULL,
            priority    BIGINT NOT NULL DEFAULT 0,
            labels      JSONB NOT NULL DEFAULT '{}',
            created_at  DOUBLE PRECISION NOT NULL,
            updated_at  DOUBLE PRECISION NOT NULL,
            reason      TEXT,
            steps       BIGINT NOT NULL DEFAULT 0,
            tokens_in   BIGINT NOT NULL DEFAULT 0,
            tokens_out  BIGINT NOT NULL DEFAULT 0,
            cost_usd    DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_seq    BIGINT NOT NULL DEFAULT 0
        );
        CREATE INDEX sessions_created ON sessions (created_at DESC);
        CREATE INDEX sessions_status ON sessions (status, created_at DESC);
        -- The label filter is a JSONB containment test (`labels @> {key: value}`).
        CREATE INDEX sessions_labels ON sessions USING gin (labels jsonb_path_ops);
        CREATE TABLE events (
            id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            session_id  TEXT COLLATE "C" NOT NULL,
            seq         BIGINT NOT NULL,
            ts          DOUBLE PRECISION NOT NULL,
            kind        TEXT NOT NULL,
            payload     TEXT NOT NULL,
            tokens_in   BIGINT NOT NULL DEFAULT 0,
            tokens_out  BIGINT NOT NULL DEFAULT 0,
            cost_usd    DOUBLE PRECISION NOT NULL DEFAULT 0,
            latency_ms  DOUBLE PRECISION NOT NULL DEFAULT 0,
            prev_hash   TEXT NOT NULL,
            hash        TEXT NOT NULL,
            UNIQUE (session_id, seq)
        );
        """,
    ),
    (
        2,
        """
        DROP INDEX sessions_created;
        CREATE INDEX sessions_created ON sessions (created_at DESC, id);
        """,
    ),
    (
        3,
        """
        ALTER TABLE events ADD COLUMN key_id TEXT NOT NULL DEFAULT '';
        CREATE TABLE checkpoints (
            id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            ts          DOUBLE PRECISION NOT NULL,
            key_id      TEXT NOT NULL,
            body        TEXT NOT NULL,
            signature   TEXT NOT NULL
        );
        """,
    ),
    (
        4,
        """
        CREATE TABLE commands (
            id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            session_id  TEXT COLLATE "C" NOT NULL,
            kind        TEXT NOT NULL,
            by          TEXT NOT NULL,
            reason      TEXT NOT NULL,
            data        JSONB NOT NULL DEFAULT '{}',
            ts          DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX commands_session ON commands (session_id, id);
        """,
    ),
    (
        5,
        # The same indexes: PostgreSQL takes the expression indexes as written.
        """
        CREATE INDEX sessions_cost ON sessions (cost_usd DESC, id);
        CREATE INDEX sessions_steps ON sessions (steps DESC, id);
        CREATE INDEX sessions_tokens ON sessions ((tokens_in + tokens_out) DESC, id);
        CREATE INDEX sessions_duration ON sessions ((updated_at - created_at) DESC, id);
        """,
    ),
    (
        6,
        """
        ALTER TABLE sessions ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
        ALTER TABLE sessions ADD COLUMN worker TEXT COLLATE "C";
        CREATE INDEX sessions_worker ON sessions (worker) WHERE status = 'running';
        CREATE TABLE workers (
            id            TEXT COLLATE "C" PRIMARY KEY,
            host          TEXT NOT NULL,
            pid           BIGINT NOT NULL,
            role          TEXT NOT NULL,
            started_at    DOUBLE PRECISION NOT NULL,
            heartbeat_at  DOUBLE PRECISION NOT NULL,
            status        TEXT NOT NULL
        );
        CREATE TABLE leases (
            name        TEXT COLLATE "C" PRIMARY KEY,
            holder      TEXT NOT NULL,
            expires_at  DOUBLE PRECISION NOT NULL
        );
        """,
    ),
]

LATEST = MIGRATIONS[-1][0]

# The database's clock as seconds since the epoch (heartbeats and leases compare
# times written by different machines: one clock decides).
NOW: dict[Dialect, str] = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "extract(epoch from clock_timestamp())::double precision",
}


def migrations(dialect: Dialect) -> list[tuple[int, str]]:
    """The kernel's migrations in `dialect`'s SQL, oldest first."""
    return MIGRATIONS if dialect == "sqlite" else POSTGRES_MIGRATIONS


def statements(sql: str) -> list[str]:
    """A SQLite migration's statements, split at the `;` that end one (as
    `sqlite3.complete_statement` tells: a trigger's body keeps its own)."""
    out: list[str] = []
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                out.append(pending.strip())
            pending = ""
    if pending.strip(" \t\r\n;"):
        out.append(pending.strip())
    return out


def dialect_sql(sql: Sql, dialect: Dialect, *, subsystem: str = "kernel") -> str:
    """The text of one migration for `dialect`: `sql` itself when it is portable,
    else its entry for the dialect (a `StorageError` names a missing one)."""
    if isinstance(sql, str):
        return sql
    try:
        return sql[dialect]
    except KeyError:
        raise StorageError(
            f"the {subsystem} schema has no {dialect} SQL for one of its migrations"
        ) from None
