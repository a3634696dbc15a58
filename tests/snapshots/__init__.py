"""Snapshots of whole structures (span trees, CLI output), one JSON or text file each.

`assert_snapshot(name, data)` compares `data` with `tests/snapshots/<name>.json` (a
string with `<name>.txt`). A missing file is written and the test fails, asking for a
review; `NEXUS_UPDATE_SNAPSHOTS=1` rewrites every snapshot a run compares.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

FOLDER = Path(__file__).parent


def assert_snapshot(name: str, data: Any) -> None:
    """`data` equals the stored snapshot `name` (whole, not a field of it)."""
    text_form = isinstance(data, str)
    path = FOLDER / f"{name}.{'txt' if text_form else 'json'}"
    text = data if text_form else json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    updating = os.environ.get("NEXUS_UPDATE_SNAPSHOTS") == "1"
    if updating or not path.exists():
        path.write_text(text, encoding="utf-8")
        if not updating:
            pytest.fail(f"snapshot {path.name} was missing and is written: review it, run again")
        return
    stored = path.read_text(encoding="utf-8")
    if text_form:
        assert data == stored
    else:
        assert data == json.loads(stored)
