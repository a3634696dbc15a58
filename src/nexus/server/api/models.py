"""What the API answers, as pydantic models: the OpenAPI document is generated from
them, so it says what the routes really send (schemathesis holds it to that).

Errors are RFC 9457 problem documents (`Problem`, media type
`application/problem+json`); `problems(...)` documents the statuses a route can
answer with one.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nexus.runtime.agents import Limits
from nexus.server.problems import MEDIA_TYPE, TITLES


class Problem(BaseModel):
    """An RFC 9457 problem document; `type` is stable (`urn:nexus:problem:<slug>`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:nexus:problem:session-not-found"])
    title: str
    status: int
    detail: str
    instance: str | None = None


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that may answer these statuses with a problem."""
    return {
        status: {
            "description": TITLES[status][1],
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


# Every route behind the token: no or a wrong token (401), too many wrong ones (429).
AUTH = (401, 429)


COST = (
    "US dollars, as a float; people read it as `nexus.format.money` writes it: three "
    "significant digits under a dollar (`$0.00000587`, `$0.0223`), cents above (`$1,204.50`)"
)


class Session(BaseModel):
    """A session's index row (a projection of its journal)."""

    id: str
    agent: str
    goal: str
    status: str
    priority: int
    labels: dict[str, str]
    created_at: float
    updated_at: float
    reason: str | None
    steps: int
    tokens_in: int
    tokens_out: int
    cost_usd: float = Field(description=COST)
    last_seq: int


class Command(BaseModel):
    """A command posted on a session's control channel (`kill`, `pause`, `resume`).

    `id` is 0 for the kill of a session that a guard killed without a command."""

    id: int
    session_id: str
    kind: str
    by: str
    reason: str
    data: dict[str, Any] = Field(description="`note` for a resume that carries one")
    ts: float


class ControlResult(BaseModel):
    """A command as stored and the session as it stands after the route's wait."""

    command: Command
    session: Session


class SessionList(BaseModel):
    """One page of sessions, newest first; `next_offset` is set when there may be more."""

    items: list[Session]
    limit: int
    offset: int
    next_offset: int | None


class SessionTotals(BaseModel):
    """Sums over every session the list's filters select (not only one page)."""

    count: int
    finished: int = Field(description="completed, failed or killed")
    failed: int
    failure_rate: float | None = Field(description="failed / finished; null before any finished")
    tokens_in: int
    tokens_out: int
    cost_usd: float = Field(description=COST)


class Event(BaseModel):
    """One journal event."""

    id: int
    session_id: str
    seq: int
    ts: float
    kind: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: float
    hash: str
    payload: dict[str, Any]


class EventsPage(BaseModel):
    """A session's events after `after_seq`, in order; ask again from `next_after_seq`."""

    items: list[Event]
    next_after_seq: int


class Tamper(BaseModel):
    """The first row of the journal that fails its check."""

    session_id: str
    seq: int
    problem: str


class CheckpointSeen(BaseModel):
    """The signed checkpoint the chains were held against."""

    id: int
    ts: float
    key_id: str
    sessions: int


class AuditReport(BaseModel):
    """What a walk of the hash chains found, against the index and the newest
    signed checkpoint (docs/audit.md)."""

    ok: bool
    sessions: int
    events: int
    first_problem: Tamper | None
    checkpoint: CheckpointSeen | None
    unkeyed_events: int = Field(description="events from before audit keys, vouched for")


class Config(BaseModel):
    """The effective settings, secrets masked."""

    model_config = ConfigDict(extra="allow")

    home: str
    durability: str
    default_agent: str


class Agent(BaseModel):
    """An agent: its model preference, toolkits and limits."""

    name: str
    description: str
    model: str | None
    toolkits: list[str]
    limits: Limits
    source: str


class Agents(BaseModel):
    """Every agent."""

    items: list[Agent]


class Worker(BaseModel):
    """A worker process and the running sessions it owns (`status`: alive, stopped,
    dead or left; `age_s`: seconds since its heartbeat, by the database's clock)."""

    id: str
    host: str
    pid: int
    role: str
    started_at: float
    heartbeat_at: float
    status: str
    age_s: float
    sessions: list[str]


class Workers(BaseModel):
    """Every registered worker."""

    items: list[Worker]


class Version(BaseModel):
    """The NEXUS version and the API's."""

    version: str
    api: str


class Health(BaseModel):
    """The process answers."""

    status: str


class Ready(BaseModel):
    """The database answers and the session workers run (each check "ok" or why not)."""

    status: str
    checks: dict[str, str]
