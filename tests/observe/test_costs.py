"""Cost per LLM request: priced once, by the recorder, exact to the cent; counted and
marked when usage is missing or impossible; calls lost in flight (a kill, a crash)
accounted once as `llm.lost`; the worst-case estimate budgets reserve."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from nexus.config import load_settings
from nexus.observe.costs import Pricing, Rate, estimate_request_cost
from nexus.observe.lost import LostCalls, LostState
from nexus.observe.tokens import count_completion, count_prompt
from nexus.runtime.agents import Agent, AgentRegistry, Limits
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import Toolkit, tool
from nexus.types import ChatRequest, ChatResponse, Event, SessionStatus, ToolCall, Usage
from tests.peers.openai_server import PeerServer, ThreadedPeerServer
from tests.runtime.crash_worker import registry as crash_registry
from tests.waiting import until, wait_for

ROOT = Path(__file__).resolve().parents[2]


@tool(effect="read")
def echo(text: str) -> str:
    """Echo the text back."""
    return text


def agents(limits: Limits | None = None) -> AgentRegistry:
    registry = AgentRegistry()
    registry.add(Agent(name="t", toolkits=(Toolkit("t", [echo]),), limits=limits or Limits()))
    return registry


def endpoint(url: str, **extra: Any) -> str:
    """NEXUS_PROVIDERS for one endpoint."""
    return json.dumps([{"name": "peer", "base_url": url, "model": "gpt-4o", **extra}])


def events_of(rt: Runtime, sid: str, kind: str) -> list[Event]:
    return [e for e in rt.journal.events(sid) if e.kind == kind]


# -- known usage blocks, priced exactly ---------------------------------------------


def answer(turn: int, provider: str, model: str, usage: tuple[int, int]) -> Any:
    """A scripted answer with a known usage block from a named provider: a tool call,
    or (last turn) the final answer."""

    def respond(request: ChatRequest) -> ChatResponse:
        calls = () if turn == 2 else (ToolCall(f"c{turn}", "echo", '{"text": "x"}'),)
        return ChatResponse(
            content="done" if turn == 2 else None,
            tool_calls=calls,
            usage=Usage(*usage),
            model=model,
            provider=provider,
            finish_reason="stop" if turn == 2 else "tool_calls",
        )

    return respond


async def test_known_usage_blocks_cost_exactly_to_the_cent() -> None:
    """Three responses with known usage from three providers, priced by the shipped
    table, by hand: gpt-4o 1,234 x $2.50 + 567 x $10 = $0.008755; claude-sonnet-4-5
    10,000 x $3 + 2,000 x $15 = $0.06; gemini-2.5-pro 200,000 x $1.25 + 8,000 x $10 =
    $0.33 (per 1M). The rows hold those figures, the session $0.398755."""
    script = [
        answer(0, "openai", "gpt-4o-2024-08-06", (1234, 567)),
        answer(1, "anthropic", "claude-sonnet-4-5-20250929", (10_000, 2_000)),
        answer(2, "google", "gemini-2.5-pro", (200_000, 8_000)),
    ]
    rt = Runtime(load_settings(), agents=agents(), provider=ScriptedProvider(script))
    sid = rt.create_session("spend", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    rows = [
        (e.payload["model"], e.tokens_in, e.tokens_out, e.cost_usd)
        for e in events_of(rt, sid, "llm.response")
    ]
    assert rows == [
        ("gpt-4o-2024-08-06", 1234, 567, 0.008755),
        ("claude-sonnet-4-5-20250929", 10_000, 2_000, 0.06),
        ("gemini-2.5-pro", 200_000, 8_000, 0.33),
    ]
    assert not any(
        k in e.payload
        for e in events_of(rt, sid, "llm.response")
        for k in ("usage_estimated", "cost_estimated", "unpriced", "usage_problem")
    )
    row = rt.session(sid)
    assert (row.tokens_in, row.tokens_out, round(row.cost_usd, 2)) == (211_234, 10_567, 0.40)
    assert abs(row.cost_usd - 0.398755) < 1e-12
    await rt.aclose()


def test_a_charge_is_an_exact_decimal() -> None:
    """No float rounding on the way: the Decimal is the hand figure, the column its
    nearest float."""
    pricing = Pricing()
    charge = pricing.charge(
        ChatRequest(messages=[]),
        ChatResponse(content="x", usage=Usage(3_333_333, 1), model="gpt-4o", provider="openai"),
    )
    assert (charge.cost, charge.cost_usd, charge.source) == (
        Decimal("8.3333425"),  # (3,333,333 x 2.5 + 1 x 10) / 1e6
        8.3333425,
        "table",
    )


def test_which_price_applies() -> None:
    """The endpoint's own prices, else the provider's reported cost, else free when
    local, else overrides and the table; else zero, marked unpriced."""
    settings = load_settings(
        providers=[
            {"name": "own", "base_url": "https://api.openai.com/v1", "model": "gpt-4o",
             "price_in_per_1m": 1, "price_out_per_1m": 2},
            {"name": "lan", "base_url": "http://localhost:8000/v1", "model": "gpt-4o"},
            {"name": "box", "base_url": "http://10.0.0.5:11434/v1", "model": "gpt-4o"},
            {"name": "own-lan", "base_url": "http://127.0.0.1:9000/v1", "model": "gpt-4o",
             "price_out_per_1m": 5},
        ],
        prices={"gpt-4o-mini": {"input": 7, "output": 8}},
    )  # fmt: skip
    pricing = Pricing.from_settings(settings)

    def charged(provider: str, model: str, reported: float | None = None) -> tuple[Any, ...]:
        response = ChatResponse(
            content="x", usage=Usage(1000, 100), model=model, provider=provider,
            cost_usd=reported,
        )  # fmt: skip
        c = pricing.charge(ChatRequest(messages=[]), response)
        return c.source, c.cost

    assert [
        charged("own", "gpt-4o", reported=9.0),
        charged("replay", "gpt-4o", reported=0.0),
        charged("openai", "gpt-4o", reported=float("nan")),  # not believed: priced
        charged("openai", "gpt-4o", reported=-1.0),
        charged("lan", "gpt-4o"),
        charged("box", "gpt-4o"),  # Ollama's port
        charged("ollama", "llama3.2"),
        charged("own-lan", "gpt-4o"),
        charged("openai", "gpt-4o-mini"),
        charged("openai", "gpt-4o"),
        charged("somewhere", "private-model"),
    ] == [
        ("provider", Decimal("0.0012")),
        ("reported", Decimal("0.0")),
        ("table", Decimal("0.0035")),
        ("table", Decimal("0.0035")),
        ("local", Decimal("0")),
        ("local", Decimal("0")),
        ("local", Decimal("0")),
        ("provider", Decimal("0.0005")),
        ("override", Decimal("0.0078")),
        ("table", Decimal("0.0035")),
        ("unpriced", Decimal("0")),
    ]


async def test_calls_to_a_real_endpoint_are_priced_by_its_settings(
    peer: PeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTP: the peer's usage block at the endpoint's own prices; the same local
    endpoint without prices costs nothing (and is not marked unpriced)."""
    peer.config.script = [{"content": "the answer"}]
    costs = []
    for extra in ({"price_in_per_1m": 2.0, "price_out_per_1m": 10.0}, {}):
        monkeypatch.setenv("NEXUS_PROVIDERS", endpoint(peer.url, **extra))
        rt = Runtime(load_settings(), agents=agents())
        sid = rt.create_session("hello there", agent="t")
        assert await rt.run(sid) is SessionStatus.COMPLETED
        (response,) = events_of(rt, sid, "llm.response")
        costs.append((response.tokens_in, response.tokens_out, response.cost_usd))
        assert "unpriced" not in response.payload
        await rt.aclose()
    (t_in, t_out, cost), free = costs
    assert cost == float((Decimal(t_in) * 2 + Decimal(t_out) * 10) / 1_000_000)
    assert free == (t_in, t_out, 0.0)


# -- missing or impossible usage ------------------------------------------------------


@pytest.fixture
async def bare() -> AsyncIterator[tuple[str, list[Any]]]:
    """An OpenAI-compatible endpoint whose answers have no usage block (or the one
    in `usage[0]`); yields its URL and that list."""
    usage: list[Any] = [None]

    async def chat(request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "model": "gpt-4o-2024-08-06",
            "choices": [{"message": {"role": "assistant", "content": "Sunny, 18 degrees."}}],
        }
        if usage[0] is not None:
            body["usage"] = usage[0]
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", usage
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("usage", "problem"),
    [
        (None, "the response has no usage block"),
        (
            {"prompt_tokens": -5, "completion_tokens": 7},
            "negative token counts (-5 in, 7 out)",
        ),
        (
            {"prompt_tokens": 100, "completion_tokens": 1_000_000},
            "100 + 1000000 tokens exceed the context window of 128000",
        ),
    ],
)
async def test_missing_or_impossible_usage_is_counted_and_marked_estimated(
    bare: tuple[str, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
    usage: Any,
    problem: str,
) -> None:
    """The tokens are counted with tiktoken (the prompt as sent, the answer as
    received), priced, and the event says so and what was wrong."""
    url, answer_usage = bare
    answer_usage[0] = usage
    monkeypatch.setenv(
        "NEXUS_PROVIDERS",
        endpoint(url, price_in_per_1m=2.5, price_out_per_1m=10, context_window=128000),
    )
    rt = Runtime(load_settings(), agents=agents())
    sid = rt.create_session("weather in Paris?", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    (request,) = events_of(rt, sid, "llm.request")
    (response,) = events_of(rt, sid, "llm.response")
    spec = rt.journal.events(sid)[0].payload["spec"]
    t_in = count_prompt(request.payload["messages"], spec["tools"], "gpt-4o")
    t_out = count_completion(ChatResponse(content="Sunny, 18 degrees."), "gpt-4o")
    assert (response.tokens_in, response.tokens_out, response.cost_usd) == (
        t_in,
        t_out,
        float((Decimal(t_in) * Decimal("2.5") + Decimal(t_out) * 10) / 1_000_000),
    )
    assert {
        k: response.payload.get(k) for k in ("usage_problem", "usage_estimated", "cost_estimated")
    } == {
        "usage_problem": problem,
        "usage_estimated": True,
        "cost_estimated": True,
    }
    row = rt.session(sid)
    assert (row.tokens_in, row.tokens_out) == (t_in, t_out)
    await rt.aclose()


# -- the worst case a budget reserves -------------------------------------------------


def test_estimate_request_cost_is_the_counted_prompt_and_max_tokens() -> None:
    """(counted prompt tokens, prompt x input price + max_tokens x output price): the
    request's max_tokens, else 4096; an endpoint's max_tokens setting wins; a model's
    context window bounds the completion; local endpoints reserve nothing."""
    messages = [{"role": "user", "content": "Write a haiku about the sea."}]
    request = ChatRequest(messages=messages, max_tokens=500)
    t_in = count_prompt(messages, (), "gpt-4o")
    settings = load_settings(
        providers=[
            {"name": "capped", "base_url": "https://api.openai.com/v1", "model": "gpt-4o",
             "max_tokens": 100},
            {"name": "lan", "base_url": "http://127.0.0.1:8000/v1", "model": "gpt-4o"},
        ],
        prices={"tiny": {"input": 1, "output": 1, "context_window": 50}},
    )  # fmt: skip
    pricing = Pricing.from_settings(settings)
    unbounded = ChatRequest(messages=messages)

    def usd(tokens_in: int, tokens_out: int, p_in: str, p_out: str) -> float:
        return float((tokens_in * Decimal(p_in) + tokens_out * Decimal(p_out)) / 1_000_000)

    assert [
        estimate_request_cost(request, "gpt-4o", None),
        estimate_request_cost(unbounded, "gpt-4o", "openai"),
        estimate_request_cost(request, None, "capped", pricing=pricing),
        estimate_request_cost(request, None, "lan", pricing=pricing),
        estimate_request_cost(request, "tiny", None, pricing=pricing),
    ] == [
        (t_in, usd(t_in, 500, "2.5", "10")),
        (t_in, usd(t_in, 4096, "2.5", "10")),
        (t_in, usd(t_in, 100, "2.5", "10")),
        (t_in, 0.0),
        (
            count_prompt(messages, (), "tiny"),
            usd(count_prompt(messages), 50 - count_prompt(messages), "1", "1"),
        ),
    ]


def test_an_unanswered_call_is_estimated_at_the_mean_completion_capped() -> None:
    """The completion of a lost call: the session's mean completion rounded up, never
    more than the cap; with no answer yet, the cap."""
    messages = [{"role": "user", "content": "hi"}]
    pricing = Pricing()
    estimates = [
        pricing.unanswered(
            messages, (), model="gpt-4o", provider=None, max_tokens=64, mean_completion=mean
        )
        for mean in (10.2, None, 500.0)
    ]
    t_in = count_prompt(messages, (), "gpt-4o")
    assert [(c.tokens_in, c.tokens_out, c.estimated, c.source) for c in estimates] == [
        (t_in, 11, True, "table"),
        (t_in, 64, True, "table"),
        (t_in, 64, True, "table"),
    ]
    assert Rate(Decimal("2.5"), Decimal("10"), "table").cost(t_in, 11) == estimates[0].cost


# -- calls lost in flight ---------------------------------------------------------------


def event(seq: int, kind: str, tokens_out: int = 0, **payload: Any) -> Event:
    return Event("s1", seq, float(seq), kind, payload, tokens_out=tokens_out)


def test_the_lost_calls_fold_knows_what_was_sent_and_what_is_accounted() -> None:
    """Open attempts are those requested without an outcome; an `llm.lost` accounts
    for one; a pause or a guard's refusal means the request never went out."""
    fold = LostCalls()
    history = [
        event(1, "llm.request", step=1, attempt=1, model="m", params={"max_tokens": 64}),
        event(2, "llm.response", tokens_out=30, step=1),
        event(3, "llm.request", step=3, attempt=1, model="m", params={}),
        event(4, "llm.lost", step=3, attempt=1),
        event(5, "llm.request", step=3, attempt=2, model="m", params={}),
        event(6, "llm.request", step=3, attempt=3, model="m", params={}),
        event(7, "session.paused", reason="p", by="u", steps=1),
        event(8, "llm.request", step=3, attempt=4, model="m", params={}),
        event(9, "llm.failed", step=3, attempt=4, by="BudgetGuard"),
        event(10, "llm.request", step=3, attempt=5, model="m2", params={"max_tokens": 8}),
    ]
    state = fold.initial()
    for e in history:
        state = fold.apply(state, e)
    assert state == LostState(
        open={(3, 5): {"model": "m2", "max_tokens": 8}},
        accounted={(3, 1)},
        responses=1,
        completion_tokens=30,
    )
    assert state.mean_completion == 30.0


async def test_a_kill_that_cuts_a_call_short_accounts_it_as_lost(
    peer: PeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while the call waits on the provider: `llm.failed` (interrupted), then
    one `llm.lost` with the counted prompt and the max_tokens cap (no answer yet to
    average), priced, marked estimated; the session's totals include it."""
    peer.config.latency_ms = 30_000
    monkeypatch.setenv(
        "NEXUS_PROVIDERS", endpoint(peer.url, price_in_per_1m=2.5, price_out_per_1m=10)
    )
    rt = Runtime(load_settings(), agents=agents(Limits(max_tokens_per_call=256)))
    sid = rt.create_session("think hard", agent="t")
    running = asyncio.create_task(rt.run(sid))
    await until(lambda: len(peer.requests) == 1, "the LLM call in flight")
    await rt.control.post(sid, "kill", by="user:ops", reason="runaway")
    assert await running is SessionStatus.KILLED
    kinds = [e.kind for e in rt.journal.events(sid)]
    assert kinds[-4:] == ["llm.request", "llm.failed", "llm.lost", "session.killed"]
    (lost,) = events_of(rt, sid, "llm.lost")
    sent = peer.requests[0]
    t_in = count_prompt(sent["messages"], sent["tools"], "gpt-4o")
    cost = float((Decimal(t_in) * Decimal("2.5") + 256 * 10) / 1_000_000)
    assert (lost.payload, lost.tokens_in, lost.tokens_out, lost.cost_usd) == (
        {
            "step": 1,
            "attempt": 1,
            "model": None,  # the agent names none: the endpoint's default, gpt-4o
            "estimated": True,
            "why": "interrupted",
            "provider": "peer",
        },
        t_in,
        256,
        cost,
    )
    row = rt.session(sid)
    assert (row.tokens_in, row.tokens_out, row.cost_usd) == (t_in, 256, cost)
    await rt.aclose()


async def test_a_call_lost_by_a_stopped_worker_is_accounted_before_a_kill_at_resume(
    peer: PeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker stops with a call in flight (its task is cancelled: the request stays
    open); a kill is posted while no runner holds the session. The next run accounts the
    lost call first, then applies the kill: the call the provider served is in the
    totals even though the session never ran another step."""
    peer.config.latency_ms = 30_000
    monkeypatch.setenv(
        "NEXUS_PROVIDERS", endpoint(peer.url, price_in_per_1m=2.5, price_out_per_1m=10)
    )
    rt = Runtime(load_settings(), agents=agents(Limits(max_tokens_per_call=128)))
    sid = rt.create_session("think hard", agent="t")
    running = asyncio.create_task(rt.run(sid))
    await until(lambda: len(peer.requests) == 1, "the LLM call in flight")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await rt.aclose()

    later = Runtime(load_settings(), agents=agents())  # another process, say
    await later.control.post(sid, "kill", by="user:ops", reason="stop it")
    assert await later.run(sid) is SessionStatus.KILLED
    kinds = [e.kind for e in later.journal.events(sid)]
    assert kinds[-4:] == ["llm.request", "session.resumed", "llm.lost", "session.killed"]
    (lost,) = events_of(later, sid, "llm.lost")
    sent = peer.requests[0]
    t_in = count_prompt(sent["messages"], sent["tools"], "gpt-4o")
    assert (lost.payload["why"], lost.tokens_in, lost.tokens_out, lost.cost_usd) == (
        "crash",
        t_in,
        128,  # the request's max_tokens: no answer yet to average
        float((Decimal(t_in) * Decimal("2.5") + 128 * 10) / 1_000_000),
    )
    assert later.session(sid).cost_usd == lost.cost_usd
    assert len(peer.requests) == 1  # nothing asked again
    await later.aclose()


# -- a real crash: SIGKILL mid-call, resume, twice ------------------------------------


@pytest.fixture
def crash_env(
    tmp_path: Path, nexus_home: Path, threaded_peer: ThreadedPeerServer
) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env.update(
        NEXUS_HOME=str(nexus_home),
        NEXUS_PROVIDERS=endpoint(threaded_peer.url, price_in_per_1m=2.0, price_out_per_1m=10.0),
        NEXUS_QUEUE_POLL_S="0.05",
        CRASH_LOG=str(tmp_path / "tool.log"),
        CRASH_RELEASE=str(tmp_path / "release"),
        PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
    )
    yield env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.runtime.crash_worker"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def sigkill(worker: subprocess.Popen[bytes]) -> None:
    try:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()


@pytest.mark.slow
def test_calls_in_flight_at_crashes_are_billed_once_each(
    crash_env: dict[str, str], threaded_peer: ThreadedPeerServer, tmp_path: Path
) -> None:
    """A worker is SIGKILLed while its second LLM call is in flight; the next worker
    resumes, accounts the lost call and asks again, and is SIGKILLed in flight too; a
    third finishes. The provider served 4 requests: 2 journaled responses + 2
    `llm.lost`, one per lost attempt (none written twice over the resumes), each at the
    counted prompt and the session's mean completion, and the totals include them."""
    peer = threaded_peer
    peer.config.script = [
        {"tool_calls": [{"name": "mark", "arguments": {"tag": "hold"}}]},
        {"content": "done"},
    ]
    rt = Runtime(load_settings(), agents=crash_registry())
    sid = rt.create_session("crash twice", agent="crash")
    log = Path(crash_env["CRASH_LOG"])
    first = start_worker(crash_env, tmp_path / "w1.log")
    try:
        wait_for(lambda: log.exists() and "start hold" in log.read_text(), "the tool runs")
        peer.config.latency_ms = 60_000  # the next calls hang in flight
        Path(crash_env["CRASH_RELEASE"]).touch()
        wait_for(lambda: len(peer.requests) == 2, "the second LLM call in flight")
    finally:
        sigkill(first)
    second = start_worker(crash_env, tmp_path / "w2.log")
    try:
        wait_for(lambda: len(peer.requests) == 3, "the call asked again, in flight")
    finally:
        sigkill(second)
    peer.config.latency_ms = 0
    third = start_worker(crash_env, tmp_path / "w3.log")
    try:
        wait_for(lambda: rt.session(sid).status == "completed", "the session completes")
    finally:
        third.send_signal(signal.SIGTERM)
        assert third.wait(20) == 0

    events = rt.journal.events(sid)
    responses = [e for e in events if e.kind == "llm.response"]
    lost = [e for e in events if e.kind == "llm.lost"]
    assert len(peer.requests) == len(responses) + len(lost) == 4
    sent = peer.requests[1]  # what the lost call sent (the retry sent the same)
    assert sent["messages"] == peer.requests[2]["messages"]
    t_in = count_prompt(sent["messages"], sent["tools"], "gpt-4o")
    t_out = responses[0].tokens_out  # the mean completion when both were lost
    cost = float((Decimal(t_in) * 2 + Decimal(t_out) * 10) / 1_000_000)
    assert [(e.payload, e.tokens_in, e.tokens_out, e.cost_usd) for e in lost] == [
        (
            {
                "step": 3,
                "attempt": attempt,
                "model": None,
                "estimated": True,
                "why": "crash",
                "provider": "peer",
            },
            t_in,
            t_out,
            cost,
        )
        for attempt in (1, 2)
    ]
    row = rt.session(sid)
    assert (row.tokens_in, row.tokens_out) == (
        sum(e.tokens_in for e in events),
        sum(e.tokens_out for e in events),
    )
    assert abs(row.cost_usd - (sum(e.cost_usd for e in responses) + 2 * cost)) < 1e-12
    assert rt.journal.verify(sid).ok
    asyncio.run(rt.aclose())
