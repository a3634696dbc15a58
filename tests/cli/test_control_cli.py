"""Kill, pause and resume across processes, as an operator does it: `nexus kill`
from another terminal against a session running in `nexus worker`, `nexus start`
or `nexus run`; pause in one worker, restart, resume on the next; Ctrl-C of
`nexus run`; `nexus run --detach`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nexus.cli.app import app
from nexus.config import load_settings
from nexus.examples import demo_recording
from nexus.runtime.runtime import Runtime
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(demo_recording())
runner = CliRunner()
pytestmark = pytest.mark.slow


def nexus(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def spawn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", *args],
            env={**os.environ, "PYTHONPATH": str(ROOT), "NEXUS_QUEUE_POLL_S": "0.05"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        proc.kill()


@pytest.fixture
def rt(nexus_home: Path) -> Iterator[Runtime]:
    runtime = Runtime(load_settings())
    yield runtime
    runtime.store.close()


def detach(pace: str = "0.4") -> str:
    """A paced demo session queued for whichever worker of the home runs."""
    result = nexus("run", "demo", "--replay", DEMO, "--replay-pace", pace, "--detach", "--json")
    assert result.exit_code == 0, result.output
    sid: str = json.loads(result.stdout)["id"]
    return sid


def steps_of(rt: Runtime, sid: str) -> list[tuple[str, int]]:
    """(kind, step) of every step outcome: each must appear once."""
    return [
        (e.kind, e.payload["step"])
        for e in rt.journal.events(sid)
        if e.kind in ("llm.response", "tool.result")
    ]


def assert_nothing_after_the_kill(rt: Runtime, sid: str) -> None:
    events = rt.journal.events(sid)
    assert events[-1].kind == "session.killed"
    kinds = [e.kind for e in events]
    assert kinds.count("session.killed") == 1
    assert rt.journal.verify(sid).ok


def running(rt: Runtime, sid: str, steps: int = 1) -> bool:
    row = rt.session(sid)
    return row.status == "running" and row.steps >= steps


def test_kill_from_another_terminal_stops_a_session_in_nexus_worker(
    rt: Runtime, tmp_path: Path
) -> None:
    """`nexus run --detach` queues a session; `nexus worker` runs it; `nexus kill`
    (this process) stops it there: `killed`, by the user, nothing after."""
    worker = spawn("worker", log=tmp_path / "worker.log")
    try:
        sid = detach()
        wait_for(lambda: running(rt, sid, 2), "session running in the worker")
        result = nexus("kill", sid, "--reason", "enough")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"session {sid} killed: enough"
        row = rt.session(sid)
        assert (row.status, row.reason) == ("killed", "enough")
        assert rt.journal.events(sid)[-1].payload["by"].startswith("user:")
        assert_nothing_after_the_kill(rt, sid)
        assert worker.poll() is None
    finally:
        assert stop(worker) == 0


def test_kill_from_another_terminal_stops_a_session_in_nexus_start(
    rt: Runtime, tmp_path: Path
) -> None:
    """The same against the server's workers: the server's poller hands the kill to
    the session's runner."""
    server = spawn("start", "--port", "0", log=tmp_path / "server.log")
    try:
        sid = detach()
        wait_for(lambda: running(rt, sid, 2), "session running in the server")
        assert nexus("kill", sid).exit_code == 0
        assert rt.session(sid).status == "killed"
        assert_nothing_after_the_kill(rt, sid)
    finally:
        assert stop(server) == 0


def test_kill_from_another_terminal_stops_nexus_run(rt: Runtime, tmp_path: Path) -> None:
    """A `nexus run` in one terminal, `nexus kill` in another: the run ends at once,
    exit 1, its timeline's last line is the kill."""
    log = tmp_path / "run.log"
    proc = spawn("run", "demo", "--replay", DEMO, "--replay-pace", "0.4", log=log)
    try:
        wait_for(lambda: len(rt.sessions()) == 1, "session created")
        sid = rt.sessions()[0].id
        wait_for(lambda: running(rt, sid, 1), "running")
        assert nexus("kill", sid, "--reason", "from afar").exit_code == 0
        assert proc.wait(30) == 1
    finally:
        proc.kill()
        proc.wait()
    assert "killed" in log.read_text().strip().splitlines()[-1]
    assert rt.session(sid).reason == "from afar"
    assert_nothing_after_the_kill(rt, sid)


def test_ctrl_c_of_nexus_run_kills_the_session_and_says_so(rt: Runtime, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) of `nexus run` kills the session (it used to stay `running`):
    exit 130 and one line saying so."""
    log = tmp_path / "run.log"
    proc = spawn("run", "demo", "--replay", DEMO, "--replay-pace", "0.4", log=log)
    try:
        wait_for(lambda: bool(rt.sessions()) and running(rt, rt.sessions()[0].id), "running")
        sid = rt.sessions()[0].id
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        proc.kill()
        proc.wait()
    row = rt.session(sid)
    assert (row.status, row.reason) == ("killed", "interrupted by the user")
    assert log.read_text().strip().splitlines()[-1] == (
        f"error: session {sid} killed: interrupted by the user"
    )
    assert_nothing_after_the_kill(rt, sid)


def test_pause_in_one_worker_resume_on_the_next_after_a_restart(
    rt: Runtime, tmp_path: Path
) -> None:
    """Paused in worker A (`--wait` returns once it is quiet), A stops; worker B
    starts; `nexus resume --note` continues the session there from its next step:
    it completes, every step once, the note in the journal, the chain valid."""
    first = spawn("worker", log=tmp_path / "a.log")
    try:
        sid = detach(pace="0.3")
        wait_for(lambda: running(rt, sid, 2), "running in A")
        result = nexus("pause", sid, "--wait")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"session {sid} paused: no step in flight"
        paused_at = rt.session(sid).steps
    finally:
        assert stop(first) == 0
    assert rt.session(sid).status == "paused"
    second = spawn("worker", "--concurrency", "2", log=tmp_path / "b.log")
    try:
        result = nexus("resume", sid, "--note", "carry on")
        assert result.exit_code == 0, result.output
        wait_for(lambda: rt.session(sid).status == "completed", "completed on B", timeout=60)
    finally:
        assert stop(second) == 0
    outcomes = steps_of(rt, sid)
    assert len(outcomes) == len(set(outcomes)) == 9 and paused_at < 9
    control = [e.payload for e in rt.journal.events(sid) if e.kind == "session.control"]
    assert [(c["kind"], c["note"]) for c in control] == [("resume", "carry on")]
    assert rt.journal.verify(sid).ok


def test_control_commands_name_their_mistakes(rt: Runtime) -> None:
    """Unknown session: exit 3. Ended: exit 5, except a kill of a killed one, which
    is idempotent. Resume of a session that is not paused: exit 2."""
    assert nexus("kill", "s_nope").exit_code == 3
    done = json.loads(nexus("run", "x", "--replay", DEMO, "--json").stdout)["id"]
    result = nexus("pause", done)
    assert (result.exit_code, result.stderr.strip()) == (
        5,
        f"error: session {done} has already ended completed",
    )
    queued = detach()
    assert nexus("resume", queued).exit_code == 2
    assert nexus("kill", queued).exit_code == 0
    again = nexus("kill", queued, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["session"]["status"] == "killed"
