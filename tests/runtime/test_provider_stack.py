"""The provider stack against real peer servers: fallback between two endpoints
(the first down, slow, or rate-limited), Retry-After, the whole-call deadline,
max_tokens on every call, the pool sized for the concurrency, the answer cap,
streaming, parameters passed through, and the journal saying who answered."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nexus.config import load_settings
from nexus.errors import ProviderResponseError, ProviderUnavailable
from nexus.runtime.providers import FallbackProvider, RetryProvider
from nexus.runtime.providers.compose import open_provider
from nexus.runtime.providers.openai import OpenAIProvider, retry_after
from nexus.runtime.runtime import Runtime
from nexus.types import ChatRequest, SessionStatus
from tests.peers.openai_server import PeerServer

USER = {"role": "user", "content": "hello"}


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.fixture
async def second() -> AsyncIterator[PeerServer]:
    server = PeerServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def providers_env(monkeypatch: pytest.MonkeyPatch, *entries: dict[str, Any]) -> None:
    monkeypatch.setenv("NEXUS_PROVIDERS", json.dumps(list(entries)))


async def run_one(goal: str = "hello") -> tuple[Runtime, str]:
    rt = Runtime(load_settings())
    sid = rt.create_session(goal)
    assert await rt.run(sid) is SessionStatus.COMPLETED
    return rt, sid


def answered(rt: Runtime, sid: str) -> dict[str, Any]:
    return next(e.payload for e in rt.journal.events(sid) if e.kind == "llm.response")


async def test_with_the_first_provider_down_the_second_answers_and_the_journal_says_so(
    second: PeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two providers, the first refusing connections: one LLM step falls over to the
    second; the journal names who answered, the attempts and what failed."""
    dead = dead_url()
    providers_env(
        monkeypatch,
        {"name": "first", "base_url": dead, "model": "m", "retries": 1},
        {"name": "second", "base_url": second.url, "model": "m"},
    )
    second.config.script = [{"content": "from the second"}]
    rt, sid = await run_one()
    p = answered(rt, sid)
    assert (p["provider"], p["attempts"], p["message"]["content"]) == (
        "second",
        3,
        "from the second",
    )
    assert [f.split(":")[0] for f in p["failures"]] == [f"first at {dead.split(':')[0]}"] * 2
    assert all("ClientConnectorError" in f for f in p["failures"])
    await rt.aclose()


async def test_a_slow_first_provider_times_out_on_its_first_byte_and_the_second_answers(
    peer: PeerServer, second: PeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first provider that would send its headers after 30 s is cut off by the
    first-byte timeout, not waited for."""
    peer.config.latency_ms = 30_000
    providers_env(
        monkeypatch,
        {"name": "slow", "base_url": peer.url, "model": "m", "retries": 0, "read_timeout_s": 0.2},
        {"name": "fast", "base_url": second.url, "model": "m"},
    )
    rt, sid = await run_one()
    p = answered(rt, sid)
    assert (p["provider"], p["attempts"]) == ("fast", 2)
    assert "slow at" in p["failures"][0] and "Timeout" in p["failures"][0]
    await rt.aclose()


async def test_a_rate_limited_first_provider_falls_over_after_honouring_retry_after(
    peer: PeerServer, second: PeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """429 with Retry-After: 1 is asked again no sooner than a second later; still
    429, the step falls over to the second provider."""
    peer.config.fail_next, peer.config.fail_status, peer.config.retry_after = 2, 429, "1"
    providers_env(
        monkeypatch,
        {"name": "limited", "base_url": peer.url, "model": "m", "retries": 1},
        {"name": "other", "base_url": second.url, "model": "m"},
    )
    rt, sid = await run_one()
    p = answered(rt, sid)
    assert (p["provider"], p["attempts"]) == ("other", 3)
    assert all("HTTP 429" in f for f in p["failures"])
    first, again = peer.request_times[:2]
    assert again - first >= 1.0  # the server's Retry-After, not a 0.25 s backoff
    await rt.aclose()


async def test_retry_after_longer_than_the_deadline_gives_up_at_once(peer: PeerServer) -> None:
    """A wait that would pass the call's deadline is not started."""
    peer.config.fail_next, peer.config.fail_status, peer.config.retry_after = 1, 503, "30"
    stack = RetryProvider(
        OpenAIProvider(name="p", base_url=peer.url, model="m"), attempts=3, deadline_s=2
    )
    with pytest.raises(ProviderUnavailable) as info:
        await stack.complete(ChatRequest(messages=[USER]))
    await stack.aclose()
    assert str(info.value).startswith(f"unreachable after 1 attempt: p at {peer.url}: HTTP 503")
    assert len(peer.requests) == 1


async def test_the_deadline_covers_the_whole_call_including_retries(peer: PeerServer) -> None:
    """Attempts that each fit their own timeout still stop at the call's deadline."""
    peer.config.latency_ms = 400
    peer.config.fail_next = 10
    stack = RetryProvider(
        OpenAIProvider(name="p", base_url=peer.url, model="m", timeout_s=5),
        attempts=10,
        backoff_s=0,
        deadline_s=1.0,
    )
    with pytest.raises(ProviderUnavailable, match="deadline of 1s passed"):
        await stack.complete(ChatRequest(messages=[USER]))
    await stack.aclose()
    assert 2 <= len(peer.requests) <= 3


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Both forms of the header, and nonsense as None."""
    assert retry_after("2") == 2.0
    assert retry_after("Wed, 02 Dec 2026 10:00:05 GMT", now=1796205600.0) == 5.0
    assert (retry_after(None), retry_after("soon")) == (None, None)


async def test_every_call_carries_max_tokens_and_a_model_setting_wins(
    peer: PeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's per-call default goes out with every call; a provider's
    `max_tokens` for its model overrides it."""
    providers_env(monkeypatch, {"name": "p", "base_url": peer.url, "model": "m"})
    rt, _ = await run_one()
    await rt.aclose()
    providers_env(monkeypatch, {"name": "p", "base_url": peer.url, "model": "m", "max_tokens": 256})
    rt, _ = await run_one()
    await rt.aclose()
    assert [r["max_tokens"] for r in peer.requests] == [4096, 4096, 256, 256]


async def test_the_pool_lets_as_many_calls_in_flight_as_the_worker_runs_sessions(
    peer: PeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With concurrency 300, 300 calls are in flight at the peer at once (the old
    pool of 256 queued the rest)."""
    # Long enough that every call is still held when the last one arrives, however
    # slowly the shared machine opens 300 connections.
    peer.config.latency_ms = 3000
    providers_env(monkeypatch, {"name": "p", "base_url": peer.url, "model": "m"})
    stack = await open_provider(load_settings(concurrency=300))
    await asyncio.gather(*(stack.complete(ChatRequest(messages=[USER])) for _ in range(300)))
    await stack.aclose()
    assert peer.max_in_flight == 300


async def test_an_oversized_answer_is_refused(peer: PeerServer) -> None:
    """A 5 MiB answer is refused past max_response_bytes, not stored."""
    peer.config.pad_bytes = 5 * 1024 * 1024
    http = OpenAIProvider(name="p", base_url=peer.url, model="m", max_response_bytes=1024 * 1024)
    with pytest.raises(ProviderResponseError, match=r"answered more than 1048576 bytes"):
        await http.complete(ChatRequest(messages=[USER]))
    await http.aclose()


async def test_parameters_are_passed_through_and_streaming_gives_the_same_answer(
    peer: PeerServer,
) -> None:
    """The OpenAI parameters that are set reach the server as given; a streamed answer
    ends with the same response as the plain call."""
    http = OpenAIProvider(name="p", base_url=peer.url, model="m")
    request = ChatRequest(
        messages=[USER],
        temperature=0.2,
        top_p=0.9,
        stop=["\n\n"],
        seed=7,
        response_format={"type": "json_object"},
        user="u-1",
    )
    plain = await http.complete(request)
    pieces = [d async for d in http.stream(request)]
    await http.aclose()
    sent = peer.requests[0]
    assert {
        k: sent[k] for k in ("temperature", "top_p", "stop", "seed", "response_format", "user")
    } == {
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
        "response_format": {"type": "json_object"},
        "user": "u-1",
    }
    assert peer.requests[1]["stream"] is True
    assert "".join(d.content for d in pieces) == plain.content
    assert pieces[-1].response == plain


async def test_a_fallback_that_everyone_fails_says_so(second: PeerServer) -> None:
    """Both down: one clear error naming the attempts."""
    stack = FallbackProvider(
        [
            RetryProvider(OpenAIProvider(name="a", base_url=dead_url(), model="m"), attempts=1),
            RetryProvider(OpenAIProvider(name="b", base_url=dead_url(), model="m"), attempts=1),
        ]
    )
    with pytest.raises(ProviderUnavailable, match=r"^every provider failed \(2 attempts\): "):
        await stack.complete(ChatRequest(messages=[USER]))
    await stack.aclose()
