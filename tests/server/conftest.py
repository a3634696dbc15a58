"""Server tests: the shipped demo recording where the API may replay it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nexus.examples import demo_recording


@pytest.fixture(autouse=True)
def demo_in_recordings(nexus_home: Path) -> Path:
    """`NEXUS_HOME/recordings/demo.json`: over the API a replay file is named relative
    to that folder (`replay="demo.json"`), never by a server-side path."""
    folder = nexus_home / "recordings"
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(demo_recording(), folder / "demo.json"))
