"""Aggregates of the journal, kept incrementally: what `nexus costs`, per-tool
statistics, `/metrics` and the charts read instead of scanning events.

The journal stays the one source of truth. The rollup is a projection of it, like
the session index, kept in the store's database (a subsystem schema, on SQLite and
PostgreSQL): hourly rows of LLM calls (by agent, provider, model, status), tool
calls (by agent, tool, status), tool failure reasons and event counts (by agent,
kind), plus running totals of each (the same rows without the hour, which a
Prometheus scrape reads in one small query whatever the journal's size).

`Rollup.catch_up()` folds the events committed since its cursor (the row id of the
last event folded) and moves the cursor in the same transaction, with a
compare-and-set: several processes may catch up at once (servers, the CLI), and
each batch is counted exactly once; the loser of a race rolls back and reads on
from the winner's cursor. Row ids are in commit order on both stores (PostgreSQL's
appends hold one advisory lock, `nexus.storage.postgres`), so a cursor never skips
an event. Dropping the tables and catching up again rebuilds every figure from the
journal (`rebuild`).

Money is summed in integer nano-dollars, so totals are exact; latencies are summed in
integer microseconds (a rebuild gives the same means to the digit) and counted in
fixed histogram buckets (milliseconds, the edges in `BUCKETS_MS`), from which
percentiles are interpolated. Hours are UTC.

Label values that come from outside (model names an LLM server reports, tool
names a model makes up) are capped: past `MAX_LABEL_VALUES` distinct values of a
dimension, new ones are counted under `other`, so neither the tables nor the
metrics grow without bound on a hostile peer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nexus import events as ev
from nexus.observe.sql import Database
from nexus.storage.base import EventRow, Schema, Store
from nexus.types import JSON

BUCKETS_MS: tuple[float, ...] = (
    1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000,
)  # fmt: skip
"""Upper edges of the latency buckets (ms); one more bucket above the last holds the rest."""

NANO = 1_000_000_000
MAX_LABEL_VALUES = 200
OTHER = "other"
BATCH = 5000
HOUR = 3600
LOST = "llm.lost"  # an LLM request billed but never answered (cost accounting)
LOOP_DETECTED = "loop.detected"

_B = [f"b{i:02d}" for i in range(len(BUCKETS_MS) + 1)]
_HIST = ", ".join(f"{b} BIGINT NOT NULL DEFAULT 0" for b in _B)

_LLM_COLS = (
    "calls BIGINT NOT NULL DEFAULT 0, tokens_in BIGINT NOT NULL DEFAULT 0, "
    "tokens_out BIGINT NOT NULL DEFAULT 0, cost_nusd BIGINT NOT NULL DEFAULT 0, "
    "estimated_nusd BIGINT NOT NULL DEFAULT 0, estimated_calls BIGINT NOT NULL DEFAULT 0, "
    f"latency_us BIGINT NOT NULL DEFAULT 0, {_HIST}"
)
_TOOL_COLS = (
    "calls BIGINT NOT NULL DEFAULT 0, retries BIGINT NOT NULL DEFAULT 0, "
    f"latency_us BIGINT NOT NULL DEFAULT 0, {_HIST}"
)
_KIND_COLS = "count BIGINT NOT NULL DEFAULT 0, steps BIGINT NOT NULL DEFAULT 0"

# The tables' columns are this module's constants, never input.
SCHEMA = Schema(
    "observe",
    (
        (
            1,
            f"""
            CREATE TABLE obs_cursor (
                name TEXT PRIMARY KEY, last_id BIGINT NOT NULL, updated_at DOUBLE PRECISION
            );
            CREATE TABLE obs_llm (
                hour BIGINT NOT NULL, agent TEXT NOT NULL, provider TEXT NOT NULL,
                model TEXT NOT NULL, status TEXT NOT NULL, {_LLM_COLS},
                PRIMARY KEY (hour, agent, provider, model, status)
            );
            CREATE TABLE obs_llm_total (
                agent TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
                status TEXT NOT NULL, {_LLM_COLS},
                PRIMARY KEY (agent, provider, model, status)
            );
            CREATE TABLE obs_tool (
                hour BIGINT NOT NULL, agent TEXT NOT NULL, tool TEXT NOT NULL,
                status TEXT NOT NULL, {_TOOL_COLS},
                PRIMARY KEY (hour, agent, tool, status)
            );
            CREATE TABLE obs_tool_total (
                agent TEXT NOT NULL, tool TEXT NOT NULL, status TEXT NOT NULL, {_TOOL_COLS},
                PRIMARY KEY (agent, tool, status)
            );
            CREATE TABLE obs_tool_errors (
                hour BIGINT NOT NULL, tool TEXT NOT NULL, error_type TEXT NOT NULL,
                reason TEXT NOT NULL, count BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (hour, tool, error_type, reason)
            );
            CREATE TABLE obs_kinds (
                hour BIGINT NOT NULL, agent TEXT NOT NULL, kind TEXT NOT NULL, {_KIND_COLS},
                PRIMARY KEY (hour, agent, kind)
            );
            CREATE TABLE obs_kinds_total (
                agent TEXT NOT NULL, kind TEXT NOT NULL, {_KIND_COLS},
                PRIMARY KEY (agent, kind)
            );
            CREATE TABLE obs_alerts (
                event_id BIGINT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL,
                session_id TEXT NOT NULL, agent TEXT NOT NULL, kind TEXT NOT NULL,
                payload TEXT NOT NULL, delivered_at DOUBLE PRECISION,
                claimed_at DOUBLE PRECISION, attempts BIGINT NOT NULL DEFAULT 0
            );
            CREATE INDEX obs_alerts_ts ON obs_alerts (ts);
            CREATE INDEX obs_alerts_pending ON obs_alerts (delivered_at, event_id);
            INSERT INTO obs_cursor (name, last_id, updated_at) VALUES ('journal', 0, NULL)
            """,
        ),
    ),
)

_TABLES = (
    "obs_llm", "obs_llm_total", "obs_tool", "obs_tool_total", "obs_tool_errors",
    "obs_kinds", "obs_kinds_total",
)  # fmt: skip
_CURSOR = "journal"
REASON_CHARS = 160


def bucket_of(latency_ms: float) -> int:
    """The histogram bucket of one latency."""
    for i, edge in enumerate(BUCKETS_MS):
        if latency_ms <= edge:
            return i
    return len(BUCKETS_MS)


def hour_of(ts: float) -> int:
    """The start of the UTC hour holding `ts`, in epoch seconds."""
    return int(ts // HOUR) * HOUR


def nano(usd: float) -> int:
    """USD as integer nano-dollars (exact sums)."""
    return round(usd * NANO)


# -- the deltas of one batch -----------------------------------------------------------


@dataclass(slots=True)
class _Sums:
    """Additive figures of one aggregate row."""

    values: list[float]

    def add(self, other: Sequence[float]) -> None:
        for i, v in enumerate(other):
            self.values[i] += v


@dataclass
class _Batch:
    """What a batch of events adds to each table, by key."""

    tables: dict[str, dict[tuple[Any, ...], _Sums]] = field(
        default_factory=lambda: {t: {} for t in _TABLES}
    )
    alerts: list[tuple[Any, ...]] = field(default_factory=list)  # obs_alerts rows

    def add(self, table: str, key: tuple[Any, ...], values: Sequence[float]) -> None:
        rows = self.tables[table]
        found = rows.get(key)
        if found is None:
            rows[key] = _Sums(list(values))
        else:
            found.add(values)

    def hist(self, latency_ms: float) -> list[float]:
        counts = [0.0] * len(_B)
        counts[bucket_of(latency_ms)] = 1
        return counts


class _Labels:
    """Distinct values of one label dimension, capped at `MAX_LABEL_VALUES`."""

    def __init__(self, known: Iterable[str]) -> None:
        self.known = set(known)

    def __call__(self, value: str) -> str:
        if value in self.known:
            return value
        if len(self.known) >= MAX_LABEL_VALUES:
            return OTHER
        self.known.add(value)
        return value


_KEYS: dict[str, tuple[str, ...]] = {
    "obs_llm": ("hour", "agent", "provider", "model", "status"),
    "obs_llm_total": ("agent", "provider", "model", "status"),
    "obs_tool": ("hour", "agent", "tool", "status"),
    "obs_tool_total": ("agent", "tool", "status"),
    "obs_tool_errors": ("hour", "tool", "error_type", "reason"),
    "obs_kinds": ("hour", "agent", "kind"),
    "obs_kinds_total": ("agent", "kind"),
}
_LLM_VALUES = (
    "calls", "tokens_in", "tokens_out", "cost_nusd", "estimated_nusd", "estimated_calls",
    "latency_us", *_B,
)  # fmt: skip
_TOOL_VALUES = ("calls", "retries", "latency_us", *_B)
_VALUES: dict[str, tuple[str, ...]] = {
    "obs_llm": _LLM_VALUES,
    "obs_llm_total": _LLM_VALUES,
    "obs_tool": _TOOL_VALUES,
    "obs_tool_total": _TOOL_VALUES,
    "obs_tool_errors": ("count",),
    "obs_kinds": ("count", "steps"),
    "obs_kinds_total": ("count", "steps"),
}


def _upsert(table: str) -> str:
    keys, values = _KEYS[table], _VALUES[table]
    cols = (*keys, *values)
    adds = ", ".join(f"{v} = {table}.{v} + excluded.{v}" for v in values)
    marks = ", ".join("?" for _ in cols)
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {adds}"
    )


# -- the rollup -----------------------------------------------------------------------


class Rollup:
    """The journal's aggregates in the store's database; see the module docstring.

    Args:
        store: the runtime's store (its events are read, its database holds the rollup).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = Database(store, SCHEMA)
        self._agents: dict[str, str] = {}
        self._labels: dict[str, _Labels] | None = None
        self._lock = threading.Lock()

    # -- folding ----------------------------------------------------------------------

    def cursor(self) -> int:
        """The row id of the last event folded (0: none yet)."""
        found = self.db.rows("SELECT last_id FROM obs_cursor WHERE name = ?", (_CURSOR,))
        return int(found[0][0]) if found else 0

    def lag(self) -> int:
        """Events committed but not folded yet (by row id)."""
        return max(0, self.store.latest_event_id() - self.cursor())

    def catch_up(self, *, max_events: int | None = None) -> int:
        """Fold every event committed since the cursor (at most `max_events`); returns
        how many this call folded."""
        folded = 0
        with self._lock:
            while max_events is None or folded < max_events:
                after = self.cursor()
                limit = BATCH if max_events is None else min(BATCH, max_events - folded)
                rows = self.store.events_after(after, limit=limit)
                if not rows:
                    return folded
                if self._commit(after, rows):
                    folded += len(rows)
                else:  # another process folded them first: read on from its cursor
                    self._labels = None
        return folded

    def rebuild(self) -> int:
        """Empty every aggregate and fold the whole journal again; returns the events."""
        with self._lock, self.db.transaction():
            for table in (*_TABLES, "obs_alerts"):
                self.db.execute(f"DELETE FROM {table}")
            self.db.execute("UPDATE obs_cursor SET last_id = 0 WHERE name = ?", (_CURSOR,))
            self._labels = None
        return self.catch_up()

    def _commit(self, after: int, rows: list[EventRow]) -> bool:
        batch = self._fold(rows)
        try:
            self._write(after, rows[-1].id, batch)
        except _Lost:
            return False
        return True

    def _write(self, after: int, last: int, batch: _Batch) -> None:
        """Move the cursor from `after` to `last` and add `batch`, in one transaction;
        `_Lost` (rolled back) when the cursor was not at `after` any more."""
        with self.db.transaction():
            moved = self.db.execute(
                "UPDATE obs_cursor SET last_id = ?, updated_at = ? WHERE name = ? AND last_id = ?",
                (last, time.time(), _CURSOR, after),
            )
            if moved != 1:
                raise _Lost
            for table, sums in batch.tables.items():
                if sums:
                    self.db.executemany(
                        _upsert(table),
                        [(*key, *_ints(s.values)) for key, s in sums.items()],
                    )
            if batch.alerts:
                self.db.executemany(
                    "INSERT INTO obs_alerts (event_id, ts, session_id, agent, kind, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                    batch.alerts,
                )

    def _label(self, dimension: str, value: str) -> str:
        if self._labels is None:
            where = {"model": "obs_llm_total", "provider": "obs_llm_total",
                     "tool": "obs_tool_total", "agent": "obs_kinds_total"}  # fmt: skip
            self._labels = {
                dim: _Labels(r[0] for r in self.db.rows(f"SELECT DISTINCT {dim} FROM {table}"))
                for dim, table in where.items()
            }
        return self._labels[dimension](value)

    def _agent(self, session_id: str) -> str:
        agent = self._agents.get(session_id)
        if agent is None:
            row = self.store.session(session_id)
            agent = row.agent if row is not None else ""
            self._remember(session_id, agent)
        return agent

    def _remember(self, session_id: str, agent: str) -> None:
        if len(self._agents) >= 50_000:
            self._agents.clear()
        self._agents[session_id] = agent

    def _fold(self, rows: list[EventRow]) -> _Batch:
        batch = _Batch()
        for row in rows:
            kind = row.kind
            if kind == ev.SESSION_CREATED:
                payload = json.loads(row.payload)
                self._remember(row.session_id, str(payload.get("agent", "")))
            agent = self._label("agent", self._agent(row.session_id))
            hour = hour_of(row.ts)
            steps = 0
            if kind in ev.TERMINAL_KINDS:
                steps = int(json.loads(row.payload).get("steps", 0) or 0)
            batch.add("obs_kinds", (hour, agent, kind), (1, steps))
            batch.add("obs_kinds_total", (agent, kind), (1, steps))
            if kind in (ev.LLM_RESPONSE, ev.LLM_FAILED, LOST):
                self._fold_llm(batch, row, hour, agent)
            elif kind == ev.TOOL_RESULT:
                self._fold_tool(batch, row, hour, agent)
            elif kind in ev.ALERT_KINDS:
                batch.alerts.append((row.id, row.ts, row.session_id, agent, kind, row.payload))
        return batch

    def _fold_llm(self, batch: _Batch, row: EventRow, hour: int, agent: str) -> None:
        p = json.loads(row.payload)
        status = {ev.LLM_RESPONSE: "ok", ev.LLM_FAILED: "error", LOST: "lost"}[row.kind]
        provider = self._label("provider", str(p.get("provider") or ""))
        model = self._label("model", str(p.get("model") or ""))
        cost = nano(row.cost_usd)
        estimated = bool(p.get("cost_estimated") or p.get("estimated"))
        values = [
            1,
            row.tokens_in,
            row.tokens_out,
            cost,
            cost if estimated else 0,
            1 if estimated else 0,
            round(row.latency_ms * 1000),
            *batch.hist(row.latency_ms),
        ]
        batch.add("obs_llm", (hour, agent, provider, model, status), values)
        batch.add("obs_llm_total", (agent, provider, model, status), values)

    def _fold_tool(self, batch: _Batch, row: EventRow, hour: int, agent: str) -> None:
        p = json.loads(row.payload)
        tool = self._label("tool", str(p.get("name") or ""))
        failed = "error" in p
        status = "error" if failed else "ok"
        retry = 1 if int(p.get("attempt", 1) or 1) > 1 else 0
        values = [1, retry, round(row.latency_ms * 1000), *batch.hist(row.latency_ms)]
        batch.add("obs_tool", (hour, agent, tool, status), values)
        batch.add("obs_tool_total", (agent, tool, status), values)
        if failed:
            reason = " ".join(str(p.get("error", "")).split())[:REASON_CHARS]
            error_type = str(p.get("error_type") or "Error")[:80]
            batch.add("obs_tool_errors", (hour, tool, error_type, reason), (1,))

    # -- reading ----------------------------------------------------------------------

    def costs(
        self,
        by: CostKey = "agent",
        *,
        since: float | None = None,
        until: float | None = None,
        agent: str | None = None,
    ) -> CostReport:
        """LLM spend grouped `by` agent, model (with its provider), provider, day or hour,
        over the hours that start in `[since, until)` (all when unset), optionally of one
        agent; groups by cost, highest first (time groups in time order)."""
        group = _GROUPS[by]
        where, params = _range(since, until)
        if agent is not None:
            where += " AND agent = ?"
            params.append(agent)
        width = 2 if by == "model" else 1
        # The cost column follows the group's columns and three counts.
        order = "1" if by in ("day", "hour") else f"{width + 4} DESC, 1, {width}"
        rows = self.db.rows(
            f"SELECT {group}, SUM(calls), SUM(CASE WHEN status = 'error' THEN calls ELSE 0 END), "
            "SUM(CASE WHEN status = 'lost' THEN calls ELSE 0 END), SUM(cost_nusd), "
            "SUM(estimated_nusd), SUM(tokens_in), SUM(tokens_out) "
            f"FROM obs_llm WHERE {where} GROUP BY {group} ORDER BY {order}",
            params,
        )
        items = [_cost_line(r[:width], r[width:]) for r in rows]
        total = _cost_line((), [sum(int(i[k]) for i in items) for k in _COST_INTS])
        return CostReport(by=by, since=since, until=until, items=items, total=total)

    def tool_stats(
        self, *, since: float | None = None, until: float | None = None, tool: str | None = None
    ) -> list[JSON]:
        """Per tool over the hours in `[since, until)`: calls, successes, failures,
        success rate, retries, mean and p50/p95/p99 latency (interpolated in the
        histogram buckets) and the failure reasons, most frequent first; busiest tool
        first."""
        where, params = _range(since, until)
        if tool is not None:
            where += " AND tool = ?"
            params.append(tool)
        sums = ", ".join(f"SUM({b})" for b in _B)
        rows = self.db.rows(
            f"SELECT tool, SUM(calls), SUM(CASE WHEN status = 'error' THEN calls ELSE 0 END), "
            f"SUM(retries), SUM(latency_us), {sums} FROM obs_tool WHERE {where} "
            "GROUP BY tool ORDER BY 2 DESC, 1",
            params,
        )
        reasons: dict[str, list[JSON]] = {}
        for name, error_type, reason, count in self.db.rows(
            f"SELECT tool, error_type, reason, SUM(count) FROM obs_tool_errors WHERE {where} "
            "GROUP BY tool, error_type, reason ORDER BY 4 DESC, 2, 3",
            params,
        ):
            reasons.setdefault(name, []).append(
                {"error_type": error_type, "reason": reason, "count": int(count)}
            )
        out = []
        for name, called, failed, retries, latency, *buckets in rows:
            calls, errors = int(called), int(failed)
            counts = [int(b) for b in buckets]
            out.append(
                {
                    "tool": name,
                    "calls": calls,
                    "ok": calls - errors,
                    "errors": errors,
                    "success_rate": round((calls - errors) / calls, 6) if calls else None,
                    "retries": int(retries),
                    "mean_ms": round(int(latency) / calls / 1000, 3) if calls else None,
                    "p50_ms": percentile(counts, 0.50),
                    "p95_ms": percentile(counts, 0.95),
                    "p99_ms": percentile(counts, 0.99),
                    "failures": reasons.get(name, []),
                }
            )
        return out

    def series(
        self,
        *,
        window: Window = "hour",
        by: Literal["agent", "model", "provider"] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[JSON]:
        """Per `window` (and group): LLM requests, failures, tokens and cost, and
        sessions ended, failed and their steps, for charts; in time order."""
        where, params = _range(since, until)
        bucket = _GROUPS[window]
        group = "''" if by is None else _GROUPS[by] if by != "model" else "model"
        llm = self.db.rows(
            f"SELECT {bucket}, {group}, SUM(calls), "
            "SUM(CASE WHEN status = 'ok' THEN 0 ELSE calls END), SUM(tokens_in + tokens_out), "
            f"SUM(cost_nusd) FROM obs_llm WHERE {where} GROUP BY 1, 2",
            params,
        )
        points: dict[tuple[int, str], JSON] = {}

        def point(ts: int, key: str) -> JSON:
            return points.setdefault(
                (ts, key),
                {"ts": ts, "key": key, "requests": 0, "llm_failures": 0, "tokens": 0,
                 "cost_usd": 0.0, "sessions": 0, "failed": 0, "steps": 0},
            )  # fmt: skip

        for ts, key, calls, failures, tokens, cost in llm:
            p = point(int(ts), str(key))
            p.update(
                requests=int(calls), llm_failures=int(failures), tokens=int(tokens),
                cost_usd=int(cost) / NANO,
            )  # fmt: skip
        if by in (None, "agent"):
            ended = ", ".join(f"'{k}'" for k in sorted(ev.TERMINAL_KINDS))
            for ts, key, kind, count, steps in self.db.rows(
                f"SELECT {bucket}, {group}, kind, SUM(count), SUM(steps) FROM obs_kinds "
                f"WHERE {where} AND kind IN ({ended}) GROUP BY 1, 2, 3",
                params,
            ):
                p = point(int(ts), str(key))
                p["sessions"] += int(count)
                p["steps"] += int(steps)
                if kind != ev.SESSION_COMPLETED:
                    p["failed"] += int(count)
        return [points[k] for k in sorted(points)]

    def totals(self) -> Totals:
        """The running totals (every hour), for `/metrics`: a few small queries."""
        llm_cols = ", ".join(_LLM_VALUES)
        tool_cols = ", ".join(_TOOL_VALUES)
        return Totals(
            llm=self.db.rows(
                f"SELECT agent, provider, model, status, {llm_cols} FROM obs_llm_total"
            ),
            tools=self.db.rows(f"SELECT agent, tool, status, {tool_cols} FROM obs_tool_total"),
            kinds=self.db.rows("SELECT agent, kind, count, steps FROM obs_kinds_total"),
        )

    def alerts(
        self,
        *,
        since: float | None = None,
        kind: str | None = None,
        session_id: str | None = None,
        limit: int = 50,
    ) -> list[JSON]:
        """Alerts (`nexus.events.ALERT_KINDS`), newest first."""
        where, params = "1 = 1", list[Any]()
        if since is not None:
            where += " AND ts >= ?"
            params.append(since)
        if kind is not None:
            where += " AND kind = ?"
            params.append(kind)
        if session_id is not None:
            where += " AND session_id = ?"
            params.append(session_id)
        rows = self.db.rows(
            "SELECT event_id, ts, session_id, agent, kind, payload, delivered_at FROM obs_alerts "
            f"WHERE {where} ORDER BY event_id DESC LIMIT ?",
            [*params, limit],
        )
        return [_alert(r) for r in rows]

    def close(self) -> None:
        """Close the rollup's connection."""
        self.db.close()


Window = Literal["hour", "day"]
CostKey = Literal["agent", "model", "provider", "day", "hour"]
COST_KEYS: tuple[str, ...] = ("agent", "model", "provider", "day", "hour")
_GROUPS = {
    "agent": "agent",
    "model": "provider, model",
    "provider": "provider",
    "day": "(hour / 86400) * 86400",
    "hour": "hour",
}
_COST_INTS = (
    "requests",
    "failed",
    "lost",
    "cost_nusd",
    "estimated_nusd",
    "tokens_in",
    "tokens_out",
)


@dataclass(frozen=True, slots=True)
class CostReport:
    """`Rollup.costs`: one line per group and their total."""

    by: str
    since: float | None
    until: float | None
    items: list[JSON]
    total: JSON

    def to_dict(self) -> JSON:
        """The report as plain data."""
        return {"by": self.by, "since": self.since, "until": self.until,
                "items": self.items, "total": self.total}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Totals:
    """The running totals' rows (`Rollup.totals`)."""

    llm: list[tuple[Any, ...]]
    tools: list[tuple[Any, ...]]
    kinds: list[tuple[Any, ...]]


def _cost_line(key: Sequence[Any], sums: Sequence[Any]) -> JSON:
    values = dict(zip(_COST_INTS, (int(v or 0) for v in sums), strict=True))
    line: JSON = {"key": None, "provider": None, "model": None}
    if len(key) == 2:
        line.update(provider=key[0], model=key[1], key=f"{key[0]}/{key[1]}" if key[0] else key[1])
    elif key:
        line["key"] = key[0]
    line.update(values)
    line["cost_usd"] = values["cost_nusd"] / NANO
    line["estimated_usd"] = values["estimated_nusd"] / NANO
    return line


def _range(since: float | None, until: float | None) -> tuple[str, list[Any]]:
    """The WHERE of the hours in `[since, until)`: an hour counts when it starts in it
    (the hour holding `since` counts whole)."""
    where, params = "1 = 1", []
    if since is not None:
        where += " AND hour >= ?"
        params.append(hour_of(since))
    if until is not None:
        where += " AND hour < ?"
        params.append(int(until))
    return where, params


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The `q` quantile of a latency histogram (ms), interpolated linearly inside its
    bucket (from the edge below, 0 for the first); the top bucket, unbounded, answers
    its lower edge. None when empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            low = BUCKETS_MS[i - 1] if i > 0 else 0.0
            if i == len(BUCKETS_MS):
                return float(low)
            high = BUCKETS_MS[i]
            return round(low + (high - low) * (rank - seen) / n, 3)
        seen += n
    return float(BUCKETS_MS[-1])


def _alert(row: Sequence[Any]) -> JSON:
    event_id, ts, session_id, agent, kind, payload, delivered_at = row
    return {
        "id": int(event_id),
        "ts": float(ts),
        "session_id": session_id,
        "agent": agent,
        "kind": kind,
        "payload": json.loads(payload),
        "delivered_at": delivered_at,
    }


class _Lost(Exception):
    """Another process moved the cursor first."""


def _ints(values: list[float]) -> list[int]:
    return [int(v) for v in values]
