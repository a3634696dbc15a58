"""The PostgreSQL store beyond the shared contract: its migrations, two processes on
one database, the settings that select it, and refusals in one line."""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from nexus.config import load_settings
from nexus.errors import ConfigError, JournalError, SchemaVersionError, StorageError
from nexus.runtime.audit import AuditKeys
from nexus.runtime.journal import Journal
from nexus.runtime.runtime import Runtime
from nexus.storage.base import EventRow, Schema, SessionChange, open_store
from nexus.storage.migrations import LATEST, MIGRATIONS, POSTGRES_MIGRATIONS
from nexus.storage.postgres import PostgresStore, masked
from nexus.storage.sqlite import SQLiteStore
from tests.storage.test_sqlite import row
from tests.storage.test_store_contract import created
from tests.waiting import wait_for

# SHA-256 of each SQLite migration's text as released: a released version is never
# edited (existing files must not change); new versions are appended here.
SQLITE_MIGRATIONS_AS_RELEASED = {
    1: "f6648136e5cb0cb2e0484a4af6c28d5f703cd7b9d87199201f64f70b2e4b76b4",
    2: "945fd0483c8e20c187ef2496b310e00ec543a0e6f7fcaf9c74c312a65890f054",
    3: "bd74b423d6901fb6056a43e3b0200cba399125020d8f2d706443385075059275",
    4: "a3a53e701f2130bc22d5d2f6b8806188ee847110025b491d9ed18c635f272b1a",
    5: "f90bc6f0dd6a70c944b18bbc654f3065077fa714ee04cb44a71b67dae31e8dcd",
    6: "ca2a09bdeed6e7273240c3ee3cb536b2a8025c7d3246f9d28723c160ef1313b6",
}


def versions(url: str) -> list[int]:
    with psycopg.connect(url) as db:
        return [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY version")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- one migration history ---------------------------------------------------------


def test_both_dialects_have_the_same_versions_and_sqlites_text_is_unchanged() -> None:
    """One history: the same version numbers on both; SQLite's SQL is as released."""
    assert [v for v, _ in POSTGRES_MIGRATIONS] == [v for v, _ in MIGRATIONS]
    digests = {v: hashlib.sha256(sql.encode()).hexdigest() for v, sql in MIGRATIONS}
    assert digests == {int(v): h for v, h in SQLITE_MIGRATIONS_AS_RELEASED.items()}


@pytest.mark.parametrize("applied", range(LATEST + 1))
def test_a_database_at_any_version_migrates_to_the_latest_on_open(
    postgres_url: str, applied: int
) -> None:
    """A database left at version `applied` by an older NEXUS is brought to LATEST
    when the store opens, and then works (each migration runs on PostgreSQL)."""
    with psycopg.connect(postgres_url) as db:
        db.execute(
            "CREATE TABLE schema_version "
            "(version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        for version, sql in POSTGRES_MIGRATIONS[:applied]:
            db.execute(sql)
            db.execute("INSERT INTO schema_version VALUES (%s, 0)", (version,))
    store = PostgresStore(postgres_url)
    try:
        assert (store.schema_version(), versions(postgres_url)) == (
            LATEST,
            list(range(1, LATEST + 1)),
        )
        store.append(*created("s1", ts=1.0))
        assert store.head("s1") == (1, "h1")
    finally:
        store.close()


def test_a_newer_database_is_refused_naming_both_versions(postgres_url: str) -> None:
    """A database written by a newer NEXUS is refused (SchemaVersionError) and left alone."""
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as db:
        db.execute("INSERT INTO schema_version VALUES (%s, 0)", (LATEST + 1,))
    with pytest.raises(SchemaVersionError) as caught:
        open_store(Path("unused.db"), url=postgres_url)
    assert str(caught.value) == (
        f"database {postgres_url} has schema version {LATEST + 1}, but this NEXUS knows "
        f"versions up to {LATEST}: upgrade NEXUS (pip install -U nexus-runtime)"
    )
    assert versions(postgres_url) == [*range(1, LATEST + 1), LATEST + 1]


def test_workers_opening_a_fresh_database_together_all_succeed(postgres_url: str) -> None:
    """Four stores opening one empty database at once: each migration runs once."""
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(postgres_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert (errors, len(stores), versions(postgres_url)) == ([], 4, list(range(1, LATEST + 1)))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_subsystem_schema_may_give_sql_per_dialect(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A Schema's migration may be one text per dialect (the types differ); one
    without SQL for the store's dialect is refused naming the subsystem."""
    url = request.getfixturevalue("postgres_url") if kind == "postgres" else None
    store = open_store(tmp_path / "n.db", url=url)
    counters = Schema(
        "costs",
        (
            (
                1,
                {
                    "sqlite": "CREATE TABLE costs (id INTEGER PRIMARY KEY, usd REAL NOT NULL)",
                    "postgresql": "CREATE TABLE costs (id BIGINT GENERATED ALWAYS AS IDENTITY "
                    "PRIMARY KEY, usd DOUBLE PRECISION NOT NULL)",
                },
            ),
            (2, "CREATE INDEX costs_usd ON costs (usd)"),
        ),
    )
    try:
        assert store.migrate(counters) == 2
        with pytest.raises(StorageError, match=r"the vault schema has no \w+ SQL"):
            store.migrate(Schema("vault", ((1, {"other": "CREATE TABLE vault (k TEXT)"}),)))
        assert isinstance(store, PostgresStore if url else SQLiteStore)
    finally:
        store.close()


# -- two processes on one database ---------------------------------------------------


def test_two_stores_racing_one_session_each_seq_is_won_once_and_the_chain_holds(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two stores (as two processes would) append to one session at once: each seq
    is written by exactly one of them, the other gets JournalError and retries from
    the new head, and the chain verifies."""
    keys = tmp_path / "audit.key"
    stores = [PostgresStore(postgres_url) for _ in range(2)]
    journals = [Journal(s, keys=AuditKeys(keys)) for s in stores]
    journals[0].append("s1", "session.created", {"goal": "g", "agent": "a", "labels": {}})
    # Both know the head (seq 1): the second to append seq 2 loses it, deterministically.
    journals[1].events("s1")
    journals[0].append("s1", "note", {"by": 0})
    journals[1].append("s1", "note", {"by": 1})  # reads the head: seq 3
    stale = stores[1]
    with pytest.raises(JournalError, match="cannot append note #3 to session s1"):
        stale.append(row("s1", 3, prev_hash="x", hash="y"), SessionChange())

    per_writer, lost = 50, [0, 0]

    def write(i: int) -> None:
        done = 0
        while done < per_writer:
            try:
                journals[i].append("s1", "note", {"by": i, "n": done})
                done += 1
            except JournalError:
                lost[i] += 1  # the other won this seq; the journal re-reads the head

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        events = stores[0].events("s1")
        assert [e.seq for e in events] == list(range(1, 4 + 2 * per_writer))
        assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(events))
        report = Journal(stores[0], keys=AuditKeys(keys)).verify("s1")
        assert report.ok, report
        session = stores[1].session("s1")
        assert session is not None and session.last_seq == 3 + 2 * per_writer
    finally:
        for s in stores:
            s.close()


def test_appends_after_refusals_keep_working_and_refusals_write_nothing(
    postgres_url: str,
) -> None:
    """Appends are pipelined and prepared once psycopg has seen them 5 times: refused
    appends (a repeated seq, refused by the database; a NUL, refused before it is
    sent) write nothing of their transaction, and the appends after them, on the
    same one-connection pool, still commit. (A refusal that aborts the pipeline in
    which psycopg prepares a statement leaves psycopg believing it prepared: reusing
    that connection fails with "prepared statement ... does not exist".)"""
    store = PostgresStore(postgres_url, max_size=1)
    try:
        store.append(*created("s1", ts=1.0))
        store.append(row("s1", 2, prev_hash="h1", hash="h2"), SessionChange())
        for _ in range(8):  # the same statement, past the prepare threshold, refused
            with pytest.raises(JournalError, match="cannot append note #2 to session s1"):
                store.append(row("s1", 2, prev_hash="x", hash="y"), SessionChange())
            bad = replace(row("s1", 3, prev_hash="h2", hash="h3"), payload='{"raw": "\x00"}')
            with pytest.raises(JournalError, match="cannot append note #3 to session s1"):
                store.append(bad, SessionChange())
        for seq in range(3, 12):
            store.append(row("s1", seq, prev_hash=f"h{seq - 1}", hash=f"h{seq}"), SessionChange())
        results = store.append_many(
            [(row("s1", n, prev_hash=f"h{n - 1}", hash=f"h{n}"), SessionChange()) for n in (12, 13)]
        )
        assert [type(r) for r in results] == [int, int]
        assert [e.seq for e in store.events("s1")] == list(range(1, 14))
        assert [e.hash for e in store.events("s1", 10)] == ["h11", "h12", "h13"]
        session = store.session("s1")
        assert session is not None and session.last_seq == 13
    finally:
        store.close()


def test_pooled_connections_the_server_ended_are_replaced_unnoticed(postgres_url: str) -> None:
    """The pool checks a connection it hands out without a round trip, and only asks
    the server when the socket has something to read: connections ended by the server
    meanwhile (`pg_terminate_backend`, as at a restart) are replaced, and no store call
    fails."""
    store = PostgresStore(postgres_url, min_size=2, max_size=2)
    try:
        store.append(*created("s1", ts=1.0))
        others = (
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name = ''"
        )
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            ended = admin.execute(f"SELECT pg_terminate_backend(pid) {others}").fetchall()
            assert len(ended) >= 1
            # pg_terminate_backend only signals: wait until the backends have ended
            # (their goodbye is on the sockets then), as they have by the time a
            # restarted server answers.
            wait_for(
                lambda: admin.execute(f"SELECT count(*) {others}").fetchone() == (0,),
                "the terminated backends gone",
            )
        for _ in range(4):  # every pooled connection, each taken in turn
            session = store.session("s1")
            assert session is not None and session.id == "s1"
        store.append(row("s1", 2, prev_hash="h1", hash="h2"), SessionChange())
        assert [e.seq for e in store.events("s1")] == [1, 2]
    finally:
        store.close()


def test_a_follower_of_events_after_sees_every_event_once_while_two_stores_write(
    postgres_url: str,
) -> None:
    """Global ids are in commit order even with writers in two processes: a reader
    that pages through `events_after` while they write misses nothing."""
    writers = [PostgresStore(postgres_url) for _ in range(2)]
    reader = PostgresStore(postgres_url)
    per_writer = 150
    stop = threading.Event()
    seen: list[EventRow] = []

    def write(i: int) -> None:
        sid = f"w{i}"
        writers[i].append(*created(sid, ts=1.0))
        for seq in range(2, per_writer + 1):
            writers[i].append(row(sid, seq), SessionChange())

    def follow() -> None:
        cursor = 0
        while not stop.is_set() or cursor < reader.latest_event_id():
            for event in reader.events_after(cursor, limit=7):
                seen.append(event)
                cursor = event.id

    follower = threading.Thread(target=follow)
    follower.start()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    follower.join()
    try:
        assert sorted((e.session_id, e.seq) for e in seen) == [
            (f"w{i}", seq) for i in range(2) for seq in range(1, per_writer + 1)
        ]
    finally:
        for s in (*writers, reader):
            s.close()


# -- selected by a setting, refused in one line --------------------------------------


def test_the_password_is_masked_in_the_path_and_in_messages() -> None:
    """`Store.path` and every message show the URL without its password."""
    assert masked("postgresql://nexus:s3cret@db.internal:5433/nexus") == (
        "postgresql://nexus:***@db.internal:5433/nexus"
    )
    assert masked("postgresql://db/nexus?password=s3cret&sslmode=require") == (
        "postgresql://db/nexus?password=%2A%2A%2A&sslmode=require"
    )
    assert masked("postgresql://nexus@db/nexus") == "postgresql://nexus@db/nexus"


def test_an_unreachable_database_fails_in_one_line_naming_the_setting(tmp_path: Path) -> None:
    """Nothing listens: one StorageError line naming NEXUS_DATABASE_URL, no password."""
    port = free_port()
    with pytest.raises(StorageError) as caught:
        open_store(tmp_path / "n.db", url=f"postgresql://nexus:s3cret@127.0.0.1:{port}/nexus")
    message = str(caught.value)
    assert message.startswith(
        f"NEXUS_DATABASE_URL: cannot open database postgresql://nexus:***@127.0.0.1:{port}/nexus: "
    )
    assert ("\n" in message, "s3cret" in message, "refused" in message) == (False, False, True)
    assert not (tmp_path / "n.db").exists()


def test_the_cli_says_an_unreachable_database_in_one_line_without_a_traceback(
    nexus_home: Path,
) -> None:
    """`nexus sessions` with an unreachable NEXUS_DATABASE_URL: exit 2 and one line."""
    port = free_port()
    env = {**os.environ, "NEXUS_DATABASE_URL": f"postgresql://nexus:s3cret@127.0.0.1:{port}/x"}
    proc = subprocess.run(
        [sys.executable, "-m", "nexus.cli", "sessions"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode, len(lines)) == (2, 1), proc.stderr
    assert lines[0].startswith("error: NEXUS_DATABASE_URL: cannot open database postgresql://")
    assert "s3cret" not in proc.stderr + proc.stdout


def test_a_url_that_is_not_postgresql_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad scheme is a ConfigError naming the setting, never showing the value."""
    monkeypatch.setenv("NEXUS_DATABASE_URL", "mysql://nexus:s3cret@db/nexus")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid settings:\n  NEXUS_DATABASE_URL: Value error, must start with "
        "postgresql:// (unset: SQLite in NEXUS_HOME)"
    )


async def test_the_runtime_keeps_everything_in_postgresql_when_the_setting_names_it(
    postgres_url: str, nexus_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With NEXUS_DATABASE_URL the runtime's sessions and journal are in PostgreSQL
    (another store on the URL sees them), no nexus.db is made, the audit key is the
    home's, and `nexus config show` masks the URL."""
    monkeypatch.setenv("NEXUS_DATABASE_URL", postgres_url)
    rt = Runtime(load_settings())
    try:
        sid = rt.create_session("count to three", agent="assistant")
        assert isinstance(rt.store, PostgresStore) and rt.store.path == postgres_url
        other = PostgresStore(postgres_url)
        try:
            found = other.session(sid)
            assert found is not None and (found.goal, found.status) == ("count to three", "queued")
            assert [e.kind for e in other.events(sid)] == ["session.created"]
        finally:
            other.close()
        assert rt.journal.verify(sid).ok
        assert (rt.settings.db_path.exists(), (nexus_home / "audit.key").exists()) == (False, True)
        from nexus.config import public_view

        assert public_view(rt.settings)["database_url"] == "**********"
    finally:
        await rt.aclose()
