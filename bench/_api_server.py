"""The NEXUS server under test, in its own process: `python -m bench._api_server --home DIR`.

`bench.api` starts this so that its clients' CPU does not share the server's event
loop. It serves `create_app(Runtime(...))` with the same uvicorn server as
`nexus start`, on a free loopback port, and prints `http://127.0.0.1:PORT` once
the socket is bound (the app may still be starting: poll `/healthz`).
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import uvicorn

from nexus.config import load_settings
from nexus.runtime.kernel import Runtime
from nexus.server.app import create_app
from nexus.server.run import NexusServer


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    p = argparse.ArgumentParser(prog="python -m bench._api_server", description=__doc__)
    p.add_argument("--home", type=Path, required=True, help="NEXUS_HOME to serve")
    p.add_argument("--no-workers", action="store_true", help="serve without session workers")
    p.add_argument("--no-auth", action="store_true")
    p.add_argument("--sse-buffer", type=int, default=1000)
    p.add_argument("--heartbeat-s", type=float, default=15.0)
    args = p.parse_args(argv)

    runtime = Runtime(load_settings(home=args.home))
    app = create_app(
        runtime,
        auth=not args.no_auth,
        workers=not args.no_workers,
        heartbeat_s=args.heartbeat_s,
        sse_buffer=args.sse_buffer,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
