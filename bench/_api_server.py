"""The NEXUS server under test, in its own process: `python -m bench._api_server --home DIR`.

`bench.api` starts this (with `ServerProcess`) so that its clients' CPU does not
share the server's event loop. It serves `create_app(Runtime(...))` with the same
uvicorn server as `nexus start`, on a free loopback port, and prints
`http://127.0.0.1:PORT` once the socket is bound (the app may still be starting:
`wait_ready` polls `/healthz` and `/api/v1/readyz`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn

from bench._common import process_cpu_s, start_url_process, terminate
from nexus.config import load_settings
from nexus.runtime.runtime import Runtime
from nexus.server.app import create_app
from nexus.server.run import NexusServer


class ServerProcess:
    """`python -m bench._api_server` in a child process; `url` once it has bound."""

    def __init__(
        self,
        home: Path,
        *,
        sse_buffer: int,
        concurrency: int | None = None,
        module: str = "bench._api_server",
        start_timeout_s: float = 60.0,
    ) -> None:
        self.home = home
        self.module = module
        self.sse_buffer = sse_buffer
        self.concurrency = concurrency
        self.start_timeout_s = start_timeout_s
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None
        # Closed in close(); a file, not a pipe, so a chatty server never blocks on it.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115

    def __enter__(self) -> ServerProcess:
        cmd = [sys.executable, "-m", self.module, "--home", str(self.home)]
        cmd += ["--sse-buffer", str(self.sse_buffer)]
        if self.concurrency is not None:
            cmd += ["--concurrency", str(self.concurrency)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        env["NEXUS_HOME"] = str(self.home)
        try:
            self._proc, self.url = start_url_process(
                cmd, timeout_s=self.start_timeout_s, env=env, stderr=self._stderr
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {self.stderr()}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self._proc is not None
        return self._proc.pid

    def cpu_s(self) -> float:
        """User plus system CPU seconds the server has used, all threads."""
        return process_cpu_s(self.pid)

    def stderr(self) -> str:
        """What the server wrote to stderr (its last 2,000 characters)."""
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]

    def close(self) -> None:
        """SIGTERM (graceful: streams end, workers stop), SIGKILL after 20 s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        terminate(proc, grace_s=20)
        if proc.stdout is not None:
            proc.stdout.close()


async def wait_ready(http: aiohttp.ClientSession, url: str, home: Path, timeout_s: float) -> str:
    """Poll until the API answers with workers running; returns the API token."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{url}/healthz") as resp:
                if resp.status == 200:
                    token = (home / "api-token").read_text().strip()
                    headers = {"Authorization": f"Bearer {token}"}
                    async with http.get(f"{url}/api/v1/readyz", headers=headers) as ready:
                        if ready.status == 200:
                            return token
                        last = f"readyz {ready.status}: {await ready.text()}"
        except (aiohttp.ClientError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout_s:g} s ({last})")


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    p = argparse.ArgumentParser(prog="python -m bench._api_server", description=__doc__)
    p.add_argument("--home", type=Path, required=True, help="NEXUS_HOME to serve")
    p.add_argument("--no-workers", action="store_true", help="serve without session workers")
    p.add_argument("--no-auth", action="store_true")
    p.add_argument("--sse-buffer", type=int, default=1000)
    p.add_argument("--heartbeat-s", type=float, default=15.0)
    p.add_argument("--concurrency", type=int, help="sessions in flight (default: settings)")
    p.add_argument("--database-url", help="a PostgreSQL store (default: SQLite in the home)")
    p.add_argument("--no-listen", action="store_true", help="PostgreSQL without LISTEN: poll")
    p.add_argument("--coalesce-s", type=float, help="the broadcaster's wait after a wake")
    args = p.parse_args(argv)

    overrides: dict[str, Any] = (
        {} if args.concurrency is None else {"concurrency": args.concurrency}
    )
    if args.database_url:
        overrides["database_url"] = args.database_url
    store = None
    if args.no_listen:
        from nexus.storage.postgres import PostgresStore  # the `postgres` extra

        store = PostgresStore(args.database_url, listen=False)
    runtime = Runtime(load_settings(home=args.home, **overrides), store=store)
    app = create_app(
        runtime,
        auth=not args.no_auth,
        workers=not args.no_workers,
        heartbeat_s=args.heartbeat_s,
        sse_buffer=args.sse_buffer,
    )
    if args.coalesce_s is not None:
        app.state.nexus.broadcaster.coalesce_s = args.coalesce_s
    # proto=IPPROTO_TCP, not the default 0: asyncio only sets TCP_NODELAY on sockets
    # whose proto says TCP, and without it every keep-alive response waits ~40 ms for
    # a delayed ACK (Nagle). uvicorn's own host/port binding gets this right.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
        backlog=1024,
    )
    print(f"http://127.0.0.1:{port}", flush=True)
    NexusServer(config).run(sockets=[sock])
    sys.stdout.flush()


if __name__ == "__main__":
    main()
