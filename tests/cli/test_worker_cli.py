"""`nexus worker --concurrency N` as an operator starts it: the option is the
setting, for every part sized from it, the LLM connection pool included."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nexus.config import load_settings
from nexus.runtime.dispatch import enqueue
from nexus.runtime.runtime import Runtime
from tests.peers.openai_server import ThreadedPeerServer
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def spawn_worker(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """`nexus worker` running this checkout's code (src first on the path)."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", "worker", *args],
            env={**os.environ, "PYTHONPATH": path, "NEXUS_QUEUE_POLL_S": "0.05"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_the_concurrency_option_sizes_the_llm_connection_pool(
    nexus_home: Path,
    tmp_path: Path,
    threaded_peer: ThreadedPeerServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the setting at 2 and `--concurrency 6`, six sessions run and all six
    have their LLM call at the peer at once. The pool used to be sized from the
    setting alone: it held two calls and queued the rest, and at 1,000 sessions in
    flight 152 of them failed when their call's deadline passed in that queue."""
    threaded_peer.config.latency_ms = 60_000  # every call is held until the worker stops
    providers = [{"name": "peer", "base_url": threaded_peer.url, "model": "m"}]
    monkeypatch.setenv("NEXUS_PROVIDERS", json.dumps(providers))
    monkeypatch.setenv("NEXUS_CONCURRENCY", "2")
    rt = Runtime(load_settings())
    ids = [rt.create_session(f"hold {i}") for i in range(6)]

    async def queue_all() -> None:
        for sid in ids:
            await enqueue(rt, sid)

    asyncio.run(queue_all())
    log = tmp_path / "worker.log"
    worker = spawn_worker("--concurrency", "6", log=log)
    try:
        wait_for(lambda: threaded_peer.server.in_flight == 6, "six LLM calls in flight", 60)
        assert [rt.session(sid).status for sid in ids] == ["running"] * 6
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
        rt.store.close()
    assert code == 0, log.read_text()
    assert threaded_peer.server.max_in_flight == 6
