"""Shared fixtures: an isolated NEXUS_HOME per test, the OpenAI-compatible peer,
and a guard that fails any connection outside loopback."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus.config import Settings, load_settings
from tests.peers.openai_server import PeerServer, ThreadedPeerServer
from tests.peers.postgres import PostgresServer, available

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store",
        choices=("sqlite", "postgres"),
        default=os.environ.get("NEXUS_TEST_STORE", "sqlite"),
        help="the store every test's runtime uses (postgres: a fresh database per test)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each pass runs what is about its store once: with `--store=postgres`, tests
    about SQLite files are skipped; with `--store=sqlite`, tests about PostgreSQL
    itself (those asking for its cluster, and the PostgreSQL case of the store
    contract), which the PostgreSQL pass runs (`scripts/test` runs both)."""
    if config.getoption("--store") == "postgres":
        skip = pytest.mark.skip(reason="about SQLite files themselves: runs with --store=sqlite")
        for item in items:
            if item.get_closest_marker("sqlite_only"):
                item.add_marker(skip)
        return
    skip = pytest.mark.skip(reason="about PostgreSQL itself: runs with --store=postgres")
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        wants = set(getattr(item, "fixturenames", ()))
        if wants & {"postgres_url", "postgres_server"} or params.get("store") == "postgres":
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def nexus_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Path:
    """Every test gets its own NEXUS_HOME; no test sees ~/.nexus or a real Ollama.
    With `--store=postgres`, its journal, index and DBOS queue live in a fresh
    PostgreSQL database."""
    home = tmp_path / "home"
    monkeypatch.setenv("NEXUS_HOME", str(home))
    monkeypatch.delenv("NEXUS_DATABASE_URL", raising=False)
    if request.config.getoption("--store") == "postgres":
        monkeypatch.setenv("NEXUS_DATABASE_URL", request.getfixturevalue("postgres_url"))
    monkeypatch.delenv("NEXUS_CONFIG", raising=False)
    monkeypatch.delenv("NEXUS_PROVIDERS", raising=False)
    # No span export unless a test configures its receiver (nexus.observe.otel reads these).
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_SERVICE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway cluster, started once for all the tests that need one."""
    if not available():
        pytest.skip("PostgreSQL 15 server binaries are not installed (scripts/test installs them)")
    # Under /tmp, not pytest's deep temp folder: the server's socket path is limited
    # to 107 bytes.
    root = Path("/tmp") / f"nexus-pg-storage-{os.getpid()}"
    server = PostgresServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    import psycopg  # the `postgres` extra: only tests that use PostgreSQL need it

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url(name)
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
