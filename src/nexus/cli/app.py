"""The `nexus` command: typer + rich, thin over `nexus.runtime`.

Heavy modules are imported inside commands so `nexus --help` stays fast.

Exit codes: 0 success; 1 the session failed or was killed; 2 bad usage or
configuration (including no LLM provider); 3 not found; 4 audit found tampering;
5 the session has already ended (kill, pause, resume); 6 the session was paused
(`nexus run`); 130 interrupted (SIGINT); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from nexus.cli.source import Source
    from nexus.runtime.runtime import Runtime
    from nexus.server.tokens import TokenSource

T = TypeVar("T")

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TAMPERED, EXIT_ENDED, EXIT_PAUSED = 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143

HELP = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="nexus",
    help="NEXUS: a production runtime for AI agents.",
    context_settings=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: typer's rich help imports ~130 ms of markdown rendering,
    # which would double `nexus --help`.
    rich_markup_mode=None,
)


def _group(help_text: str) -> typer.Typer:
    return typer.Typer(
        help=help_text, context_settings=HELP, no_args_is_help=True, rich_markup_mode=None
    )


config_app = _group("Show the settings.")
agents_app = _group("The agents NEXUS knows.")
audit_app = _group("Check the journal's keyed chains and checkpoints; manage the audit key.")
token_app = _group("The API token.")
app.add_typer(config_app, name="config")
app.add_typer(agents_app, name="agents")
app.add_typer(audit_app, name="audit")
app.add_typer(token_app, name="token")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _version(value: bool) -> None:
    if value:
        from nexus import __version__

        sys.stdout.write(f"nexus {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """NEXUS: a production runtime for AI agents."""


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _die(message: str, code: int) -> NoReturn:
    _console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _runtime(**overrides: Any) -> Runtime:
    """The runtime on the settings, with a command's options (`overrides`) winning
    over them: every part sized from a setting sees the option's value."""
    from nexus.config import load_settings
    from nexus.errors import ConfigError, StorageError
    from nexus.runtime.runtime import Runtime

    try:
        rt = Runtime(load_settings(**overrides))
    except (ConfigError, StorageError) as exc:
        _die(str(exc), EXIT_USAGE)
    from nexus.observe.logs import configure

    configure(rt.settings.log_level, rt.redactor)
    return rt


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Sessions in flight.")] = None,
) -> None:
    """Run queued sessions durably until SIGINT/SIGTERM; resumes unfinished ones first."""
    import asyncio

    from nexus.errors import NexusError
    from nexus.runtime.dispatch import serve_forever

    # Through the settings, not only the dispatcher: the provider's connection pool
    # is sized from them, and a pool smaller than the sessions in flight queues
    # their LLM calls until they miss their deadline.
    rt = _runtime(**({} if concurrency is None else {"concurrency": concurrency}))
    # Imported before the first session, not inside its start: importing the provider
    # stack (aiohttp and its TLS contexts) blocks the event loop for 0.3-0.6 s on the
    # 2-core dev machine, while every session queued behind it waits.
    import nexus.runtime.providers.compose  # noqa: F401

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_forever(rt))
    except NexusError as exc:
        _die(str(exc), EXIT_USAGE)


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


OutputOpt = Annotated[
    str | None,
    typer.Option("--output", "-o", help="table (default), wide, json or name (ids only)."),
]
WatchOpt = Annotated[bool, typer.Option("--watch", "-w", help="Keep printing what changes.")]
OUTPUTS = ("table", "wide", "json", "name")


@app.command()
def sessions(
    status: Annotated[
        list[str] | None, typer.Option(help="Only these statuses (comma-separated or repeated).")
    ] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    label: Annotated[str | None, typer.Option(help="Only sessions with KEY=VALUE.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    output: OutputOpt = None,
    no_headers: Annotated[bool, typer.Option("--no-headers", help="Omit the header line.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print ids only.")] = False,
    watch: WatchOpt = False,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """List sessions, newest first: one line each at any width. `--status` takes one
    or more, comma-separated or repeated: `--status completed,failed`."""
    if label is not None and "=" not in label:
        _die("--label takes KEY=VALUE", EXIT_USAGE)
    form = _output(output, as_json=as_json, quiet=quiet)
    statuses = _statuses(status or [])
    src = _source(server)

    def fetch() -> list[dict[str, Any]]:
        return _read(
            lambda: src.sessions(
                status=statuses or None, agent=agent, label=label, limit=limit, offset=offset
            )
        )

    rows = fetch()
    _show_sessions(rows, form, headers=not no_headers)
    if watch:
        _watch_sessions(fetch, rows, form)


def _output(output: str | None, *, as_json: bool, quiet: bool) -> str:
    form = "json" if as_json else "name" if quiet else (output or "table")
    if form not in OUTPUTS:
        _die(f"unknown output {form!r} (known: {', '.join(OUTPUTS)})", EXIT_USAGE)
    return form


def _show_sessions(rows: list[dict[str, Any]], form: str, *, headers: bool) -> None:
    from nexus.cli.render import sessions_lines

    if form == "json":
        _print_json(rows)
        return
    if form == "name":
        sys.stdout.write("".join(f"{r['id']}\n" for r in rows))
        return
    tty = sys.stdout.isatty()
    console = _console()
    lines = sessions_lines(
        rows,
        width=console.width if tty else None,
        wide=form == "wide",
        headers=headers,
        color=tty,
    )
    if tty:
        for line in lines:
            console.print(line, markup=True, overflow="ignore", crop=False, no_wrap=True)
    else:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def _watch_sessions(
    fetch: Callable[[], list[dict[str, Any]]], rows: list[dict[str, Any]], form: str
) -> None:
    """kubectl's `--watch`: after the list, one line (or object) per session each
    time it changes, until Ctrl-C."""
    import time

    seen = {r["id"]: r for r in rows}
    try:
        while True:
            time.sleep(0.5)
            changed = [r for r in fetch() if seen.get(r["id"]) != r]
            for r in reversed(changed):  # oldest change first
                seen[r["id"]] = r
            if changed:
                if form == "json":
                    for r in reversed(changed):
                        sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
                    sys.stdout.flush()
                else:
                    _show_sessions(list(reversed(changed)), form, headers=False)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _statuses(given: list[str]) -> list[str]:
    """`--status` values (repeated or comma-separated), checked here so that a typo
    is an error locally, as it is through `--server`."""
    from nexus.types import SessionStatus

    known = [s.value for s in SessionStatus]
    names = [n.strip() for value in given for n in value.split(",") if n.strip()]
    for name in names:
        if name not in known:
            _die(f"unknown status {name!r} (known: {', '.join(known)})", EXIT_USAGE)
    return list(dict.fromkeys(names))


@app.command()
def status(
    session_id: str,
    watch: WatchOpt = False,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """One session's status, counters and outcome (times as local times and ages;
    `--json` keeps the raw row). SESSION may be any unique prefix of its id."""
    import time

    from nexus.cli.render import status_lines
    from nexus.types import SessionStatus

    src = _source(server)
    session_id = _resolve(src, session_id)
    last: dict[str, Any] | None = None
    try:
        while True:
            row = _read(lambda: src.session(session_id))
            if row != last:
                if as_json:
                    sys.stdout.write(json.dumps(row, indent=None if watch else 2) + "\n")
                else:
                    if last is not None:
                        sys.stdout.write("\n")
                    for key, value in status_lines(row):
                        sys.stdout.write(f"{key:>9}  {value}\n")
                sys.stdout.flush()
                last = row
            if not watch or SessionStatus(row["status"]).finished:
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _resolve(src: Source, given: str) -> str:
    """The session id that `given` names: itself, or the one id it is a prefix of
    (docker's habit). Ambiguous or unknown: a clear error."""
    from nexus.errors import NexusError

    try:
        return src.resolve(given)
    except NexusError as exc:
        from nexus.errors import SessionNotFound

        _die(str(exc), EXIT_NOT_FOUND if isinstance(exc, SessionNotFound) else EXIT_USAGE)


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
    session_id = _resolve(src, session_id)
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
    session_id = _resolve(src, session_id)
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
    if session_id is not None:
        session_id = _resolve(src, session_id)
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
    checkpoint with it. Running workers sign with the new key after a restart. The keys
    are the runtime's: beside a database file, in NEXUS_HOME for a database URL."""
    from nexus.runtime.audit import write_checkpoint

    rt = _runtime()
    keys = rt.journal.keys
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
def workers(as_json: JsonOpt = False, server: ServerOpt = None) -> None:
    """List the workers on this database: heartbeats, status and running sessions."""
    src = _source(server)
    rows = _read(src.workers)
    if as_json:
        _print_json(rows)
        return
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for col in ("worker", "role", "host", "pid", "status", "heartbeat", "sessions"):
        table.add_column(col)
    for r in rows:
        shown = ", ".join(r["sessions"][:3]) + (" …" if len(r["sessions"]) > 3 else "")
        table.add_row(
            r["id"],
            r["role"],
            r["host"],
            str(r["pid"]),
            r["status"],
            f"{r['age_s']:.1f} s ago",
            f"{len(r['sessions'])} {shown}".strip(),
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
    from nexus.errors import ConfigError, StorageError

    rt = _runtime()
    if demo:
        from nexus.examples import DEMO_GOAL, demo_recording

        # Journaled as queued now; the workers pick it up as they start.
        rt.create_session(
            DEMO_GOAL, replay=str(demo_recording()), replay_pace_s=1.5, labels={"demo": "true"}
        )
    try:
        from nexus.runtime.dispatch import check_system_database
        from nexus.server.app import create_app
        from nexus.server.run import check_bind, serve

        check_system_database(rt.settings)
        check_bind(host, auth=not no_auth)
        app_ = create_app(rt, auth=not no_auth)
    except (ConfigError, StorageError) as exc:
        _die(str(exc), EXIT_USAGE)
    shown = f"[{host}]" if ":" in host else host
    console = _console()
    console.print(f"[bold]NEXUS[/] dashboard and API on [bold]http://{shown}:{port}/[/]")
    if no_auth:
        console.print("auth:  [yellow]off[/] (loopback only)")
    else:
        where = app_.state.nexus.auth.tokens.where
        hint = "" if where == "NEXUS_API_TOKEN" else "  (nexus token show)"
        console.print(f"token: {where}{hint}")
    console.print(f"data:  {rt.settings.home}")
    serve(app_, host=host, port=port)


@contextlib.contextmanager
def _tokens() -> Iterator[TokenSource]:
    """The token source the settings choose (`nexus.server.tokens`); a bad setting or
    an unreachable database exits 2 in one line."""
    from nexus.config import load_settings
    from nexus.errors import ConfigError, StorageError
    from nexus.server.tokens import opened_token_source

    try:
        with opened_token_source(load_settings()) as tokens:
            yield tokens
    except (ConfigError, StorageError) as exc:
        _die(str(exc), EXIT_USAGE)


@token_app.command("show")
def token_show() -> None:
    """Print the API token (created on first use), unless it is NEXUS_API_TOKEN."""
    with _tokens() as tokens:
        if tokens.where == "NEXUS_API_TOKEN":
            # Never printed: it is a secret setting, and its owner has it already.
            _die(
                "the API token comes from NEXUS_API_TOKEN (not printed: it is in the "
                "environment of the servers)",
                EXIT_USAGE,
            )
        sys.stdout.write(tokens.ensure() + "\n")


@token_app.command("rotate")
def token_rotate() -> None:
    """Replace the API token; dashboard logins made with the old one end (on every
    server on the database when the token lives there)."""
    from nexus.server.tokens import DatabaseToken

    with _tokens() as tokens:
        sys.stdout.write(tokens.rotate() + "\n")
        if isinstance(tokens, DatabaseToken):
            _console(stderr=True).print(
                f"every server on {tokens.where} takes the new token within "
                f"{tokens.ttl_s:g} s and refuses the old one",
                markup=False,
            )


# Commands defined in modules of their own register themselves on `app`.
from nexus.cli import control, observe, running, traces  # noqa: E402

__all__ = ["app", "control", "main", "observe", "running", "traces"]


def main() -> None:
    """Console-script entry point."""
    app()
