"""`nexus start`: uvicorn serving the app, with a shutdown that ends live streams."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import threading
from collections.abc import Generator
from types import FrameType

import uvicorn
from fastapi import FastAPI

from nexus.errors import ConfigError
from nexus.server.state import ServerState


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, auth: bool) -> None:
    """Refuse to serve without auth anywhere but loopback."""
    if not auth and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host} without authentication: --no-auth is only allowed "
            "on a loopback address (127.0.0.1, ::1, localhost)"
        )


class NexusServer(uvicorn.Server):
    """uvicorn, plus: on SIGINT/SIGTERM end SSE streams at once, so the graceful
    shutdown does not wait on clients that never hang up; and exit 0 after a
    graceful shutdown (uvicorn re-raises the signal, which reads as a crash)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        state: ServerState | None = getattr(getattr(app, "state", None), "nexus", None)
        if state is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                state.broadcaster.close_all()
            else:  # a signal handler interrupts the loop: schedule, don't mutate mid-step
                loop.call_soon_threadsafe(state.broadcaster.close_all)
        super().handle_exit(sig, frame)


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Serve until a signal; the app's lifespan stops the workers cleanly."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,  # keep uvicorn's records on NEXUS's redacting handler
        access_log=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    NexusServer(config).run()
