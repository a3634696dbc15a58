"""Durable session dispatch on DBOS Transact. The only module that imports DBOS.

Each session is one DBOS workflow whose id is the session id, on one queue with
a priority and a concurrency limit. The workflow holds no DBOS steps: step
durability comes from the journal (a resumed session replays it), which costs a
fraction of a DBOS step per LLM or tool call. DBOS decides where and when a
session runs and hands unfinished ones back after a crash; the journal records
what already happened.

Known DBOS traps handled here (measured on DBOS 3.4):
* `application_version` and `executor_id` are pinned from settings, or PENDING
  sessions are not recovered after an upgrade or restart.
* Two live processes with one executor id would both "recover" each other's
  sessions, so each executor id is held by an exclusive file lock.
* DBOS priorities run lowest first and reject 0 when set; NEXUS priority `p`
  (0 = highest) is DBOS priority `p + 1`.
* A session is started at once when this worker has capacity (queue polling
  would add up to a polling interval of delay); otherwise it is queued. DBOS
  counts only the queue's own workflows against its concurrency, so sessions
  started directly and those it dequeues also share this worker's slots (a
  semaphore): without it, up to twice `concurrency` sessions ran at once.
* `launch()` is called inside the running loop so every workflow runs on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import signal
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import sqlalchemy
from dbos import DBOS, SetEnqueueOptions, SetWorkflowID

from nexus.errors import ConfigError
from nexus.runtime.runtime import Runtime
from nexus.types import SessionStatus

QUEUE = "nexus-sessions"
log = logging.getLogger("nexus.dispatch")

# DBOS adds its own stderr handler (and stops propagation) when its logger has
# none; a NullHandler keeps DBOS records flowing to ours, and to pytest's caplog.
logging.getLogger("dbos").addHandler(logging.NullHandler())

_runtime: Runtime | None = None
_slots: asyncio.Semaphore | None = None  # this worker's sessions in flight
_synchronous = "NORMAL"


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
def _tune_sqlite(dbapi_conn: Any, _record: Any) -> None:
    # DBOS's SQLite engine runs in rollback-journal mode with synchronous=FULL;
    # WAL with the journal's durability setting makes each workflow write cheaper.
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute(f"PRAGMA synchronous={_synchronous}")


@DBOS.workflow(name="nexus.session", max_recovery_attempts=50)
async def session_workflow(session_id: str) -> str:
    """Run one session to its end. Re-run from the top on recovery: the journal
    makes that a replay, not a repeat."""
    if _runtime is None or _slots is None:  # pragma: no cover - only after start()
        raise RuntimeError("no NEXUS runtime is attached to this DBOS process")
    async with _slots:  # still `queued` in the journal until a slot is free
        status = await _runtime.run(session_id)
    return status.value


class _DropCancelNoise(logging.Filter):
    """A cancelled session is an outcome, not an error: keep DBOS's logs clean."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Asyncio task cancelled for workflow"):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and type(exc).__name__ == "DBOSAwaitedWorkflowCancelledError")


class Dispatcher:
    """Runs sessions durably in this process. Use as `async with Dispatcher(rt):`.

    Args:
        runtime: the kernel whose sessions to run.
        concurrency: sessions in flight in this worker (default: settings).
    """

    def __init__(self, runtime: Runtime, *, concurrency: int | None = None) -> None:
        self.runtime = runtime
        self.concurrency = concurrency or runtime.settings.concurrency
        self._lock_file: IO[str] | None = None
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._handles: dict[str, Any] = {}

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Launch DBOS on this loop; unfinished sessions of this worker resume."""
        global _runtime, _slots, _synchronous
        s = self.runtime.settings
        self._lock_executor(s.home, s.worker_id)
        _runtime = self.runtime
        _slots = asyncio.Semaphore(self.concurrency)
        _synchronous = "FULL" if s.durability == "full" else "NORMAL"
        s.home.mkdir(parents=True, exist_ok=True)
        url = s.dbos_url
        if url is None:
            _enable_wal(s.dbos_path)
            url = f"sqlite:///{s.dbos_path}"
        logging.getLogger("dbos").addFilter(_DropCancelNoise())
        DBOS(
            config={
                "name": "nexus",
                "system_database_url": url,
                "application_version": s.app_version,
                "executor_id": s.worker_id,
                "log_level": "WARNING",
                "notification_listener_polling_interval_sec": 0.05,
            }
        )
        DBOS.launch()
        await DBOS.register_queue_async(
            QUEUE, worker_concurrency=self.concurrency, polling_interval_sec=s.queue_poll_s
        )
        # Sessions journaled as queued but never handed to DBOS (their creator died
        # between the two writes) are enqueued now; known ids are not run twice.
        for session_id in self.runtime.store.session_ids([SessionStatus.QUEUED.value]):
            row = self.runtime.store.session(session_id)
            await self.submit(session_id, priority=row.priority if row else 0, direct=False)

    async def submit(self, session_id: str, *, priority: int = 0, direct: bool = True) -> None:
        """Hand a journaled session to DBOS: started now if this worker has room,
        else queued by priority (0 = highest)."""
        if priority < 0:
            raise ConfigError("priority must be >= 0 (0 is the highest)")
        free = _slots is not None and not _slots.locked()
        with SetWorkflowID(session_id):
            if direct and free:
                handle = await DBOS.start_workflow_async(session_workflow, session_id)
            else:
                with SetEnqueueOptions(priority=priority + 1):
                    handle = await DBOS.enqueue_workflow_async(QUEUE, session_workflow, session_id)
        self._handles[session_id] = handle
        task = getattr(handle, "task", None)  # direct starts run as a task on this loop
        if isinstance(task, asyncio.Task):
            self._tasks[session_id] = task

    async def wait(self, session_id: str, *, poll_s: float = 0.02) -> SessionStatus:
        """Wait for a session to end; returns its final status."""
        handle = self._handles.get(session_id) or await DBOS.retrieve_workflow_async(session_id)
        value = await handle.get_result(polling_interval_sec=poll_s)
        self._handles.pop(session_id, None)
        self._tasks.pop(session_id, None)
        return SessionStatus(value)

    async def stop(self) -> None:
        """Stop this worker. Sessions in flight stay PENDING in DBOS and resume,
        from their journal, at the next start of this worker id."""
        global _runtime, _slots
        running = [t for t in self._tasks.values() if not t.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        DBOS.destroy(workflow_completion_timeout_sec=0)
        # DBOS leaves its shut-down thread pool as the loop's default executor.
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor())
        _runtime = None
        _slots = None
        self._tasks.clear()
        self._handles.clear()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _lock_executor(self, home: Path, worker_id: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        lock = (home / f"worker-{worker_id}.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(
                f"worker id {worker_id!r} is already running on {home}; stop it, or give this "
                "process another NEXUS_WORKER_ID"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock_file = lock


def _enable_wal(path: Path) -> None:
    # journal_mode=WAL is persistent in the file, so set it once before DBOS opens it.
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()


async def serve_forever(runtime: Runtime, *, concurrency: int | None = None) -> None:
    """Run a worker until SIGINT or SIGTERM, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Dispatcher(runtime, concurrency=concurrency):
        print(f"nexus worker {runtime.settings.worker_id} ready (pid {os.getpid()})", flush=True)
        await stop.wait()
    await runtime.aclose()
