"""Replay sources over the API: a session id, a file under `NEXUS_HOME/recordings/`,
or a recording uploaded in the request.

The runtime (and `nexus run --replay FILE`) opens any local file: that is the
user's own machine. A token holder on the API must not get that far: opening
`/etc/shadow` as a recording, and an error that differs between "no such file" and
"not an export", would let them read or probe any path the server can. So every
refused source gets the same words, decided before anything outside the
recordings folder is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from nexus.errors import ConfigError
from nexus.runtime.providers.replay import ReplayProvider
from nexus.runtime.runtime import Runtime

REFUSED = (
    "replay must be a session id, a file under NEXUS_HOME/recordings/, or an uploaded recording"
)


class ReplayRefused(ConfigError):
    """A replay source the API does not accept (the message never depends on the path)."""

    def __init__(self) -> None:
        super().__init__(REFUSED)


def recordings_dir(runtime: Runtime) -> Path:
    """The folder whose files the API may replay (and where uploads are kept)."""
    return runtime.settings.home / "recordings"


def resolve_replay(runtime: Runtime, source: str) -> str:
    """The source the runtime gets for `source` named over the API: a session id of
    this home as it is, a recording's name as its absolute path; else `ReplayRefused`.

    A recording is named relative to the recordings folder; absolute names, `..`
    and symlinks that lead out of the folder are refused.
    """
    if runtime.store.session(source) is not None:
        return source
    name = PurePosixPath(source)
    if not source or name.is_absolute() or ".." in name.parts or "\\" in source:
        raise ReplayRefused
    folder = recordings_dir(runtime).resolve()
    try:
        path = (folder / name).resolve()  # follows symlinks: checked below
        found = path.is_relative_to(folder) and path.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long, a symlink loop
        found = False
    if not found:
        raise ReplayRefused
    return str(path)


def store_upload(runtime: Runtime, document: dict[str, Any]) -> tuple[str, bool]:
    """Keep an uploaded recording under `recordings/uploads/`, named by the SHA-256
    of its canonical JSON, so that a resumed session can still read it.

    Returns the path (the runtime's replay source) and whether this call wrote the
    file. `ConfigError` (nothing written) if it is not a replayable export.
    """
    ReplayProvider.from_document(document, source="uploaded recording")
    data = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = data.encode("utf-8")
    folder = recordings_dir(runtime) / "uploads"
    path = folder / f"{hashlib.sha256(raw).hexdigest()}.json"
    if path.is_file():
        return str(path), False
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(raw)
    os.replace(partial, path)  # readers never see half a file
    return str(path), True
