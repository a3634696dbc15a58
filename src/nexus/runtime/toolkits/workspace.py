"""Workspace toolkit: files inside the session's own folder.

Every path is resolved inside the workspace; anything that would leave it
(`..`, absolute paths, symlinks pointing out) is refused. Writes and deletes keep
a backup keyed by the call's idempotency key, which their `undo` restores.

Writes and deletes are fenced: the workspace keeps the highest run epoch that has
changed it (`.nexus/epoch`, under an exclusive lock while the change is made), and
refuses a change from an older run, or from a run the session has moved past (a
worker declared dead that comes back after another took the session over).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nexus.errors import ToolExecutionError, ToolFenced
from nexus.runtime.tools import ToolContext, Toolkit, tool

_PRIVATE = ".nexus"  # backups live here; the model cannot see or touch it
MAX_READ = 256 * 1024


def resolve(ctx: ToolContext, path: str) -> Path:
    """The absolute path of `path` inside the workspace, or a refusal."""
    root = ctx.workspace.resolve()
    if "\x00" in path:
        raise ToolExecutionError("path contains a NUL byte")
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise ToolExecutionError(f"path {path!r} is outside the workspace: refused")
    rel = target.relative_to(root)
    if rel.parts and rel.parts[0] == _PRIVATE:
        raise ToolExecutionError(f"path {path!r} is reserved: refused")
    return target


@contextlib.contextmanager
def fenced(ctx: ToolContext) -> Iterator[None]:
    """Hold the workspace's fence while making a change; `ToolFenced` (and no change)
    if this run is stale, `ToolStopped` if the session was killed."""
    private = ctx.workspace / _PRIVATE
    private.mkdir(parents=True, exist_ok=True)
    fd = os.open(private / "epoch", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        seen = int(os.pread(fd, 32, 0).strip() or 0)
        if ctx.epoch < seen:
            raise ToolFenced(
                f"session {ctx.session_id}: run epoch {ctx.epoch} is older than epoch {seen}, "
                "which has already changed this workspace: the effect was not made"
            )
        ctx.check_epoch()
        ctx.check_stopped()  # killed while this thread ran: no write after the kill
        if ctx.epoch > seen:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(ctx.epoch).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _backup(ctx: ToolContext, target: Path) -> str | None:
    """Copy the current file aside for undo; returns the backup name (None if absent).

    An absent file leaves an `.absent` marker, so a retried call can tell "there was
    no file" from "the crash came before the backup was taken".
    """
    store = ctx.workspace / _PRIVATE / "undo"
    store.mkdir(parents=True, exist_ok=True)
    name = ctx.idempotency_key
    if not target.exists():
        (store / f"{name}.absent").touch()
        return None
    shutil.copy2(target, store / name)
    return name


def _restore(ctx: ToolContext, path: str, backup: str | None) -> None:
    target = resolve(ctx, path)
    if backup is None:
        target.unlink(missing_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ctx.workspace / _PRIVATE / "undo" / backup, target)


@tool(effect="read")
def read_file(ctx: ToolContext, path: str) -> str:
    """Read a text file from the workspace.

    Args:
        path: file path relative to the workspace.
    """
    target = resolve(ctx, path)
    if not target.is_file():
        raise ToolExecutionError(f"no such file: {path}")
    data = target.read_bytes()[:MAX_READ]
    return data.decode("utf-8", errors="replace")


@tool(effect="read")
def list_files(ctx: ToolContext, path: str = ".") -> list[str]:
    """List the files under a folder of the workspace, recursively.

    Args:
        path: folder relative to the workspace (default: the whole workspace).
    """
    base = resolve(ctx, path)
    if not base.is_dir():
        raise ToolExecutionError(f"no such folder: {path}")
    root = ctx.workspace.resolve()
    found = []
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] != _PRIVATE:
            found.append(rel.as_posix())
    return found


def _undo_write(ctx: ToolContext, args: dict[str, Any], result: dict[str, Any]) -> None:
    _restore(ctx, args["path"], result.get("backup"))


@tool(effect="write", undo=_undo_write)
def write_file(ctx: ToolContext, path: str, content: str) -> dict[str, Any]:
    """Create or overwrite a text file in the workspace.

    Args:
        path: file path relative to the workspace.
        content: the full new text of the file.
    """
    target = resolve(ctx, path)
    # A retried call (crash mid-write) must not back up its own half-done write; but
    # if the crash came before the backup, the file is still the original.
    recorded = ctx.retry and _backup_recorded(ctx)
    backup = _existing_backup(ctx) if recorded else _backup(ctx, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with fenced(ctx):
        target.write_text(content, encoding="utf-8")
    return {"path": path, "bytes": len(content.encode()), "backup": backup}


def _existing_backup(ctx: ToolContext) -> str | None:
    name = ctx.idempotency_key
    return name if (ctx.workspace / _PRIVATE / "undo" / name).exists() else None


def _backup_recorded(ctx: ToolContext) -> bool:
    store = ctx.workspace / _PRIVATE / "undo"
    name = ctx.idempotency_key
    return (store / name).exists() or (store / f"{name}.absent").exists()


def _undo_delete(ctx: ToolContext, args: dict[str, Any], result: dict[str, Any]) -> None:
    _restore(ctx, args["path"], result["backup"])


@tool(effect="write", undo=_undo_delete)
def delete_file(ctx: ToolContext, path: str) -> dict[str, Any]:
    """Delete a file from the workspace.

    Args:
        path: file path relative to the workspace.
    """
    target = resolve(ctx, path)
    if not target.is_file():
        if ctx.retry and (backup := _existing_backup(ctx)):
            return {"path": path, "deleted": True, "backup": backup}
        raise ToolExecutionError(f"no such file: {path}")
    backup = _backup(ctx, target)
    with fenced(ctx):
        target.unlink()
    return {"path": path, "deleted": True, "backup": backup}


toolkit = Toolkit(
    "workspace",
    [read_file, list_files, write_file, delete_file],
    description="Read, list, write and delete files in the session's workspace folder.",
)
