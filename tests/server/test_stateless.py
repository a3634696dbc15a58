"""Stateless servers: every server on one database accepts one API token (issue 10,
part 5). Two apps with separate NEXUS_HOMEs (two machines) on one database: the
token, its rotation, dashboard cookies and a bad token behave the same on both; the
token from NEXUS_API_TOKEN works on PostgreSQL and SQLite and is never printed or
logged."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from nexus.cli.app import app as cli
from nexus.config import load_settings
from nexus.errors import StorageError
from nexus.observe.logs import configure
from nexus.runtime.redact import MASK
from nexus.runtime.runtime import Runtime
from nexus.server.app import create_app
from nexus.server.auth import COOKIE
from nexus.server.tokens import SCHEMA, DatabaseToken, EnvToken, TokenFile
from nexus.storage.base import Store
from nexus.storage.postgres import PostgresStore
from nexus.storage.sqlite import SQLiteStore
from tests.server.test_api import Api, assert_problem
from tests.waiting import until, wait_for

ROOT = Path(__file__).resolve().parents[2]
ENV_TOKEN = "env-token-" + "Zq7" * 12  # 46 visible characters
VERSION = {"version": "0.1.0", "api": "v1"}
runner = CliRunner()


@asynccontextmanager
async def server(home: Path) -> AsyncIterator[Api]:
    """An app on its own NEXUS_HOME (its own machine), sharing whatever database the
    environment names; its lifespan runs, its workers do not."""
    rt = Runtime(load_settings(home=home))
    app = create_app(rt, workers=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield Api(app, client, app.state.nexus.auth.token())
    await rt.aclose()


@asynccontextmanager
async def two_servers(home_a: Path, home_b: Path) -> AsyncIterator[tuple[Api, Api]]:
    async with server(home_a) as a, server(home_b) as b:
        yield a, b


def cli_in(home: Path, *args: str) -> Any:
    """`nexus ARGS` with NEXUS_HOME at `home` (a third machine)."""
    return runner.invoke(cli, list(args), env={"NEXUS_HOME": str(home)}, catch_exceptions=False)


async def version(api: Api, **headers: str) -> int:
    return (await api.client.get("/api/v1/version", headers=headers)).status_code


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(api: Api, token: str) -> tuple[str, str]:
    """Sign in on `api`'s dashboard: its cookie value and a page's CSRF token."""
    resp = await api.client.post("/login", data={"token": token, "next": "/"})
    assert resp.status_code == 303, resp.text
    cookie = resp.cookies[COOKIE]
    page = await api.client.get("/new", headers={"Cookie": f"{COOKIE}={cookie}"})
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return cookie, found.group(1)


@pytest.fixture
def on_postgres(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every runtime of the test on one fresh PostgreSQL database."""
    monkeypatch.setenv("NEXUS_DATABASE_URL", postgres_url)
    return postgres_url


# -- the token in the database (the default on PostgreSQL) ------------------------------


async def test_two_servers_on_one_postgres_accept_one_token_and_serve_the_same_sessions(
    on_postgres: str, tmp_path: Path
) -> None:
    """Two servers with separate homes on one database: with nothing configured they
    accept the same 256-bit token (kept in the database, no file in either home),
    `nexus token show` on a third machine prints it, a session created on one is the
    same document on the other, and a bad token is 401 on both."""
    async with two_servers(tmp_path / "a", tmp_path / "b") as (a, b):
        assert a.token == b.token and len(a.token) == 43
        assert [(h / "api-token").exists() for h in (tmp_path / "a", tmp_path / "b")] == [
            False,
            False,
        ]
        assert cli_in(tmp_path / "c", "token", "show").stdout == a.token + "\n"
        created = await a.post("/api/v1/sessions", json={"goal": "one for both", "priority": 2})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        on_a = (await a.get(f"/api/v1/sessions/{sid}")).json()
        on_b = (await b.get(f"/api/v1/sessions/{sid}")).json()
        assert on_b == on_a and (on_b["goal"], on_b["status"]) == ("one for both", "queued")
        listed = (await b.get("/api/v1/sessions")).json()["items"]
        assert [s["id"] for s in listed] == [sid]
        events_a = (await a.get(f"/api/v1/sessions/{sid}/events")).json()
        assert (await b.get(f"/api/v1/sessions/{sid}/events")).json() == events_a
        for api in (a, b):
            resp = await api.client.get("/api/v1/sessions", headers=bearer("x" * 43))
            body = assert_problem(resp, 401, "unauthorized")
            assert body["detail"] == "authentication required"


async def test_a_dashboard_cookie_from_one_server_works_on_the_other(
    on_postgres: str, tmp_path: Path
) -> None:
    """Signed in on server A, the browser's cookie opens B's pages and, with the CSRF
    token A's page gave, makes a state change on B; without it B refuses (403)."""
    async with two_servers(tmp_path / "a", tmp_path / "b") as (a, b):
        cookie, csrf = await login(a, a.token)
        jar = {"Cookie": f"{COOKIE}={cookie}"}
        page = await b.client.get("/new", headers=jar)
        assert (page.status_code, f'name="csrf_token" value="{csrf}"' in page.text) == (200, True)
        refused = await b.client.post("/api/v1/sessions", json={"goal": "g"}, headers=jar)
        assert assert_problem(refused, 403, "csrf")["detail"] == "missing or invalid CSRF token"
        made = await b.client.post(
            "/api/v1/sessions",
            json={"goal": "from A's login"},
            headers={**jar, "X-CSRF-Token": csrf},
        )
        assert made.status_code == 201, made.text
        row = (await a.get(f"/api/v1/sessions/{made.json()['id']}")).json()
        assert (row["goal"], row["status"]) == ("from A's login", "queued")


async def test_a_rotation_anywhere_is_honoured_by_every_server(
    on_postgres: str, tmp_path: Path
) -> None:
    """`nexus token rotate` on a third machine replaces the database's token: both
    servers take the new one (each re-reads within a second) and then refuse the old
    token and the cookies made with it; the command says so on stderr."""
    async with two_servers(tmp_path / "a", tmp_path / "b") as (a, b):
        old = a.token
        cookie, _ = await login(b, old)
        rotated = cli_in(tmp_path / "c", "token", "rotate")
        new = rotated.stdout.strip()
        assert (rotated.exit_code, len(new), new != old) == (0, 43, True)
        assert "takes the new token within 1 s and refuses the old one" in rotated.stderr
        for api in (a, b):
            auth = api.app.state.nexus.auth
            await until(lambda auth=auth: auth.token() == new, "the server reads the rotation")
        for api in (a, b):
            assert [
                await version(api, **bearer(new)),
                await version(api, **bearer(old)),
                await version(api, Cookie=f"{COOKIE}={cookie}"),
            ] == [200, 401, 401]
        assert cli_in(tmp_path / "a", "token", "show").stdout.strip() == new


async def test_a_rotation_on_a_server_is_at_once_its_own(on_postgres: str, tmp_path: Path) -> None:
    """The server that rotates (its token source) refuses the old token at once."""
    async with server(tmp_path / "a") as a:
        new = a.app.state.nexus.auth.tokens.rotate()
        assert [await version(a, **bearer(a.token)), await version(a, **bearer(new))] == [401, 200]


async def test_a_server_that_cannot_read_the_token_answers_503(
    on_postgres: str, tmp_path: Path
) -> None:
    """When the token's table cannot be read the server refuses every credential,
    the right one too, with 503 naming the cause: it does not keep trusting a token
    that may have been rotated meanwhile. /healthz still answers."""
    async with server(tmp_path / "a") as a:
        with psycopg.connect(on_postgres, autocommit=True) as db:
            db.execute("ALTER TABLE api_token RENAME TO api_token_away")
        tokens = a.app.state.nexus.auth.tokens

        def unreadable() -> bool:
            try:
                tokens.read()
            except StorageError:
                return True
            return False

        await until(unreadable, "the token cache expires")
        resp = await a.get("/api/v1/version")
        body = assert_problem(resp, 503, "unavailable")
        assert body["detail"].startswith(
            "cannot read the API token from the database postgresql://postgres@127.0.0.1:"
        )
        assert 'relation "api_token" does not exist' in body["detail"]
        assert (await a.client.get("/healthz")).status_code == 200
        with psycopg.connect(on_postgres, autocommit=True) as db:
            db.execute("ALTER TABLE api_token_away RENAME TO api_token")
        # The failed connection was dropped; the next read makes a new one.
        assert await version(a, **bearer(a.token)) == 200


@pytest.fixture(params=["sqlite", "postgres"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Two stores on one database, as two processes would open it."""
    if request.param == "sqlite":
        stores: list[Store] = [SQLiteStore(tmp_path / "nexus.db") for _ in range(2)]
    else:
        url = request.getfixturevalue("postgres_url")
        stores = [PostgresStore(url) for _ in range(2)]
    yield stores[0], stores[1]
    for store in stores:
        store.close()


def test_the_database_token_is_one_row_on_both_stores(two_stores: tuple[Store, Store]) -> None:
    """On SQLite and PostgreSQL: the server's schema is version 1; two first readers
    at once (servers starting together on a fresh database) make one token between
    them; a rotation through one is seen through the other once its cache has expired
    (ttl 0 here: every read queries)."""
    first, second = two_stores
    dialect = "sqlite" if isinstance(first, SQLiteStore) else "postgresql"
    one = DatabaseToken(first, dialect=dialect)
    other = DatabaseToken(second, dialect=dialect, ttl_s=0)
    try:
        assert (first.migrate(SCHEMA), second.migrate(SCHEMA)) == (1, 1)
        start = threading.Barrier(2)
        seen: list[str] = []

        def first_read(source: DatabaseToken) -> None:
            start.wait()
            seen.append(source.ensure())

        readers = [threading.Thread(target=first_read, args=(s,)) for s in (one, other)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(30)
        token = one.read()
        assert (len(token), seen, other.read()) == (43, [token, token], token)
        new = one.rotate()
        assert (one.read(), other.read(), new != token) == (new, new, True)
        assert other.where == f"the database {second.path}"
    finally:
        one.close()
        other.close()


# -- the token from the environment ----------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def env_store(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[Path, Path]:
    """NEXUS_API_TOKEN set, and the homes of two servers: on SQLite one home (one
    database file), on PostgreSQL two homes on one database."""
    monkeypatch.setenv("NEXUS_API_TOKEN", ENV_TOKEN)
    if request.param == "sqlite":
        monkeypatch.delenv("NEXUS_DATABASE_URL", raising=False)  # also under --store=postgres
        return tmp_path / "a", tmp_path / "a"
    request.getfixturevalue("on_postgres")
    return tmp_path / "a", tmp_path / "b"


async def test_the_environment_token_is_the_one_every_server_accepts(
    env_store: tuple[Path, Path], tmp_path: Path
) -> None:
    """With NEXUS_API_TOKEN both servers accept exactly it (no file is made, the
    database's token is not used), a cookie from one works on the other, a bad token
    is 401 on both, and the API's config shows it masked."""
    async with two_servers(*env_store) as (a, b):
        assert isinstance(a.app.state.nexus.auth.tokens, EnvToken)
        assert (a.token, b.token) == (ENV_TOKEN, ENV_TOKEN)
        assert [(h / "api-token").exists() for h in env_store] == [False, False]
        cookie, _ = await login(a, ENV_TOKEN)
        for api in (a, b):
            assert [
                await version(api, **bearer(ENV_TOKEN)),
                await version(api, Cookie=f"{COOKIE}={cookie}"),
                await version(api, **bearer(ENV_TOKEN[:-1] + "x")),
            ] == [200, 200, 401]
        config = (await b.get("/api/v1/config")).json()
        assert config["api_token"] == "**********" and ENV_TOKEN not in json.dumps(config)


def test_token_commands_say_the_environment_token_is_not_theirs(
    env_store: tuple[Path, Path],
) -> None:
    """`nexus token show` and `rotate` refuse (exit 2) naming NEXUS_API_TOKEN and never
    print it; `nexus config show` masks it, as text and as JSON."""
    home = env_store[0]
    show, rotate = cli_in(home, "token", "show"), cli_in(home, "token", "rotate")
    assert (show.exit_code, show.stdout) == (2, "")
    assert " ".join(show.stderr.split()) == (
        "error: the API token comes from NEXUS_API_TOKEN (not printed: it is in the "
        "environment of the servers)"
    )
    assert (rotate.exit_code, rotate.stdout) == (2, "")
    assert " ".join(rotate.stderr.split()) == (
        "error: the API token comes from NEXUS_API_TOKEN, which NEXUS cannot rotate: set a "
        "new value there and restart every server"
    )
    text, as_json = cli_in(home, "config", "show"), cli_in(home, "config", "show", "--json")
    assert json.loads(as_json.stdout)["api_token"] == "**********"
    assert re.search(r"api_token \*{10}\n", text.stdout)
    for result in (show, rotate, text, as_json):
        assert ENV_TOKEN not in result.output


def test_a_weak_or_spaced_environment_token_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token under 32 characters, or with a space, is refused naming the setting,
    never its value; surrounding whitespace (a pasted newline) is dropped."""
    for bad in ("short-secret-value", "a" * 20 + " " + "b" * 20):
        monkeypatch.setenv("NEXUS_API_TOKEN", bad)
        result = runner.invoke(cli, ["config", "show"])
        assert result.exit_code == 2 and bad not in result.output
        assert " ".join(result.stderr.split()) == (
            "error: invalid settings: NEXUS_API_TOKEN: Value error, must be at least 32 "
            "visible ASCII characters, without spaces"
        )
    monkeypatch.setenv("NEXUS_API_TOKEN", f"  {ENV_TOKEN}\n")
    token = load_settings().api_token
    assert token is not None and token.get_secret_value() == ENV_TOKEN


def test_the_file_stays_the_default_on_sqlite(
    nexus_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without NEXUS_API_TOKEN and NEXUS_DATABASE_URL the token is the home's file."""
    monkeypatch.delenv("NEXUS_DATABASE_URL", raising=False)
    rt = Runtime(load_settings())
    try:
        app = create_app(rt, workers=False)
        tokens = app.state.nexus.auth.tokens
        assert isinstance(tokens, TokenFile) and tokens.path == nexus_home / "api-token"
    finally:
        rt.store.close()


# -- the environment token never reaches the logs --------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_the_environment_token_never_reaches_the_logs(
    nexus_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nexus start` at log level debug with NEXUS_API_TOKEN: signing in, API calls
    with the right and a wrong token, and a session whose goal quotes the token (it is
    journaled masked; its run fails for want of an LLM) leave the token nowhere in
    the server's output; the banner names where the token comes from."""
    monkeypatch.setenv("NEXUS_API_TOKEN", ENV_TOKEN)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**server_env(), "NEXUS_LOG_LEVEL": "debug"}
    log = tmp_path / "server.log"

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", "start", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: is_up(url), "server up")
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/login", data={"token": ENV_TOKEN}).status_code == 303
            wrong = client.get("/api/v1/version", headers=bearer(ENV_TOKEN + "x"))
            assert wrong.status_code == 401
            made = client.post(
                "/api/v1/sessions",
                json={"goal": f"deploy with {ENV_TOKEN} now"},
                headers=bearer(ENV_TOKEN),
            )
            assert made.status_code == 201, made.text
            sid = made.json()["id"]

            def finished() -> dict[str, Any] | None:
                row: dict[str, Any] = client.get(
                    f"/api/v1/sessions/{sid}", headers=bearer(ENV_TOKEN)
                ).json()
                return row if row["status"] == "failed" else None

            wait_for(finished, "the session fails without an LLM")
            row = finished()
            assert row is not None and row["goal"] == f"deploy with {MASK} now"
            events = client.get(f"/api/v1/sessions/{sid}/events", headers=bearer(ENV_TOKEN))
            assert ENV_TOKEN not in events.text and MASK in events.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    output = log.read_text()
    assert "token: NEXUS_API_TOKEN\n" in output
    assert ENV_TOKEN not in output


@pytest.mark.slow
def test_two_nexus_start_processes_on_one_postgres_serve_one_api(
    on_postgres: str, tmp_path: Path, demo_in_recordings: Path
) -> None:
    """Two `nexus start` processes, separate homes, one database, nothing else
    configured: both accept the token `nexus token show` prints on a third machine and
    refuse a bad one; a session posted to one runs on the workers and both servers
    then show it completed, the same document."""
    homes = [tmp_path / "a", tmp_path / "b"]
    ports = [free_port(), free_port()]
    procs = []
    for home, port in zip(homes, ports, strict=True):
        (home / "recordings").mkdir(parents=True)
        (home / "recordings" / "demo.json").write_bytes(demo_in_recordings.read_bytes())
        with (tmp_path / f"{home.name}.log").open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "nexus.cli", "start", "--port", str(port)],
                    env={**server_env(), "NEXUS_HOME": str(home)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url in urls:
            wait_for(lambda url=url: is_up(url), f"server {url} up")
        token = cli_in(tmp_path / "c", "token", "show").stdout.strip()
        statuses = [
            (
                httpx.get(f"{url}/api/v1/version", headers=bearer(token)).status_code,
                httpx.get(f"{url}/api/v1/version", headers=bearer("y" * 43)).status_code,
            )
            for url in urls
        ]
        assert statuses == [(200, 401), (200, 401)]
        made = httpx.post(
            f"{urls[0]}/api/v1/sessions",
            json={"goal": "Summarise the notes", "replay": "demo.json"},
            headers=bearer(token),
            timeout=30,
        )
        assert made.status_code == 201, made.text
        sid = made.json()["id"]

        def row(url: str) -> dict[str, Any]:
            found: dict[str, Any] = httpx.get(
                f"{url}/api/v1/sessions/{sid}", headers=bearer(token), timeout=30
            ).json()
            return found

        wait_for(lambda: row(urls[1])["status"] == "completed", "the session completes", 120)
        on_a, on_b = row(urls[0]), row(urls[1])
        assert on_a == on_b and (on_b["steps"], on_b["reason"]) == (9, "completed")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(30) for proc in procs]
    assert codes == [0, 0]
    assert [(h / "api-token").exists() for h in homes] == [False, False]


def server_env() -> dict[str, str]:
    """The environment of a `nexus` process that runs this tree's code."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def is_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(params=["environment", "database", "file"])
def token_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each token source in turn: NEXUS_API_TOKEN, PostgreSQL's table, the home's file."""
    if request.param == "environment":
        monkeypatch.setenv("NEXUS_API_TOKEN", ENV_TOKEN)
    elif request.param == "database":
        request.getfixturevalue("on_postgres")
    else:
        monkeypatch.delenv("NEXUS_DATABASE_URL", raising=False)
    return str(request.param)


async def test_the_token_is_masked_in_the_journal_and_the_logs(
    token_mode: str, tmp_path: Path
) -> None:
    """Whichever source it comes from, the token a server accepts is registered with
    its redactor from the start: a goal quoting it is journaled masked, and a log
    record carrying it (an error message echoing a request, say) reaches the
    process's log handler masked."""
    async with server(tmp_path / "a") as a:
        stream = io.StringIO()
        configure("debug", a.rt.redactor, stream=stream)
        logging.getLogger("nexus.server").error("refused a request carrying %s", a.token)
        made = await a.post("/api/v1/sessions", json={"goal": f"use {a.token} twice {a.token}"})
        assert made.status_code == 201, made.text
        events = (await a.get(f"/api/v1/sessions/{made.json()['id']}/events")).json()["items"]
        assert [(e["kind"], e["payload"]["goal"]) for e in events] == [
            ("session.created", f"use {MASK} twice {MASK}")
        ]
        assert stream.getvalue().endswith(
            f"ERROR nexus.server: refused a request carrying {MASK}\n"
        )
        assert a.token not in stream.getvalue()
