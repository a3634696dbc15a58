"""A big journal, fast: sessions of nine events (created, started, two LLM calls with
tokens and cost, a tool call and its result, completed or failed), spread over 30
days, five agents, three models and four tools, appended straight through the
store's group commit (`append_many`) so a million events take a minute, not an
hour. The rows are real rows of the store; their hash chain is not keyed (the
benchmarks that use this read aggregates, not the audit)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

from nexus.storage.base import EventRow, SessionChange, Store

AGENTS = ("researcher", "writer", "coder", "triage", "support")
MODELS = (("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku"), ("groq", "llama-3.1-8b"))
TOOLS = ("search", "read_file", "write_file", "http_get")
EVENTS_PER_SESSION = 9
DAYS = 30


def _canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


STATUS = {
    "session.created": "queued",
    "session.started": "running",
    "session.completed": "completed",
    "session.failed": "failed",
}
Row = tuple[str, dict[str, Any], dict[str, Any]]


def _request(step: int, model: str) -> Row:
    payload = {"step": step, "attempt": 1, "model": model, "params": {}, "messages": [], "tools": 1}
    return "llm.request", payload, {}


def _response(
    step: int, model: str, provider: str, content: str | None, t_in: int, t_out: int,
    cost: float, rnd: random.Random,
) -> Row:  # fmt: skip
    payload = {
        "step": step,
        "message": {"role": "assistant", "content": content},
        "model": model,
        "provider": provider,
        "finish_reason": "stop" if content else "tool_calls",
    }
    cols = {"tokens_in": t_in, "tokens_out": t_out, "cost_usd": cost,
            "latency_ms": 300 + rnd.random() * 900}  # fmt: skip
    return "llm.response", payload, cols


def _session(i: int, rnd: random.Random, t0: float) -> Iterator[tuple[EventRow, SessionChange]]:
    sid = f"s_fill{i:012d}"
    agent = AGENTS[i % len(AGENTS)]
    provider, model = MODELS[i % len(MODELS)]
    tool = TOOLS[i % len(TOOLS)]
    ts = t0 + rnd.random() * DAYS * 86400
    failed = i % 17 == 0
    created = {"goal": f"goal {i}", "agent": agent, "priority": 0, "labels": {}}
    call = {"step": 2, "attempt": 1, "call_id": "c1", "name": tool}
    result = (
        {"error": "refused", "error_type": "ToolExecutionError"} if failed else {"result": "ok"}
    )
    end = (
        ("session.failed", {"reason": "x", "steps": 3}, {})
        if failed
        else ("session.completed", {"steps": 3, "answer_step": 3}, {})
    )
    rows: list[Row] = [
        ("session.created", created, {}),
        ("session.started", {"agent": agent}, {}),
        _request(1, model),
        _response(1, model, provider, None, 400 + i % 300, 40, 0.00012 + (i % 7) * 1e-5, rnd),
        ("tool.call", {**call, "arguments": "{}", "idempotency_key": "k"}, {}),
        ("tool.result", {**call, **result}, {"latency_ms": 5 + rnd.random() * 200}),
        _request(3, model),
        _response(3, model, provider, "done", 500 + i % 300, 80, 0.0002 + (i % 5) * 1e-5, rnd),
        end,
    ]
    for seq, (kind, payload, cols) in enumerate(rows, start=1):
        row = EventRow(
            id=0, session_id=sid, seq=seq, ts=ts + seq, kind=kind, payload=_canonical(payload),
            tokens_in=cols.get("tokens_in", 0), tokens_out=cols.get("tokens_out", 0),
            cost_usd=cols.get("cost_usd", 0.0), latency_ms=cols.get("latency_ms", 0.0),
            prev_hash="", hash=f"h{seq}",
        )  # fmt: skip
        status = STATUS.get(kind)
        create = (
            {"goal": f"goal {i}", "agent": agent, "status": "queued", "priority": 0, "labels": {}}
            if seq == 1
            else None
        )
        steps = 1 if kind in ("llm.response", "tool.result") else 0
        yield row, SessionChange(create=create, status=status, steps=steps)


def fill(
    store: Store, events: int, *, batch: int = 2000, seed: int = 7, first: int = 0
) -> dict[str, float]:
    """Append about `events` events (whole sessions, numbered from `first`); returns
    the count and the rate."""
    rnd = random.Random(seed)
    t0 = time.time() - DAYS * 86400
    sessions = max(1, events // EVENTS_PER_SESSION)
    pending: list[tuple[EventRow, SessionChange]] = []
    start = time.perf_counter()
    written = 0
    for i in range(first, first + sessions):
        pending.extend(_session(i, rnd, t0))
        if len(pending) >= batch:
            _commit(store, pending)
            written += len(pending)
            pending = []
    if pending:
        _commit(store, pending)
        written += len(pending)
    elapsed = time.perf_counter() - start
    return {"events": written, "sessions": sessions, "seconds": elapsed, "per_s": written / elapsed}


def _commit(store: Store, items: list[tuple[EventRow, SessionChange]]) -> None:
    for result in store.append_many(items):
        if isinstance(result, Exception):
            raise result
