"""The sessions list's view: filters, order and page, read from the query string
and written back into links, so any view is a URL someone can share.

Read leniently (a page must render whatever the address bar holds): an unknown
status or order falls back to the default; a label or time that does not parse
is left out and named in `problems`, which the page shows beside the form.
The parameters are the API's (`GET /api/v1/sessions`), except the times, which
are UTC dates as a `datetime-local` input writes them rather than Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, get_args
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from nexus.errors import ConfigError
from nexus.runtime.labels import parse_filter
from nexus.server.api.sessions import MAX_SEARCH
from nexus.storage.base import SessionQuery, SessionSort
from nexus.types import SessionStatus

STATUSES = [s.value for s in SessionStatus]
SORTS: tuple[SessionSort, ...] = get_args(SessionSort)
SORT_NAMES = {
    "-created": "Newest",
    "created": "Oldest",
    "-cost": "Most expensive",
    "cost": "Cheapest",
    "-steps": "Most steps",
    "steps": "Fewest steps",
    "-tokens": "Most tokens",
    "tokens": "Fewest tokens",
    "-duration": "Longest",
    "duration": "Shortest",
}


@dataclass(frozen=True, slots=True)
class Filters:
    """What the list shows: the query string's filters as given, and as parsed."""

    status: str | None = None
    agent: str | None = None
    q: str | None = None
    label: str | None = None
    after: str | None = None
    before: str | None = None
    sort: SessionSort = "-created"
    offset: int = 0
    parsed: SessionQuery = field(default_factory=SessionQuery)  # the above, for the store
    problems: tuple[str, ...] = ()

    @classmethod
    def of(cls, params: QueryParams) -> Filters:
        """The filters of a query string, never failing."""
        status = params.get("status") or None
        sort = params.get("sort", "-created")
        try:
            offset = max(0, int(params.get("offset", "0")))
        except ValueError:
            offset = 0
        status = status if status in STATUSES else None
        agent, q = _text(params, "agent", 64), _text(params, "q", MAX_SEARCH)
        label = _text(params, "label", 400)
        after, before = _text(params, "created_after", 40), _text(params, "created_before", 40)
        problems: list[str] = []
        pair = None
        if label:
            try:
                pair = parse_filter(label)
            except ConfigError as exc:
                problems.append(str(exc))
        parsed = SessionQuery(
            status=(status,) if status else (),
            agent=agent,
            label=pair,
            q=q,
            created_after=_time("created after", after, problems),
            created_before=_time("created before", before, problems),
        )
        return cls(
            status=status,
            agent=agent,
            q=q,
            label=label,
            after=after,
            before=before,
            sort=next((s for s in SORTS if s == sort), "-created"),
            offset=offset,
            parsed=parsed,
            problems=tuple(problems),
        )

    @property
    def active(self) -> bool:
        """Whether any filter narrows the list (the order and page aside)."""
        return any((self.status, self.agent, self.q, self.label, self.after, self.before))

    def query(self, *, limit: int) -> SessionQuery:
        """The store's query for this view, `limit` rows from its page."""
        return replace(self.parsed, sort=self.sort, limit=limit, offset=self.offset)

    def url(self, **changes: Any) -> str:
        """The list's URL with some parameters changed (the page resets unless given)."""
        values = {
            "status": self.status,
            "agent": self.agent,
            "q": self.q,
            "label": self.label,
            "created_after": self.after,
            "created_before": self.before,
            "sort": None if self.sort == "-created" else self.sort,
            "offset": 0,
            **changes,
        }
        query = {k: v for k, v in values.items() if v}
        return "/" + (f"?{urlencode(query)}" if query else "")

    def sort_url(self, key: str) -> str:
        """A column's link: largest first, or reversed if it is already the order."""
        return self.url(sort=key if self.sort == f"-{key}" else f"-{key}")

    def sorted_by(self, key: str) -> str | None:
        """`descending`/`ascending` when the list is ordered by `key` (for aria-sort)."""
        if self.sort.lstrip("-") != key:
            return None
        return "descending" if self.sort.startswith("-") else "ascending"


def _time(name: str, text: str | None, problems: list[str]) -> float | None:
    """A UTC date and time (`2026-12-01` or `2026-12-01T09:30`) as Unix seconds."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        problems.append(f"{name}: {text!r} is not a date and time (UTC)")
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _text(params: QueryParams, name: str, limit: int) -> str | None:
    return (params.get(name) or "").strip()[:limit] or None
