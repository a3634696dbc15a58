"""`nexus traces show`: a session's span tree as text (snapshot, durations masked) and
as JSON (the journal's tree), the same locally and through a server; a unique prefix
names a session, an unknown one exits 3."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

from nexus.config import load_settings
from nexus.observe.spans import build_trace
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.runtime import Runtime
from nexus.types import SessionStatus
from tests.cli.test_cli import nexus
from tests.observe.tracing import CRASH_ONCE, Crash, agents, call
from tests.snapshots import assert_snapshot

DURATION = re.compile(r"\b\d+(?:\.\d+)? (?:ms|s)\b|\b\d+ min \d+ s\b")


def crashed_and_resumed() -> str:
    """A tool that crashes the worker once, a tool that fails, an LLM call in flight
    at a second crash, each retried on resume; then the answer."""
    CRASH_ONCE.clear()
    script: list[object] = [
        {"tool_calls": [call("fragile", text="t"), call("explode", reason="disk on fire")]},
        Crash(),
        {"content": "done"},
    ]

    def runtime() -> Runtime:
        prov = ScriptedProvider(script, cost_per_call=0.0012, tokens=(300, 40))
        return Runtime(load_settings(), agents=agents(), provider=prov)

    async def go() -> str:
        sid = runtime().create_session("crash twice", agent="t")
        for _ in range(2):
            with contextlib.suppress(Crash):
                await runtime().run(sid)
        script[1] = {"content": "done"}
        assert await runtime().run(sid) is SessionStatus.COMPLETED
        return sid

    return asyncio.run(go())


def test_the_tree_as_text_shows_durations_tokens_cost_retries_and_failures() -> None:
    """Each span on one line under its parent, with the session's events among its
    steps: the whole output (durations masked) is the snapshot."""
    sid = crashed_and_resumed()
    result = nexus("traces", "show", sid[:8])  # a unique prefix is enough
    assert result.exit_code == 0, result.output
    assert_snapshot("traces_show", DURATION.sub("<t>", result.stdout))


def test_json_is_the_journal_s_tree_locally_and_through_a_server() -> None:
    """`--json` prints `Trace.to_dict()`; `--server` gives the same document and the
    same text, and an unknown session exits 3 either way."""
    from tests.server.test_live import LiveServer

    sid = crashed_and_resumed()
    local = nexus("traces", "show", sid, "--json")
    assert local.exit_code == 0, local.output
    rt = Runtime(load_settings())
    assert json.loads(local.stdout) == build_trace(rt.journal.events(sid)).to_dict()
    text = nexus("traces", "show", sid).stdout
    with LiveServer(workers=False) as live:
        remote = nexus("traces", "show", sid, "--json", "--server", live.url)
        assert remote.exit_code == 0, remote.output
        assert json.loads(remote.stdout) == json.loads(local.stdout)
        assert nexus("traces", "show", sid, "--server", live.url).stdout == text
        gone = nexus("traces", "show", "s_nothing", "--server", live.url)
        assert (gone.exit_code, gone.stdout) == (3, "")
    gone = nexus("traces", "show", "s_nothing")
    assert gone.exit_code == 3 and "no session 's_nothing'" in gone.stderr
