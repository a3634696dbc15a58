"""Read commands against a running server (`--server URL`), on the stdlib HTTP client.

The token comes from `NEXUS_TOKEN`, else `NEXUS_API_TOKEN` (the servers' own setting),
else the database when `NEXUS_DATABASE_URL` is set (where the servers on it keep
theirs), else the token file of this `NEXUS_HOME`.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nexus.errors import NexusError, SessionNotFound


class RemoteError(NexusError):
    """The server refused or failed a request."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"server answered {status}: {detail}")
        self.status = status


class ServerUnreachable(RemoteError):
    """No server answered at the URL (nothing listens, wrong host, timed out)."""

    def __init__(self, url: str, reason: object) -> None:
        NexusError.__init__(
            self, f"cannot reach a NEXUS server at {url} ({reason}); is `nexus start` running?"
        )
        self.status = 0


def find_token() -> str | None:
    """`NEXUS_TOKEN`, else `NEXUS_API_TOKEN`, else the token the settings choose for
    the servers (`nexus.server.tokens`: the database's when they name a database,
    else `$NEXUS_HOME/api-token`), if there is one to read."""
    token = os.environ.get("NEXUS_TOKEN") or os.environ.get("NEXUS_API_TOKEN")
    if token:
        return token.strip()
    from nexus.config import load_settings
    from nexus.errors import ConfigError, StorageError
    from nexus.server.tokens import opened_token_source

    try:
        settings = load_settings()
    except ConfigError:  # the servers' settings are not this shell's to judge
        path = Path(os.environ.get("NEXUS_HOME") or "~/.nexus").expanduser() / "api-token"
        return path.read_text().strip() if path.is_file() else None
    try:
        with opened_token_source(settings) as tokens:
            return tokens.read()
    except (StorageError, OSError):
        return None  # the server will answer 401, which says what to set


class Remote:
    """A tiny client of the NEXUS REST API."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 30) -> None:
        self.base = base_url.rstrip("/")
        self.token = token if token is not None else find_token()
        self.timeout_s = timeout_s

    def _open(self, path: str, params: dict[str, Any] | None = None, **headers: str) -> Any:
        query = ""
        if params:
            pairs = [(k, v) for k, v in params.items() if v is not None]
            flat = [(k, x) for k, v in pairs for x in (v if isinstance(v, list | tuple) else [v])]
            query = "?" + urllib.parse.urlencode(flat)
        request = urllib.request.Request(self.base + path + query, headers=headers)  # noqa: S310
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s)  # noqa: S310
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail", exc.reason)
            except ValueError:
                detail = exc.reason
            if exc.code == 404 and "session" in str(detail):
                raise SessionNotFound(str(detail)) from None
            raise RemoteError(exc.code, str(detail)) from None
        except urllib.error.URLError as exc:
            raise ServerUnreachable(self.base, exc.reason) from None
        except OSError as exc:  # timeouts and resets surface as bare OSErrors
            raise ServerUnreachable(self.base, exc) from None

    def get(self, path: str, **params: Any) -> Any:
        """GET a JSON document."""
        with self._open(path, params) as resp:
            return json.loads(resp.read())

    def sessions(self, **params: Any) -> list[dict[str, Any]]:
        """`GET /api/v1/sessions`."""
        items: list[dict[str, Any]] = self.get("/api/v1/sessions", **params)["items"]
        return items

    def session(self, session_id: str) -> dict[str, Any]:
        """`GET /api/v1/sessions/{id}`."""
        row: dict[str, Any] = self.get(f"/api/v1/sessions/{session_id}")
        return row

    def events(self, session_id: str, after_seq: int = 0) -> list[dict[str, Any]]:
        """Every event after `after_seq`, paging through the API."""
        out: list[dict[str, Any]] = []
        while True:
            page = self.get(f"/api/v1/sessions/{session_id}/events", after_seq=after_seq)
            out.extend(page["items"])
            if not page["items"]:
                return out
            after_seq = page["next_after_seq"]

    def follow(self, session_id: str, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        """The session's events live (SSE), until it ends."""
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after_seq)}
        while True:
            kind = "message"
            resync = False
            with self._open(f"/api/v1/sessions/{session_id}/stream", None, **headers) as resp:
                for raw in resp:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        if kind == "journal":
                            event = json.loads(line[6:])
                            headers["Last-Event-ID"] = str(event["seq"])
                            yield event
                        elif kind == "end":
                            return
                        elif kind == "resync":
                            resync = True
                            break
                    elif line == "":
                        kind = "message"
            if not resync:
                return

    def verify(self, session_id: str | None) -> dict[str, Any]:
        """`GET /api/v1/audit/verify`."""
        report: dict[str, Any] = self.get("/api/v1/audit/verify", session_id=session_id)
        return report

    def agents(self) -> list[dict[str, Any]]:
        """`GET /api/v1/agents`."""
        items: list[dict[str, Any]] = self.get("/api/v1/agents")["items"]
        return items

    def workers(self) -> list[dict[str, Any]]:
        """`GET /api/v1/workers`."""
        items: list[dict[str, Any]] = self.get("/api/v1/workers")["items"]
        return items

    def config(self) -> dict[str, Any]:
        """`GET /api/v1/config`."""
        data: dict[str, Any] = self.get("/api/v1/config")
        return data
