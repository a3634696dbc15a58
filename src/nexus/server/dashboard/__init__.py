"""The dashboard: server-rendered pages (Jinja2) with a little plain JavaScript.

Pages:

* `/login`, `/logout` — sign in with the API token; an HttpOnly, SameSite=Strict
  cookie carries the login (`login.py`).
* `/` — sessions, live; `/sessions/{id}` — one session's header, actions bar,
  panels (budget, details, outcome, conversation: `panels.py`, `views.py`) and
  live journal timeline (`sessions.py`).
* `/new` — start a session (`new.py`).
* `/overview` — cost, tokens, sessions and failure rate over time by agent,
  model or provider, totals, the cost breakdown and per-tool statistics, from
  the journal's rollup (`overview.py`, charts as inline SVG: `charts.py`).
* `/workers` — the worker processes on this database, their heartbeats and the
  sessions they run, live (`workers.py`).
* `POST /sessions/{id}/kill|pause|resume` — the control forms of a session's
  actions bar; a kill confirms first (`GET /sessions/{id}/kill`) (`control.py`).

Every page needs a login (cookie or bearer) unless auth is off; see `web.py`
for the headers (CSP without inline script, no framing) and error pages.

Extending it — add an entry, never rewrite a page (`registry.py`):

* `PANELS` — boxes beside the timeline (`page="session"`) or above the list
  (`page="sessions"`): `Panel(name, title, template, context=fn, when=fn)`. A
  costs breakdown, a trace tree or pending approvals is one `Panel` and one
  template under `templates/panels/`; `place="main"` puts a session panel full
  width above the timeline (the span waterfall, `waterfall.py`).
* `ACTIONS` — controls in the actions bar: `Action(name, template, when=fn)`,
  e.g. kill, pause and resume: a form with the page's `csrf_token` posting to a
  page route (`control.py`), or a `<button data-post="/api/v1/...">` that
  `static/nexus.js` POSTs with the CSRF header before refreshing the page.
* Timeline entries — one template per event kind, `templates/events/<kind>.html`
  (falling back to `events/default.html`): `approval.requested` or `tool.undone`
  get their look by adding a file.
* `NAV` and `PAGES` — a new top-level page is a router from `web.page_router()`
  in `PAGES` plus a `NavLink` in `NAV`.
* `TEMPLATE_DIRS` — folders searched after `templates/`, for features that keep
  their templates in their own package.

Panels, actions and the header are re-rendered on every live update (the page's
script fetches `/fragments/...` when the SSE stream reports news), so whatever
they show stays current without code of their own.
"""

from __future__ import annotations

from nexus.server.dashboard._install import install
from nexus.server.dashboard.registry import (
    ACTIONS,
    NAV,
    PAGES,
    PANELS,
    TEMPLATE_DIRS,
    Action,
    NavLink,
    Panel,
    View,
)

__all__ = [
    "ACTIONS",
    "NAV",
    "PAGES",
    "PANELS",
    "TEMPLATE_DIRS",
    "Action",
    "NavLink",
    "Panel",
    "View",
    "install",
]
