"""`nexus kill`, `pause` and `resume`: commands on a session's control channel,
from any terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from nexus.cli.app import (
    EXIT_ENDED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    JsonOpt,
    _console,
    _die,
    _print_json,
    _runtime,
    app,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from nexus.runtime.runtime import Runtime

from nexus.cli.running import _who


def _control(given: str, send: Callable[[Runtime, str], Any]) -> tuple[Runtime, str, Any]:
    """Run a control-channel call against this home (SESSION may be a unique id
    prefix), mapping errors to exit codes; returns the runtime, the id and the result."""
    import asyncio

    from nexus.errors import ConfigError, SessionFinished, SessionNotFound

    rt = _runtime()
    try:
        session_id = rt.resolve(given)
        return rt, session_id, asyncio.run(send(rt, session_id))
    except SessionNotFound as exc:
        _die(str(exc), EXIT_NOT_FOUND)
    except SessionFinished as exc:
        _die(str(exc), EXIT_ENDED)
    except ConfigError as exc:
        _die(str(exc), EXIT_USAGE)


def _await_status(rt: Runtime, session_id: str, wanted: set[str], timeout_s: float) -> str:
    """Poll the session until its status is one of `wanted` (or it ends)."""
    import time

    from nexus.types import SessionStatus

    deadline = time.monotonic() + timeout_s
    while True:
        status = rt.session(session_id).status
        if status in wanted or SessionStatus(status).finished or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


ReasonOpt = Annotated[str, typer.Option(help="Why (journaled with who sent it).")]
TimeoutOpt = Annotated[float, typer.Option(min=0, max=3600, help="Seconds to wait.")]


@app.command()
def kill(
    session_id: str,
    reason: ReasonOpt = "killed by the user",
    timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Hard stop: no further step runs, the step in flight is cancelled, and the
    session ends `killed` (at once if it is queued or paused). Idempotent."""
    from nexus.runtime.control import KILL

    rt, session_id, command = _control(
        session_id, lambda rt, sid: rt.control.post(sid, KILL, by=_who(), reason=reason)
    )
    status = _await_status(rt, session_id, {"killed"}, timeout)
    row = rt.session(session_id)
    if as_json:
        _print_json({"command": command.to_dict(), "session": row.to_dict()})
    elif status == "killed":
        _console().print(f"session {session_id} [bold]killed[/]: {row.reason}")
    else:
        _console().print(
            f"kill posted (command {command.id}); session {session_id} is still {status}: "
            "its worker applies it when it runs again"
        )


@app.command()
def pause(
    session_id: str,
    reason: ReasonOpt = "paused by the user",
    wait: Annotated[
        bool, typer.Option("--wait", help="Return once it is paused: no step in flight.")
    ] = False,
    timeout: TimeoutOpt = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Soft stop: the session stops at its next step boundary, keeps everything and
    frees its worker slot until `nexus resume`."""
    from nexus.runtime.control import PAUSE

    rt, session_id, command = _control(
        session_id, lambda rt, sid: rt.control.post(sid, PAUSE, by=_who(), reason=reason)
    )
    status = _await_status(rt, session_id, {"paused"}, timeout) if wait else None
    row = rt.session(session_id)
    if as_json:
        _print_json({"command": command.to_dict(), "session": row.to_dict()})
    elif status == "paused":
        _console().print(f"session {session_id} [bold]paused[/]: no step in flight")
    elif status is not None:
        _die(f"session {session_id} is {status}, not paused", EXIT_ENDED)
    else:
        _console().print(f"pause posted; session {session_id} stops at its next step")


@app.command()
def resume(
    session_id: str,
    note: Annotated[
        str | None, typer.Option(help="A note for the agent, read before its next LLM call.")
    ] = None,
    reason: ReasonOpt = "resumed by the user",
    as_json: JsonOpt = False,
) -> None:
    """Continue a paused session from its next step, on a worker of this home
    (now, or when one starts)."""
    from nexus.runtime.dispatch import resume_session

    rt, session_id, command = _control(
        session_id,
        lambda rt, sid: resume_session(rt, sid, by=_who(), reason=reason, note=note),
    )
    if as_json:
        _print_json({"command": command.to_dict(), "session": rt.session(session_id).to_dict()})
    else:
        _console().print(f"session {session_id} resumes on a worker of {rt.settings.home}")
