"""The storage tests use the PostgreSQL fixtures of tests/conftest.py, and run the
`Store` contract on every implementation (the `store` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.storage.base import Store, open_store


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgres":
        # Asked for here, not as an argument: the other stores need no cluster.
        s = open_store(tmp_path / "n.db", url=request.getfixturevalue("postgres_url"))
    elif request.param == "sqlite":
        s = open_store(tmp_path / "n.db")
    else:
        s = open_store(Path(":memory:"))
    yield s
    s.close()
