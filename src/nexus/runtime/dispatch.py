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
* `nexus run` is not a worker: it runs its one session under an executor id of its
  own (`run-<session id>`), beside any worker or server on the same home, and never
  serves the queue. If it dies, the next worker on the home adopts that executor's
  unfinished session (its lock file is free) and re-queues it.
* Only sessions DBOS does not know are queued at start: enqueueing a known id
  (started directly, so on no queue) made DBOS warn "Workflow already exists in
  queue" on every `nexus run`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import signal
import sqlite3
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import sqlalchemy
from dbos import DBOS, SetEnqueueOptions, SetWorkflowID, WorkflowHandleAsync
from dbos._error import DBOSNonExistentWorkflowError

from nexus import events as ev
from nexus.config import Settings
from nexus.errors import ConfigError, DispatchError, SessionFenced, StorageCorrupt
from nexus.runtime.audit import Checkpointer
from nexus.runtime.control import RESUME, resume_pending
from nexus.runtime.runtime import Runtime
from nexus.runtime.workers import Supervisor
from nexus.storage.base import CommandRow
from nexus.storage.sqlite import check_sqlite_file
from nexus.types import Event, SessionStatus

QUEUE = "nexus-sessions"
WORKFLOW = "nexus.session"
SOLO_PREFIX = "run-"  # executor ids of `nexus run` processes
ADOPT_AFTER_S = 5.0  # a solo lock file younger than this may still be being taken
log = logging.getLogger("nexus.dispatch")

# DBOS adds its own stderr handler (and stops propagation) when its logger has
# none; a NullHandler keeps DBOS records flowing to ours, and to pytest's caplog.
logging.getLogger("dbos").addHandler(logging.NullHandler())

_active: Dispatcher | None = None  # the one dispatcher of this process, once started
_synchronous = "NORMAL"


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
def _tune_sqlite(dbapi_conn: Any, _record: Any) -> None:
    # DBOS's SQLite engine runs in rollback-journal mode with synchronous=FULL;
    # WAL with the journal's durability setting makes each workflow write cheaper.
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute(f"PRAGMA synchronous={_synchronous}")


@DBOS.workflow(name=WORKFLOW, max_recovery_attempts=50)
async def session_workflow(session_id: str) -> str:
    """Run one session to its end. Re-run from the top on recovery: the journal
    makes that a replay, not a repeat."""
    dispatcher = _active
    if dispatcher is None:  # pragma: no cover - only after start()
        raise RuntimeError("no NEXUS runtime is attached to this DBOS process")
    async with dispatcher.slots:  # still `queued` in the journal until a slot is free
        task = asyncio.current_task()
        assert task is not None
        dispatcher._running[session_id] = task
        try:
            status = await _run_through_outages(dispatcher.runtime, session_id)
        except SessionFenced:
            # Taken over by another worker (this one was declared dead): that run
            # owns the session and its DBOS workflow now. Ending as cancelled makes
            # DBOS record nothing for this execution.
            raise asyncio.CancelledError(f"session {session_id} was taken over") from None
        except Exception as exc:
            # A bug or a broken store, not the session's doing: end it `failed` with
            # the reason (it would stay `running` forever), then let DBOS record it.
            log.exception("session %s stopped on an internal error", session_id)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await dispatcher.runtime.fail_session(session_id, reason)
            raise
        finally:
            dispatcher._running.pop(session_id, None)
    return status.value


STORE_WAIT_S = 600.0  # how long a session waits for its database to come back


async def _run_through_outages(runtime: Runtime, session_id: str) -> SessionStatus:
    """Run the session; if it stops because the database went away (an error, and
    the store does not answer), wait for the database and run it again: a replay of
    its journal, so nothing committed is repeated and nothing is lost. A session is
    never failed for an outage shorter than STORE_WAIT_S."""
    while True:
        try:
            return await runtime.run(session_id)
        except SessionFenced:
            raise
        except Exception:
            if await asyncio.to_thread(_answers, runtime.store):
                raise  # the database is there: a real error
            log.warning("session %s: the database went away; waiting for it", session_id)
            deadline = time.monotonic() + STORE_WAIT_S
            while not await asyncio.to_thread(_answers, runtime.store):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)
            log.warning("session %s: the database is back; resuming from the journal", session_id)
            runtime.journal.discard(session_id)  # the next run reads its head afresh


def _answers(store: Any) -> bool:
    try:
        store.ping()
    except Exception:
        return False
    return True


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
        adopt_every_s: how often a worker looks for sessions of dead `nexus run`
            processes to take over (also once at start).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        concurrency: int | None = None,
        adopt_every_s: float = 30.0,
    ) -> None:
        self.runtime = runtime
        self.concurrency = concurrency or runtime.settings.concurrency
        self.executor_id = runtime.worker_id
        self.serves_queue = True
        self.adopt_every_s = adopt_every_s
        self._lock_file: IO[str] | None = None
        self.slots = asyncio.Semaphore(self.concurrency)
        # The tasks of the sessions running here: each leaves when its run ends, so
        # a long-running server holds as many as it runs, not as many as it ever ran.
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._handles: dict[str, WorkflowHandleAsync[str]] = {}  # direct starts in flight
        self._adopter: asyncio.Task[None] | None = None
        self._checkpointer: Checkpointer | None = None
        self._checkpoints: asyncio.Task[None] | None = None
        self.supervisor: Supervisor | None = None

    @classmethod
    def solo(cls, runtime: Runtime, session_id: str) -> Dispatcher:
        """A dispatcher for one session (`nexus run`): an executor id of its own, so
        it runs beside any worker or server of the home, and no queue, so it runs
        no other session."""
        dispatcher = cls(runtime, concurrency=1)
        dispatcher.executor_id = f"{SOLO_PREFIX}{session_id}"
        dispatcher.serves_queue = False
        return dispatcher

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
        """Launch DBOS on this loop; unfinished sessions of this executor resume.

        A worker also queues the sessions journaled but never handed to DBOS, and
        adopts those of dead `nexus run` processes. One bad session is that
        session's failure, never the worker's."""
        global _active, _synchronous
        s = self.runtime.settings
        check_system_database(s)
        self._lock_file = _lock_executor(s.home, self.executor_id)
        _active = self
        _synchronous = "FULL" if s.durability == "full" else "NORMAL"
        url = system_url(s)
        logging.getLogger("dbos").addFilter(_DropCancelNoise())
        DBOS(
            config={
                "name": "nexus",
                "system_database_url": url,
                "application_version": s.app_version,
                "executor_id": self.executor_id,
                "log_level": "WARNING",
                "notification_listener_polling_interval_sec": 0.05,
            }
        )
        DBOS.launch()
        self.runtime.worker_id = self.executor_id  # the claim of each run names it
        self.supervisor = Supervisor(
            self.runtime.store,
            self.executor_id,
            role="worker" if self.serves_queue else "run",
            heartbeat_s=s.heartbeat_s,
            timeout_s=s.worker_timeout_s,
            recover=self.hand_over if self.serves_queue else None,
        )
        await self.supervisor.start()
        if not self.serves_queue:
            return
        await DBOS.register_queue_async(
            QUEUE, worker_concurrency=self.concurrency, polling_interval_sec=s.queue_poll_s
        )
        await self._queue_unknown()
        await self.adopt_orphans()
        self._adopter = asyncio.create_task(self._adopt_forever(), name="nexus-adopt")
        self._checkpointer = Checkpointer(
            self.runtime.store,
            self.runtime.journal.keys,
            every_appends=s.audit_checkpoint_events,
            every_s=s.audit_checkpoint_s,
        )
        self._checkpoints = asyncio.create_task(self._checkpointer.run(), name="nexus-audit")

    async def _queue_unknown(self) -> None:
        # Sessions journaled as queued whose creator died before handing them to
        # DBOS, and paused ones whose resume was posted but whose next segment was
        # not queued. Ids DBOS knows are left alone: it runs or queues them already.
        store = self.runtime.store
        wanted = [(sid, sid) for sid in store.session_ids([SessionStatus.QUEUED.value])]
        for sid in store.session_ids([SessionStatus.PAUSED.value]):
            events = self.runtime.journal.events(sid)
            if resume_pending(store, events):
                wanted.append((sid, segment_id(sid, events)))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            ids = [workflow_id for _, workflow_id in chunk]
            known = {w.workflow_id for w in await DBOS.list_workflows_async(workflow_ids=ids)}
            for session_id, workflow_id in chunk:
                if workflow_id in known:
                    continue
                row = store.session(session_id)
                try:
                    await self.submit(
                        session_id,
                        priority=row.priority if row else 0,
                        direct=False,
                        workflow_id=workflow_id,
                    )
                except DispatchError as exc:
                    log.error("%s", exc)  # that session ends failed; the others go on

    async def adopt_orphans(self) -> list[str]:
        """Re-queue the unfinished sessions of `nexus run` processes of this home
        that died (their lock file is no longer held); returns their ids."""
        home = self.runtime.settings.home
        adopted: list[str] = []
        for path in sorted(home.glob(f"worker-{SOLO_PREFIX}*.lock")):
            try:
                if time.time() - path.stat().st_mtime < ADOPT_AFTER_S:
                    continue  # may still be being taken by its process
                lock = _try_lock(path)
            except FileNotFoundError:
                continue
            if lock is None:
                continue  # its process is alive
            try:
                executor = path.stem.removeprefix("worker-")
                pending = await DBOS.list_workflows_async(status="PENDING", executor_id=executor)
                for workflow in pending:
                    await DBOS.resume_workflow_async(workflow.workflow_id, queue_name=QUEUE)
                    adopted.append(workflow.workflow_id)
                    log.info("adopted session %s of a dead `nexus run`", workflow.workflow_id)
                path.unlink(missing_ok=True)
            finally:
                lock.close()
        return adopted

    async def hand_over(self, executor_id: str) -> int:
        """Hand the unfinished sessions of a gone worker (its DBOS executor id) to the
        living; returns how many. DBOS's own recovery primitive does it: each PENDING
        workflow of that executor goes back on the sessions queue, on the condition
        that it still belongs to that executor, so a repeated hand-over (or one racing
        a worker that already took the session) moves nothing twice. The workers that
        dequeue them claim each session, which fences the old owner out."""
        pending = await DBOS.list_workflows_async(status="PENDING", executor_id=executor_id)
        system = _system_database()
        moved = 0
        for workflow in pending:
            if await asyncio.to_thread(
                system.reenqueue_for_recovery, workflow.workflow_id, [executor_id], QUEUE
            ):
                moved += 1
        return moved

    async def _adopt_forever(self) -> None:
        while True:
            await asyncio.sleep(self.adopt_every_s)
            try:
                await self.adopt_orphans()
            except Exception:
                log.exception("adopting sessions of dead `nexus run` processes failed")

    async def submit(
        self,
        session_id: str,
        *,
        priority: int = 0,
        direct: bool = True,
        workflow_id: str | None = None,
    ) -> None:
        """Hand a journaled session to DBOS: started now if this worker has room,
        else queued by priority (0 = highest). `workflow_id` names a later run
        segment (a resume); the first is the session id.

        If it cannot be handed over, the session ends `failed` with the reason and
        `DispatchError` says why: a session is never left queued with no one to run it.
        """
        try:
            if isinstance(priority, bool) or not 0 <= priority <= 1000:
                raise ConfigError(f"priority {priority!r} is not from 0 (the highest) to 1000")
            free = not self.slots.locked()
            with SetWorkflowID(workflow_id or session_id):
                if direct and (free or not self.serves_queue):
                    handle = await DBOS.start_workflow_async(session_workflow, session_id)
                    self._track(workflow_id or session_id, handle)
                else:
                    with SetEnqueueOptions(priority=priority + 1):
                        await DBOS.enqueue_workflow_async(QUEUE, session_workflow, session_id)
        except Exception as exc:
            reason = f"could not dispatch: {type(exc).__name__}: {exc}"
            await self.runtime.fail_session(session_id, reason)
            raise DispatchError(f"session {session_id}: {reason}") from exc

    def _track(self, workflow_id: str, handle: WorkflowHandleAsync[str]) -> None:
        # A direct start's handle awaits its task (a polling one would add up to a
        # polling interval to every wait); kept only until that task ends.
        future = getattr(handle, "task", None)
        if isinstance(future, asyncio.Future) and not future.done():
            self._handles[workflow_id] = handle
            future.add_done_callback(lambda _f: self._handles.pop(workflow_id, None))

    @property
    def in_flight(self) -> int:
        """Sessions running in this process now."""
        return len(self._running)

    async def resume(self, session_id: str) -> str:
        """Hand a paused session's next run segment to DBOS (after its resume
        command is posted); returns the segment's workflow id."""
        row = self.runtime.session(session_id)
        workflow_id = segment_id(session_id, self.runtime.journal.events(session_id))
        await self.submit(session_id, priority=row.priority, workflow_id=workflow_id)
        return workflow_id

    async def wait(self, session_id: str, *, poll_s: float = 0.02) -> SessionStatus:
        """Wait for the session's current run to end; returns its status then
        (`paused` if it was paused: it runs again only when resumed)."""
        workflow_id = segment_id(session_id, self.runtime.journal.events(session_id))
        handle = self._handles.get(workflow_id)
        if handle is not None:
            return SessionStatus(await handle.get_result())
        try:
            handle = await DBOS.retrieve_workflow_async(workflow_id)
        except DBOSNonExistentWorkflowError:
            if workflow_id == session_id:
                raise
            return SessionStatus.PAUSED  # paused, and not resumed yet
        return SessionStatus(await handle.get_result(polling_interval_sec=poll_s))

    async def stop(self) -> None:
        """Stop this worker. Sessions in flight stay PENDING in DBOS and resume,
        from their journal, at the next start of this executor (or, for `nexus
        run`, at the next worker of the home)."""
        global _active
        for task in (self._adopter, self._checkpoints):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._adopter = self._checkpoints = None
        running = [t for t in self._running.values() if not t.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._checkpointer is not None:
            try:
                await self._checkpointer.aclose()  # the clean-shutdown checkpoint
            except Exception:
                log.exception("the shutdown checkpoint of the audit failed")
            self._checkpointer = None
        DBOS.destroy(workflow_completion_timeout_sec=0)
        # DBOS leaves its shut-down thread pool as the loop's default executor.
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor())
        if self.supervisor is not None:
            # Last: once this worker has left, a supervisor elsewhere hands over what
            # it leaves unfinished, and nothing here runs any more.
            await self.supervisor.stop()
            self.supervisor = None
        _active = None
        self._running.clear()
        self._handles.clear()
        if self._lock_file is not None:
            # A solo run that ended leaves nothing for a worker to adopt.
            _release(self._lock_file, remove=not self.serves_queue and not running)
            self._lock_file = None


def _system_database() -> Any:
    """DBOS's system database object (for its recovery primitive, which DBOS
    Transact 3.4 does not expose on the `DBOS` class: pinned in pyproject.toml)."""
    from dbos._dbos import _get_dbos_instance

    return _get_dbos_instance()._sys_db


def check_system_database(settings: Settings) -> None:
    """Refuse a damaged DBOS system database in one line naming it (`StorageCorrupt`),
    before DBOS opens it: DBOS would fail with a traceback that names no file."""
    if settings.system_database_url is None:
        damage = check_sqlite_file(settings.dbos_path)
        if damage is not None:
            raise StorageCorrupt(str(settings.dbos_path), damage)


def system_url(settings: Settings) -> str:
    """DBOS's system database URL (SQLite in the home unless PostgreSQL is set)."""
    url = settings.system_database_url
    if url is None:
        _enable_wal(settings.dbos_path)
        return f"sqlite:///{settings.dbos_path}"
    return url


def segment_id(session_id: str, events: list[Event]) -> str:
    """The DBOS workflow id of a session's current run segment.

    A workflow id runs once, so each run between pauses is a workflow of its own:
    the first is the session id, the n-th after it `"<session id>:<n>"`, n being the
    number of pauses so far. Two resumes of one pause name the same segment (DBOS
    runs it once), and a resume after a restart names the one it would have."""
    pauses = sum(e.kind == ev.SESSION_PAUSED for e in events)
    return session_id if pauses == 0 else f"{session_id}:{pauses}"


async def resume_session(
    runtime: Runtime,
    session_id: str,
    *,
    by: str,
    reason: str = "",
    note: str | None = None,
    dispatcher: Dispatcher | None = None,
) -> CommandRow:
    """Resume a paused session from any process: post the `resume` command, then
    hand its next segment to the queue (this process's dispatcher if it has one,
    else through a DBOS client: the home's next worker runs it)."""
    command = await runtime.control.post(session_id, RESUME, by=by, reason=reason, note=note)
    if dispatcher is not None:
        await dispatcher.resume(session_id)
        return command
    row = runtime.session(session_id)
    workflow_id = segment_id(session_id, runtime.journal.events(session_id))
    await enqueue(runtime, session_id, workflow_id=workflow_id, priority=row.priority)
    return command


async def enqueue(
    runtime: Runtime, session_id: str, *, workflow_id: str | None = None, priority: int = 0
) -> None:
    """Put a session (or a run segment of it) on the queue from a process that
    runs no dispatcher (`nexus resume`, `nexus run --detach`): a worker of the
    home, now or when one starts, runs it."""
    from dbos import DBOSClient

    s = runtime.settings
    check_system_database(s)
    url = system_url(s)
    try:
        # A client never creates DBOS's tables; on a home no worker has run yet,
        # this does (idempotent).
        await asyncio.to_thread(DBOS.migrate, url)
        client = await asyncio.to_thread(
            DBOSClient, system_database_url=url, application_name="nexus"
        )
        try:
            await client.enqueue_async(
                {
                    "queue_name": QUEUE,
                    "workflow_name": WORKFLOW,
                    "workflow_id": workflow_id or session_id,
                    "app_version": s.app_version,
                    "priority": priority + 1,
                },
                session_id,
            )
        finally:
            await asyncio.to_thread(client.destroy)
    except Exception as exc:
        reason = f"could not queue: {type(exc).__name__}: {exc}"
        if workflow_id in (None, session_id):  # a new session: never leave it queued for no one
            await runtime.fail_session(session_id, reason)
        raise DispatchError(f"session {session_id}: {reason}") from exc


def _release(lock: IO[str], *, remove: bool) -> None:
    if remove:
        Path(lock.name).unlink(missing_ok=True)
    lock.close()


def _try_lock(path: Path) -> IO[str] | None:
    """The file, locked exclusively by this process; None if another holds it."""
    lock = path.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def _lock_executor(home: Path, executor_id: str) -> IO[str]:
    """Hold this executor id for this process: two live processes with one id
    would each recover the other's sessions."""
    home.mkdir(parents=True, exist_ok=True)
    lock = _try_lock(home / f"worker-{executor_id}.lock")
    if lock is None:
        raise ConfigError(
            f"worker id {executor_id!r} is already running on {home}; stop it, or give this "
            "process another NEXUS_WORKER_ID"
        )
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


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
        print(f"nexus worker {runtime.worker_id} ready (pid {os.getpid()})", flush=True)
        await stop.wait()
    await runtime.aclose()
