"""What `bench.scale` runs its sessions on: homes, worker processes, submission.

A *cluster* is one store (the SQLite file of one home, or one PostgreSQL database)
and the `nexus worker` processes that serve it. Each worker of a PostgreSQL
cluster has a home of its own (standing for a machine of its own) and a distinct
`NEXUS_WORKER_ID`; the homes share one `audit.key`, made in the first home (the
bench's) and copied, so every process signs with the same key. The agent is a
TOML file in every home, so the workers run it with no bench code inside them.

Sessions are journaled by the bench process (`Runtime.create_session`) and put
on the DBOS queue through one `DBOSClient`, as `dispatch.enqueue` does for one
session, but without a client (and a migration) per session.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from bench._common import ROOT, process_cpu_s, terminate
from nexus.config import load_settings
from nexus.runtime.audit import KEY_FILE
from nexus.runtime.runtime import Runtime
from nexus.storage.base import SessionQuery
from nexus.types import SessionStatus

AGENT = "scalebench"
LLM_CALLS = 2  # per session: the tool call, then the answer
FINISHED = [s.value for s in SessionStatus if s.finished]

_AGENT_TOML = f"""\
name = "{AGENT}"
system_prompt = "List the workspace's files once, then answer."
toolkits = ["workspace"]
"""


def script_peer(peer_url: str) -> None:
    """Make the peer answer every session's first call with a `list_files` call and
    its second with the text "done": two LLM calls and one tool step per session."""
    script = [{"tool_calls": [{"name": "list_files", "arguments": {}}]}]
    request = urllib.request.Request(
        f"{peer_url.removesuffix('/v1')}/_peer/config",
        data=json.dumps({"script": script}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        response.read()


def prepare_home(home: Path) -> None:
    """Create a home with the bench's agent in it."""
    agents = home / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    (agents / f"{AGENT}.toml").write_text(_AGENT_TOML, encoding="utf-8")


def share_audit_key(source: Path, home: Path) -> None:
    """Copy the first home's audit key into another home of the same database."""
    shutil.copy2(source / KEY_FILE, home / KEY_FILE)


def vm_hwm_mb(pid: int) -> float:
    """A process's peak resident set size (`VmHWM` in /proc), in MB; NaN if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Worker:
    """`python -m nexus.cli worker --concurrency N` in a child process.

    Its stderr goes to `worker-ID.log` in its home, shown if it fails to start.
    """

    def __init__(
        self,
        home: Path,
        *,
        worker_id: str,
        concurrency: int,
        providers: str,
        database_url: str | None,
    ) -> None:
        env = {
            **os.environ,
            "NEXUS_HOME": str(home),
            "NEXUS_PROVIDERS": providers,
            "NEXUS_WORKER_ID": worker_id,
        }
        env.pop("NEXUS_DATABASE_URL", None)
        if database_url is not None:
            env["NEXUS_DATABASE_URL"] = database_url
        self.log_path = home / f"worker-{worker_id}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        cmd = [sys.executable, "-m", "nexus.cli", "worker", "--concurrency", str(concurrency)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True
        )

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def wait_ready(self, timeout_s: float) -> None:
        """Until it prints `nexus worker ... ready`; `RuntimeError` if it does not."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline().strip() if ready else ""
        if "ready" not in line:
            self.close()
            tail = self.log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"nexus worker did not start (printed {line!r}):\n{tail}")

    def cpu_s(self) -> float:
        """CPU seconds it has used so far, all threads."""
        return process_cpu_s(self.pid)

    def peak_rss_mb(self) -> float:
        """Its peak resident set size so far."""
        return vm_hwm_mb(self.pid)

    def close(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL after 20 s."""
        terminate(self.proc, grace_s=20)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def open_runtime(home: Path, peer_url: str, database_url: str | None) -> Runtime:
    """The bench's own runtime on a cluster's store: it journals the sessions."""
    prepare_home(home)
    overrides: dict[str, Any] = {
        "home": home,
        "providers": [{"name": "peer", "base_url": peer_url, "model": "m"}],
    }
    if database_url is not None:
        overrides["database_url"] = database_url
    return Runtime(load_settings(**overrides))


class Submitter:
    """Journals sessions and puts them on the queue through one DBOS client."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._client: Any = None

    async def __aenter__(self) -> Submitter:
        from dbos import DBOS, DBOSClient

        from nexus.runtime.dispatch import system_url

        url = system_url(self.runtime.settings)
        await asyncio.to_thread(DBOS.migrate, url)  # before any worker has run
        self._client = await asyncio.to_thread(
            DBOSClient, system_database_url=url, application_name="nexus"
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._client.destroy)

    async def submit(self, n: int, *, label: str, gate: int = 16) -> list[str]:
        """Create `n` sessions and queue them, `gate` enqueues in flight at once."""
        from nexus.runtime.dispatch import QUEUE, WORKFLOW

        ids = [
            self.runtime.create_session(f"{label} {i}", agent=AGENT, labels={"bench": label})
            for i in range(n)
        ]
        version = self.runtime.settings.app_version
        limit = asyncio.Semaphore(gate)

        async def queue(session_id: str) -> None:
            options = {
                "queue_name": QUEUE,
                "workflow_name": WORKFLOW,
                "workflow_id": session_id,
                "app_version": version,
                "priority": 1,
            }
            async with limit:
                await self._client.enqueue_async(options, session_id)

        await asyncio.gather(*(queue(sid) for sid in ids))
        return ids


async def wait_finished(runtime: Runtime, total: int, timeout_s: float) -> None:
    """Until the session index holds `total` finished sessions (polled every 50 ms)."""
    deadline = time.monotonic() + timeout_s
    while runtime.store.count_sessions(FINISHED) < total:
        if time.monotonic() > deadline:
            done = runtime.store.count_sessions(FINISHED)
            raise TimeoutError(f"{done} of {total} sessions ended after {timeout_s:.0f} s")
        await asyncio.sleep(0.05)


def finished_rows(runtime: Runtime, label: str, n: int) -> list[Any]:
    """The sessions of one batch, each checked to have completed."""
    rows = runtime.store.sessions(SessionQuery(label=("bench", label), limit=n + 1))
    if len(rows) != n:
        raise RuntimeError(f"batch {label}: {len(rows)} sessions in the index, expected {n}")
    bad = [r for r in rows if r.status != SessionStatus.COMPLETED.value]
    if bad:
        first = bad[0]
        raise RuntimeError(
            f"batch {label}: {len(bad)} sessions did not complete; "
            f"{first.id} is {first.status}: {first.reason}"
        )
    return rows
