"""The `nexus` command: typer + rich, thin over `nexus.runtime`.

Heavy modules are imported inside commands so `nexus --help` stays fast.

Exit codes: 0 success; 1 the session failed or was killed; 2 bad usage or
configuration (including no LLM provider); 3 not found; 4 audit found tampering;
130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from nexus.cli.source import Source
    from nexus.runtime.runtime import Runtime

T = TypeVar("T")

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TAMPERED, EXIT_INTERRUPTED = 1, 2, 3, 4, 130

app = typer.Typer(
    name="nexus",
    help="NEXUS: a production runtime for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: typer's rich help imports ~130 ms of markdown rendering,
    # which would double `nexus --help`.
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Show the settings.", no_args_is_help=True, rich_markup_mode=None)
agents_app = typer.Typer(
    help="The agents NEXUS knows.", no_args_is_help=True, rich_markup_mode=None
)
audit_app = typer.Typer(
    help="Check the journal's keyed chains and checkpoints; manage the audit key.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
token_app = typer.Typer(help="The API token.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(config_app, name="config")
app.add_typer(agents_app, name="agents")
app.add_typer(audit_app, name="audit")
app.add_typer(token_app, name="token")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _die(message: str, code: int) -> NoReturn:
    _console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _runtime() -> Runtime:
    from nexus.errors import ConfigError, StorageError
    from nexus.runtime.runtime import Runtime

    try:
        rt = Runtime()
    except (ConfigError, StorageError) as exc:
        _die(str(exc), EXIT_USAGE)
    from nexus.observe.logs import configure

    configure(rt.settings.log_level, rt.redactor)
    return rt


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
    as_json: JsonOpt = False,
) -> None:
    """Run one agent session to its end, durably, showing each step as it happens."""
    import asyncio

    from nexus.errors import NexusError
    from nexus.runtime.dispatch import Dispatcher
    from nexus.types import SessionStatus

    rt = _runtime()
    console = _console()
    created: list[str] = []

    async def main() -> SessionStatus:
        try:
            if replay is None:
                await rt.provider()  # no provider: fail in one line before queueing anything
            session_id = rt.create_session(
                goal,
                agent=agent,
                priority=priority,
                replay=replay,
                replay_pace_s=replay_pace,
                model=model,
            )
            created.append(session_id)
            if not as_json:
                console.print(f"[bold]session[/] {session_id}  [dim](nexus logs {session_id})[/]")
            async with Dispatcher(rt) as dispatcher:
                await dispatcher.submit(session_id, priority=priority)
                if not as_json:
                    from nexus.cli.render import event_line

                    async for event in rt.journal.follow(session_id):
                        console.print(event_line(event))
                return await dispatcher.wait(session_id)
        finally:
            await rt.aclose_providers()

    try:
        status = asyncio.run(main())
    except NexusError as exc:
        _die(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        _die("interrupted; the session resumes at the next `nexus worker`", EXIT_INTERRUPTED)
    if as_json:
        _print_json(rt.session(created[0]).to_dict())
    raise typer.Exit(0 if status is SessionStatus.COMPLETED else EXIT_FAILED)


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Sessions in flight.")] = None,
) -> None:
    """Run queued sessions durably until SIGINT/SIGTERM; resumes unfinished ones first."""
    import asyncio

    from nexus.runtime.dispatch import serve_forever

    rt = _runtime()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(rt, concurrency=concurrency))


ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="NEXUS_SERVER",
        help="Read from a running server (token: NEXUS_TOKEN or the token file).",
    ),
]


def _source(server: str | None) -> Source:
    from nexus.cli.source import LocalSource, RemoteSource

    if server:
        return RemoteSource(server)
    return LocalSource(_runtime())


def _read(fn: Callable[[], T]) -> T:
    """Run a read, mapping errors to exit codes."""
    from nexus.cli.remote import RemoteError
    from nexus.errors import NexusError, SessionNotFound

    try:
        return fn()
    except SessionNotFound as exc:
        _die(str(exc), EXIT_NOT_FOUND)
    except RemoteError as exc:
        _die(str(exc), EXIT_NOT_FOUND if exc.status == 404 else EXIT_USAGE)
    except NexusError as exc:
        _die(str(exc), EXIT_USAGE)


@app.command()
def sessions(
    status: Annotated[list[str] | None, typer.Option(help="Only these statuses.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    label: Annotated[str | None, typer.Option(help="Only sessions with KEY=VALUE.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """List sessions, newest first."""
    if label is not None and "=" not in label:
        _die("--label takes KEY=VALUE", EXIT_USAGE)
    src = _source(server)
    rows = _read(
        lambda: src.sessions(status=status, agent=agent, label=label, limit=limit, offset=offset)
    )
    if as_json:
        _print_json(rows)
        return
    from nexus.cli.render import sessions_table

    _console().print(sessions_table(rows))


@app.command()
def status(session_id: str, as_json: JsonOpt = False, server: ServerOpt = None) -> None:
    """One session's status, counters and outcome."""
    src = _source(server)
    row = _read(lambda: src.session(session_id))
    if as_json:
        _print_json(row)
        return
    console = _console()
    for key, value in row.items():
        console.print(f"[bold]{key:>10}[/] {value}")


@app.command()
def logs(
    session_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Print new events.")] = False,
    after: Annotated[int, typer.Option(help="Only events after this seq.")] = 0,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """A session's timeline: LLM calls (model, tokens, cost, latency), tool calls, results."""
    from nexus.cli.render import event_line

    src = _source(server)
    _read(lambda: src.session(session_id))
    console = _console()

    def show_all() -> None:
        events = src.follow(session_id, after) if follow else src.events(session_id, after)
        for event in events:
            if as_json:
                sys.stdout.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
                sys.stdout.flush()
            else:
                console.print(event_line(event))

    try:
        _read(show_all)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command()
def export(
    session_id: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to FILE.")] = None,
    server: ServerOpt = None,
) -> None:
    """Export a session and its events as JSON (replayable with `nexus run --replay FILE`)."""
    from nexus.runtime.runtime import dump_export, export_document

    src = _source(server)
    row = _read(lambda: src.session(session_id))
    text = dump_export(export_document(row, _read(lambda: src.events(session_id))))
    if output is None:
        sys.stdout.write(text + "\n")
    else:
        output.write_text(text + "\n", encoding="utf-8")


@audit_app.command("verify")
def audit_verify(
    session_id: Annotated[str | None, typer.Argument(help="One session (default: all).")] = None,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Verify the database file, the keyed chains, the session index and the newest
    signed checkpoint; report the first tampered, reordered or missing row.
    Exit 4 on tampering, 2 when the database file is damaged."""
    src = _source(server)
    report = _read(lambda: src.verify(session_id))
    bad = report["first_problem"]
    if as_json:
        _print_json(report)
    elif bad is None:
        checkpoint = report.get("checkpoint")
        held = "" if not checkpoint else f", checkpoint #{checkpoint['id']} holds"
        _console().print(
            f"[green]ok[/]: {report['events']} events in {report['sessions']} sessions, "
            f"chains intact{held}"
        )
    else:
        where = f"session {bad['session_id']} seq {bad['seq']}" if bad["session_id"] else "audit"
        _console().print(f"[bold red]TAMPERED[/] {where}: {bad['problem']}")
    raise typer.Exit(0 if bad is None else EXIT_TAMPERED)


@audit_app.command("rotate-key")
def audit_rotate_key() -> None:
    """Make a new audit key (old ones are kept, so old events still verify) and sign a
    checkpoint with it. Running workers sign with the new key after a restart."""
    from nexus.runtime.audit import AuditKeys, write_checkpoint

    rt = _runtime()
    keys = AuditKeys.beside(rt.store)
    key_id = _read(keys.rotate)
    checkpoint = _read(lambda: write_checkpoint(rt.store, keys))
    _console().print(f"audit key {key_id} in {keys.path}; checkpoint #{checkpoint.id} signed")


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign every session's head now (the server and workers do it periodically)."""
    from nexus.runtime.audit import write_checkpoint

    rt = _runtime()
    checkpoint = _read(lambda: write_checkpoint(rt.store, rt.journal.keys))
    sessions = json.loads(checkpoint.body)["sessions"]
    _console().print(f"checkpoint #{checkpoint.id}: {sessions} sessions signed")


@config_app.command("show")
def config_show(as_json: JsonOpt = False, server: ServerOpt = None) -> None:
    """Print the effective settings (secrets masked)."""
    if server:
        data = _read(lambda: _source(server).config())
    else:
        from nexus.config import load_settings, public_view
        from nexus.errors import ConfigError

        try:
            data = public_view(load_settings())
        except ConfigError as exc:
            _die(str(exc), EXIT_USAGE)
    if as_json:
        _print_json(data)
        return
    console = _console()
    for key, value in data.items():
        console.print(f"[bold]{key:>16}[/] {value}")


@agents_app.command("list")
def agents_list(as_json: JsonOpt = False, server: ServerOpt = None) -> None:
    """List the agents: built-ins and `NEXUS_HOME/agents/*.toml`."""
    src = _source(server)
    rows = _read(src.agents)
    if as_json:
        _print_json(rows)
        return
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for col in ("name", "toolkits", "model", "max steps", "source", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            ", ".join(r["toolkits"]),
            r["model"] or "(default)",
            str(r["limits"]["max_steps"]),
            r["source"],
            r["description"],
        )
    _console().print(table)


@app.command()
def start(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 7070,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without a token (loopback only).")
    ] = False,
    demo: Annotated[
        bool, typer.Option("--demo", help="Queue a paced replay of the shipped demo session.")
    ] = False,
) -> None:
    """Start the server: REST API, live events, dashboard, and the session workers."""
    from nexus.errors import ConfigError

    rt = _runtime()
    if demo:
        from nexus.examples import DEMO_GOAL, demo_recording

        # Journaled as queued now; the workers pick it up as they start.
        rt.create_session(
            DEMO_GOAL, replay=str(demo_recording()), replay_pace_s=1.5, labels={"demo": "true"}
        )
    try:
        from nexus.server.app import create_app, token_file
        from nexus.server.run import check_bind, serve

        check_bind(host, auth=not no_auth)
        app_ = create_app(rt, auth=not no_auth)
    except ConfigError as exc:
        _die(str(exc), EXIT_USAGE)
    shown = f"[{host}]" if ":" in host else host
    console = _console()
    console.print(f"[bold]NEXUS[/] dashboard and API on [bold]http://{shown}:{port}/[/]")
    if no_auth:
        console.print("auth:  [yellow]off[/] (loopback only)")
    else:
        console.print(f"token: {token_file(rt).path}  (nexus token show)")
    console.print(f"data:  {rt.settings.home}")
    serve(app_, host=host, port=port)


@token_app.command("show")
def token_show() -> None:
    """Print the API token (created on first use)."""
    from nexus.config import load_settings
    from nexus.server.auth import TokenFile

    sys.stdout.write(TokenFile(load_settings().home / "api-token").ensure() + "\n")


@token_app.command("rotate")
def token_rotate() -> None:
    """Replace the API token; dashboard logins made with the old one end."""
    from nexus.config import load_settings
    from nexus.server.auth import TokenFile

    sys.stdout.write(TokenFile(load_settings().home / "api-token").rotate() + "\n")


def main() -> None:
    """Console-script entry point."""
    app()
