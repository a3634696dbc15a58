"""Workers on separate machines (separate NEXUS_HOMEs) sharing one PostgreSQL: a dead
worker's sessions move to the living, a stale worker is fenced out, and under random
SIGKILLs every session completes exactly once with every tool effect made once."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fleet.conftest import ROOT, TIMEOUT_S, Fleet
from tests.peers.openai_server import ThreadedPeerServer
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

HOLD = [
    {"tool_calls": [{"name": "effect", "arguments": {"tag": "hold"}}]},
    {"content": "done"},
]
TWO_EFFECTS = [
    {"tool_calls": [{"name": "effect", "arguments": {"tag": "a"}}]},
    {"tool_calls": [{"name": "effect", "arguments": {"tag": "b"}}]},
    {"content": "done"},
]
# Time for a worker process to start and register (a bound, not a claim).
STARTUP_S = 60


def registered(fleet: Fleet, *names: str) -> bool:
    alive = {w.id for w in fleet.rt.store.workers() if w.status == "alive"}
    return all((fleet.home(n) / "worker-id").exists() for n in names) and all(
        fleet.worker_id(n) in alive for n in names
    )


def all_completed(fleet: Fleet, ids: list[str]) -> bool:
    return all(fleet.rt.session(s).status == "completed" for s in ids)


def running_workers(fleet: Fleet, names: list[str]) -> list[str]:
    """The names of the workers whose runs own a running session now."""
    owners = fleet.rt.store.running_by_worker()
    return [n for n in names if owners.get(fleet.worker_id(n))]


def held_on(fleet: Fleet, name: str, sid: str) -> None:
    """Wait until worker `name` runs the session's held tool call."""
    wait_for(lambda: any(x.startswith("start hold") for x in fleet.effect_log()), "tool start")
    assert fleet.rt.store.session_owner(sid) == (1, fleet.worker_id(name))


def step_kinds(fleet: Fleet, sid: str) -> list[str]:
    return [e.kind for e in fleet.rt.journal.events(sid)]


def test_worker_ids_are_derived_per_machine_and_registered(fleet: Fleet) -> None:
    """With no NEXUS_WORKER_ID, each machine's worker id is its host name and a
    suffix kept in its home: distinct, stable across restarts, and registered."""
    fleet.start("a")
    fleet.start("b")
    wait_for(lambda: registered(fleet, "a", "b"), "both workers registered", STARTUP_S)
    a, b = fleet.worker_id("a"), fleet.worker_id("b")
    assert a != b and a.rsplit("-", 1)[0] == b.rsplit("-", 1)[0] != "local"
    fleet.signal("a", signal.SIGTERM)
    assert fleet.procs["a"].wait(30) == 0
    fleet.start("a")
    wait_for(lambda: registered(fleet, "a"), "worker a back", STARTUP_S)
    assert fleet.worker_id("a") == a
    rows = {w.id: (w.role, w.status) for w in fleet.rt.store.workers()}
    assert rows == {a: ("worker", "alive"), b: ("worker", "alive")}


def test_sigkill_a_worker_mid_session_and_another_finishes_it(
    fleet: Fleet, threaded_peer: ThreadedPeerServer
) -> None:
    """SIGKILL worker A while its tool call is in flight: worker B, on another
    machine, is handed the session once A's heartbeat is TIMEOUT_S old, finishes it
    without repeating the completed LLM call, and the chain verifies."""
    threaded_peer.config.script = HOLD
    sid = fleet.rt.create_session("survive a crash", agent="fleet")
    fleet.start("a")
    held_on(fleet, "a", sid)
    fleet.start("b")
    wait_for(lambda: registered(fleet, "b"), "worker b registered", STARTUP_S)
    fleet.signal("a", signal.SIGKILL)
    # The bound: the timeout, a lease round, and DBOS's dequeue (not a timing claim).
    wait_for(lambda: fleet.rt.session(sid).status == "completed", "B completes it", TIMEOUT_S + 20)
    assert fleet.rt.store.session_owner(sid) == (2, fleet.worker_id("b"))
    states = {w.id: w.status for w in fleet.rt.store.workers()}
    assert states == {fleet.worker_id("a"): "dead", fleet.worker_id("b"): "alive"}
    kinds = step_kinds(fleet, sid)
    assert (kinds.count("llm.response"), kinds.count("tool.result"), kinds[-1]) == (
        2,
        1,
        "session.completed",
    )
    assert len(threaded_peer.requests) == 2  # the first LLM call was not asked again
    assert fleet.rt.journal.verify(sid).ok
    assert [p.name for p in fleet.effects.iterdir() if p.name != "log"] != []


def test_a_stopped_worker_that_comes_back_is_fenced_and_drops_the_session(
    fleet: Fleet, threaded_peer: ThreadedPeerServer
) -> None:
    """SIGSTOP worker A mid tool call past the timeout: B takes the session over
    (epoch 2) and finishes it. SIGCONT A: its tool call is refused its effect
    (stale epoch), its next append is refused, A drops the session and keeps
    running; every step is in the journal exactly once."""
    threaded_peer.config.script = HOLD
    sid = fleet.rt.create_session("survive a pause", agent="fleet")
    fleet.start("a")
    held_on(fleet, "a", sid)
    fleet.start("b")
    wait_for(lambda: registered(fleet, "b"), "worker b registered", STARTUP_S)
    fleet.signal("a", signal.SIGSTOP)
    wait_for(lambda: fleet.rt.session(sid).status == "completed", "B completes it", TIMEOUT_S + 20)
    before = [e.to_dict() for e in fleet.rt.journal.events(sid)]
    Path(fleet.env["FLEET_RELEASE"]).touch()
    fleet.signal("a", signal.SIGCONT)
    wait_for(lambda: "this run drops it" in fleet.log("a"), "A drops the session")
    assert [e.to_dict() for e in fleet.rt.journal.events(sid)] == before  # A wrote nothing
    key = fleet.effect_log()[0].split()[2]
    a_pid, b_pid = fleet.procs["a"].pid, fleet.procs["b"].pid
    assert sorted(fleet.effect_log()) == sorted(
        [
            f"start hold {key} epoch=1 pid={a_pid}",
            f"start hold {key} epoch=2 pid={b_pid}",
            f"fenced hold {key} epoch=1 pid={a_pid}",
        ]
    )
    assert (fleet.effects / key).read_text() == "hold epoch=2"
    kinds = step_kinds(fleet, sid)
    assert (kinds.count("llm.response"), kinds.count("tool.result"), kinds[-1]) == (
        2,
        1,
        "session.completed",
    )
    assert fleet.rt.journal.verify(sid).ok
    assert fleet.procs["a"].poll() is None  # A lives on, and beats again
    wait_for(
        lambda: (
            {w.id: w.status for w in fleet.rt.store.workers()}.get(fleet.worker_id("a")) == "alive"
        ),
        "A alive again",
    )


def test_three_workers_sixty_sessions_random_sigkills(
    fleet: Fleet, threaded_peer: ThreadedPeerServer
) -> None:
    """3 workers, 60 sessions of two tool calls, seeded random SIGKILLs of any worker
    running a session (each restarted): every session completes exactly once, `nexus audit verify`
    passes, and every tool effect is made exactly once (files keyed by the call's
    idempotency key: a retried call finds its effect made)."""
    rng = random.Random(20261203)
    threaded_peer.config.latency_ms = 150  # sessions stay in flight across the kills
    threaded_peer.config.script = TWO_EFFECTS
    ids = [fleet.rt.create_session(f"job {i}", agent="fleet") for i in range(60)]
    names = ["a", "b", "c"]
    for name in names:
        fleet.start(name)
    wait_for(lambda: registered(fleet, *names), "three workers registered", STARTUP_S)
    for _ in range(6):
        done = sum(fleet.rt.session(s).status == "completed" for s in ids)
        wait_for(
            lambda d=done: (
                sum(fleet.rt.session(s).status == "completed" for s in ids) >= d + 3 or d + 3 > 60
            ),
            "progress between kills",
            120,
        )
        # Any worker that runs a session now (a kill of an idle one proves nothing);
        # once every session has ended there is none, and any worker is killed.
        wait_for(
            lambda: running_workers(fleet, names) or all_completed(fleet, ids),
            "a worker running a session",
            60,
        )
        victim = rng.choice(running_workers(fleet, names) or names)
        fleet.signal(victim, signal.SIGKILL)
        fleet.start(victim)
    wait_for(
        lambda: all(fleet.rt.session(s).status == "completed" for s in ids),
        "all sessions completed",
        240,
    )
    resumed = 0
    for sid in ids:
        kinds = step_kinds(fleet, sid)
        resumed += "session.resumed" in kinds
        assert kinds.count("session.completed") == 1 and kinds[-1] == "session.completed"
        assert kinds.count("tool.result") == 2
    assert resumed > 0  # the kills hit sessions in flight, which other runs finished
    effects = sorted(p.name for p in fleet.effects.iterdir() if p.name != "log")
    results = [e for sid in ids for e in fleet.rt.journal.events(sid) if e.kind == "tool.result"]
    assert len(effects) == len(results) == 120
    made = [line for line in fleet.effect_log() if line.startswith("start")]
    assert len(made) >= 120  # retried calls tried again, and found their effect made
    audit = subprocess.run(
        [str(Path(sys.executable).parent / "nexus"), "audit", "verify", "--json"],
        check=False,
        cwd=ROOT,
        env={**fleet.env, "NEXUS_HOME": str(fleet.rt.settings.home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert json.loads(audit.stdout)["ok"] is True


def test_the_database_going_away_mid_session_leaves_it_resumable(
    tmp_path: Path,
    nexus_home: Path,
    threaded_peer: ThreadedPeerServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stop PostgreSQL while a tool call is in flight, let the call finish (its result
    cannot be journaled), start PostgreSQL again: the session resumes from its journal
    and completes; the chain verifies and the tool's effect was made once."""
    from tests.fleet.conftest import open_fleet
    from tests.peers.postgres import PostgresServer, available

    if not available():
        pytest.skip("PostgreSQL 15 server binaries are not installed")
    import psycopg

    server = PostgresServer(Path("/tmp") / f"nexus-pg-outage-{os.getpid()}-{time.monotonic_ns()}")
    server.start()
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE outage")
    fleet = open_fleet(tmp_path, server.url("outage"), threaded_peer, monkeypatch)
    try:
        threaded_peer.config.script = HOLD
        sid = fleet.rt.create_session("ride out an outage", agent="fleet")
        fleet.start("a")
        held_on(fleet, "a", sid)
        server.stop()
        Path(fleet.env["FLEET_RELEASE"]).touch()
        wait_for(lambda: "the database went away" in fleet.log("a"), "the worker notices", 150)
        server.launch()
        wait_for(lambda: fleet.rt.session(sid).status == "completed", "completed", 150)
        kinds = step_kinds(fleet, sid)
        assert (kinds.count("llm.response"), kinds.count("tool.result"), kinds[-1]) == (
            2,
            1,
            "session.completed",
        )
        assert "session.failed" not in kinds
        assert fleet.rt.journal.verify(sid).ok
        effects = [p for p in fleet.effects.iterdir() if p.name != "log"]
        assert len(effects) == 1
    finally:
        fleet.close()
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
