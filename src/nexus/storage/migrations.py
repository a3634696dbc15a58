"""Versioned schema migrations for the SQLite store.

Append new versions; never edit a released one. Each applied version is recorded
in `schema_version`; an older database is migrated on open, a newer one refused.
"""

from __future__ import annotations

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

LATEST = MIGRATIONS[-1][0]
