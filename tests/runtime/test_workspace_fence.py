"""The workspace toolkit fences its side effects by the run epoch: a write or delete
from a run older than one that has already changed the workspace, or than the
session's current epoch, is refused and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.errors import ToolFenced
from nexus.runtime.toolkits.workspace import delete_file, write_file
from tests.runtime.test_toolkits import call, context


async def test_a_write_from_an_older_epoch_than_the_workspace_has_seen_is_refused(
    tmp_path: Path,
) -> None:
    """Epoch 2 writes; epoch 1 (a worker declared dead, back) may neither write nor
    delete; epoch 2 and a later epoch 3 still may."""
    ws = tmp_path / "ws"
    ws.mkdir()
    await call(write_file, context(ws, "k1", epoch=2), path="a.txt", content="new run")
    with pytest.raises(ToolFenced, match="epoch 1 is older than epoch 2"):
        await call(write_file, context(ws, "k2", epoch=1), path="a.txt", content="stale run")
    with pytest.raises(ToolFenced):
        await call(delete_file, context(ws, "k3", epoch=1), path="a.txt")
    assert (ws / "a.txt").read_text() == "new run"
    await call(write_file, context(ws, "k4", epoch=2), path="b.txt", content="same run")
    await call(write_file, context(ws, "k5", epoch=3), path="a.txt", content="later run")
    assert {p.name: p.read_text() for p in ws.iterdir() if p.is_file()} == {
        "a.txt": "later run",
        "b.txt": "same run",
    }
    assert (ws / ".nexus" / "epoch").read_text() == "3"


async def test_a_write_from_a_run_the_session_has_moved_past_is_refused(tmp_path: Path) -> None:
    """Even before the new run has written anything, the store's epoch decides: a run
    whose epoch is no longer the session's makes no change."""
    ws = tmp_path / "ws"
    ws.mkdir()
    current = {"epoch": 1}
    ctx = context(ws, "k1", epoch=1, current_epoch=lambda: current["epoch"])
    await call(write_file, ctx, path="a.txt", content="first")
    current["epoch"] = 2  # another worker claimed the session
    with pytest.raises(ToolFenced, match=r"epoch 1\) was taken over \(epoch 2\)"):
        await call(write_file, ctx, path="a.txt", content="stale")
    assert (ws / "a.txt").read_text() == "first"
