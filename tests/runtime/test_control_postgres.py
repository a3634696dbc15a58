"""The control channel across processes on PostgreSQL: a command posted by another
process reaches the runner through the posting transaction's NOTIFY, not a poll."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexus.config import load_settings
from nexus.runtime.dispatch import Dispatcher
from nexus.runtime.runtime import Runtime
from nexus.storage.postgres import Listener
from nexus.storage.wake import COMMANDS
from nexus.types import SessionStatus
from tests.peers.openai_server import ThreadedPeerServer
from tests.runtime.test_control import registry
from tests.storage.test_wake import NEVER_S
from tests.waiting import until

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_a_kill_from_another_process_reaches_the_runner_through_notify(
    postgres_url: str,
    threaded_peer: ThreadedPeerServer,
    nexus_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`nexus kill` in another process (another NEXUS_HOME, the same database) stops
    a session whose LLM call is in flight here. This process's watcher polls every
    5 s, but only every hour while its listen connection is up, as it is before the
    session starts: the kill can only have come by NOTIFY. The session ends killed,
    by that sender, with one LLM call."""
    monkeypatch.setenv("NEXUS_DATABASE_URL", postgres_url)
    monkeypatch.setenv(
        "NEXUS_PROVIDERS",
        json.dumps([{"name": "peer", "base_url": threaded_peer.url, "model": "m"}]),
    )
    threaded_peer.config.latency_ms = 30_000
    rt = Runtime(load_settings(control_poll_s=5, queue_poll_s=0.05), agents=registry(nexus_home))
    listener = rt.store.wakeup()
    assert isinstance(listener, Listener)
    listener.safety_s = NEVER_S
    opener = listener.waiter(COMMANDS)  # the listener is up before the watcher first waits
    await until(lambda: listener.live, "the listener")
    async with Dispatcher(rt) as d:
        sid = rt.create_session("think hard", agent="c")
        await d.submit(sid)
        await until(lambda: len(threaded_peer.requests) == 1, "LLM call in flight")
        other_home = tmp_path / "other-home"
        env = {
            **os.environ,
            "NEXUS_HOME": str(other_home),
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        }
        sender = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nexus.cli", "kill", sid, "--reason", "from elsewhere",
            "--json", env=env, cwd=ROOT, stdout=subprocess.PIPE,
        )  # fmt: skip
        out, _ = await sender.communicate()
        assert sender.returncode == 0
        async with asyncio.timeout(60):
            assert await d.wait(sid) is SessionStatus.KILLED
    posted = json.loads(out)["command"]
    killed = rt.journal.events(sid)[-1]
    assert (killed.kind, killed.payload["command"], killed.payload["by"]) == (
        "session.killed",
        posted["id"],
        posted["by"],
    )
    row = rt.session(sid)
    assert (row.status, row.reason, len(threaded_peer.requests)) == (
        "killed",
        "from elsewhere",
        1,
    )
    assert rt.journal.verify(sid).ok
    opener.close()
    await rt.aclose()
