"""PostgreSQL for the storage tests: one PostgreSQL 15 cluster per test session,
a fresh database for each test that asks for one."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.peers.postgres import PostgresServer, available


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
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url(name)
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
