"""Budgets against a real OpenAI-compatible peer with priced calls: a session's own
cap and an agent's shared rolling window are never passed, because the call that
would pass them does not go out; the session pauses (or is killed) through the
control channel; 80% alerts; concurrent sessions on two runtimes share the agent's
budget; a crash leaves a hold that the session's end settles; bad budget settings
are refused by name. Runs on both stores."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nexus import events as ev
from nexus.config import BudgetRule, load_settings
from nexus.errors import ConfigError
from nexus.observe.budgets import SCHEMA, Ledger
from nexus.observe.sql import Database
from nexus.runtime.agents import Agent, AgentRegistry, Limits
from nexus.runtime.providers.openai import OpenAIProvider
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import Toolkit, tool
from nexus.storage.base import Schema
from nexus.types import SessionStatus
from tests.peers.openai_server import PeerServer

PRICE = 1000.0  # USD per 1M tokens, in and out: $0.001 a token


@tool(effect="read")
def note(text: str) -> str:
    """Take a note."""
    return f"noted {text}"


KIT = Toolkit("notes", [note])


def endless(n: int = 60) -> list[dict[str, Any]]:
    """A model that never stops calling tools (each call different: no loop)."""
    return [{"tool_calls": [{"name": "note", "arguments": {"text": f"n{i}"}}]} for i in range(n)]


def runtime(peer: PeerServer, limits: Limits, **settings: Any) -> Runtime:
    agents = AgentRegistry()
    agents.add(Agent(name="spender", toolkits=(KIT,), limits=limits))
    provider = OpenAIProvider(
        name="peer", base_url=peer.url, model="m", price_in_per_1m=PRICE, price_out_per_1m=PRICE
    )
    return Runtime(load_settings(**settings), agents=agents, provider=provider)


async def close(rt: Runtime) -> None:
    """The runtime, and the provider it was given (not its own to close)."""
    await (await rt.provider()).aclose()
    await rt.aclose()


async def test_a_session_stops_before_the_call_that_would_pass_its_own_budget(
    peer: PeerServer,
) -> None:
    """max_cost_usd $0.60: calls go out while spent + worst case fits; the next one
    is refused before it is sent (the peer never sees it), journaled as
    `budget.exceeded`, and the session is paused by the budget with what it spent
    under the cap; one `budget.alert` marked the crossing of 80%."""
    peer.config.update({"script": endless()})
    rt = runtime(peer, Limits(max_cost_usd=0.6, max_tokens_per_call=40, max_steps=500))
    try:
        sid = rt.create_session("take notes forever", agent="spender")
        assert await rt.run(sid) is SessionStatus.PAUSED
        events = rt.journal.events(sid)
        kinds = [e.kind for e in events]
        responses = [e for e in events if e.kind == ev.LLM_RESPONSE]
        spent = sum(e.cost_usd for e in events)
        assert spent <= 0.6
        assert len(peer.requests) == len(responses)  # the refused call never went out
        assert kinds[-3:] == [ev.LLM_REQUEST, ev.BUDGET_EXCEEDED, ev.SESSION_PAUSED]
        exceeded = events[-2].payload
        assert exceeded["scope"] == "session" and exceeded["action"] == "pause"
        assert exceeded["used_usd"] == pytest.approx(spent)
        assert exceeded["used_usd"] + exceeded["needed_usd"] > 0.6
        paused = events[-1].payload
        assert paused["by"] == "budget" and paused["reason"].startswith("budget: this call")
        assert isinstance(paused["command"], int)  # applied through the control channel
        alerts = [e.payload for e in events if e.kind == ev.BUDGET_ALERT]
        assert len(alerts) == 1 and alerts[0]["scope"] == "session"
        assert alerts[0]["fraction"] >= 0.8
        reserved = [e.payload for e in events if e.kind == ev.BUDGET_RESERVED]
        assert len(reserved) == len(responses)
        for hold, answer in zip(reserved, responses, strict=True):
            assert hold["usd"] >= answer.cost_usd  # the worst case bounds the real cost
        # Resuming does not let it through: the same call is refused again.
        await rt.control.post(sid, "resume", by="test")
        assert await rt.run(sid) is SessionStatus.PAUSED
        assert len(peer.requests) == len(responses)
    finally:
        await close(rt)


async def test_the_kill_action_kills_the_session(peer: PeerServer) -> None:
    """With `budget_action=kill` the session whose next call would pass its cap is
    killed through the control channel: the kill cuts the refused step short (the
    control guard journals it failed, nothing sent) and names the budget."""
    peer.config.update({"script": endless()})
    rt = runtime(peer, Limits(max_cost_usd=0.3, max_tokens_per_call=40), budget_action="kill")
    try:
        sid = rt.create_session("take notes", agent="spender")
        assert await rt.run(sid) is SessionStatus.KILLED
        events = rt.journal.events(sid)
        assert [e.kind for e in events[-4:]] == [
            ev.LLM_REQUEST, ev.BUDGET_EXCEEDED, ev.LLM_FAILED, ev.SESSION_KILLED,
        ]  # fmt: skip
        assert events[-2].payload["by"] == "Control"
        assert "interrupted" in events[-2].payload
        assert events[-1].payload["by"] == "budget"
        assert sum(e.cost_usd for e in events) <= 0.3
    finally:
        await close(rt)


async def test_concurrent_sessions_on_two_runtimes_share_the_agents_budget(
    peer: PeerServer,
) -> None:
    """An agent budget of $1 per hour; six endless sessions run at once on two
    runtimes (two ledgers, two connections, as two workers): together they spend
    at most $1, and every one of them ends paused by the agent's budget."""
    peer.config.update({"script": endless(), "latency_ms": 5})
    rule = BudgetRule(scope="agent:spender", usd=1.0, window_s=3600)
    limits = Limits(max_tokens_per_call=40, max_steps=500)
    a = runtime(peer, limits, budgets=[rule])
    b = runtime(peer, limits, budgets=[rule])
    try:
        ids = [a.create_session(f"notes {i}", agent="spender") for i in range(6)]
        statuses = await asyncio.gather(
            *((a if i % 2 else b).run(sid) for i, sid in enumerate(ids))
        )
        assert statuses == [SessionStatus.PAUSED] * 6
        spent = sum(e.cost_usd for sid in ids for e in a.journal.events(sid))
        assert 0 < spent <= 1.0
        for sid in ids:
            last = a.journal.events(sid)[-2].payload
            assert (last["scope"], last["limit_usd"]) == ("agent:spender", 1.0)
        ledger = Ledger(a.store)
        try:
            assert ledger.open_holds(ids[0]) == []  # every hold settled
        finally:
            ledger.close()
    finally:
        await close(a)
        await close(b)


async def test_a_hold_left_by_a_crash_is_settled_when_the_session_ends(
    peer: PeerServer,
) -> None:
    """The worker stops during an LLM call (the task is cancelled): its hold stays
    open; the session resumes, retries the step as attempt 2 under a hold of its own,
    and at its end the interrupted attempt is settled at its worst case (it went
    out and may have been billed)."""
    peer.config.update({"script": [{"content": "done"}], "latency_ms": 3000})
    rule = BudgetRule(scope="global", usd=100.0)
    rt = runtime(peer, Limits(max_tokens_per_call=40), budgets=[rule])
    try:
        sid = rt.create_session("answer", agent="spender")
        task = asyncio.create_task(rt.run(sid))
        while not peer.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ledger = Ledger(rt.store)
        try:
            ((step, attempt, reserved),) = ledger.open_holds(sid)
            assert (step, attempt) == (1, 1) and reserved > 0
            peer.config.update({"latency_ms": 0})
            assert await rt.run(sid) is SessionStatus.COMPLETED
            assert ledger.open_holds(sid) == []
            rows = ledger.db.rows(
                "SELECT attempt, reserved_nusd, cost_nusd FROM budget_holds "
                "WHERE session_id = ? ORDER BY attempt",
                (sid,),
            )
            answered = next(e for e in rt.journal.events(sid) if e.kind == ev.LLM_RESPONSE)
            assert rows[0] == (1, reserved, reserved)
            assert rows[1][0] == 2 and rows[1][2] == round(answered.cost_usd * 1e9)
        finally:
            ledger.close()
    finally:
        await close(rt)


def test_a_repeated_reservation_replaces_its_hold() -> None:
    """The same (session, step, attempt) reserved twice (a crash between the hold
    and the call) holds once: it never counts against itself."""
    rt = Runtime(load_settings())
    ledger = Ledger(rt.store)
    try:
        rule = BudgetRule(scope="global", usd=1.0)
        args = {"session_id": "s_1", "step": 1, "attempt": 1, "agent": "x", "rules": [rule]}
        first = ledger.reserve(**args, usd=0.7, now=1000.0)
        again = ledger.reserve(**args, usd=0.7, now=1001.0)
        assert first.refused is None and again.refused is None
        assert again.uses[0]["used_usd"] == 0.0
        other = ledger.reserve(**{**args, "step": 2}, usd=0.5, now=1002.0)
        assert other.refused is not None and other.refused[1] == pytest.approx(0.7)
        # Outside the window (and its oldest minute) the hold no longer counts.
        later = ledger.reserve(**{**args, "step": 2}, usd=0.5, now=1001.0 + 3600 + 60)
        assert later.refused is None
    finally:
        ledger.close()
        rt.store.close()


def _usage(ledger: Ledger) -> dict[tuple[str, int], int]:
    """The usage table, its empty rows left out."""
    rows = ledger.db.rows("SELECT scope, minute, nusd FROM budget_usage")
    return {(str(s), int(m)): int(n) for s, m, n in rows if n}


def _usage_of_holds(ledger: Ledger) -> dict[tuple[str, int], int]:
    """What the usage should be: each hold's cost, else its reservation, in its
    minute, in the global scope and its agent's."""
    found: dict[tuple[str, int], int] = {}
    rows = ledger.db.rows("SELECT agent, ts, reserved_nusd, cost_nusd FROM budget_holds")
    for agent, ts, reserved, cost in rows:
        minute = int(ts / 60) * 60
        for scope in ("global", f"agent:{agent}"):
            found[(scope, minute)] = found.get((scope, minute), 0) + int(
                cost if cost is not None else reserved
            )
    return {k: v for k, v in found.items() if v}


def test_the_usage_follows_every_change_of_the_holds() -> None:
    """The usage per scope and minute is kept by the store (triggers on the holds):
    after new holds in two minutes, a repeated reservation moving its hold to a later
    minute, settles riding with a reservation, a refused reservation (rolled back,
    its settles applied alone) and a settle applied twice, the usage is exactly the
    sum of the holds, and the holds are exactly what was reserved and settled."""
    rt = Runtime(load_settings())
    ledger = Ledger(rt.store)
    try:
        rule = BudgetRule(scope="global", usd=1.0)
        hold = {"attempt": 1, "rules": [rule]}
        for sid, agent, usd, now in (("a1", "a", 0.3, 1000.0), ("b1", "b", 0.2, 1030.0)):
            taken = ledger.reserve(session_id=sid, step=1, agent=agent, usd=usd, now=now, **hold)
            assert taken.refused is None
        again = ledger.reserve(session_id="a1", step=1, agent="a", usd=0.25, now=1090.0, **hold)
        assert again.uses[0]["used_usd"] == pytest.approx(0.2)  # not against itself
        rides = ledger.reserve(
            session_id="a1", step=2, agent="a", usd=0.1, now=1100.0,
            settles=[("a1", 1, 1, 0.125)], **hold,
        )  # fmt: skip
        assert rides.uses[0]["used_usd"] == pytest.approx(0.325)
        refused = ledger.reserve(
            session_id="b1", step=2, agent="b", usd=0.9, now=1110.0,
            settles=[("b1", 1, 1, 0.05)], **hold,
        )  # fmt: skip
        assert refused.refused == (rule, pytest.approx(0.275))
        ledger.settle([("b1", 1, 1, 0.5)])  # settled already: applied once
        holds = ledger.db.rows(
            "SELECT session_id, step, attempt, agent, ts, reserved_nusd, cost_nusd "
            "FROM budget_holds ORDER BY session_id, step"
        )
        assert [tuple(h) for h in holds] == [
            ("a1", 1, 1, "a", 1090.0, 250_000_000, 125_000_000),
            ("a1", 2, 1, "a", 1100.0, 100_000_000, None),
            ("b1", 1, 1, "b", 1030.0, 200_000_000, 50_000_000),
        ]
        assert (
            _usage(ledger)
            == _usage_of_holds(ledger)
            == {
                ("global", 1080): 225_000_000,
                ("agent:a", 1080): 225_000_000,
                ("global", 1020): 50_000_000,
                ("agent:b", 1020): 50_000_000,
            }
        )
    finally:
        ledger.close()
        rt.store.close()


def test_a_ledger_of_the_first_schema_keeps_its_usage_when_migrated() -> None:
    """A database whose usage the ledger's first version wrote itself (schema 1, no
    triggers) is migrated on open: its holds and usage are kept, and settling an old
    hold and taking a new one leave the usage the exact sum of the holds."""
    rt = Runtime(load_settings())
    try:
        # The tables as schema 1 left them: a hold and its usage, written by the ledger.
        first = Database(rt.store, Schema(SCHEMA.subsystem, SCHEMA.migrations[:1]))
        first.execute("INSERT INTO budget_holds VALUES ('s', 1, 1, 'a', 1000.0, 300000000, NULL)")
        first.execute(
            "INSERT INTO budget_usage VALUES ('global', 960, 300000000), "
            "('agent:a', 960, 300000000)"
        )
        first.close()
        ledger = Ledger(rt.store)  # migrates to the current schema
        try:
            ledger.settle([("s", 1, 1, 0.1)])
            rule = BudgetRule(scope="agent:a", usd=1.0)
            taken = ledger.reserve(
                session_id="s", step=2, attempt=1, agent="a", usd=0.2, now=1001.0,
                rules=[rule],
            )  # fmt: skip
            assert taken.uses[0]["used_usd"] == pytest.approx(0.1)
            assert (
                _usage(ledger)
                == _usage_of_holds(ledger)
                == {
                    ("global", 960): 300_000_000,
                    ("agent:a", 960): 300_000_000,
                }
            )
        finally:
            ledger.close()
    finally:
        rt.store.close()


@pytest.mark.parametrize(
    ("budgets", "named"),
    [
        ('[{"scope": "team:x", "usd": 1}]', "NEXUS_BUDGETS__0__SCOPE"),
        ('[{"scope": "global", "usd": -1}]', "NEXUS_BUDGETS__0__USD"),
        ('[{"scope": "global", "usd": 1, "action": "shrug"}]', "NEXUS_BUDGETS__0__ACTION"),
        ('[{"scope": "global", "usd": 1, "alert_at": 1.5}]', "NEXUS_BUDGETS__0__ALERT_AT"),
    ],
)
def test_bad_budget_settings_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, budgets: str, named: str
) -> None:
    """An unknown scope, a negative cap, an unknown action or an alert past 100%
    is one ConfigError naming the setting."""
    monkeypatch.setenv("NEXUS_BUDGETS", budgets)
    with pytest.raises(ConfigError, match=named):
        load_settings()
