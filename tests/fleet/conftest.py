"""Fixtures of the many-machines tests: worker processes, each with a NEXUS_HOME of
its own (standing for a machine of its own), sharing one PostgreSQL database."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nexus.config import load_settings
from nexus.runtime.runtime import Runtime
from tests.fleet.worker import registry
from tests.peers.openai_server import ThreadedPeerServer

ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT_S = 0.3
TIMEOUT_S = 2.0


@dataclass
class Fleet:
    """Worker processes on one database, and a runtime of the test's own on it."""

    root: Path
    env: dict[str, str]
    rt: Runtime
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def effects(self) -> Path:
        return Path(self.env["FLEET_EFFECTS"])

    def home(self, name: str) -> Path:
        return self.root / f"machine-{name}"

    def start(self, name: str) -> subprocess.Popen[bytes]:
        """Start (or restart) the worker of machine `name`; its id is derived from the
        host name and the suffix its home keeps."""
        home = self.home(name)
        home.mkdir(parents=True, exist_ok=True)
        # One audit key for the fleet, as a deployment distributes it (docs/deployment.md).
        shutil.copy(self.rt.settings.home / "audit.key", home / "audit.key")
        with (self.root / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fleet.worker"],
                cwd=ROOT,
                env={**self.env, "NEXUS_HOME": str(home)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)
        if sig == signal.SIGKILL:
            self.procs[name].wait(10)

    def worker_id(self, name: str) -> str:
        return (self.home(name) / "worker-id").read_text().strip()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def effect_log(self) -> list[str]:
        path = self.effects / "log"
        return path.read_text().splitlines() if path.exists() else []

    def close(self) -> None:
        """Stop every worker, then the test's runtime."""
        self.stop()
        import asyncio

        asyncio.run(self.rt.aclose())

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def open_fleet(
    tmp_path: Path, url: str, peer: ThreadedPeerServer, monkeypatch: pytest.MonkeyPatch
) -> Fleet:
    """A fleet on the database at `url` (the test's runtime on it too)."""
    monkeypatch.setenv("NEXUS_DATABASE_URL", url)
    effects = tmp_path / "effects"
    effects.mkdir()
    env = dict(os.environ)
    env.update(
        NEXUS_DATABASE_URL=url,
        NEXUS_PROVIDERS=f'[{{"name": "peer", "base_url": "{peer.url}", "model": "m"}}]',
        NEXUS_QUEUE_POLL_S="0.05",
        NEXUS_HEARTBEAT_S=str(HEARTBEAT_S),
        NEXUS_WORKER_TIMEOUT_S=str(TIMEOUT_S),
        FLEET_EFFECTS=str(effects),
        FLEET_RELEASE=str(tmp_path / "release"),
        PYTHONPATH=str(ROOT),
    )
    env.pop("NEXUS_WORKER_ID", None)
    rt = Runtime(load_settings(), agents=registry())
    rt.journal.keys.current()  # the fleet's audit key, made once here
    return Fleet(tmp_path, env, rt)


@pytest.fixture
def fleet(
    tmp_path: Path,
    nexus_home: Path,
    threaded_peer: ThreadedPeerServer,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Fleet]:
    fleet = open_fleet(tmp_path, postgres_url, threaded_peer, monkeypatch)
    try:
        yield fleet
    finally:
        fleet.close()
