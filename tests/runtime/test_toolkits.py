"""Built-in toolkits: the workspace files (with undo and path confinement) and the
HTTP fetch tool against a real local server."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from nexus.errors import ToolExecutionError
from nexus.runtime.toolkits import BUILTIN
from nexus.runtime.toolkits.http import MAX_BODY, check_url, http_get
from nexus.runtime.toolkits.workspace import (
    MAX_READ,
    delete_file,
    list_files,
    read_file,
    write_file,
)
from nexus.runtime.tools import Tool, ToolContext


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


def context(ws: Path, key: str = "key-1", **kw: Any) -> ToolContext:
    return ToolContext(session_id="s1", step=1, idempotency_key=key, workspace=ws, **kw)


async def call(t: Tool, ctx: ToolContext, **args: Any) -> Any:
    """Parse the arguments as the model would send them, then invoke."""
    import json

    return await t.invoke(ctx, t.parse(json.dumps(args)))


def test_builtin_toolkits_are_registered_by_name() -> None:
    """The built-in registry resolves 'workspace' and 'http' to their tools."""
    assert {name: [t.name for t in get()] for name, get in BUILTIN.items()} == {
        "workspace": ["read_file", "list_files", "write_file", "delete_file"],
        "http": ["http_get"],
    }


# -- workspace: reading -----------------------------------------------------------------


async def test_read_and_list_files_inside_the_workspace(ws: Path) -> None:
    """read_file returns a file's text; list_files lists files recursively and sorted,
    relative to the workspace, from the root or a subfolder."""
    (ws / "b.txt").write_text("bee", encoding="utf-8")
    (ws / "sub" / "deep").mkdir(parents=True)
    (ws / "sub" / "a.md").write_text("é", encoding="utf-8")
    (ws / "sub" / "deep" / "c.txt").write_text("", encoding="utf-8")
    ctx = context(ws)

    assert await call(read_file, ctx, path="b.txt") == "bee"
    assert await call(read_file, ctx, path="./sub/a.md") == "é"
    assert await call(list_files, ctx) == ["b.txt", "sub/a.md", "sub/deep/c.txt"]
    assert await call(list_files, ctx, path="sub") == ["sub/a.md", "sub/deep/c.txt"]


async def test_read_file_truncates_large_files(ws: Path) -> None:
    """read_file returns at most MAX_READ bytes of text."""
    (ws / "big.txt").write_bytes(b"x" * (MAX_READ + 10))
    assert await call(read_file, context(ws), path="big.txt") == "x" * MAX_READ


async def test_missing_files_and_folders_are_reported(ws: Path) -> None:
    """Reading a missing file (or a folder), listing a missing folder and deleting a
    missing file each raise ToolExecutionError saying so."""
    (ws / "dir").mkdir()
    ctx = context(ws)
    for t, args, message in [
        (read_file, {"path": "nope.txt"}, "no such file: nope.txt"),
        (read_file, {"path": "dir"}, "no such file: dir"),
        (list_files, {"path": "nope"}, "no such folder: nope"),
        (delete_file, {"path": "nope.txt"}, "no such file: nope.txt"),
    ]:
        with pytest.raises(ToolExecutionError) as info:
            await call(t, ctx, **args)
        assert str(info.value) == message


# -- workspace: writing and undo ----------------------------------------------------------


async def test_write_of_a_new_file_then_undo_removes_it(ws: Path) -> None:
    """Writing a new file (folders included) returns no backup; undo deletes it."""
    ctx = context(ws)
    args = write_file.parse('{"path": "notes/new.txt", "content": "héllo"}')
    result = await write_file.invoke(ctx, args)
    assert result == {"path": "notes/new.txt", "bytes": 6, "backup": None}
    assert (ws / "notes" / "new.txt").read_text(encoding="utf-8") == "héllo"

    await write_file.compensate(ctx, args, result)
    assert not (ws / "notes" / "new.txt").exists()


async def test_overwrite_then_undo_restores_previous_content(ws: Path) -> None:
    """Overwriting keeps a backup under the call's key; undo puts the old text back."""
    (ws / "a.txt").write_text("old", encoding="utf-8")
    ctx = context(ws, key="k-overwrite")
    args = {"path": "a.txt", "content": "new"}
    result = await write_file.invoke(ctx, args)
    assert result == {"path": "a.txt", "bytes": 3, "backup": "k-overwrite"}
    assert (ws / "a.txt").read_text(encoding="utf-8") == "new"

    await write_file.compensate(ctx, args, result)
    assert (ws / "a.txt").read_text(encoding="utf-8") == "old"


async def test_delete_then_undo_restores_the_file(ws: Path) -> None:
    """Deleting backs the file up; undo restores it with its content."""
    (ws / "sub").mkdir()
    (ws / "sub" / "d.txt").write_text("keep me", encoding="utf-8")
    ctx = context(ws, key="k-delete")
    args = {"path": "sub/d.txt"}
    result = await delete_file.invoke(ctx, args)
    assert result == {"path": "sub/d.txt", "deleted": True, "backup": "k-delete"}
    assert not (ws / "sub" / "d.txt").exists()

    await delete_file.compensate(ctx, args, result)
    assert (ws / "sub" / "d.txt").read_text(encoding="utf-8") == "keep me"


async def test_backups_are_hidden_from_listing(ws: Path) -> None:
    """The backups kept for undo never show up in list_files."""
    (ws / "a.txt").write_text("old", encoding="utf-8")
    ctx = context(ws)
    await call(write_file, ctx, path="a.txt", content="new")
    await call(write_file, context(ws, key="key-2"), path="b.txt", content="b")
    assert (ws / ".nexus").is_dir()
    assert await call(list_files, ctx) == ["a.txt", "b.txt"]


def test_write_tools_declare_their_undo() -> None:
    """write_file and delete_file are write tools with an undo; reads are read tools."""
    assert [
        (t.name, t.effect.value, t.undo is not None)
        for t in (read_file, list_files, write_file, delete_file)
    ] == [
        ("read_file", "read", False),
        ("list_files", "read", False),
        ("write_file", "write", True),
        ("delete_file", "write", True),
    ]


# -- workspace: retry semantics -------------------------------------------------------------


async def test_retried_write_after_a_crash_mid_write_keeps_the_original_backup(ws: Path) -> None:
    """A retried write (same key, retry=True) does not back up its own half-done write:
    undo still restores the content from before the first attempt."""
    (ws / "a.txt").write_text("original", encoding="utf-8")
    args = {"path": "a.txt", "content": "final"}
    await write_file.invoke(context(ws, key="k"), args)
    (ws / "a.txt").write_text("fin", encoding="utf-8")  # the crash left it half-written

    retry = context(ws, key="k", retry=True)
    result = await write_file.invoke(retry, args)
    assert result == {"path": "a.txt", "bytes": 5, "backup": "k"}
    assert (ws / "a.txt").read_text(encoding="utf-8") == "final"

    await write_file.compensate(retry, args, result)
    assert (ws / "a.txt").read_text(encoding="utf-8") == "original"


async def test_retried_write_of_a_new_file_still_undoes_to_nothing(ws: Path) -> None:
    """If the first attempt created the file, the retry knows it did not exist before:
    undo removes it rather than restoring the first attempt's content."""
    args = {"path": "new.txt", "content": "x"}
    await write_file.invoke(context(ws, key="k"), args)

    retry = context(ws, key="k", retry=True)
    result = await write_file.invoke(retry, args)
    assert result == {"path": "new.txt", "bytes": 1, "backup": None}
    await write_file.compensate(retry, args, result)
    assert not (ws / "new.txt").exists()


async def test_retried_write_whose_first_attempt_never_ran_backs_up_now(ws: Path) -> None:
    """A crash after tool.call was journaled but before the tool ran leaves no backup;
    the retry must back up the untouched original, so undo does not destroy it."""
    (ws / "a.txt").write_text("precious", encoding="utf-8")
    retry = context(ws, key="k", retry=True)
    args = {"path": "a.txt", "content": "new"}
    result = await write_file.invoke(retry, args)
    assert result == {"path": "a.txt", "bytes": 3, "backup": "k"}

    await write_file.compensate(retry, args, result)
    assert (ws / "a.txt").read_text(encoding="utf-8") == "precious"


async def test_retried_delete_of_an_already_deleted_file_succeeds(ws: Path) -> None:
    """If the first attempt deleted the file, the retry reports success with the same
    backup, and undo restores it."""
    (ws / "d.txt").write_text("data", encoding="utf-8")
    args = {"path": "d.txt"}
    await delete_file.invoke(context(ws, key="k"), args)

    retry = context(ws, key="k", retry=True)
    result = await delete_file.invoke(retry, args)
    assert result == {"path": "d.txt", "deleted": True, "backup": "k"}
    await delete_file.compensate(retry, args, result)
    assert (ws / "d.txt").read_text(encoding="utf-8") == "data"


async def test_retried_delete_without_a_backup_reports_the_missing_file(ws: Path) -> None:
    """A retry finds nothing to vouch for a file that never existed: still an error."""
    with pytest.raises(ToolExecutionError, match=r"no such file: ghost\.txt"):
        await delete_file.invoke(context(ws, key="k", retry=True), {"path": "ghost.txt"})


# -- workspace: confinement ---------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path, ws: Path) -> Path:
    """A folder next to the workspace with a secret file, and symlinks pointing at it."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("outside secret", encoding="utf-8")
    (ws / "link.txt").symlink_to(folder / "secret.txt")
    (ws / "linkdir").symlink_to(folder, target_is_directory=True)
    (ws / "dangling").symlink_to(folder / "new.txt")
    (ws / ".nexus" / "undo").mkdir(parents=True)
    (ws / ".nexus" / "undo" / "k").write_text("backup", encoding="utf-8")
    return folder


ESCAPES = [
    ("../outside/secret.txt", "outside the workspace"),
    ("sub/../../outside/secret.txt", "outside the workspace"),
    ("/etc/passwd", "outside the workspace"),
    ("link.txt", "outside the workspace"),
    ("linkdir/secret.txt", "outside the workspace"),
    ("dangling", "outside the workspace"),
    (".nexus/undo/k", "reserved"),
    (".nexus", "reserved"),
    ("sub/../.nexus/undo/k", "reserved"),
    ("a\x00b.txt", "NUL byte"),
]


@pytest.mark.parametrize(("path", "why"), ESCAPES, ids=[p for p, _ in ESCAPES])
@pytest.mark.parametrize(
    "t", [read_file, list_files, write_file, delete_file], ids=lambda t: t.name
)
async def test_paths_leaving_the_workspace_are_refused(
    ws: Path, outside: Path, t: Tool, path: str, why: str
) -> None:
    """Traversal, absolute paths, symlinks pointing out, the reserved .nexus folder and
    NUL bytes are refused by every workspace tool, and nothing outside changes."""
    args: dict[str, Any] = {"path": path}
    if t is write_file:
        args["content"] = "pwned"
    with pytest.raises(ToolExecutionError) as info:
        await t.invoke(context(ws), args)
    assert why in str(info.value)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text(encoding="utf-8") == "outside secret"
    assert (ws / ".nexus" / "undo" / "k").read_text(encoding="utf-8") == "backup"


async def test_symlinks_that_stay_inside_are_followed(ws: Path) -> None:
    """A symlink whose target is inside the workspace is an ordinary path."""
    (ws / "real.txt").write_text("inside", encoding="utf-8")
    (ws / "alias.txt").symlink_to(ws / "real.txt")
    assert await call(read_file, context(ws), path="alias.txt") == "inside"


# -- http ---------------------------------------------------------------------------------


class Site:
    """A small real HTTP server on loopback, counting hits per path."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    def _count(self, request: web.Request) -> None:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1

    async def start(self) -> None:
        async def text(request: web.Request) -> web.Response:
            self._count(request)
            return web.Response(text="hello, wörld", content_type="text/plain")

        async def sized(request: web.Request) -> web.Response:
            self._count(request)
            return web.Response(body=b"a" * int(request.query["n"]), content_type="text/plain")

        async def latin(request: web.Request) -> web.Response:
            self._count(request)
            return web.Response(
                body="café".encode("latin-1"), content_type="text/plain", charset="latin-1"
            )

        async def bogus(request: web.Request) -> web.Response:
            self._count(request)
            return web.Response(body=b"ok", headers={"Content-Type": "text/plain; charset=nope"})

        async def redirect(request: web.Request) -> web.Response:
            self._count(request)
            raise web.HTTPFound("/target")

        async def missing(request: web.Request) -> web.Response:
            self._count(request)
            return web.Response(status=404, text="gone")

        app = web.Application()
        for path, handler in [
            ("/text", text),
            ("/sized", sized),
            ("/latin", latin),
            ("/bogus", bogus),
            ("/redirect", redirect),
            ("/target", text),
            ("/missing", missing),
        ]:
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = Site()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def test_http_get_returns_status_type_and_text(ws: Path, site: Site) -> None:
    """A 200 text answer comes back whole with its status and content type."""
    assert await call(http_get, context(ws), url=site.url + "/text") == {
        "status": 200,
        "content_type": "text/plain; charset=utf-8",
        "body": "hello, wörld",
        "truncated": False,
    }


async def test_http_get_returns_error_statuses_as_results(ws: Path, site: Site) -> None:
    """A 404 is a result for the model to read, not an exception."""
    result = await call(http_get, context(ws), url=site.url + "/missing")
    assert (result["status"], result["body"], result["truncated"]) == (404, "gone", False)


async def test_http_get_reads_bodies_up_to_the_cap_whole(ws: Path, site: Site) -> None:
    """A body larger than one network read but under MAX_BODY is returned whole."""
    n = MAX_BODY // 2 + 12345
    result = await call(http_get, context(ws), url=f"{site.url}/sized?n={n}")
    assert (len(result["body"]), result["truncated"]) == (n, False)
    exact = await call(http_get, context(ws), url=f"{site.url}/sized?n={MAX_BODY}")
    assert (len(exact["body"]), exact["truncated"]) == (MAX_BODY, False)


async def test_http_get_truncates_large_bodies(ws: Path, site: Site) -> None:
    """A body over MAX_BODY is cut at MAX_BODY and flagged as truncated."""
    result = await call(http_get, context(ws), url=f"{site.url}/sized?n={MAX_BODY + 100_000}")
    assert (len(result["body"]), result["truncated"]) == (MAX_BODY, True)


async def test_http_get_decodes_the_declared_charset(ws: Path, site: Site) -> None:
    """The body is decoded with the charset the server declares; an unknown charset
    falls back to UTF-8 instead of failing."""
    assert (await call(http_get, context(ws), url=site.url + "/latin"))["body"] == "café"
    assert (await call(http_get, context(ws), url=site.url + "/bogus"))["body"] == "ok"


async def test_http_get_does_not_follow_redirects(ws: Path, site: Site) -> None:
    """A redirect is returned as is; its target is never requested."""
    result = await call(http_get, context(ws), url=site.url + "/redirect")
    assert result["status"] == 302
    assert site.hits == {"/redirect": 1}


async def test_http_get_refuses_other_hosts_before_connecting(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-loopback host is refused by check_url before any name lookup or connection."""
    lookups: list[Any] = []

    def no_lookup(*args: Any, **kwargs: Any) -> Any:
        lookups.append(args)
        raise OSError("lookup attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    with pytest.raises(ToolExecutionError) as info:
        await call(http_get, context(ws), url="http://example.com/")
    assert str(info.value) == (
        "host 'example.com' is not allowed: only loopback and the hosts in "
        "NEXUS_TOOLKITS__HTTP__ALLOW_HOSTS may be fetched"
    )
    assert lookups == []


async def test_http_get_reports_a_refused_connection(ws: Path) -> None:
    """A loopback port with nothing listening gives a ToolExecutionError."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ToolExecutionError, match=rf"GET http://127.0.0.1:{port}/ failed"):
        await call(http_get, context(ws), url=f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize(
    ("url", "allow", "host"),
    [
        ("http://localhost:8080/x", (), "localhost"),
        ("https://LOCALHOST/", (), "localhost"),
        ("http://127.0.0.1/", (), "127.0.0.1"),
        ("http://127.9.9.9:1/", (), "127.9.9.9"),
        ("http://[::1]:8000/", (), "::1"),
        ("https://api.example.org/v1", ("api.example.org",), "api.example.org"),
        ("https://API.Example.org/v1", ("api.example.org",), "api.example.org"),
        ("https://api.example.org/v1", ("API.EXAMPLE.ORG",), "api.example.org"),
    ],
)
def test_check_url_allows_loopback_and_listed_hosts(
    url: str, allow: tuple[str, ...], host: str
) -> None:
    """Loopback names and addresses, and allow-listed names (any case), are allowed."""
    assert check_url(url, allow) == host


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1/file", "only http and https URLs can be fetched, not 'ftp'"),
        ("file:///etc/passwd", "only http and https URLs can be fetched, not 'file'"),
        ("127.0.0.1/x", "only http and https URLs can be fetched, not ''"),
        ("http:///path", "URL has no host"),
        ("http://example.com/", "host 'example.com' is not allowed"),
        ("http://127.0.0.1@example.com/", "host 'example.com' is not allowed"),
        ("http://localhost.example.com/", "host 'localhost.example.com' is not allowed"),
        ("http://sub.api.example.org/", "host 'sub.api.example.org' is not allowed"),
        ("http://0.0.0.0/", "host '0.0.0.0' is not allowed"),
        ("http://10.0.0.1/", "host '10.0.0.1' is not allowed"),
    ],
)
def test_check_url_refuses_other_schemes_and_hosts(url: str, message: str) -> None:
    """Non-http schemes, missing hosts and hosts neither loopback nor listed are refused;
    names are compared literally (userinfo tricks and look-alike names fail)."""
    with pytest.raises(ToolExecutionError) as info:
        check_url(url, ("api.example.org",))
    assert str(info.value).startswith(message)
