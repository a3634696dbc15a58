"""Server tests: the shipped demo recording where the API may replay it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus.examples import demo_recording
from tests.server.test_api import Api, open_api


@pytest.fixture(autouse=True)
def demo_in_recordings(nexus_home: Path) -> Path:
    """`NEXUS_HOME/recordings/demo.json`: over the API a replay file is named relative
    to that folder (`replay="demo.json"`), never by a server-side path."""
    folder = nexus_home / "recordings"
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(demo_recording(), folder / "demo.json"))


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    """The API without workers: sessions are created, not run."""
    async for a in open_api(workers=False):
        yield a


@pytest.fixture
async def live_api() -> AsyncIterator[Api]:
    """The API with the DBOS workers running in the app."""
    async for a in open_api(workers=True):
        yield a
