"""A real uvicorn server: SSE delivery and resumption, heartbeats, slow clients,
the CLI's --server mode, and graceful shutdown with durable resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from nexus.cli.app import app as cli
from nexus.config import load_settings
from nexus.runtime.runtime import Runtime
from nexus.server.app import create_app
from nexus.server.broadcast import Broadcaster
from nexus.storage.sqlite import SQLiteStore
from tests.peers.openai_server import ThreadedPeerServer
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEMO = "demo.json"  # under NEXUS_HOME/recordings/ (conftest.py)


class LiveServer:
    """uvicorn on a free loopback port in a background thread."""

    def __init__(self, **app_options: Any) -> None:
        self.rt = Runtime(load_settings())
        self.app = create_app(self.rt, **app_options)
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on such sockets, and
        # without it every keep-alive response waits ~40 ms for a delayed ACK.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve)
        self.token = self.app.state.nexus.auth.tokens.read()
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def _serve(self) -> None:
        self.server.run(sockets=[self.sock])
        # The whole runtime, not only its store: its control watcher polls while a
        # session the stopped workers cancelled is still registered with it.
        asyncio.run(self.rt.aclose())

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_for(lambda: self.server.started, "server start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.app.state.nexus.broadcaster.close_all()
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    def post_session(self, **body: Any) -> dict[str, Any]:
        resp = httpx.post(f"{self.url}/api/v1/sessions", json=body, headers=self.headers)
        assert resp.status_code == 201, resp.text
        row: dict[str, Any] = resp.json()
        return row

    def stream(self, path: str, last_event_id: str | None = None) -> Iterator[tuple[str, str]]:
        """(event, data) pairs of an SSE stream; comments come as ("comment", text)."""
        headers = dict(self.headers)
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        with httpx.stream("GET", self.url + path, headers=headers, timeout=30) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            event = "message"
            for line in resp.iter_lines():
                if line.startswith(":"):
                    yield ("comment", line)
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    yield (event, line[6:])
                elif line == "":
                    event = "message"


@pytest.fixture
def peer_env(
    threaded_peer: ThreadedPeerServer, monkeypatch: pytest.MonkeyPatch
) -> ThreadedPeerServer:
    monkeypatch.setenv(
        "NEXUS_PROVIDERS",
        json.dumps([{"name": "peer", "base_url": threaded_peer.url, "model": "m"}]),
    )
    return threaded_peer


@pytest.mark.slow
def test_session_stream_delivers_the_journal_live_then_ends(peer_env: ThreadedPeerServer) -> None:
    """Opened while the session runs, the stream carries every event in order (ids =
    seq), then `end`; it matches the journal exactly."""
    peer_env.config.latency_ms = 150
    peer_env.config.script = [
        {"tool_calls": [{"name": "list_files", "arguments": {}}]},
        {"tool_calls": [{"name": "list_files", "arguments": {}}]},
        {"content": "listed twice"},
    ]
    with LiveServer() as live:
        sid = live.post_session(goal="list")["id"]
        received, ended = [], False
        for event, data in live.stream(f"/api/v1/sessions/{sid}/stream"):
            if event == "journal":
                received.append(json.loads(data))
            elif event == "end":
                ended = True
                break
        assert ended
        journal = [e.to_dict() for e in live.rt.journal.events(sid)]
        assert [e["seq"] for e in received] == list(range(1, len(journal) + 1))
        assert [(e["kind"], e["payload"], e["hash"]) for e in received] == [
            (e["kind"], e["payload"], e["hash"]) for e in journal
        ]
        assert received[-1]["kind"] == "session.completed"


@pytest.mark.slow
def test_last_event_id_resumes_after_that_event() -> None:
    """Reconnecting with Last-Event-ID N yields events N+1… only (session and global)."""
    with LiveServer() as live:
        sid = live.post_session(goal="demo", replay=DEMO)["id"]
        wait_for(lambda: live.rt.session(sid).status == "completed", "completion")
        seqs = [
            json.loads(d)["seq"]
            for e, d in live.stream(f"/api/v1/sessions/{sid}/stream", "5")
            if e == "journal"
        ]
        assert seqs == list(range(6, live.rt.session(sid).last_seq + 1))
        by_query = [
            json.loads(d)["seq"]
            for e, d in live.stream(f"/api/v1/sessions/{sid}/stream?after=7")
            if e == "journal"
        ]
        assert by_query == seqs[2:]  # ?after= for a first connect, header absent
        first_ids = []
        for event, data in live.stream("/api/v1/events/stream", "3"):
            if event == "journal":
                first_ids.append(json.loads(data)["id"])
                if len(first_ids) == 3:
                    break
        assert first_ids == [4, 5, 6]


@pytest.mark.slow
def test_a_stream_resumed_at_the_end_of_a_finished_session_ends_at_once() -> None:
    """Last-Event-ID = the last seq of a finished session: `end` and nothing else,
    whether the server reads the journal (first client) or answers from memory
    (second). With a 600 s heartbeat, waiting for one would time the client out."""
    with LiveServer(heartbeat_s=600) as live:
        sid = live.post_session(goal="demo", replay=DEMO)["id"]
        wait_for(lambda: live.rt.session(sid).status == "completed", "completion")
        last = str(live.rt.session(sid).last_seq)
        for _ in range(2):
            assert list(live.stream(f"/api/v1/sessions/{sid}/stream", last)) == [("end", "{}")]


@pytest.mark.slow
def test_a_client_far_behind_catches_up_in_buffer_sized_parts() -> None:
    """The all-sessions stream resumed from long ago sends one buffer's worth, then
    `resync`; resuming each time from there, the client gets every event once, in
    order (the rest used to be skipped silently)."""
    with LiveServer(sse_buffer=5) as live:
        sid = live.post_session(goal="demo", replay=DEMO)["id"]
        wait_for(lambda: live.rt.session(sid).status == "completed", "completion")
        total = live.rt.store.latest_event_id()
        ids: list[int] = []
        resyncs, last = 0, "0"
        while len(ids) < total:
            for event, data in live.stream("/api/v1/events/stream", last):
                if event == "journal":
                    ids.append(json.loads(data)["id"])
                    if len(ids) == total:
                        break
                elif event == "resync":
                    resyncs += 1
                    last = str(json.loads(data)["after"])
                    break
        assert ids == list(range(1, total + 1))
        assert resyncs == (total - 1) // 5


@pytest.mark.slow
def test_a_deflating_client_gets_a_complete_zlib_stream_of_the_same_frames() -> None:
    """With `Accept-Encoding: deflate` the stream is deflated (shared blocks, live
    and caught up): its bytes are one zlib stream, checksum and end included, of
    exactly what a plain client is sent."""
    with LiveServer() as live:
        sid = live.post_session(goal="demo", replay=DEMO, replay_pace_s=0.05)["id"]
        path = f"{live.url}/api/v1/sessions/{sid}/stream"

        def body(encoding: str) -> tuple[str | None, bytes]:
            headers = {**live.headers, "Accept-Encoding": encoding}
            with httpx.stream("GET", path, headers=headers, timeout=30) as resp:
                assert resp.status_code == 200
                return resp.headers.get("content-encoding"), b"".join(resp.iter_raw())

        zipped = body("gzip, deflate")  # opened while the session runs
        plain = body("identity")  # after the end: from the broadcaster's memory
        assert zipped[0] == "deflate" and plain[0] is None
        assert zlib.decompress(zipped[1]) == plain[1]
        assert plain[1].startswith(b"retry: 1000\n\n")
        assert plain[1].endswith(b"event: end\ndata: {}\n\n")
        seqs = [int(line[4:]) for line in plain[1].split(b"\n") if line.startswith(b"id: ")]
        last_seq = live.rt.session(sid).last_seq
        assert seqs == [*range(1, last_seq + 1), last_seq]  # every event, then `end`
        assert len(zipped[1]) * 2 < len(plain[1])


@pytest.mark.slow
def test_idle_streams_send_heartbeats() -> None:
    """An idle all-sessions stream sends `: ping` comments at the heartbeat interval."""
    with LiveServer(heartbeat_s=0.1) as live:
        pings = 0
        for event, _ in live.stream("/api/v1/events/stream"):
            if event == "comment":
                pings += 1
                if pings == 3:
                    break
        assert pings == 3


async def test_a_slow_client_is_dropped_and_told_to_resync(nexus_home: Path) -> None:
    """A client that does not drain its buffer and would pass the limit is cut off
    with a `resync` naming the last event it was given; a client that keeps up is
    not, and the writer never waits for either."""
    import asyncio

    from nexus.runtime.journal import Journal
    from nexus.server.sse import chunks

    store = SQLiteStore(nexus_home / "n.db")
    journal = Journal(store)
    created = {"goal": "g", "agent": "a", "priority": 0, "labels": {}}
    journal.append("s1", "session.created", created)
    b = Broadcaster(store, poll_s=0.01, buffer=3, coalesce_s=0)
    await b.start()
    slow = b.subscribe("s1", 1)
    fast = b.subscribe(None, 0)

    async def until(predicate: Any, what: str) -> None:
        deadline = time.monotonic() + 10
        while not predicate():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.01)

    for i in range(2):
        journal.append("s1", "note", {"i": i})
    await until(lambda: slow.buffered == 2 and fast.buffered == 2, "first batch")
    fast.take()  # the fast client drains; the slow one does not
    for i in range(2, 4):
        journal.append("s1", "note", {"i": i})
    await until(lambda: slow.overflowed, "overflow")
    assert not fast.overflowed and fast.buffered == 2
    assert slow.last_id == 3  # seq 2 and 3 were handed over, 4 and 5 refused
    out = [chunk async for chunk in chunks(b, slow, lambda: None)]
    assert out[-1] == b'id: 3\nevent: resync\ndata: {"after": 3}\n\n'
    assert b.subscribers == 1  # the slow one is gone
    await b.stop()
    store.close()


@pytest.mark.slow
def test_cli_reads_from_a_running_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read command works against a server with --server and NEXUS_TOKEN."""
    runner = CliRunner()
    with LiveServer() as live:
        sid = live.post_session(goal="demo", replay=DEMO)["id"]
        wait_for(lambda: live.rt.session(sid).status == "completed", "completion")
        monkeypatch.setenv("NEXUS_TOKEN", live.token)

        def run(*args: str) -> Any:
            result = runner.invoke(cli, [*args, "--server", live.url], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            return result.stdout

        local = live.rt.session(sid).to_dict()
        assert json.loads(run("sessions", "--json")) == [local]
        assert json.loads(run("status", sid, "--json")) == local
        followed = [json.loads(x) for x in run("logs", sid, "--follow", "--json").splitlines()]
        assert [e["seq"] for e in followed] == list(range(1, local["last_seq"] + 1))
        exported = json.loads(run("export", sid))
        assert [e["hash"] for e in exported["events"]] == [e["hash"] for e in followed]
        assert json.loads(run("audit", "verify", "--json"))["ok"] is True
        assert [a["name"] for a in json.loads(run("agents", "list", "--json"))] == ["assistant"]
        assert json.loads(run("config", "show", "--json"))["durability"] == "normal"
        result = runner.invoke(cli, ["status", "s_nope", "--server", live.url])
        assert result.exit_code == 3
        monkeypatch.setenv("NEXUS_TOKEN", "wrong")
        result = runner.invoke(cli, ["sessions", "--server", live.url])
        assert result.exit_code == 2 and "401" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_sigterm_shuts_down_gracefully_and_the_next_start_resumes(
    peer_env: ThreadedPeerServer, nexus_home: Path, tmp_path: Path
) -> None:
    """SIGTERM while a session waits on its LLM and a client streams: the server
    ends the stream, exits 0, loses nothing; the next start finishes the session."""
    peer_env.config.latency_ms = 60_000
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / "server.log").open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "nexus.cli", "start", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    proc = start()
    try:
        wait_for(up, "server up")
        token = CliRunner().invoke(cli, ["token", "show"]).stdout.strip()  # file or database
        auth = {"Authorization": f"Bearer {token}"}
        sid = httpx.post(f"{url}/api/v1/sessions", json={"goal": "wait"}, headers=auth).json()["id"]
        wait_for(lambda: len(peer_env.requests) == 1, "LLM call in flight")
        got: list[str] = []

        def watch() -> None:
            with httpx.stream(
                "GET", f"{url}/api/v1/events/stream", headers=auth, timeout=60
            ) as resp:
                for line in resp.iter_lines():
                    got.append(line)

        watcher = threading.Thread(target=watch)
        watcher.start()
        wait_for(lambda: len(got) >= 1, "stream open")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        watcher.join(30)
        assert not watcher.is_alive()
    finally:
        proc.kill()
        proc.wait()
    rt = Runtime(load_settings())
    assert rt.session(sid).status == "running"  # not failed: left for durable recovery
    peer_env.config.latency_ms = 0
    proc = start()
    try:
        wait_for(lambda: rt.session(sid).status == "completed", "resumed session completes")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    kinds = [e.kind for e in rt.journal.events(sid)]
    assert kinds.count("session.resumed") == 1 and kinds[-1] == "session.completed"
    rt.store.close()
