"""Budgets: a cap is never overshot, because the guard stops *before* the call that
would pass it.

Before each LLM call the `BudgetGuard` estimates the call's worst case (its counted
prompt tokens at the input price plus its `max_tokens` at the output price) and
checks it against every budget that applies:

* the session's own (`max_cost_usd` of its limits), against what the session has
  spent, estimates of lost calls included (its journal's counters);
* shared rolling windows (settings `budgets`: `global`, or `agent:NAME`), against
  what every session in the window has spent *and holds reserved*, in the budget
  ledger (`budget_holds`, in the store's database).

A call that fits is *reserved*: the ledger row and the journal's `budget.reserved`
event hold its worst case until its outcome settles it to the real cost (an answer's
cost, a lost call's estimate, 0 for a call the provider refused). The check and the
hold are one transaction under one lock (SQLite's write lock; on PostgreSQL an
advisory lock, in one call of the schema's `budget_reserve` function), so
concurrent sessions of one agent, on any worker, cannot together
pass the agent's budget. A call that does not fit does not go out: the journal
says why (`budget.exceeded`), and the guard acts through the control channel:
it posts `pause` (default: a person looks, raises the budget or waits for the
window, and resumes) or `kill`, which the session applies as any other command.

Crashes: a hold is keyed by (session, step, attempt), so a step retried after a
crash re-reserves its own row instead of adding one, and never counts twice; a
hold left open by a crash is settled when the session resumes or ends, from its
journal (the answer's cost if it was journaled, a lost call's estimate, else the
reserved worst case: the call went out and may have been billed). The ledger is an
index of the journal's reservations, as the session index is of its statuses: what a
session spent is always its journal's.

At `alert_at` (80% by default) of any budget, reservations counted, a `budget.alert`
is journaled, once per crossing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nexus import events as ev
from nexus.config import BudgetRule
from nexus.errors import SessionKilled, SessionSuspended
from nexus.observe.rollup import NANO, nano
from nexus.observe.sql import Database
from nexus.runtime.pipeline import BUDGET
from nexus.storage.base import Schema, Store
from nexus.types import (
    ChatRequest,
    Event,
    Guard,
    Next,
    Outcome,
    Projection,
    RunContext,
    SessionHook,
    SessionStatus,
    Step,
)

log = logging.getLogger("nexus.budgets")
_T = TypeVar("_T")

STAGE = BUDGET + 10  # inside the limits guard, before approvals and the call
LEDGER_LOCK = 7_241_311  # the advisory lock of reservations on PostgreSQL

MINUTE = 60  # the ledger's usage buckets, in seconds

_USAGE_TRIGGERS_SQLITE = """
CREATE TRIGGER budget_hold_added AFTER INSERT ON budget_holds BEGIN
    INSERT INTO budget_usage (scope, minute, nusd) VALUES
        ('global', CAST(NEW.ts / 60 AS INTEGER) * 60,
         COALESCE(NEW.cost_nusd, NEW.reserved_nusd)),
        ('agent:' || NEW.agent, CAST(NEW.ts / 60 AS INTEGER) * 60,
         COALESCE(NEW.cost_nusd, NEW.reserved_nusd))
    ON CONFLICT (scope, minute) DO UPDATE SET nusd = budget_usage.nusd + excluded.nusd;
END;
CREATE TRIGGER budget_hold_changed AFTER UPDATE ON budget_holds BEGIN
    INSERT INTO budget_usage (scope, minute, nusd) VALUES
        ('global', CAST(OLD.ts / 60 AS INTEGER) * 60,
         -COALESCE(OLD.cost_nusd, OLD.reserved_nusd)),
        ('agent:' || OLD.agent, CAST(OLD.ts / 60 AS INTEGER) * 60,
         -COALESCE(OLD.cost_nusd, OLD.reserved_nusd)),
        ('global', CAST(NEW.ts / 60 AS INTEGER) * 60,
         COALESCE(NEW.cost_nusd, NEW.reserved_nusd)),
        ('agent:' || NEW.agent, CAST(NEW.ts / 60 AS INTEGER) * 60,
         COALESCE(NEW.cost_nusd, NEW.reserved_nusd))
    ON CONFLICT (scope, minute) DO UPDATE SET nusd = budget_usage.nusd + excluded.nusd;
END
"""

_USAGE_TRIGGERS_POSTGRES = """
CREATE FUNCTION budget_usage_add(scope TEXT, ts DOUBLE PRECISION, nusd BIGINT)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO budget_usage (scope, minute, nusd)
    VALUES (scope, (trunc(ts / 60) * 60)::BIGINT, nusd)
    ON CONFLICT (scope, minute) DO UPDATE SET nusd = budget_usage.nusd + excluded.nusd
$$;
CREATE FUNCTION budget_usage_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        PERFORM budget_usage_add('global', OLD.ts, -COALESCE(OLD.cost_nusd, OLD.reserved_nusd));
        PERFORM budget_usage_add('agent:' || OLD.agent, OLD.ts,
                                 -COALESCE(OLD.cost_nusd, OLD.reserved_nusd));
    END IF;
    PERFORM budget_usage_add('global', NEW.ts, COALESCE(NEW.cost_nusd, NEW.reserved_nusd));
    PERFORM budget_usage_add('agent:' || NEW.agent, NEW.ts,
                             COALESCE(NEW.cost_nusd, NEW.reserved_nusd));
    RETURN NULL;
END
$$;
CREATE TRIGGER budget_hold_follow AFTER INSERT OR UPDATE ON budget_holds
    FOR EACH ROW EXECUTE FUNCTION budget_usage_follow();
-- `Ledger.reserve` in one round trip (each statement of it was one, in a thread):
-- under the ledger's lock, apply the settles, then take (or replace) the hold and
-- check each rule's window with it; the hold is undone if a rule is passed (the
-- settles stay). Returns the refused rule's number (0: none), then the use before
-- the hold of each rule checked.
CREATE FUNCTION budget_reserve(
    p_lock BIGINT, p_session TEXT, p_step BIGINT, p_attempt BIGINT, p_agent TEXT,
    p_ts DOUBLE PRECISION, p_nusd BIGINT,
    s_sessions TEXT[], s_steps BIGINT[], s_attempts BIGINT[], s_nusd BIGINT[],
    r_scopes TEXT[], r_since BIGINT[], r_limits BIGINT[]
) RETURNS BIGINT[] LANGUAGE plpgsql AS $$
DECLARE
    used BIGINT[] := '{}';
    refused BIGINT := 0;
    summed BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    FOR i IN 1 .. coalesce(array_length(s_sessions, 1), 0) LOOP
        UPDATE budget_holds SET cost_nusd = s_nusd[i]
        WHERE session_id = s_sessions[i] AND step = s_steps[i] AND attempt = s_attempts[i]
          AND cost_nusd IS NULL;
    END LOOP;
    BEGIN
        INSERT INTO budget_holds (session_id, step, attempt, agent, ts, reserved_nusd)
        VALUES (p_session, p_step, p_attempt, p_agent, p_ts, p_nusd)
        ON CONFLICT (session_id, step, attempt) DO UPDATE
            SET ts = excluded.ts, reserved_nusd = excluded.reserved_nusd, cost_nusd = NULL;
        FOR i IN 1 .. coalesce(array_length(r_scopes, 1), 0) LOOP
            SELECT COALESCE(SUM(nusd), 0) INTO summed FROM budget_usage
            WHERE scope = r_scopes[i] AND minute >= r_since[i];
            used := used || (summed - p_nusd);
            IF summed > r_limits[i] THEN
                refused := i;
                RAISE EXCEPTION USING ERRCODE = 'NXB01';
            END IF;
        END LOOP;
    EXCEPTION WHEN SQLSTATE 'NXB01' THEN
        NULL;  -- the hold is rolled back to the block's start; the settles stay
    END;
    RETURN refused || used;
END
$$
"""

SCHEMA = Schema(
    "budgets",
    (
        (
            1,
            # Holds: one per LLM call attempt. Usage: the holds' sums per scope and
            # minute (reserved until settled, then the cost), which a check reads:
            # at most window/60 rows, whatever the traffic.
            """
            CREATE TABLE budget_holds (
                session_id TEXT NOT NULL, step BIGINT NOT NULL, attempt BIGINT NOT NULL,
                agent TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL,
                reserved_nusd BIGINT NOT NULL, cost_nusd BIGINT,
                PRIMARY KEY (session_id, step, attempt)
            );
            CREATE TABLE budget_usage (
                scope TEXT NOT NULL, minute BIGINT NOT NULL, nusd BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (scope, minute)
            )
            """,
        ),
        (
            2,
            # The usage follows the holds by trigger: a hold counts its cost once
            # settled, else its reservation, in the minute of its `ts`, in the global
            # scope and its agent's (the minute as `_minute` computes it). A ledger
            # call is then its holds' statements alone (each statement is a turn of
            # the GIL on SQLite, which DBOS's threads take).
            {"sqlite": _USAGE_TRIGGERS_SQLITE, "postgresql": _USAGE_TRIGGERS_POSTGRES},
        ),
    ),
)

Estimate = Callable[[ChatRequest, RunContext], tuple[int, float]]
"""`(prompt tokens counted, worst-case USD)` of one request in one session."""


def worst_case(request: ChatRequest, run: RunContext) -> tuple[int, float]:
    """A call's prompt tokens, counted, and the most it can cost: those tokens plus a
    completion of its max_tokens, at the price the session's pricing gives the model
    at its endpoint (`nexus.observe.costs.Pricing.estimate`)."""
    tokens, usd = run.pricing.estimate(request, request.model, run.provider.name)
    return tokens, float(usd)


def applies(rule: BudgetRule, agent: str) -> bool:
    """Whether `rule` caps the sessions of `agent`."""
    return rule.scope in ("global", f"agent:{agent}")


class _Refused(Exception):
    def __init__(self, reservation: Reservation) -> None:
        self.reservation = reservation


@dataclass(frozen=True, slots=True)
class Reservation:
    """What the ledger answered: the budgets as found (before this call), and the
    one refused (None when the hold was taken)."""

    uses: list[ev.BudgetUse]
    refused: tuple[BudgetRule, float] | None = None  # the rule, its use in USD


Settle = tuple[str, int, int, float]
"""`(session id, step, attempt, cost in USD)` of a hold to settle."""


def _minute(ts: float) -> int:
    """The usage bucket of `ts`: as the triggers compute it (a double's division,
    truncated), so a check's window and a hold's bucket agree to the last bit."""
    return int(ts / MINUTE) * MINUTE


def _scope(rule: BudgetRule, agent: str) -> str:
    """The usage scope `rule` reads for a call of `agent`."""
    return "global" if rule.scope == "global" else f"agent:{agent}"


def _use(rule: BudgetRule, used_nusd: int) -> ev.BudgetUse:
    """`rule` as a reservation found it: `used_nusd` spent or held before the call."""
    return {
        "scope": rule.scope,
        "limit_usd": rule.usd,
        "used_usd": used_nusd / NANO,
        "window_s": rule.window_s,
    }


class Ledger:
    """The budget holds of every session and their usage per scope and minute, in
    the store's database (kept by triggers on the holds). A window's use is the sum
    of its minutes (the oldest one whole: a check may count up to a minute more than
    the window, never less)."""

    def __init__(self, store: Store) -> None:
        self.db = Database(store, SCHEMA, shared=True)

    def reserve(
        self,
        *,
        session_id: str,
        step: int,
        attempt: int,
        agent: str,
        usd: float,
        rules: Sequence[BudgetRule],
        now: float,
        settles: Sequence[Settle] = (),
    ) -> Reservation:
        """Settle `settles`, then hold `usd` and check each rule's window with it:
        one transaction under the ledger's lock, rolled back if a rule is passed. A
        repeated (session, step, attempt) replaces its hold (and does not count
        against itself)."""
        amount = nano(usd)
        if self.db.dialect == "postgresql":
            return self._reserve_postgres(
                session_id, step, attempt, agent, amount, rules, now, settles
            )
        uses: list[ev.BudgetUse] = []
        try:
            with self.db.transaction(lock=LEDGER_LOCK):
                for settle in settles:
                    self._settle(*settle)
                # A repeated attempt replaces its old hold (the usage follows, by trigger).
                self.db.execute(
                    "INSERT INTO budget_holds "
                    "(session_id, step, attempt, agent, ts, reserved_nusd) "
                    "VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (session_id, step, attempt) DO UPDATE SET ts = excluded.ts, "
                    "reserved_nusd = excluded.reserved_nusd, cost_nusd = NULL",
                    (session_id, step, attempt, agent, now, amount),
                )
                for rule in rules:
                    ((summed,),) = self.db.rows(
                        "SELECT COALESCE(SUM(nusd), 0) FROM budget_usage "
                        "WHERE scope = ? AND minute >= ?",
                        (_scope(rule, agent), _minute(now - rule.window_s)),
                    )
                    used = int(summed) - amount  # the use before this hold
                    uses.append(_use(rule, used))
                    if used + amount > nano(rule.usd):
                        raise _Refused(Reservation(uses, (rule, used / NANO)))
        except _Refused as refused:  # rolled back: the settles go in on their own
            self.settle(settles)
            return refused.reservation
        return Reservation(uses)

    def _reserve_postgres(
        self,
        session_id: str,
        step: int,
        attempt: int,
        agent: str,
        amount: int,
        rules: Sequence[BudgetRule],
        now: float,
        settles: Sequence[Settle],
    ) -> Reservation:
        """`reserve` as one call of the schema's `budget_reserve` (one round trip)."""
        ((found,),) = self.db.rows(
            "SELECT budget_reserve(?, ?, ?, ?, ?, ?, ?, ?::text[], ?::bigint[], ?::bigint[], "
            "?::bigint[], ?::text[], ?::bigint[], ?::bigint[])",
            (
                LEDGER_LOCK, session_id, step, attempt, agent, now, amount,
                [s[0] for s in settles], [s[1] for s in settles], [s[2] for s in settles],
                [nano(s[3]) for s in settles],
                [_scope(r, agent) for r in rules],
                [_minute(now - r.window_s) for r in rules],
                [nano(r.usd) for r in rules],
            ),
        )  # fmt: skip
        refused, *used = (int(n) for n in found)
        uses = [_use(rule, n) for rule, n in zip(rules, used, strict=False)]
        if refused:
            rule = rules[refused - 1]
            return Reservation(uses, (rule, used[refused - 1] / NANO))
        return Reservation(uses)

    def settle(self, settles: Sequence[Settle]) -> None:
        """Replace holds' worst cases by what the calls cost: a statement each (a
        settle is applied once, so each stands alone)."""
        for settle in settles:
            self._settle(*settle)

    def _settle(self, session_id: str, step: int, attempt: int, usd: float) -> None:
        # Else never held, or settled already: a settle is applied once.
        self.db.execute(
            "UPDATE budget_holds SET cost_nusd = ? WHERE session_id = ? AND step = ? "
            "AND attempt = ? AND cost_nusd IS NULL",
            (nano(usd), session_id, step, attempt),
        )

    def open_holds(self, session_id: str) -> list[tuple[int, int, int]]:
        """`(step, attempt, reserved nano-USD)` of a session's unsettled holds."""
        return [
            (int(s), int(a), int(r))
            for s, a, r in self.db.rows(
                "SELECT step, attempt, reserved_nusd FROM budget_holds "
                "WHERE session_id = ? AND cost_nusd IS NULL ORDER BY step, attempt",
                (session_id,),
            )
        ]

    def close(self) -> None:
        """Close the ledger's connection."""
        self.db.close()


@dataclass
class BudgetState:
    """A session's budget history, folded from its journal."""

    costs: dict[tuple[int, int], float] = field(default_factory=dict)  # outcome costs
    request: tuple[int, int] | None = None  # the LLM attempt asked last
    requested: set[tuple[int, int]] = field(default_factory=set)  # every attempt asked
    resumed: bool = False  # this run resumed the session (holds may predate it)
    alerted: set[str] = field(default_factory=set)  # scopes alerted (session scope: once)


class BudgetGuard(Guard, Projection[BudgetState], SessionHook):
    """Reserves each LLM call's worst case against every budget that applies, and
    stops the session before a call that would pass one; see the module docstring.

    Args:
        store: the runtime's store (the ledger's tables live in its database).
        rules: the shared budgets (settings `budgets`).
        estimate: a request's counted prompt tokens and worst-case USD (default: the
            session's pricing, `worst_case`).
        post: posts a control command (`Control.post`).
        session_action: what passing a session's own `max_cost_usd` does.
        session_alert_at: the fraction of it that alerts.
        clock: the time (epoch seconds).
    """

    stage = STAGE
    name = "budgets"

    def __init__(
        self,
        store: Store,
        rules: Sequence[BudgetRule],
        *,
        estimate: Estimate = worst_case,
        post: Callable[..., Any],
        session_action: str = "pause",
        session_alert_at: float = 0.8,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.rules = list(rules)
        self.estimate = estimate
        self.post = post
        self.session_action = session_action
        self.session_alert_at = session_alert_at
        self.clock = clock or time.time
        self._store = store
        self._ledger: Ledger | None = None
        # Settles of calls answered, by session: written with the session's next
        # reservation (one ledger transaction per call), or at its end.
        self._due: dict[str, list[Settle]] = {}

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self._store)
        return self._ledger

    # -- projection ---------------------------------------------------------------------

    def initial(self) -> BudgetState:
        return BudgetState()

    def apply(self, state: BudgetState, event: Event) -> BudgetState:
        kind = event.kind
        if kind == ev.LLM_REQUEST:
            state.request = (int(event.payload["step"]), int(event.payload.get("attempt", 1)))
            state.requested.add(state.request)
        elif kind in (ev.LLM_RESPONSE, ev.LLM_FAILED, "llm.lost"):
            step = int(event.payload["step"])
            attempt = int(event.payload.get("attempt", 0) or 0)
            if not attempt and state.request is not None and state.request[0] == step:
                attempt = state.request[1]
            state.costs[(step, attempt or 1)] = event.cost_usd
        elif kind == ev.BUDGET_ALERT:
            state.alerted.add(str(event.payload["scope"]))
        return state

    # -- the guard ----------------------------------------------------------------------

    async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
        if step.kind != "llm":
            return await call_next(step)
        rules = [r for r in self.rules if applies(r, run.agent_name)]
        own = run.limits.max_cost_usd
        if not rules and own is None:
            return await call_next(step)
        tokens, worst = self.estimate(step.chat_request(), run)
        uses: list[ev.BudgetUse] = []
        if own is not None:
            spent = run.cost_usd
            uses.append({"scope": "session", "limit_usd": own, "used_usd": spent})
            if nano(spent) + nano(worst) > nano(own):
                await self._refuse(run, step, "session", own, spent, worst, self.session_action)
        held = False
        if rules:
            due = self._due.pop(run.session_id, [])
            found = await self._in_ledger(
                self.ledger.reserve,
                session_id=run.session_id,
                step=step.number,
                attempt=step.attempt,
                agent=run.agent_name,
                usd=worst,
                rules=rules,
                now=self.clock(),
                settles=due,
            )
            uses.extend(found.uses)
            if found.refused is not None:
                rule, used = found.refused
                await self._refuse(
                    run, step, rule.scope, rule.usd, used, worst, rule.action, rule.window_s
                )
            held = True
        await run.record(
            ev.BUDGET_RESERVED,
            {
                "step": step.number,
                "attempt": step.attempt,
                "usd": worst,
                "prompt_tokens": tokens,
                "max_tokens": step.chat_request().max_tokens,
                "budgets": uses,
            },
            defer=True,
        )
        await self._alerts(run, step, uses, worst, rules)
        try:
            outcome = await call_next(step)
        except asyncio.CancelledError:
            raise  # the worker stops: the hold stays until the session resumes
        except Exception:
            if held:  # the call failed or was refused further in: nothing was billed
                self._owe(run.session_id, step, 0.0)
            raise
        if held:
            # Priced as the recorder prices it (`Pricing.charge`): the same figure.
            response = outcome.response
            cost = (
                0.0
                if response is None
                else run.pricing.charge(step.chat_request(), response).cost_usd
            )
            self._owe(run.session_id, step, cost)
        return outcome

    async def _in_ledger(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """`fn` on the ledger: in place on SQLite, in a thread on PostgreSQL
        (`Database.inline`)."""
        if self.ledger.db.inline:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _owe(self, session_id: str, step: Step, usd: float) -> None:
        self._due.setdefault(session_id, []).append((session_id, step.number, step.attempt, usd))

    async def _alerts(
        self,
        run: RunContext,
        step: Step,
        uses: list[ev.BudgetUse],
        worst: float,
        rules: list[BudgetRule],
    ) -> None:
        """A `budget.alert` for each budget this reservation takes past its threshold."""
        state = run.view(self)
        thresholds = {r.scope: r.alert_at for r in rules} | {"session": self.session_alert_at}
        for use in uses:
            scope, limit = use["scope"], use["limit_usd"]
            at = thresholds[scope]
            before, after = use["used_usd"] / limit, (use["used_usd"] + worst) / limit
            if scope == "session" and scope in state.alerted:
                continue  # a session's own budget only grows: once
            if before < at <= after:
                alert: ev.BudgetAlert = {
                    "step": step.number,
                    "scope": scope,
                    "limit_usd": limit,
                    "used_usd": round(use["used_usd"] + worst, 9),
                    "fraction": round(after, 6),
                }
                if "window_s" in use:
                    alert["window_s"] = use["window_s"]
                await run.record(ev.BUDGET_ALERT, dict(alert), defer=True)

    async def _refuse(
        self,
        run: RunContext,
        step: Step,
        scope: str,
        limit: float,
        used: float,
        needed: float,
        action: str,
        window_s: float | None = None,
    ) -> None:
        """Journal why the call does not go out, post the command, stop the session."""
        what = "its own budget" if scope == "session" else f"the {scope} budget"
        window = "" if window_s is None else f" per {window_s:g}s"
        reason = (
            f"budget: this call may cost up to ${needed:.6f} and {what} of ${limit:g}{window} "
            f"has ${max(limit - used, 0):.6f} left (${used:.6f} spent or reserved)"
        )
        payload: ev.BudgetExceeded = {
            "step": step.number,
            "attempt": step.attempt,
            "scope": scope,
            "limit_usd": limit,
            "used_usd": used,
            "needed_usd": needed,
            "action": action,
        }
        if window_s is not None:
            payload["window_s"] = window_s
        await run.record(ev.BUDGET_EXCEEDED, dict(payload))
        command = await self.post(run.session_id, action, by="budget", reason=reason)
        if action == "kill":
            # A kill posted in this process cancels the session's step at once; the
            # control guard, outside, turns that into the kill it applies.
            await asyncio.sleep(0)
            raise SessionKilled(reason, by="budget", command=command.id)
        raise SessionSuspended(reason, by="budget", command=command.id)

    # -- reconciling after a crash --------------------------------------------------

    async def session_resumed(self, run: RunContext) -> None:
        if any(applies(r, run.agent_name) for r in self.rules):
            state = run.view(self)
            await self._in_ledger(self._reconcile, run.session_id, state, final=False)
            state.resumed = True

    async def session_ended(self, run: RunContext, status: SessionStatus) -> None:
        due = self._due.pop(run.session_id, [])
        if not any(applies(r, run.agent_name) for r in self.rules):
            return
        state = run.view(self)
        # The answered calls' costs, and the worst case of any call that went out and
        # has no outcome (it may have been billed); a session that resumed has its
        # older holds looked up too.
        unanswered = bool(state.requested - state.costs.keys())
        if state.resumed or unanswered:
            await self._in_ledger(self._reconcile, run.session_id, state, final=True, due=due)
        elif due:
            await self._in_ledger(self.ledger.settle, due)

    def _reconcile(
        self, session_id: str, state: BudgetState, *, final: bool, due: Sequence[Settle] = ()
    ) -> None:
        """Settle the session's open holds: what this run owes, then, from its
        journal, an outcome's cost where one was journaled; at the end, the worst
        case of any still open (it went out, and may have been billed)."""
        self.ledger.settle(due)
        settles: list[Settle] = []
        for step, attempt, reserved in self.ledger.open_holds(session_id):
            cost = state.costs.get((step, attempt))
            if cost is None and not final:
                continue
            usd = cost if cost is not None else reserved / NANO
            settles.append((session_id, step, attempt, usd))
        self.ledger.settle(settles)

    def close(self) -> None:
        """Close the ledger's connection."""
        if self._ledger is not None:
            with contextlib.suppress(Exception):
                self._ledger.close()
