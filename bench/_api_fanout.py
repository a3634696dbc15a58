"""SSE fan-out: replayed sessions run one at a time, with and without listeners.

The server runs one session at a time. Each measured session is queued behind a
short "hold" session (one replayed answer, paced `hold_s`), so that listeners can
connect to its stream before it starts, as to any queued session. Modes:

    none     nobody listens: the baseline
    all      listeners on /api/v1/events/stream, connected before the round starts
    session  listeners on the session's own stream, connected while it is queued
    join     listeners on the session's own stream, connecting once it runs (so
             inside its worker time: 100 connections and catch-ups at once)

A session's worker time is from its `session.started` event to its
`session.completed` (its row's `updated_at`), on the server's clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._api_server import ServerProcess
from bench._sse_client import Crowd, listen

MODES = ("none", "all", "session", "join")
LISTENING = ("session", "join")  # modes with listeners on the session's stream
FINISHED = frozenset({"completed", "failed", "killed"})


@dataclass
class SessionRun:
    """One replayed session, as seen by the workers and by its listeners."""

    mode: str
    round: int
    session_id: str
    status: str
    events: int
    worker_s: float  # session.started -> session.completed
    started_at: float
    server_cpu_s: float  # the whole run: the hold session, waits and polls too
    client_cpu_s: float
    deliver_s: float = float("nan")  # session.started -> the last listener has every event
    lag_ms: float = float("nan")  # session.completed commit -> the last listener has it
    complete_clients: int = 0
    resyncs: int = 0
    errors: list[str] = field(default_factory=list)


class FanoutBench:
    """Runs replay sessions one at a time, with or without SSE listeners."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        server: ServerProcess,
        token: str,
        *,
        recording: Path,
        hold: Path,
        hold_s: float,
        expected_events: int,
        clients: int,
        poll_s: float,
        timeout_s: float,
        accept_encoding: str = "gzip, deflate",
    ) -> None:
        self.http = http
        self.server = server
        self.url = server.url
        self.token = token
        self.auth = {"Authorization": f"Bearer {token}"}
        self.recording = recording
        self.hold = hold
        self.hold_s = hold_s
        self.expected_events = expected_events
        self.clients = clients
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.accept_encoding = accept_encoding
        self.last_row_id = 0  # journal row id of the newest event of any session run here

    async def _post(self, recording: Path, pace_s: float = 0.0) -> str:
        body = {
            "goal": "list the workspace, again and again",
            "replay": str(recording),
            "replay_pace_s": pace_s,
            "budget": {"max_steps": 100_000},
            "labels": {"bench": "api-fanout"},
        }
        async with self.http.post(
            f"{self.url}/api/v1/sessions", json=body, headers=self.auth
        ) as resp:
            data = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"POST /api/v1/sessions: HTTP {resp.status}: {data}")
        return str(data["id"])

    async def _queue(self) -> str:
        """A hold session, then the measured one, queued behind it; its id."""
        await self._post(self.hold, self.hold_s)
        return await self._post(self.recording)

    async def _event(self, session_id: str, seq: int) -> dict[str, Any]:
        async with self.http.get(
            f"{self.url}/api/v1/sessions/{session_id}/events?after_seq={seq - 1}&limit=1",
            headers=self.auth,
        ) as resp:
            items: list[dict[str, Any]] = (await resp.json())["items"]
        if not items:
            raise RuntimeError(f"session {session_id} has no event {seq}")
        return items[0]

    async def _running(self, session_id: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            async with self.http.get(
                f"{self.url}/api/v1/sessions/{session_id}", headers=self.auth
            ) as resp:
                if (await resp.json())["status"] != "queued":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"session {session_id} still queued after {self.timeout_s} s")
            await asyncio.sleep(self.poll_s / 4)

    async def _finished(self, session_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            async with self.http.get(
                f"{self.url}/api/v1/sessions/{session_id}", headers=self.auth
            ) as resp:
                row: dict[str, Any] = await resp.json()
            if row["status"] in FINISHED:
                return row
            if time.monotonic() > deadline:
                raise RuntimeError(f"session {session_id} not finished after {self.timeout_s} s")
            await asyncio.sleep(self.poll_s)

    async def run_round(self, mode: str, rnd: int, sessions: int) -> list[SessionRun]:
        """`sessions` sessions one after another in one mode."""
        if mode == "all":
            return await self._round_all(rnd, sessions)
        out = []
        for _ in range(sessions):
            out.append(await self._one(mode, rnd))
        return out

    async def _one(self, mode: str, rnd: int) -> SessionRun:
        cpu0, ccpu0 = self.server.cpu_s(), time.process_time()
        session_id = await self._queue()
        crowd = Crowd(self.clients if mode in LISTENING else 0)
        tasks = []
        if mode == "join":
            await self._running(session_id)
        if mode in LISTENING:
            stream = f"{self.url}/api/v1/sessions/{session_id}/stream"
            tasks = [
                asyncio.create_task(
                    listen(
                        self.http,
                        stream,
                        self.token,
                        lis,
                        crowd,
                        accept_encoding=self.accept_encoding,
                    )
                )
                for lis in crowd.listeners
            ]
        try:
            if mode == "session":
                with contextlib.suppress(TimeoutError):  # late clients are reported
                    await asyncio.wait_for(crowd.all_connected.wait(), self.timeout_s)
            row = await self._finished(session_id)
            if tasks:
                _done, pending = await asyncio.wait(tasks, timeout=self.timeout_s)
                for t in pending:
                    t.cancel()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        run = await self._record(mode, rnd, row, cpu0, ccpu0)
        if mode in LISTENING:
            self._deliveries(run, crowd, row, run.started_at)
        if mode == "session":
            late = [lis for lis in crowd.listeners if lis.connected_at > run.started_at]
            if late:
                run.errors.append(f"{len(late)} clients connected after the session started")
        await self._note_last_row(row)
        return run

    async def _note_last_row(self, row: dict[str, Any]) -> None:
        """Remember the journal row id of the session's last event."""
        after = max(0, int(row["last_seq"]) - 1)
        async with self.http.get(
            f"{self.url}/api/v1/sessions/{row['id']}/events?after_seq={after}&limit=1",
            headers=self.auth,
        ) as resp:
            items = (await resp.json())["items"]
        if items:
            self.last_row_id = max(self.last_row_id, int(items[0]["id"]))

    async def _round_all(self, rnd: int, sessions: int) -> list[SessionRun]:
        crowd = Crowd(self.clients, after_id=self.last_row_id)
        stream = f"{self.url}/api/v1/events/stream"
        tasks = [
            asyncio.create_task(
                listen(
                    self.http, stream, self.token, lis, crowd, accept_encoding=self.accept_encoding
                )
            )
            for lis in crowd.listeners
        ]
        out = []
        try:
            await asyncio.wait_for(crowd.all_connected.wait(), self.timeout_s)
            start_id = self.last_row_id
            for _ in range(sessions):
                cpu0, ccpu0 = self.server.cpu_s(), time.process_time()
                session_id = await self._queue()
                row = await self._finished(session_id)
                # Every event since the crowd connected, the hold sessions' too (one
                # session runs at a time: the measured one's last event is the newest).
                await self._note_last_row(row)
                total = self.last_row_id - start_id
                crowd.expect(total)
                with contextlib.suppress(TimeoutError):  # short clients are reported
                    await asyncio.wait_for(crowd.all_done.wait(), self.timeout_s)
                run = await self._record("all", rnd, row, cpu0, ccpu0)
                self._deliveries(run, crowd, row, run.started_at, target=total)
                out.append(run)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return out

    async def _record(
        self, mode: str, rnd: int, row: dict[str, Any], cpu0: float, ccpu0: float
    ) -> SessionRun:
        server_cpu_s, client_cpu_s = self.server.cpu_s() - cpu0, time.process_time() - ccpu0
        started = await self._event(row["id"], 2)
        if started["kind"] != "session.started":
            raise RuntimeError(f"session {row['id']}: event 2 is {started['kind']}")
        run = SessionRun(
            mode=mode,
            round=rnd,
            session_id=row["id"],
            status=row["status"],
            events=int(row["last_seq"]),
            worker_s=float(row["updated_at"]) - float(started["ts"]),
            started_at=float(started["ts"]),
            server_cpu_s=server_cpu_s,
            client_cpu_s=client_cpu_s,
        )
        if run.status != "completed" or run.events != self.expected_events:
            run.errors.append(
                f"session {run.session_id} {run.status} with {run.events} events "
                f"(expected completed with {self.expected_events}): {row.get('reason')}"
            )
        return run

    def _deliveries(
        self,
        run: SessionRun,
        crowd: Crowd,
        row: dict[str, Any],
        t0: float,
        target: int | None = None,
    ) -> None:
        want = run.events if target is None else target
        complete = [
            lis
            for lis in crowd.listeners
            if lis.events == want
            and (target is not None or (lis.last_id == run.events and lis.ended))
            and not lis.out_of_order
        ]
        run.complete_clients = len(complete)
        run.resyncs = sum(lis.resyncs for lis in crowd.listeners)
        errors = collections.Counter(lis.error for lis in crowd.listeners if lis.error)
        run.errors += [f"{n} clients: {e}" for e, n in errors.items()]
        short = [lis.events for lis in crowd.listeners if lis.events != want]
        if short:
            run.errors.append(f"{len(short)} clients got {min(short)}..{max(short)} of {want}")
        if complete and len(complete) == len(crowd.listeners):
            last = max(lis.done_at for lis in complete)
            run.deliver_s = last - t0
            run.lag_ms = (last - float(row["updated_at"])) * 1000


def summarise_fanout(runs: list[SessionRun], clients: int) -> dict[str, Any]:
    """Per-mode figures and the ratios against `none`."""
    by_mode: dict[str, list[SessionRun]] = {m: [r for r in runs if r.mode == m] for m in MODES}
    out: dict[str, Any] = {}
    base = by_mode["none"]
    base_med = statistics.median(r.worker_s for r in base)
    base_mean = statistics.fmean(r.worker_s for r in base)
    for mode, rs in by_mode.items():
        if not rs:
            continue
        worker = [r.worker_s for r in rs]
        entry: dict[str, Any] = {
            "sessions": len(rs),
            "events_per_session": statistics.median(r.events for r in rs),
            "worker_s_p50": statistics.median(worker),
            "worker_s_mean": statistics.fmean(worker),
            "worker_s_min": min(worker),
            "worker_s_max": max(worker),
            "ratio_p50": statistics.median(worker) / base_med,
            "ratio_mean": statistics.fmean(worker) / base_mean,
            "journal_events_per_s": sum(r.events for r in rs) / sum(worker),
            "server_cpu_s_per_session": statistics.fmean(r.server_cpu_s for r in rs),
            "client_cpu_s_per_session": statistics.fmean(r.client_cpu_s for r in rs),
            "errors": [e for r in rs for e in r.errors],
        }
        if mode != "none":
            delivered = [r for r in rs if r.deliver_s == r.deliver_s]  # not NaN
            entry["clients"] = clients
            entry["complete_clients"] = sum(r.complete_clients for r in rs)
            entry["expected_clients"] = clients * len(rs)
            entry["resyncs"] = sum(r.resyncs for r in rs)
            extra_cpu = entry["server_cpu_s_per_session"] - statistics.fmean(
                r.server_cpu_s for r in base
            )
            per_session = clients * entry["events_per_session"]
            entry["server_cpu_us_per_delivered_event"] = extra_cpu / per_session * 1e6
            if delivered:
                events = sum(r.events * clients for r in delivered)
                entry["delivered_events_per_s"] = events / sum(r.deliver_s for r in delivered)
                entry["deliver_s_p50"] = statistics.median(r.deliver_s for r in delivered)
                entry["lag_ms_p50"] = statistics.median(r.lag_ms for r in delivered)
                entry["lag_ms_max"] = max(r.lag_ms for r in delivered)
        out[mode] = entry
    return out
