"""The `nexus` command: every read command with --json, meaningful exit codes,
and the README's main job (a recorded session replayed offline)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nexus.cli.app import app
from nexus.examples import demo_recording
from nexus.format import money
from tests.peers.openai_server import ThreadedPeerServer
from tests.stores import journal_sql

ROOT = Path(__file__).resolve().parents[2]
DEMO = demo_recording()
runner = CliRunner()


def nexus(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def run_demo() -> dict[str, Any]:
    result = nexus("run", "Summarise the notes", "--replay", str(DEMO), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_main_job_replays_the_recorded_session_offline(nexus_home: Path) -> None:
    """README's main job: the shipped recording runs through the whole kernel with no
    LLM service, and its tools really write the report into the workspace."""
    row = run_demo()
    assert {k: row[k] for k in ("status", "agent", "steps", "reason")} == {
        "status": "completed",
        "agent": "assistant",
        "steps": 9,
        "reason": "completed",
    }
    report = nexus_home / "workspaces" / row["id"] / "report.md"
    assert report.read_text().startswith("# Sprint report")


def test_console_script_runs_the_demo_with_a_live_timeline(nexus_home: Path) -> None:
    """The installed `nexus` script prints each step as it happens and exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "nexus.cli", "run", "demo", "--replay", str(DEMO)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("session s_")
    assert sum("tool result write_file" in x for x in lines) == 2
    assert "→ report.md is written" in lines[-3] and "completed 9 steps" in lines[-2]
    assert lines[-1].startswith("completed · 9 steps · 75 tokens · ")  # the summary


def test_run_without_any_provider_fails_in_one_line() -> None:
    """No provider configured and no Ollama: exit 2 and one line saying what to do."""
    result = nexus("run", "hello")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "no LLM provider" in message and "NEXUS_PROVIDERS" in message
    assert "--replay" in message


def test_run_against_an_http_provider(
    threaded_peer: ThreadedPeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configured OpenAI-compatible provider drives the session over HTTP."""
    monkeypatch.setenv(
        "NEXUS_PROVIDERS",
        json.dumps([{"name": "peer", "base_url": threaded_peer.url, "model": "m"}]),
    )
    threaded_peer.config.script = [
        {"tool_calls": [{"name": "write_file", "arguments": {"path": "a.md", "content": "A"}}]},
        {"content": "wrote a.md"},
    ]
    result = nexus("run", "write a.md")
    assert result.exit_code == 0, result.output
    assert "tool write_file" in result.stdout and "→ wrote a.md" in result.stdout
    assert "completed" in result.stdout.splitlines()[-1]
    assert len(threaded_peer.requests) == 2


def test_failed_session_exits_1(
    threaded_peer: ThreadedPeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session that fails (malformed provider answer) exits 1 with the reason shown."""
    monkeypatch.setenv(
        "NEXUS_PROVIDERS",
        json.dumps([{"name": "peer", "base_url": threaded_peer.url, "model": "m", "retries": 0}]),
    )
    threaded_peer.config.malformed = "no_choices"
    result = nexus("run", "get garbage")
    assert result.exit_code == 1
    assert "failed ProviderResponseError" in result.stdout


def test_read_commands_speak_json(tmp_path: Path) -> None:
    """sessions, status, logs, export, audit verify, agents list, config show: --json."""
    row = run_demo()
    sid = row["id"]
    listed = json.loads(nexus("sessions", "--json").stdout)
    assert [r["id"] for r in listed] == [sid]
    assert json.loads(nexus("sessions", "--status", "failed", "--json").stdout) == []
    assert json.loads(nexus("status", sid, "--json").stdout) == row
    events = [json.loads(x) for x in nexus("logs", sid, "--json").stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, row["last_seq"] + 1))
    assert events[-1]["kind"] == "session.completed"
    out = tmp_path / "export.json"
    assert nexus("export", sid, "-o", str(out)).exit_code == 0
    exported = json.loads(out.read_text())
    assert exported["session"] == row and exported["events"] == events
    audit = json.loads(nexus("audit", "verify", "--json").stdout)
    checkpoint = audit.pop("checkpoint")
    assert audit == {
        "ok": True,
        "sessions": 1,
        "events": len(events),
        "first_problem": None,
        "unkeyed_events": 0,
    }
    assert checkpoint == {
        "id": checkpoint["id"],
        "ts": checkpoint["ts"],
        "key_id": checkpoint["key_id"],
        "sessions": checkpoint["sessions"],
    }
    agents = json.loads(nexus("agents", "list", "--json").stdout)
    assert [a["name"] for a in agents] == ["assistant"]
    config = json.loads(nexus("config", "show", "--json").stdout)
    assert config["durability"] == "normal"


def test_exported_session_replays(tmp_path: Path) -> None:
    """`nexus export` output is a valid `--replay` source."""
    sid = run_demo()["id"]
    out = tmp_path / "again.json"
    nexus("export", sid, "-o", str(out))
    result = nexus("run", "again", "--replay", str(out), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["steps"] == 9


def test_logs_shows_a_readable_timeline() -> None:
    """LLM calls with model/tokens/cost/latency, tool calls with arguments and results."""
    sid = run_demo()["id"]
    text = nexus("logs", sid).stdout
    assert f"llm demo-1 10+5 tok {money(0.0)} " in text
    assert 'tool read_file({"path": "notes.md"})' in text
    assert "tool result list_files" in text and '["notes.md"]' in text


def test_follow_on_a_finished_session_prints_everything_and_ends() -> None:
    """`logs --follow` ends by itself once the session has ended."""
    sid = run_demo()["id"]
    result = nexus("logs", sid, "--follow", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout.splitlines()[-1])["kind"] == "session.completed"


def test_unknown_session_exits_3() -> None:
    """Commands on a session id that does not exist exit 3 and say so."""
    for cmd in (
        ["status", "s_nope"],
        ["logs", "s_nope"],
        ["export", "s_nope"],
        ["audit", "verify", "s_nope"],
    ):
        result = nexus(*cmd)
        assert result.exit_code == 3, cmd
        assert "no session 's_nope'" in result.stderr


def test_tampering_exits_4_naming_the_row() -> None:
    """Editing a journal row behind NEXUS's back is found by `nexus audit verify`."""
    sid = run_demo()["id"]
    journal_sql("UPDATE events SET payload = replace(payload, 'notes', 'NOTES') WHERE seq = 4")
    result = nexus("audit", "verify")
    assert result.exit_code == 4
    assert f"TAMPERED session {sid} seq 4: tampered" in result.stdout


def test_bad_setting_exits_2_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad setting fails at start with the setting's name and the accepted values."""
    monkeypatch.setenv("NEXUS_DURABILITY", "sometimes")
    result = nexus("sessions")
    assert result.exit_code == 2
    assert "NEXUS_DURABILITY: Input should be 'normal' or 'full'" in result.stderr
    assert nexus("config", "show").exit_code == 2


def test_agents_from_toml_are_listed_and_broken_ones_refused(nexus_home: Path) -> None:
    """Agents under NEXUS_HOME/agents/ are listed; a broken file is named in the error."""
    agents = nexus_home / "agents"
    agents.mkdir(parents=True)
    (agents / "researcher.toml").write_text(
        'name = "researcher"\nsystem_prompt = "Research."\ntoolkits = ["http"]\n'
        "[limits]\nmax_steps = 7\n"
    )
    listed = json.loads(nexus("agents", "list", "--json").stdout)
    assert [(a["name"], a["toolkits"], a["limits"]["max_steps"]) for a in listed] == [
        ("assistant", ["workspace", "http"], 50),
        ("researcher", ["http"], 7),
    ]
    (agents / "broken.toml").write_text("name = [unclosed\n")
    result = nexus("agents", "list")
    assert result.exit_code == 2 and "broken.toml" in result.stderr


def test_start_refuses_a_public_address_without_auth() -> None:
    """`nexus start --no-auth` is only allowed on loopback."""
    result = nexus("start", "--host", "0.0.0.0", "--no-auth")
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in result.stderr


@pytest.mark.sqlite_only  # on PostgreSQL the token is in the database (test_stateless.py)
def test_token_show_and_rotate(nexus_home: Path) -> None:
    """The token is made on first use (0600), shown, and replaced by rotate."""
    first = nexus("token", "show").stdout.strip()
    path = nexus_home / "api-token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert nexus("token", "show").stdout.strip() == first
    rotated = nexus("token", "rotate").stdout.strip()
    assert rotated != first and len(rotated) == 43
    assert path.read_text().strip() == rotated


def test_a_label_key_with_a_quote_is_refused_clearly() -> None:
    """A label filter that cannot be expressed is a usage error, not a SQL error."""
    run_demo()
    result = nexus("sessions", "--label", 'a"b=1')
    assert result.exit_code == 2
    assert "label key 'a\"b' is invalid" in result.stderr


# -- audit: damage and the keyed checks ------------------------------------------------


def damaged_home(nexus_home: Path) -> tuple[str, Path]:
    """A home whose one demo session's database then had pages zeroed in the middle."""
    from tests.storage.damage import settle, zero_pages

    sid = run_demo()["id"]
    db = nexus_home / "nexus.db"
    settle(db)
    pages = db.stat().st_size // 4096
    zero_pages(db, min(20, pages - 4))
    return sid, db


@pytest.mark.sqlite_only
def test_every_read_path_on_a_damaged_database_exits_2_in_one_line(nexus_home: Path) -> None:
    """sessions, status, logs and audit verify on a damaged nexus.db: exit 2 and one line
    naming the file and what to do, never a traceback; `run` refuses to write into it."""
    sid, db = damaged_home(nexus_home)
    before = db.read_bytes()
    for cmd in (
        ["sessions"],
        ["status", sid],
        ["logs", sid],
        ["audit", "verify"],
        ["audit", "verify", "--json"],
        ["run", "more", "--replay", str(DEMO)],
    ):
        result = nexus(*cmd)
        assert result.exit_code == 2, (cmd, result.output)
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1, (cmd, message)
        assert message.startswith(f"error: database {db} is damaged ("), (cmd, message)
        assert message.endswith("restore from backup or run `sqlite3 nexus.db .recover`")
        assert result.stdout == ""
    assert db.read_bytes() == before


@pytest.mark.sqlite_only
def test_an_emptied_database_is_refused_not_taken_for_new(nexus_home: Path) -> None:
    """A zero-length nexus.db in a home with an audit key: every command exits 2 saying
    so, and the file stays empty (no new database over the lost sessions)."""
    from tests.storage.damage import empty

    run_demo()
    db = nexus_home / "nexus.db"
    empty(db)
    for cmd in (["sessions"], ["audit", "verify"], ["run", "again", "--replay", str(DEMO)]):
        result = nexus(*cmd)
        assert result.exit_code == 2, (cmd, result.output)
        assert f"database {db} is damaged (it is empty, but {nexus_home} holds" in result.stderr
    assert db.read_bytes() == b""


def test_deleting_a_whole_session_exits_4() -> None:
    """A checkpoint signs every session's head: deleting a session's events and index
    row, which the unkeyed chain let pass, is TAMPERED."""
    sid = run_demo()["id"]
    result = nexus("audit", "checkpoint")
    assert result.exit_code == 0 and result.stdout.endswith(": 1 sessions signed\n")
    journal_sql("DELETE FROM events WHERE session_id = ?", sid)
    journal_sql("DELETE FROM sessions WHERE id = ?", sid)
    result = nexus("audit", "verify")
    assert result.exit_code == 4
    assert f"TAMPERED session {sid} seq 1: missing event: the whole session is gone" in (
        result.stdout
    )


def test_rotate_key_keeps_old_events_verifiable(nexus_home: Path) -> None:
    """`audit rotate-key` adds a key to the runtime's key file (NEXUS_HOME/audit.key, on
    both stores: it once wrote beside the store's path, a URL on PostgreSQL), keeps the old
    one and signs a checkpoint; the audit still passes, and sessions after it are signed
    with the new key."""
    run_demo()
    old = json.loads((nexus_home / "audit.key").read_text())
    result = nexus("audit", "rotate-key")
    assert result.exit_code == 0, result.output
    new = json.loads((nexus_home / "audit.key").read_text())
    assert new["current"] != old["current"]
    assert set(new["keys"]) == {old["current"], new["current"]}
    assert f"audit key {new['current']} in {nexus_home / 'audit.key'};" in result.stdout
    sid = run_demo()["id"]
    key_ids = {k for (k,) in journal_sql("SELECT key_id FROM events WHERE session_id = ?", sid)}
    assert key_ids == {new["current"]}
    verified = nexus("audit", "verify")
    assert verified.exit_code == 0, verified.output
    assert "2 sessions, chains intact, checkpoint #" in verified.stdout


@pytest.mark.sqlite_only
def test_a_damaged_dbos_database_is_named_by_worker_and_start(nexus_home: Path) -> None:
    """`dbos.sqlite` cut in half: `nexus worker` exited 1 and `nexus start` 3, with a
    DBOS traceback naming no file. Both now exit 2 with one line naming the file."""
    from tests.storage.damage import truncate

    for i in range(40):  # enough workflows for a file of many pages
        run_demo() if i == 0 else nexus("run", f"job {i} " + "x" * 2000, "--replay", str(DEMO))
    dbos = nexus_home / "dbos.sqlite"
    truncate(dbos)
    for cmd in (["worker"], ["start", "--port", "0"]):
        result = nexus(*cmd)
        assert result.exit_code == 2, (cmd, result.output)
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1, (cmd, message)
        assert message.startswith(f"error: database {dbos} is damaged ("), (cmd, message)
