"""`nexus run`: one session to its end, beside any server or worker of the home,
with what Ctrl-C and SIGTERM do to it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from nexus.cli.app import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_PAUSED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    JsonOpt,
    _console,
    _die,
    _print_json,
    _runtime,
    app,
)

if TYPE_CHECKING:
    from nexus.runtime.runtime import Runtime
    from nexus.types import SessionStatus


@app.command()
def run(
    goal: Annotated[str, typer.Argument(help="What the agent should achieve.")],
    agent: Annotated[str | None, typer.Option(help="Agent name (see `nexus agents list`).")] = None,
    replay: Annotated[
        str | None,
        typer.Option(help="Answer LLM calls from a recorded session: exported FILE or SESSION id."),
    ] = None,
    replay_pace: Annotated[
        float, typer.Option(min=0, max=60, help="Seconds to wait before each replayed answer.")
    ] = 0.0,
    priority: Annotated[int, typer.Option(help="Queue priority; 0 is the highest.")] = 0,
    model: Annotated[str | None, typer.Option(help="Override the agent's model.")] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Queue it for a worker and return at once.")
    ] = False,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE (repeatable).")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option(min=0, help="Budget: US dollars for the session.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Budget: steps.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Budget: tokens.")] = None,
    max_wall: Annotated[
        float | None, typer.Option(min=0.001, help="Budget: seconds of wall time.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run one agent session to its end, durably, showing each step as it happens.

    Runs beside a server or worker on the same home, and runs only this session.
    Ctrl-C kills the session; SIGTERM leaves it to resume at the next worker."""
    import asyncio

    from nexus.errors import NexusError
    from nexus.types import SessionStatus

    rt = _runtime()
    created: list[str] = []
    stopped_by: list[str] = []
    budget = {
        "max_cost_usd": max_cost,
        "max_steps": max_steps,
        "max_tokens": max_tokens,
        "max_wall_s": max_wall,
    }
    options = {
        "agent": agent,
        "priority": priority,
        "replay": replay,
        "replay_pace_s": replay_pace,
        "model": model,
        "labels": _labels(label or []),
        "limits": {k: v for k, v in budget.items() if v is not None} or None,
    }
    try:
        status = asyncio.run(
            _run_one(rt, goal, options, created, stopped_by, show=not as_json, detach=detach)
        )
    except NexusError as exc:
        _die(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        _interrupted(rt, created, "interrupted", EXIT_INTERRUPTED)
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        how, code = ("terminated (SIGTERM)", EXIT_TERMINATED)
        if stopped_by[-1] == "SIGINT":
            how, code = ("interrupted twice", EXIT_INTERRUPTED)
        _interrupted(rt, created, how, code)
    row = rt.session(created[0])
    if as_json:
        _print_json(row.to_dict())
    elif detach:
        _console().print(
            f"session {row.id} queued for a worker of {rt.settings.home} (nexus logs -f {row.id})"
        )
    if detach:
        raise typer.Exit(0)
    if not as_json:
        from nexus.cli.render import summary

        _console().print(summary(row.to_dict()), highlight=False)
    if status is SessionStatus.KILLED and "SIGINT" in stopped_by:
        _die(f"session {row.id} killed: {row.reason}", EXIT_INTERRUPTED)
    if status is SessionStatus.PAUSED:
        _die(
            f"session {row.id} was paused ({row.reason}); `nexus resume {row.id}` continues it "
            "on a worker of this home",
            EXIT_PAUSED,
        )
    raise typer.Exit(0 if status is SessionStatus.COMPLETED else EXIT_FAILED)


def _labels(given: list[str]) -> dict[str, str]:
    """`--label K=V` options as a dict (checked again, with the label rules, when the
    session is created)."""
    found: dict[str, str] = {}
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _die(f"--label takes KEY=VALUE (got {item!r})", EXIT_USAGE)
        found[key] = value
    return found


async def _run_one(
    rt: Runtime,
    goal: str,
    options: dict[str, Any],
    created: list[str],
    stopped_by: list[str],
    *,
    show: bool,
    detach: bool = False,
) -> SessionStatus:
    """`nexus run`'s session: checked, journaled, run under an executor of its own.

    Ctrl-C kills it (a second Ctrl-C stops at once); SIGTERM cancels the run and
    leaves the session to resume. Each signal is noted in `stopped_by`; the
    session's id goes into `created`."""
    import asyncio
    import signal

    from nexus.runtime.control import KILL
    from nexus.runtime.dispatch import Dispatcher, enqueue

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    killing: list[asyncio.Task[Any]] = []

    def terminate() -> None:
        stopped_by.append("SIGTERM")
        task.cancel()

    def interrupt() -> None:
        stopped_by.append("SIGINT")
        if not created or killing:
            task.cancel()  # before the session exists, or a second Ctrl-C
            return
        post = rt.control.post(created[0], KILL, by=_who(), reason="interrupted by the user")
        killing.append(loop.create_task(post))

    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGINT, interrupt)
    console = _console()
    try:
        rt.agents.get(options["agent"] or rt.settings.default_agent)  # unknown agent: say so first
        if options["replay"] is None and not detach:
            await rt.provider()  # no provider: fail in one line before journaling anything
        session_id = rt.create_session(goal, **options)
        created.append(session_id)
        if detach:
            from nexus.types import SessionStatus

            await enqueue(rt, session_id, priority=options["priority"])
            return SessionStatus.QUEUED
        if show:
            console.print(f"[bold]session[/] {session_id}  [dim](nexus logs {session_id})[/]")
        async with Dispatcher.solo(rt, session_id) as dispatcher:
            await dispatcher.submit(session_id, priority=options["priority"])
            if show:
                from nexus.cli.render import event_line

                async for event in rt.journal.follow(session_id):
                    console.print(event_line(event))
                    if event.kind == "session.paused":
                        break
            return await dispatcher.wait(session_id)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)
        await asyncio.gather(*killing, return_exceptions=True)
        await rt.aclose_providers()


def _who() -> str:
    """Who sends a command from this CLI: `user:<login>`."""
    import getpass

    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


def _interrupted(rt: Runtime, created: list[str], how: str, code: int) -> NoReturn:
    """Say what a signal did to `nexus run`'s session, then exit with `code`."""
    from nexus.types import SessionStatus

    if not created:
        _die(f"{how} before the session was created; nothing was journaled", code)
    sid = created[0]
    row = rt.store.session(sid)
    if row is None:
        _die(f"{how}; session {sid} was not journaled", code)
    if SessionStatus(row.status).finished:
        _die(f"{how}; session {sid} had already ended {row.status}", code)
    _die(
        f"{how}; session {sid} stopped while {row.status}: it resumes at the next "
        "`nexus worker` or `nexus start` on this home",
        code,
    )
