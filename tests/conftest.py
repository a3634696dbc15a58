"""Shared fixtures: an isolated NEXUS_HOME per test, the OpenAI-compatible peer,
and a guard that fails any connection outside loopback."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus.config import Settings, load_settings
from tests.peers.openai_server import PeerServer, ThreadedPeerServer

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _loopback_only(address: Any) -> None:
    if isinstance(address, str | bytes):  # AF_UNIX paths are local
        return
    host = address[0]
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        if host == "localhost":
            return
    raise RuntimeError(f"test tried to reach {address!r}: tests may only use loopback")


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that tries to connect to a non-loopback address."""

    def connect(self: socket.socket, address: Any) -> None:
        _loopback_only(address)
        _real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _loopback_only(address)
        return _real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture(autouse=True)
def nexus_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own NEXUS_HOME; no test sees ~/.nexus or a real Ollama."""
    home = tmp_path / "home"
    monkeypatch.setenv("NEXUS_HOME", str(home))
    monkeypatch.delenv("NEXUS_CONFIG", raising=False)
    monkeypatch.delenv("NEXUS_PROVIDERS", raising=False)
    # Nothing listens on port 9 (discard): "no Ollama" is deterministic.
    monkeypatch.setenv("NEXUS_OLLAMA_URL", "http://127.0.0.1:9/v1")
    return home


@pytest.fixture(autouse=True)
def _log_handler_cleanup() -> Iterator[None]:
    """CLI commands install NEXUS's log handler; no test leaves it behind."""
    yield
    import logging

    from nexus.observe.logs import LOGGERS, remove

    remove()
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.fixture
def settings(nexus_home: Path) -> Settings:
    """Settings on the test's NEXUS_HOME."""
    return load_settings()


@pytest.fixture
async def peer() -> AsyncIterator[PeerServer]:
    """The OpenAI-compatible peer, on this test's event loop."""
    server = PeerServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def threaded_peer() -> Iterator[ThreadedPeerServer]:
    """The peer on its own thread, for sync tests and for worker processes."""
    with ThreadedPeerServer() as server:
        yield server
