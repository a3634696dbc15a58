"""`GET /api/v1/workers` and `nexus workers`: the server's own worker, its heartbeat
and the session it runs, the same from the API and from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.server.test_api import Api
from tests.server.test_control_api import SLOW, in_llm_step, start

ROOT = Path(__file__).resolve().parents[2]


async def test_the_api_and_the_cli_list_the_worker_and_the_session_it_runs(
    live_api: Api,
) -> None:
    """A server with workers is registered as a worker (alive, beating); the running
    session is listed under it; `nexus workers --json` reads the same rows."""
    sid = await start(live_api, SLOW)
    await in_llm_step(live_api, sid)
    resp = await live_api.get("/api/v1/workers")
    assert resp.status_code == 200, resp.text
    (row,) = resp.json()["items"]
    worker = live_api.rt.worker_id
    assert {k: row[k] for k in ("id", "role", "pid", "status", "sessions")} == {
        "id": worker,
        "role": "worker",
        "pid": os.getpid(),
        "status": "alive",
        "sessions": [sid],
    }
    assert 0 <= row["age_s"] < row["heartbeat_at"] and row["started_at"] <= row["heartbeat_at"]
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "nexus"), "workers", "--json"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    (listed,) = json.loads(cli.stdout)
    same = ("id", "host", "pid", "role", "status", "sessions", "started_at")
    assert {k: listed[k] for k in same} == {k: row[k] for k in same}
    await live_api.post(f"/api/v1/sessions/{sid}/kill", json={"reason": "done looking"})
