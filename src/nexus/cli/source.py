"""Where the read commands get their data: this node's files, or a server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Protocol

from nexus.types import Event


class Source(Protocol):
    """What the read commands need; local and remote give the same shapes."""

    def sessions(self, **filters: Any) -> list[dict[str, Any]]: ...
    def resolve(self, given: str) -> str: ...
    def session(self, session_id: str) -> dict[str, Any]: ...
    def events(self, session_id: str, after_seq: int = 0) -> list[Event]: ...
    def follow(self, session_id: str, after_seq: int = 0) -> Iterator[Event]: ...
    def verify(self, session_id: str | None) -> dict[str, Any]: ...
    def agents(self) -> list[dict[str, Any]]: ...
    def workers(self) -> list[dict[str, Any]]: ...
    def config(self) -> dict[str, Any]: ...
    def costs(self, **query: Any) -> dict[str, Any]: ...
    def tool_stats(self, **query: Any) -> dict[str, Any]: ...
    def alerts(self, **query: Any) -> list[dict[str, Any]]: ...
    def trace(self, session_id: str) -> dict[str, Any]: ...


class LocalSource:
    """Reads `NEXUS_HOME` directly."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime

    def sessions(self, **filters: Any) -> list[dict[str, Any]]:
        from nexus.runtime.labels import parse_filter
        from nexus.storage.base import SessionQuery

        label = filters.get("label")
        query = SessionQuery(
            status=tuple(filters.get("status") or ()),
            agent=filters.get("agent"),
            label=parse_filter(label) if label else None,
            limit=filters.get("limit", 50),
            offset=filters.get("offset", 0),
        )
        return [r.to_dict() for r in self.rt.sessions(query)]

    def resolve(self, given: str) -> str:
        resolved: str = self.rt.resolve(given)
        return resolved

    def session(self, session_id: str) -> dict[str, Any]:
        row: dict[str, Any] = self.rt.session(session_id).to_dict()
        return row

    def events(self, session_id: str, after_seq: int = 0) -> list[Event]:
        events: list[Event] = self.rt.journal.events(session_id, after_seq)
        return events

    def follow(self, session_id: str, after_seq: int = 0) -> Iterator[Event]:
        # The journal's own (async) follow, driven one event at a time, so the
        # polling rules live in one place.
        events = self.rt.journal.follow(session_id, after_seq)
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    yield loop.run_until_complete(anext(events))
                except StopAsyncIteration:
                    return
        finally:
            loop.run_until_complete(events.aclose())
            loop.close()

    def verify(self, session_id: str | None) -> dict[str, Any]:
        if session_id is not None:
            self.rt.session(session_id)
        report: dict[str, Any] = self.rt.journal.verify(session_id).to_dict()
        return report

    def agents(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.rt.agents.all()]

    def workers(self) -> list[dict[str, Any]]:
        from nexus.runtime.workers import workers_view

        return workers_view(self.rt.store)

    def config(self) -> dict[str, Any]:
        from nexus.config import public_view

        data: dict[str, Any] = public_view(self.rt.settings)
        return data

    def _rollup(self) -> Any:
        """The journal's rollup, caught up (the first time on a big journal, it folds
        every event once: later calls fold only what is new)."""
        from nexus.observe.rollup import Rollup

        rollup = Rollup(self.rt.store)
        rollup.catch_up()
        return rollup

    def costs(self, **query: Any) -> dict[str, Any]:
        """The `GET /api/v1/costs` document, from this home's journal."""
        by = query.pop("by", "agent")
        if by == "session":
            from nexus.storage.base import SessionQuery

            rows = self.rt.sessions(
                SessionQuery(
                    agent=query.get("agent"),
                    created_after=query.get("since"),
                    created_before=query.get("until"),
                    sort="-cost",
                    limit=query.get("limit", 50),
                )
            )
            keys = ("id", "agent", "status", "created_at", "steps", "tokens_in", "tokens_out",
                    "cost_usd")  # fmt: skip
            return {"by": "session", "items": [{k: getattr(r, k) for k in keys} for r in rows]}
        rollup = self._rollup()
        try:
            query.pop("limit", None)
            data: dict[str, Any] = rollup.costs(by, **query).to_dict()
            return data
        finally:
            rollup.close()

    def tool_stats(self, **query: Any) -> dict[str, Any]:
        """The `GET /api/v1/tools/stats` document, from this home's journal."""
        rollup = self._rollup()
        try:
            items = rollup.tool_stats(**query)
            return {"since": query.get("since"), "until": query.get("until"), "items": items}
        finally:
            rollup.close()

    def alerts(self, **query: Any) -> list[dict[str, Any]]:
        """The `GET /api/v1/alerts` items, from this home's journal."""
        rollup = self._rollup()
        try:
            items: list[dict[str, Any]] = rollup.alerts(**query)
            return items
        finally:
            rollup.close()

    def trace(self, session_id: str) -> dict[str, Any]:
        """The session's span tree (`nexus.observe.spans`), from this home's journal."""
        from nexus.observe.spans import build_trace

        self.rt.session(session_id)
        trace: dict[str, Any] = build_trace(self.rt.journal.events(session_id)).to_dict()
        return trace


def _event(d: dict[str, Any]) -> Event:
    return Event(
        session_id=d["session_id"],
        seq=d["seq"],
        ts=d["ts"],
        kind=d["kind"],
        payload=d["payload"],
        tokens_in=d.get("tokens_in", 0),
        tokens_out=d.get("tokens_out", 0),
        cost_usd=d.get("cost_usd", 0.0),
        latency_ms=d.get("latency_ms", 0.0),
        prev_hash=d.get("prev_hash", ""),
        hash=d.get("hash", ""),
    )


class RemoteSource:
    """Reads a running server's API (`--server URL`)."""

    def __init__(self, url: str) -> None:
        from nexus.cli.remote import Remote

        self.remote = Remote(url)

    def sessions(self, **filters: Any) -> list[dict[str, Any]]:
        return self.remote.sessions(**filters)

    def resolve(self, given: str) -> str:
        from urllib.parse import quote

        return str(self.remote.get(f"/api/v1/sessions/resolve/{quote(given, safe='')}")["id"])

    def session(self, session_id: str) -> dict[str, Any]:
        return self.remote.session(session_id)

    def events(self, session_id: str, after_seq: int = 0) -> list[Event]:
        return [_event(e) for e in self.remote.events(session_id, after_seq)]

    def follow(self, session_id: str, after_seq: int = 0) -> Iterator[Event]:
        self.remote.session(session_id)
        for e in self.remote.follow(session_id, after_seq):
            yield _event(e)

    def verify(self, session_id: str | None) -> dict[str, Any]:
        return self.remote.verify(session_id)

    def agents(self) -> list[dict[str, Any]]:
        return self.remote.agents()

    def workers(self) -> list[dict[str, Any]]:
        return self.remote.workers()

    def config(self) -> dict[str, Any]:
        return self.remote.config()

    def costs(self, **query: Any) -> dict[str, Any]:
        data: dict[str, Any] = self.remote.get("/api/v1/costs", **query)
        return data

    def tool_stats(self, **query: Any) -> dict[str, Any]:
        data: dict[str, Any] = self.remote.get("/api/v1/tools/stats", **query)
        return data

    def alerts(self, **query: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.remote.get("/api/v1/alerts", **query)["items"]
        return items

    def trace(self, session_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.remote.get(f"/api/v1/sessions/{session_id}/trace")
        return data
