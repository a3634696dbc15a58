"""`nexus run` as a user runs it: beside a server, alone on a home with other
queued sessions, stopped by a signal, and with mistakes in its options."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from nexus.cli.app import app
from nexus.config import load_settings
from nexus.examples import demo_recording
from nexus.runtime.runtime import Runtime
from tests.stores import dbos_workflows
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(demo_recording())
runner = CliRunner()


def nexus(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_process(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", *args],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
def test_run_beside_a_running_server_completes_and_leaves_no_ghost(
    nexus_home: Path, tmp_path: Path
) -> None:
    """`nexus run` while `nexus start` serves the same home: it runs its session to
    the end under an executor id of its own (it used to fail on the worker lock and
    leave a queued ghost), and the server keeps serving and sees the session."""
    port = free_port()
    server = cli_process("start", "--port", str(port), log=tmp_path / "server.log")

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, "server up")
        result = nexus("run", "Summarise the notes", "--replay", DEMO, "--json")
        assert result.exit_code == 0, result.output
        row = json.loads(result.stdout)
        token = nexus("token", "show").stdout.strip()  # the file, or the database on PostgreSQL
        seen = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/sessions/{row['id']}",
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        assert (row["status"], seen["status"], seen["steps"]) == ("completed", "completed", 9)
        assert server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    rt = Runtime(load_settings())
    assert [r.status for r in rt.sessions()] == ["completed"]  # no ghost
    assert not list(nexus_home.glob("worker-run-*.lock"))
    rt.store.close()


def test_run_runs_only_its_own_session(nexus_home: Path) -> None:
    """`nexus run` is not a worker: a session queued in the home before it (for the
    server to run) stays queued, and DBOS was never told about it."""
    rt = Runtime(load_settings())
    waiting = rt.create_session("for the server", replay=DEMO)
    result = nexus("run", "mine", "--replay", DEMO, "--json")
    assert result.exit_code == 0, result.output
    mine = json.loads(result.stdout)["id"]
    assert {r.id: r.status for r in rt.sessions()} == {mine: "completed", waiting: "queued"}
    assert dbos_workflows(rt.settings) == [(mine, f"run-{mine}")]
    rt.store.close()


def test_run_prints_no_dbos_warning(nexus_home: Path) -> None:
    """Every `nexus run` printed `WARNING dbos: Workflow already exists in queue`:
    the session was queued at start and then started directly. Now its stderr is
    empty, and DBOS knows the workflow on no queue."""
    proc = subprocess.run(
        [sys.executable, "-m", "nexus.cli", "run", "demo", "--replay", DEMO],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert (proc.returncode, proc.stderr) == (0, "")


@pytest.mark.slow
def test_sigterm_of_run_says_what_happened_and_a_worker_finishes_it(
    nexus_home: Path, tmp_path: Path
) -> None:
    """SIGTERM of `nexus run` used to exit silently. It now exits 143 with one line
    naming the session, its state and who resumes it; the next worker does."""
    log = tmp_path / "run.log"
    proc = cli_process("run", "demo", "--replay", DEMO, "--replay-pace", "0.5", log=log)
    try:
        wait_for(lambda: "llm" in log.read_text(), "first step shown")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
    finally:
        proc.kill()
        proc.wait()
    rt = Runtime(load_settings())
    (row,) = rt.sessions()
    last = log.read_text().strip().splitlines()[-1]
    assert last == (
        f"error: terminated (SIGTERM); session {row.id} stopped while running: it resumes "
        "at the next `nexus worker` or `nexus start` on this home"
    )
    assert row.status == "running"
    rt.store.close()


def test_an_unknown_agent_is_named_before_any_provider_is_looked_for() -> None:
    """`nexus run hi --agent nope` with no provider said "no LLM provider"; the
    agent is the first mistake, so that is what it says."""
    result = nexus("run", "hi", "--agent", "nope")
    assert (result.exit_code, result.stderr.strip()) == (
        2,
        "error: unknown agent 'nope' (known: assistant)",
    )


def test_sessions_status_is_checked_locally_and_takes_a_list(nexus_home: Path) -> None:
    """`--status runing` gave an empty list locally (a 422 through --server): now a
    clear error, and `--status completed,failed` (or repeated) selects both."""
    result = nexus("sessions", "--status", "runing")
    assert (result.exit_code, result.stderr.strip()) == (
        2,
        "error: unknown status 'runing' (known: queued, running, paused, "
        "awaiting_approval, completed, failed, killed)",
    )
    done = json.loads(nexus("run", "one", "--replay", DEMO, "--json").stdout)["id"]
    rt = Runtime(load_settings())
    failed = rt.create_session("two", replay=DEMO)
    rt.journal.append(failed, "session.failed", {"reason": "x", "steps": 0}, reason="x")
    rt.create_session("three", replay=DEMO)  # queued: not selected
    for args in (["--status", "completed,failed"], ["--status", "failed", "--status", "completed"]):
        rows = json.loads(nexus("sessions", *args, "--json").stdout)
        assert sorted(r["id"] for r in rows) == sorted([done, failed])
    rt.store.close()


def test_a_dead_server_is_named_as_unreachable() -> None:
    """`--server` to a port where nothing listens said "server answered 0"."""
    url = f"http://127.0.0.1:{free_port()}"
    result = nexus("sessions", "--server", url)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"error: cannot reach a NEXUS server at {url} (")
    assert result.stderr.strip().endswith("is `nexus start` running?")
