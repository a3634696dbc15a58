"""The `Store` contract, run against every implementation: SQLite, in memory and
PostgreSQL (a real PostgreSQL 15, a fresh database per test; skipped without the
server binaries). A component tested on the in-memory store can rely on the same
behaviour from the real ones."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from nexus.errors import JournalError, SchemaVersionError
from nexus.runtime.audit import AuditKeys
from nexus.runtime.journal import Journal
from nexus.storage import EventRow, SessionQuery
from nexus.storage.base import CheckpointRow, Schema, SessionChange, Store, open_store
from nexus.storage.memory import MemoryStore
from tests.storage.test_sqlite import row


def created(
    session_id: str, *, ts: float, agent: str = "a", **labels: str
) -> tuple[EventRow, SessionChange]:
    change = SessionChange(
        create={
            "agent": agent,
            "goal": f"g {session_id}",
            "status": "queued",
            "priority": 0,
            "labels": labels,
        },
        status="queued",
    )
    return row(session_id, 1, ts=ts, kind="session.created"), change


def test_the_memory_store_is_what_open_store_gives_for_memory() -> None:
    """`:memory:` selects the in-memory implementation."""
    assert isinstance(open_store(Path(":memory:")), MemoryStore)


def test_appends_read_back_in_order_with_heads_and_global_ids(store: Store) -> None:
    """Events come back per session by seq and globally by commit order; heads track
    the last (seq, hash)."""
    store.append(*created("s1", ts=1.0))
    store.append(*created("s2", ts=2.0))
    store.append(row("s1", 2, ts=3.0, tokens_in=5, cost_usd=0.5), SessionChange(steps=1))
    assert [(r.session_id, r.seq) for r in store.events_after(0)] == [
        ("s1", 1),
        ("s2", 1),
        ("s1", 2),
    ]
    assert [r.seq for r in store.events("s1")] == [1, 2]
    assert [r.seq for r in store.events("s1", after_seq=1)] == [2]
    assert [r.seq for r in store.events("s1", limit=1)] == [1]
    assert (store.head("s1"), store.head("nope"), store.latest_event_id()) == (
        (2, "h2"),
        (0, ""),
        3,
    )
    assert [(r.session_id, r.seq) for r in store.iter_all_events()] == [
        ("s1", 1),
        ("s1", 2),
        ("s2", 1),
    ]


def test_a_repeated_sequence_number_is_refused_with_its_sessions_part_of_a_batch(
    store: Store,
) -> None:
    """A clash fails with JournalError; in a group commit the clashing session's rows
    fail together (they chain onto each other) and other sessions' rows still land."""
    store.append(*created("s1", ts=1.0))
    store.append(*created("s2", ts=1.0))
    with pytest.raises(JournalError):
        store.append(row("s1", 1, ts=2.0), SessionChange())
    results = store.append_many(
        [
            (row("s1", 2, ts=3.0), SessionChange()),
            (row("s2", 2, ts=3.0), SessionChange()),
            (row("s1", 1, ts=3.0), SessionChange()),
            (row("s2", 3, ts=3.0), SessionChange()),
        ]
    )
    assert [type(r).__name__ for r in results] == ["JournalError", "int", "JournalError", "int"]
    assert ([r.seq for r in store.events("s1")], [r.seq for r in store.events("s2")]) == (
        [1],
        [1, 2, 3],
    )


def test_the_session_index_is_the_projection_of_its_events(store: Store) -> None:
    """Counters, status, reason and last_seq follow the session's events."""
    store.append(*created("s1", ts=1.0, team="x"))
    store.append(
        row("s1", 2, ts=2.0, tokens_in=3, tokens_out=4, cost_usd=0.25),
        SessionChange(steps=1, status="running"),
    )
    store.append(row("s1", 3, ts=3.0), SessionChange(status="failed", reason="boom"))
    s = store.session("s1")
    assert s is not None
    assert s.to_dict() == {
        "id": "s1",
        "agent": "a",
        "goal": "g s1",
        "status": "failed",
        "priority": 0,
        "labels": {"team": "x"},
        "created_at": 1.0,
        "updated_at": 3.0,
        "reason": "boom",
        "steps": 1,
        "tokens_in": 3,
        "tokens_out": 4,
        "cost_usd": 0.25,
        "last_seq": 3,
    }


def test_listing_filters_pages_and_counts(store: Store) -> None:
    """Newest first with filters by status, agent and label, paged; ids by status
    oldest first; counts."""
    store.append(*created("s1", ts=1.0, agent="a", team="x"))
    store.append(*created("s2", ts=2.0, agent="b", team="y"))
    store.append(*created("s3", ts=3.0, agent="a", team="x"))
    store.append(row("s3", 2, ts=4.0), SessionChange(status="completed"))
    ids = lambda q: [r.id for r in store.sessions(q)]  # noqa: E731
    assert ids(SessionQuery()) == ["s3", "s2", "s1"]
    assert ids(SessionQuery(agent="a")) == ["s3", "s1"]
    assert ids(SessionQuery(label=("team", "x"))) == ["s3", "s1"]
    assert ids(SessionQuery(status=("queued",))) == ["s2", "s1"]
    assert ids(SessionQuery(limit=1, offset=1)) == ["s2"]
    assert store.session_ids(["queued"]) == ["s1", "s2"]
    assert (store.count_sessions(), store.count_sessions(["completed"])) == (3, 1)


def test_a_subsystem_adds_its_own_schema_and_a_newer_one_is_refused(store: Store) -> None:
    """A subsystem's migrations apply once, in order, beside the kernel's; a database
    with a newer version of them than the code knows is refused."""
    v2 = Schema(
        "breakers",
        (
            (1, "CREATE TABLE breakers (name TEXT PRIMARY KEY)"),
            (2, "CREATE INDEX breakers_name ON breakers (name)"),
        ),
    )
    assert store.migrate(Schema("breakers", v2.migrations[:1])) == 1
    assert store.migrate(v2) == 2
    assert store.migrate(v2) == 2  # nothing left to apply
    with pytest.raises(SchemaVersionError, match="breakers tables have schema version 2"):
        store.migrate(Schema("breakers", v2.migrations[:1]))


async def test_the_journal_works_the_same_on_every_store(store: Store, tmp_path: Path) -> None:
    """Hash chain, redaction and the projection behave the same on each store."""
    journal = Journal(store, keys=AuditKeys(tmp_path / "audit.key"))
    journal.append(
        "s1", "session.created", {"goal": "g", "agent": "a", "priority": 0, "labels": {}}
    )
    await journal.append_async(
        "s1", "llm.response", {"step": 1, "key": "sk-" + "A" * 30}, tokens_in=2
    )
    await journal.append_async("s1", "session.completed", {"steps": 1}, reason="completed")
    assert journal.verify().ok
    events = journal.events("s1")
    assert events[1].payload == {"step": 1, "key": "[REDACTED]"}
    s = store.session("s1")
    assert s is not None and (s.status, s.steps, s.tokens_in) == ("completed", 1, 2)


def test_payloads_and_numbers_come_back_exactly(store: Store) -> None:
    """The chain hashes the payload's exact text: it comes back byte for byte
    (spacing, key order, escapes, non-ASCII), and floats and big counters exactly."""
    payload = '{"z": 1,  "a":"\\u00e9 é \\\\ \\"q\\" \\u0000","n":[1.5e-7, 12345678901234567890]}'
    stored = row(
        "s1",
        1,
        ts=1_767_225_600.123456,
        kind="session.created",
        payload=payload,
        tokens_in=2**40,
        cost_usd=0.1 + 0.2,
        latency_ms=1 / 3,
    )
    change = created("s1", ts=1.0)[1]
    row_id = store.append(stored, change)
    (back,) = store.events("s1")
    assert back == EventRow(**{**{f: getattr(stored, f) for f in stored.__slots__}, "id": row_id})


def test_session_ids_sort_byte_by_byte_as_in_sqlite(store: Store) -> None:
    """Audits walk sessions in one order on every store: by the bytes of their ids
    (upper case before lower case), whatever a database's locale says."""
    for sid in ("b", "B", "a", "_"):
        store.append(*created(sid, ts=1.0))
    assert [r.session_id for r in store.iter_all_events()] == ["B", "_", "a", "b"]
    assert [h.session_id for h in store.heads()] == ["B", "_", "a", "b"]
    assert [r.id for r in store.sessions(SessionQuery())] == ["B", "_", "a", "b"]


def test_commands_are_stored_and_read_in_id_order(store: Store) -> None:
    """Posted commands come back whole, per session and across sessions, after an id."""
    first = store.post_command("s1", "pause", "ops", "lunch", {"wait": True})
    second = store.post_command("s2", "kill", "ops", "stuck", {})
    third = store.post_command("s1", "resume", "ops", "", {"note": "go on"})
    assert [c.to_dict() for c in store.commands("s1")] == [first.to_dict(), third.to_dict()]
    assert store.commands("s1", after_id=first.id) == [third]
    assert store.commands_after(first.id) == [second, third]
    assert store.commands_after(0, limit=1) == [first]
    assert first.id < second.id < third.id
    assert store.latest_command_id() == third.id
    assert first.data == {"wait": True}


def test_checkpoints_keep_the_newest_eight(store: Store) -> None:
    """The newest checkpoint is the default; older ones beyond eight are dropped."""
    ids = [store.add_checkpoint(float(i), "k1", f'{{"n":{i}}}', f"sig{i}") for i in range(10)]
    newest = store.checkpoint()
    assert newest is not None and (newest.id, newest.body, newest.signature) == (
        ids[-1],
        '{"n":9}',
        "sig9",
    )
    assert [store.checkpoint(i) is not None for i in ids] == [False] * 2 + [True] * 8
    assert store.checkpoint(ids[2]) == CheckpointRow(ids[2], 2.0, "k1", '{"n":2}', "sig2")


def test_an_unstorable_row_fails_alone_and_the_rest_of_the_batch_commits(store: Store) -> None:
    """A row no store can keep on every backend (a NUL in its session's goal, which
    PostgreSQL text cannot hold) fails with JournalError on the stores that refuse it;
    the other sessions' rows of its batch commit either way, and lookups with a NUL
    simply find nothing."""
    bad_row, bad = created("s2", ts=2.0)
    assert bad.create is not None
    bad = SessionChange(create={**bad.create, "goal": "nul \x00 here"}, status="queued")
    results = store.append_many([created("s1", ts=1.0), (bad_row, bad), created("s3", ts=3.0)])
    refused = store.path.startswith("postgresql://")
    assert [type(r) for r in results] == [int, JournalError if refused else int, int]
    kept = ["s3", "s1"] if refused else ["s3", "s2", "s1"]
    assert [s.id for s in store.sessions(SessionQuery())] == kept
    assert store.session("s\x00") is None
    assert store.events("s\x00") == []
    assert store.sessions(SessionQuery(label=("k\x00", "v"))) == []


def test_ids_with_prefix_are_the_sessions_whose_id_starts_so(store: Store) -> None:
    """A unique prefix finds its session; ids come in order, at most `limit`; a
    prefix of none finds nothing (the CLI's docker-like id prefixes)."""
    for i, sid in enumerate(["s_ab01", "s_ab02", "s_ac03", "s_b"]):
        store.append(*created(sid, ts=float(i)))
    assert store.ids_with_prefix("s_ab") == ["s_ab01", "s_ab02"]
    assert store.ids_with_prefix("s_a", limit=2) == ["s_ab01", "s_ab02"]
    assert store.ids_with_prefix("s_ac") == ["s_ac03"]
    assert (store.ids_with_prefix("s_z"), store.ids_with_prefix("t")) == ([], [])


def _sessions_to_sort(store: Store) -> None:
    """Four sessions whose cost, steps, tokens and duration order them differently;
    s1 and s4 tie on cost."""
    spec = [
        # id, created, goal, cost, steps, tokens in/out, ended at, status, team
        ("s1", 1.0, "Triage the flaky CI job", 0.5, 1, (10, 0), 9.0, "failed", "ops"),
        ("s2", 2.0, "Write 100% of the_report", 0.0223, 3, (100, 50), 3.0, "completed", "ml"),
        ("s3", 3.0, "triage the email inbox", 0.0, 2, (5, 5), 3.0, "running", "ops"),
        ("s4", 4.0, "Ünïcode TRIAGE", 0.5, 0, (0, 0), 4.5, "queued", "ml"),
    ]
    for sid, ts, goal, cost, steps, (t_in, t_out), end, status, team in spec:
        event, change = created(sid, ts=ts, team=team)
        assert change.create is not None
        store.append(event, replace(change, create={**change.create, "goal": goal}))
        store.append(
            row(sid, 2, ts=end, tokens_in=t_in, tokens_out=t_out, cost_usd=cost),
            SessionChange(steps=steps, status=status),
        )


def test_listing_sorts_by_each_key_both_ways_ties_by_id(store: Store) -> None:
    """Every order, and its reverse exactly; paging applies after the order."""
    _sessions_to_sort(store)
    ids = lambda **kw: [r.id for r in store.sessions(SessionQuery(**kw))]  # noqa: E731
    orders = {key: ids(sort=key) for key in ("-created", "-cost", "-steps", "-tokens", "-duration")}
    assert orders == {
        "-created": ["s4", "s3", "s2", "s1"],
        "-cost": ["s1", "s4", "s2", "s3"],
        "-steps": ["s2", "s3", "s1", "s4"],
        "-tokens": ["s2", "s1", "s3", "s4"],
        "-duration": ["s1", "s2", "s4", "s3"],
    }
    assert {key: ids(sort=key[1:]) for key in orders} == {
        key: list(reversed(order)) for key, order in orders.items()
    }
    assert ids(sort="-cost", limit=2, offset=1) == ["s4", "s2"]
    assert ids(sort="cost", status=("failed", "queued")) == ["s4", "s1"]


def test_listing_searches_goals_as_plain_text_and_bounds_creation_time(store: Store) -> None:
    """`q` is a substring in any ASCII case (`%` and `_` are literal); times are
    `[created_after, created_before)`; filters combine."""
    _sessions_to_sort(store)
    ids = lambda **kw: [r.id for r in store.sessions(SessionQuery(**kw))]  # noqa: E731
    assert ids(q="triage") == ["s4", "s3", "s1"]
    assert [ids(q="%"), ids(q="_"), ids(q="100% of the_r")] == [["s2"]] * 3
    assert [ids(q="ünïcode"), ids(q="Ünïcode")] == [[], ["s4"]]  # LIKE folds ASCII only
    assert ids(created_after=2.0, created_before=4.0) == ["s3", "s2"]
    assert ids(created_after=4.5) == ids(created_before=1.0) == []
    assert ids(q="TRIAGE", label=("team", "ops"), created_before=3.0) == ["s1"]


def test_totals_sum_what_the_filters_select_whatever_the_order_and_page(store: Store) -> None:
    _sessions_to_sort(store)
    totals = lambda **kw: store.session_totals(SessionQuery(**kw)).to_dict()  # noqa: E731
    assert totals() == {
        "count": 4,
        "finished": 2,
        "failed": 1,
        "tokens_in": 115,
        "tokens_out": 55,
        "cost_usd": pytest.approx(1.0223),
    }
    assert totals(q="triage", sort="cost", limit=1, offset=3) == {
        "count": 3,
        "finished": 1,
        "failed": 1,
        "tokens_in": 15,
        "tokens_out": 5,
        "cost_usd": 1.0,
    }
    assert totals(agent="nobody") == {
        "count": 0,
        "finished": 0,
        "failed": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": 0.0,
    }
