"""The CLI as a new user meets it (issue 8, items 1-6): one line per session at any
width, plain columns when piped, kubectl's output forms, human times, `-h` and
`--version` everywhere, a summary after `run`, budgets and labels on `run`, and
session ids by unique prefix."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nexus.cli.app import app
from nexus.cli.render import sessions_lines, status_lines, summary
from nexus.config import load_settings
from nexus.examples import demo_recording
from nexus.format import money
from nexus.runtime.runtime import Runtime
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(demo_recording())
runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG = "Summarise the notes in my workspace, then write a report on the sprint for the team"


def nexus(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def row(sid: str, **over: Any) -> dict[str, Any]:
    base = {
        "id": sid,
        "agent": "assistant",
        "goal": LONG,
        "status": "completed",
        "priority": 0,
        "labels": {"team": "ops", "env": "dev"},
        "created_at": 1000.0,
        "updated_at": 1004.25,
        "reason": "completed",
        "steps": 9,
        "tokens_in": 50,
        "tokens_out": 25,
        "cost_usd": 0.0000123,
        "last_seq": 21,
    }
    return {**base, **over}


ROWS = [
    row("s_00000000000000aa", status="awaiting_approval", cost_usd=1234.5),
    row("s_00000000000000bb", goal="short\nsecond line", steps=12, cost_usd=0.0),
]


def test_each_session_is_one_line_at_80_120_and_200_columns() -> None:
    """The goal gets what the other columns leave, clipped with "…"; ids, statuses
    and costs are whole; at 80 columns the least needed columns (tokens, agent)
    give way before the goal shrinks below ten characters."""
    assert sessions_lines(ROWS, width=80, now=1060.0) == [
        "ID                  STATUS             STEPS       COST  AGE  GOAL",
        "s_00000000000000aa  awaiting_approval      9  $1,234.50  1m   Summarise the not…",
        "s_00000000000000bb  completed             12         $0  1m   short second line",
    ]
    head = "ID                  STATUS             AGENT      STEPS  TOKENS       COST  AGE  GOAL"
    assert sessions_lines(ROWS, width=120, now=1060.0) == [
        head,
        "s_00000000000000aa  awaiting_approval  assistant      9      75  $1,234.50  1m   "
        "Summarise the notes in my workspace, t…",
        "s_00000000000000bb  completed          assistant     12      75         $0  1m   "
        "short second line",
    ]
    assert sessions_lines(ROWS, width=200, now=1060.0) == [
        head,
        f"s_00000000000000aa  awaiting_approval  assistant      9      75  $1,234.50  1m   {LONG}",
        "s_00000000000000bb  completed          assistant     12      75         $0  1m   "
        "short second line",
    ]


def test_piped_output_is_plain_columns_never_clipped() -> None:
    """Without a terminal: aligned columns, no box drawing, nothing cut; `wide`
    adds priority, labels (k=v) and the reason; `--no-headers` drops the header."""
    assert sessions_lines(ROWS, width=None, now=1060.0)[1:] == [
        f"s_00000000000000aa  awaiting_approval  assistant      9      75  $1,234.50  1m   {LONG}",
        "s_00000000000000bb  completed          assistant     12      75         $0  1m   "
        "short second line",
    ]
    assert sessions_lines(ROWS[1:], width=None, wide=True, headers=False, now=1060.0) == [
        "s_00000000000000bb  completed  assistant  0  12  75  $0  1m  env=dev,team=ops  "
        "completed  short second line"
    ]


def test_status_shows_local_times_with_ages_labels_and_duration() -> None:
    """No epoch numbers and no Python dict: times are local with an age, labels are
    `k=v`, the duration is human."""
    lines = dict(status_lines(row("s_1"), now=1000.0 + 3 * 3600))
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1000.0))
    assert lines["created"] == f"{created} (3h ago)"
    assert (lines["labels"], lines["duration"], lines["cost"], lines["tokens"]) == (
        "env=dev,team=ops",
        "4.2s",
        money(0.0000123),
        "75 (50 in, 25 out)",
    )
    assert summary(row("s_1")) == f"completed · 9 steps · 75 tokens · {money(0.0000123)} · 4.2s"


def run_in_terminal(args: list[str], width: int, env: dict[str, str]) -> list[str]:
    """Run `nexus ARGS` on a real pseudo-terminal `width` columns wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, width, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(30)
    os.close(master)
    return [ANSI.sub("", line) for line in out.decode().replace("\r", "").splitlines()]


@pytest.mark.slow
def test_sessions_in_a_real_terminal_never_wrap(nexus_home: Path) -> None:
    """At 80, 120 and 200 columns of a real pty, `nexus sessions` prints exactly one
    line per session plus the header, none wider than the terminal."""
    for i in range(3):
        assert nexus("run", f"{LONG} {i}", "--replay", DEMO).exit_code == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for width in (80, 120, 200):
        lines = run_in_terminal(["sessions"], width, env)
        assert len(lines) == 4, (width, lines)
        assert all(len(line) <= width for line in lines), (width, lines)
        assert all(re.match(r"s_[0-9a-f]{16}  completed  assistant", x) for x in lines[1:])


def test_output_forms_and_quiet(nexus_home: Path) -> None:
    """`-o json` is `--json`; `-o name` and `-q` print ids only; an unknown form is
    a usage error."""
    ids = [json.loads(nexus("run", g, "--replay", DEMO, "--json").stdout)["id"] for g in "ab"]
    assert json.loads(nexus("sessions", "-o", "json").stdout) == json.loads(
        nexus("sessions", "--json").stdout
    )
    assert nexus("sessions", "-o", "name").stdout.split() == ids[::-1]
    assert nexus("sessions", "-q").stdout.split() == ids[::-1]
    lines = nexus("sessions", "--no-headers").stdout.splitlines()
    assert [x.split()[0] for x in lines] == ids[::-1]
    bad = nexus("sessions", "-o", "yaml")
    assert (bad.exit_code, bad.stderr.strip()) == (
        2,
        "error: unknown output 'yaml' (known: table, wide, json, name)",
    )


def test_dash_h_and_version_everywhere() -> None:
    """`-h` works as `--help` on every command and group; `--version`/`-V` prints it."""
    from nexus import __version__

    for args in ([], ["run"], ["sessions"], ["audit"], ["audit", "verify"], ["kill"]):
        short, long = nexus(*args, "-h"), nexus(*args, "--help")
        assert (short.exit_code, short.stdout) == (0, long.stdout)
        assert "Usage:" in short.stdout
    for flag in ("--version", "-V"):
        assert nexus(flag).stdout == f"nexus {__version__}\n"


def test_run_takes_labels_and_budgets_and_ends_with_a_summary(nexus_home: Path) -> None:
    """`--label` (repeatable) labels the session; `--max-steps` is its budget (the
    demo needs 9 steps: 3 fail it); the last line sums up the run."""
    result = nexus("run", "demo", "--replay", DEMO, "-l", "team=ops", "--label", "env=dev")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"completed · 9 steps · 75 tokens · \$0 · \d+(ms|\.\ds)", result.stdout.splitlines()[-1]
    )
    rt = Runtime(load_settings())
    assert rt.sessions()[0].labels == {"team": "ops", "env": "dev"}
    limited = nexus("run", "demo", "--replay", DEMO, "--max-steps", "3", "--max-cost", "1")
    assert limited.exit_code == 1
    assert limited.stdout.splitlines()[-1].startswith("failed · ")
    assert rt.sessions()[0].reason == "LimitExceeded: step limit reached: 3 of max_steps=3"
    bad = nexus("run", "demo", "--replay", DEMO, "--label", "novalue")
    assert (bad.exit_code, bad.stderr.strip()) == (
        2,
        "error: --label takes KEY=VALUE (got 'novalue')",
    )
    rt.store.close()


def test_session_ids_by_unique_prefix(nexus_home: Path) -> None:
    """Any unique prefix names a session (docker's habit) for status, logs, export,
    audit verify and kill; an ambiguous one names the candidates; none: exit 3."""
    rt = Runtime(load_settings())
    for sid in ("s_aaaa000000000001", "s_aaaa000000000002", "s_bbbb000000000003"):
        rt.journal.append(
            sid, "session.created", {"goal": sid, "agent": "assistant", "priority": 0}
        )
    assert json.loads(nexus("status", "s_bbbb", "--json").stdout)["id"] == "s_bbbb000000000003"
    for args in (["logs", "s_bb"], ["export", "s_bbb"], ["audit", "verify", "s_bbbb0"]):
        assert nexus(*args).exit_code == 0, args
    assert nexus("kill", "s_bbbb").exit_code == 0
    assert rt.session("s_bbbb000000000003").status == "killed"
    ambiguous = nexus("status", "s_aaaa")
    assert (ambiguous.exit_code, ambiguous.stderr.strip()) == (
        2,
        "error: 's_aaaa' is the start of several session ids: "
        "s_aaaa000000000001, s_aaaa000000000002",
    )
    assert nexus("status", "s_cccc").exit_code == 3
    assert nexus("kill", "s_cccc").exit_code == 3
    rt.store.close()


@pytest.mark.slow
def test_sessions_watch_prints_each_change(nexus_home: Path, tmp_path: Path) -> None:
    """`nexus sessions --watch` prints the list, then a line for each session that
    changes (a new one, a status change), until Ctrl-C (exit 0)."""
    log = tmp_path / "watch.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", "sessions", "--watch"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: log.read_text().startswith("ID"), "the header")
        sid = json.loads(nexus("run", "watched", "--replay", DEMO, "--json").stdout)["id"]
        wait_for(lambda: f"{sid}  completed" in log.read_text(), "the change shown")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert log.read_text().splitlines()[0].startswith("ID ")


def test_session_id_prefixes_work_through_a_server(nexus_home: Path) -> None:
    """`--server` resolves prefixes with the API's `GET /sessions/resolve/{prefix}`:
    unique works, ambiguous is exit 2 naming the candidates, unknown exit 3."""
    from tests.server.test_live import LiveServer

    rt = Runtime(load_settings())
    for sid in ("s_dddd000000000001", "s_dddd000000000002", "s_eeee000000000003"):
        rt.journal.append(
            sid, "session.created", {"goal": sid, "agent": "assistant", "priority": 0}
        )
    with LiveServer(workers=False) as live:
        status = nexus("status", "s_eeee", "--json", "--server", live.url)
        assert status.exit_code == 0, status.output
        assert json.loads(status.stdout)["id"] == "s_eeee000000000003"
        assert nexus("logs", "s_ee", "--server", live.url).exit_code == 0
        ambiguous = nexus("status", "s_dddd", "--server", live.url)
        assert ambiguous.exit_code == 2
        assert "is the start of several session ids: s_dddd000000000001" in ambiguous.stderr
        assert nexus("status", "s_ffff", "--server", live.url).exit_code == 3
    rt.store.close()


@pytest.mark.slow
def test_status_watch_prints_each_change_and_ends_with_the_session(
    nexus_home: Path, tmp_path: Path
) -> None:
    """`nexus status SESSION --watch` prints the session, then again each time it
    changes, and returns when it ends (here: killed from another process)."""
    rt = Runtime(load_settings())
    sid = rt.create_session("waits in the queue")
    log = tmp_path / "watch.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", "status", sid, "--watch"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "status  queued" in log.read_text(), "the first print")
        assert nexus("kill", sid, "--reason", "watched").exit_code == 0
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    statuses = [
        x.split()[-1] for x in log.read_text().splitlines() if x.strip().startswith("status")
    ]
    assert statuses == ["queued", "killed"]
    rt.store.close()
