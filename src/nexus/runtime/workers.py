"""Workers on many machines: their ids, heartbeats, and the supervisor that hands a
dead worker's sessions to the living.

Every worker process beats a row of the worker registry (`WorkerStore`) every
`heartbeat_s`. In every worker a supervisor runs too, but only the holder of the
`supervisor` lease acts: it declares dead each worker whose heartbeat is older than
`worker_timeout_s` (by the database's clock) and hands that worker's unfinished
sessions over through DBOS's own recovery of its executor id (`Dispatcher`).
A worker that stopped cleanly is handed over at once.

Declaring a worker dead does not stop it: a paused process or one cut off by a
network partition may come back. What keeps it from doing harm is the run epoch:
the worker that takes a session over claims it (`Store.claim_session`), which moves
the session's epoch on, and every append of the stale run is then refused in its
own transaction (`SessionFenced`); the stale run drops the session. Tools get the
epoch in `ToolContext` to fence their own side effects (the workspace toolkit does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
from collections.abc import Awaitable, Callable

from nexus.config import Settings
from nexus.storage.base import Store
from nexus.storage.workers import DEAD

log = logging.getLogger("nexus.workers")

LEASE = "supervisor"
ID_FILE = "worker-id"
_NOT_ID = re.compile(r"[^A-Za-z0-9._-]+")


def worker_identity(settings: Settings) -> str:
    """This process's worker id: `NEXUS_WORKER_ID` if set; `local` on the SQLite
    store (one machine); else the host name with a random suffix stored in the home
    (`NEXUS_HOME/worker-id`), so it survives restarts and two machines never share one."""
    if settings.worker_id is not None:
        return settings.worker_id
    if settings.database_url is None:
        return "local"
    path = settings.home / ID_FILE
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        stored = ""
    if stored:
        return stored
    host = _NOT_ID.sub("-", socket.gethostname()).strip("-.")[:48] or "host"
    made = f"{host}-{secrets.token_hex(3)}"
    settings.home.mkdir(parents=True, exist_ok=True)
    path.write_text(made + "\n", encoding="utf-8")
    return made


Recover = Callable[[str], Awaitable[int]]


class Supervisor:
    """Beats this worker's heartbeat and, while it holds the lease, hands over the
    sessions of workers that died or left.

    Args:
        store: the shared store (worker registry).
        worker_id: this process's worker (DBOS executor) id.
        role: `worker`, or `run` for `nexus run` (beats, never supervises).
        heartbeat_s: how often to beat (and supervise).
        timeout_s: a heartbeat older than this declares its worker dead.
        recover: hands one gone worker's unfinished sessions over; returns how many.
            None: this process only beats.
    """

    def __init__(
        self,
        store: Store,
        worker_id: str,
        *,
        role: str = "worker",
        heartbeat_s: float = 3.0,
        timeout_s: float = 15.0,
        recover: Recover | None = None,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.role = role
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.recover = recover
        self.host = socket.gethostname()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Register (a fresh start) and keep beating in the background."""
        await self._beat(starting=True)
        self._task = asyncio.create_task(self._forever(), name="nexus-supervisor")

    async def stop(self) -> None:
        """Stop beating and leave the registry cleanly: what this worker still had
        unfinished is handed over by the next supervisor round (or resumed here at
        the next start, whichever comes first)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await asyncio.to_thread(self.store.leave, self.worker_id)
        except Exception:
            log.exception("worker %s could not leave the registry", self.worker_id)

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.round()
            except Exception:  # the database away for a moment: beat again next round
                log.exception("worker %s: heartbeat or supervision failed", self.worker_id)

    async def round(self) -> list[str]:
        """One beat, and one supervision if this process holds the lease; returns the
        ids of the workers it declared gone."""
        await self._beat(starting=False)
        if self.recover is None:
            return []
        ttl = self.timeout_s
        if not await asyncio.to_thread(self.store.hold_lease, LEASE, self.worker_id, ttl):
            return []
        gone = await asyncio.to_thread(self.store.declare_gone, self.timeout_s)
        for worker in gone:
            moved = await self.recover(worker)
            log.warning(
                "worker %s is gone (no heartbeat for %.0f s, or stopped): %d unfinished "
                "session(s) handed to the living",
                worker,
                self.timeout_s,
                moved,
            )
        return gone

    async def _beat(self, *, starting: bool) -> None:
        before = await asyncio.to_thread(
            self.store.beat,
            self.worker_id,
            host=self.host,
            pid=os.getpid(),
            role=self.role,
            starting=starting,
        )
        if before == DEAD and not starting:
            log.warning(
                "worker %s was declared dead (its heartbeat stopped for over %.0f s): its "
                "sessions moved to other workers, and any it still runs here are fenced",
                self.worker_id,
                self.timeout_s,
            )


def workers_view(store: Store) -> list[dict[str, object]]:
    """Every registered worker as plain data, with the ids of the running sessions
    its runs own (`nexus workers`, `GET /api/v1/workers`)."""
    owned = store.running_by_worker()
    return [{**w.to_dict(), "sessions": owned.get(w.id, [])} for w in store.workers()]
