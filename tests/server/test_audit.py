"""`GET /api/v1/audit/verify` walks the whole journal off the event loop: the server
answers other requests meanwhile, and sessions written during the walk are not
taken for tampering."""

from __future__ import annotations

import asyncio
import json
import select
import socket
from typing import Any

import httpx

from nexus.config import load_settings
from nexus.runtime.runtime import Runtime
from tests.server.test_live import LiveServer

SESSIONS, EVENTS_EACH = 100, 200  # a journal of 20,100 rows


def write_journal() -> None:
    """A journal large enough that walking it takes many request round trips."""
    rt = Runtime(load_settings())

    async def fill() -> None:
        ids = [rt.create_session(f"audit {i}") for i in range(SESSIONS)]
        for n in range(EVENTS_EACH):  # concurrent appends share a transaction
            await asyncio.gather(
                *(rt.journal.append_async(s, "note", {"n": n, "text": "x" * 200}) for s in ids)
            )

    try:
        asyncio.run(fill())
    finally:
        rt.store.close()


class RawRequest:
    """An HTTP/1.1 keep-alive connection driven by hand: the request is in the
    server's socket when `send` returns, and `answered` tells, without waiting,
    whether any of the response has come back."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.file = self.sock.makefile("rb")

    def send(self, path: str, headers: dict[str, str]) -> None:
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def answered(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])

    def response(self) -> tuple[int, Any]:
        status = int(self.file.readline().split()[1])
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, json.loads(self.file.read(length))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_a_long_verify_does_not_hold_up_other_requests_or_concurrent_writers() -> None:
    """Once a verify of 20,000 rows is in the server's hands, three health checks are
    answered one after another before it is, and another writer appends to an old
    session and creates a new one; the verify then reports every chain intact (rows
    written after its snapshot are not "missing")."""
    write_journal()
    writer = Runtime(load_settings())
    with LiveServer(workers=False) as live:
        raw = RawRequest(live.url)
        raw.send("/healthz", {})  # the connection is open on the server's side
        assert raw.response() == (200, {"status": "ok"})
        with httpx.Client(base_url=live.url, timeout=60) as client:
            assert client.get("/healthz").status_code == 200
            raw.send("/api/v1/audit/verify", live.headers)
            for _ in range(3):
                assert client.get("/healthz").json() == {"status": "ok"}
                assert not raw.answered(), "a health check waited for the verify"
            old = writer.sessions()[-1].id
            writer.journal.append(old, "note", {"n": "late"})
            fresh = writer.create_session("written during the verify")
            assert not raw.answered(), "the verify ended before the writes (journal too small?)"
        status, body = raw.response()
        raw.close()
        assert (status, body["ok"], body["first_problem"]) == (200, True, None)
        # Its snapshot may or may not hold the two late writes; nothing else.
        assert body["sessions"] in (SESSIONS, SESSIONS + 1)
        assert SESSIONS * (EVENTS_EACH + 1) <= body["events"] <= SESSIONS * (EVENTS_EACH + 1) + 2
        after = httpx.get(f"{live.url}/api/v1/audit/verify", headers=live.headers).json()
        assert {k: after[k] for k in ("ok", "sessions", "events", "first_problem")} == {
            "ok": True,
            "sessions": SESSIONS + 1,
            "events": SESSIONS * (EVENTS_EACH + 1) + 2,
            "first_problem": None,
        }
        assert writer.session(fresh).status == "queued"
    writer.store.close()
