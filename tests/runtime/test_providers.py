"""Providers: the OpenAI-compatible client against the real peer, completion parsing,
replay of recorded sessions, and the scripted provider."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from nexus.errors import (
    ConfigError,
    ProviderResponseError,
    ProviderUnavailable,
    TerminalError,
)
from nexus.runtime.journal import Journal
from nexus.runtime.providers import (
    ReplayProvider,
    RetryProvider,
    ScriptedProvider,
    parse_completion,
)
from nexus.runtime.providers.openai import OpenAIProvider, probe
from nexus.storage import open_store
from nexus.types import ChatRequest, ChatResponse, ToolCall, Usage
from tests.peers.openai_server import PeerServer

USER = {"role": "user", "content": "hello there"}
READ_TOOL = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
}


def tokens(chars: int) -> int:
    """The peer's deterministic token count."""
    return chars // 4 + 1


def dead_port() -> int:
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def provider(peer: PeerServer) -> AsyncIterator[RetryProvider]:
    p = RetryProvider(
        OpenAIProvider(
            name="peer",
            base_url=peer.url + "/",
            model="peer-model",
            price_in_per_1m=2.0,
            price_out_per_1m=10.0,
        ),
        backoff_s=0.0,
    )
    try:
        yield p
    finally:
        await p.aclose()


# -- OpenAIProvider against the peer --------------------------------------------------------


async def test_completion_returns_the_whole_response_with_cost(
    provider: RetryProvider, peer: PeerServer
) -> None:
    """A plain completion comes back as a ChatResponse with content, usage, model and
    provider name, unpriced (the recorder prices calls: tests/observe/test_costs.py);
    the request body is the OpenAI chat format."""
    response = await provider.complete(ChatRequest(messages=[USER]))
    t_in, t_out = tokens(len("hello there")), tokens(len("final: hello there"))
    assert response == ChatResponse(
        content="final: hello there",
        tool_calls=(),
        usage=Usage(t_in, t_out),
        model="peer-model",
        provider="peer",
        cost_usd=None,
        finish_reason="stop",
    )
    # max_tokens is always sent: no call goes out unbounded.
    assert peer.requests == [{"model": "peer-model", "messages": [USER], "max_tokens": 4096}]


async def test_completion_with_tool_calls(provider: RetryProvider, peer: PeerServer) -> None:
    """Tool calls in the answer become ToolCalls with ids, names and raw JSON arguments;
    tools, max_tokens and a model override are sent."""
    peer.config.script = [
        {
            "tool_calls": [
                {"name": "read_file", "arguments": {"path": "a.txt"}},
                {"name": "read_file", "arguments": {"path": "b.txt"}},
            ]
        }
    ]
    request = ChatRequest(messages=[USER], tools=[READ_TOOL], model="other-model", max_tokens=64)
    response = await provider.complete(request)

    args_a, args_b = json.dumps({"path": "a.txt"}), json.dumps({"path": "b.txt"})
    t_in = tokens(len("hello there"))
    t_out = tokens(2 * len("read_file") + len(args_a) + len(args_b))
    assert response == ChatResponse(
        content=None,
        tool_calls=(
            ToolCall(id="call_0_0", name="read_file", arguments=args_a),
            ToolCall(id="call_0_1", name="read_file", arguments=args_b),
        ),
        usage=Usage(t_in, t_out),
        model="other-model",
        provider="peer",
        cost_usd=None,
        finish_reason="tool_calls",
    )
    assert peer.requests == [
        {"model": "other-model", "messages": [USER], "tools": [READ_TOOL], "max_tokens": 64}
    ]


async def test_a_failed_request_is_retried_then_succeeds(
    provider: RetryProvider, peer: PeerServer
) -> None:
    """An HTTP 500 is retried; the second attempt's answer is returned."""
    peer.config.fail_next = 1
    response = await provider.complete(ChatRequest(messages=[USER]))
    assert (response.content, response.attempts) == ("final: hello there", 2)
    assert len(response.failures) == 1 and "HTTP 500" in response.failures[0]
    assert len(peer.requests) == 2
    assert peer.requests[0] == peer.requests[1]


async def test_failures_beyond_the_retries_raise_provider_unavailable(
    provider: RetryProvider, peer: PeerServer
) -> None:
    """When every attempt fails, ProviderUnavailable (terminal) says how many attempts
    were made and the last error."""
    peer.config.fail_next = 5
    with pytest.raises(ProviderUnavailable) as info:
        await provider.complete(ChatRequest(messages=[USER]))
    assert str(info.value).startswith(
        f"unreachable after 3 attempts: peer at {peer.url}: HTTP 500: "
    )
    assert "injected failure" in str(info.value)
    assert isinstance(info.value, TerminalError)
    assert len(peer.requests) == 3


async def test_unreachable_endpoint_raises_provider_unavailable() -> None:
    """Nothing listening at the base URL: ProviderUnavailable after the retries."""
    port = dead_port()
    provider = RetryProvider(
        OpenAIProvider(name="dead", base_url=f"http://127.0.0.1:{port}/v1", model="m"),
        attempts=2,
        backoff_s=0,
    )
    try:
        with pytest.raises(ProviderUnavailable) as info:
            await provider.complete(ChatRequest(messages=[USER]))
    finally:
        await provider.aclose()
    assert str(info.value).startswith(
        f"unreachable after 2 attempts: dead at http://127.0.0.1:{port}/v1: ClientConnectorError"
    )


async def test_a_slow_endpoint_times_out_as_unavailable(peer: PeerServer) -> None:
    """An answer slower than the attempt's timeout counts as a failed attempt."""
    peer.config.latency_ms = 2000
    provider = RetryProvider(
        OpenAIProvider(name="slow", base_url=peer.url, model="m", timeout_s=0.05), attempts=1
    )
    try:
        with pytest.raises(ProviderUnavailable, match=r"after 1 attempt: slow at .*: TimeoutError"):
            await provider.complete(ChatRequest(messages=[USER]))
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("not_json", "malformed response from peer: body is not JSON: '{\"choices\": ['"),
        ("no_choices", "malformed response from peer: no choices"),
    ],
)
async def test_malformed_answers_raise_response_error_without_retry(
    provider: RetryProvider, peer: PeerServer, mode: str, message: str
) -> None:
    """A body that is not a chat completion is a terminal ProviderResponseError; it is
    not retried."""
    peer.config.malformed = mode
    with pytest.raises(ProviderResponseError) as info:
        await provider.complete(ChatRequest(messages=[USER]))
    assert str(info.value) == message
    assert len(peer.requests) == 1


async def test_a_rejected_request_raises_response_error(provider: RetryProvider) -> None:
    """An HTTP 400 from the endpoint is a ProviderResponseError quoting the answer."""
    bad = ChatRequest(messages=["not an object"])  # type: ignore[list-item]
    with pytest.raises(ProviderResponseError) as info:
        await provider.complete(bad)
    assert str(info.value).startswith("peer refused the request: HTTP 400: ")
    assert "messages must be a list of objects" in str(info.value)


async def test_models_and_probe_list_the_endpoint_models(
    provider: RetryProvider, peer: PeerServer
) -> None:
    """models() and probe() read GET /models; probe() of a dead port gives None."""
    assert isinstance(provider.inner, OpenAIProvider)
    assert await provider.inner.models() == ["peer-model"]
    assert await probe(peer.url) == ["peer-model"]
    assert await probe(peer.url + "/") == ["peer-model"]
    assert await probe(f"http://127.0.0.1:{dead_port()}/v1") is None
    assert await probe(peer.root_url) is None  # answers 404 there


async def test_aclose_releases_the_pool_and_the_provider_can_be_reused(
    provider: RetryProvider,
) -> None:
    """After aclose() a new request opens a fresh connection pool."""
    await provider.complete(ChatRequest(messages=[USER]))
    await provider.aclose()
    await provider.aclose()  # idempotent
    assert (await provider.complete(ChatRequest(messages=[USER]))).content == "final: hello there"


# -- headers and statuses, against a recording server -----------------------------------------


class Recorder:
    """A chat endpoint that records each request's headers and answers from a queue."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answers: list[tuple[int, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def chat(request: web.Request) -> web.Response:
            self.seen.append({"headers": dict(request.headers), "body": await request.json()})
            status, text = self.answers.pop(0)
            return web.Response(status=status, text=text, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


OK_BODY = json.dumps(
    {
        "model": "m",
        "choices": [{"message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2},
    }
)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    r = Recorder()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def test_api_key_is_sent_as_a_bearer_header(recorder: Recorder) -> None:
    """The api_key travels as `Authorization: Bearer ...` with a JSON content type; no
    key means no Authorization header."""
    recorder.answers = [(200, OK_BODY), (200, OK_BODY)]
    keyed = OpenAIProvider(name="k", base_url=recorder.url, model="m", api_key="sk-abc-123")
    anonymous = OpenAIProvider(name="a", base_url=recorder.url, model="m")
    try:
        await keyed.complete(ChatRequest(messages=[USER]))
        await anonymous.complete(ChatRequest(messages=[USER]))
    finally:
        await keyed.aclose()
        await anonymous.aclose()
    first, second = (s["headers"] for s in recorder.seen)
    assert first["Authorization"] == "Bearer sk-abc-123"
    assert first["Content-Type"] == "application/json"
    assert "Authorization" not in second


async def test_rate_limits_are_retried_but_client_errors_are_not(recorder: Recorder) -> None:
    """429 is retried like a 5xx; a 4xx such as 401 ends at once."""
    recorder.answers = [(429, '{"error": "slow down"}'), (200, OK_BODY), (401, '{"error": "key"}')]
    provider = RetryProvider(
        OpenAIProvider(name="r", base_url=recorder.url, model="m"), backoff_s=0
    )
    try:
        assert (await provider.complete(ChatRequest(messages=[USER]))).content == "ok"
        assert len(recorder.seen) == 2
        with pytest.raises(
            ProviderResponseError, match=r'^r refused the request: HTTP 401: \{"error": "key"\}'
        ):
            await provider.complete(ChatRequest(messages=[USER]))
        assert len(recorder.seen) == 3
    finally:
        await provider.aclose()


async def test_an_error_object_with_status_200_is_a_response_error(recorder: Recorder) -> None:
    """Some servers answer 200 with an error object; that is a malformed completion."""
    recorder.answers = [(200, '{"error": {"message": "model overloaded"}}')]
    provider = OpenAIProvider(name="e", base_url=recorder.url, model="m")
    try:
        with pytest.raises(ProviderResponseError) as info:
            await provider.complete(ChatRequest(messages=[USER]))
    finally:
        await provider.aclose()
    assert str(info.value) == (
        "malformed response from e: error object instead of a completion: "
        "{'message': 'model overloaded'}"
    )


# -- parse_completion ----------------------------------------------------------------------


def completion(message: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "choices": [{"message": message, **extra}], "usage": {}}


def test_parse_completion_accepts_object_arguments_and_fills_ids() -> None:
    """Tool arguments sent as objects are re-encoded as JSON text; a call without an id
    gets call_<index>; missing usage is marked as such (the recorder counts the tokens);
    finish_reason is inferred."""
    data = completion(
        {"content": None, "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}
    )
    assert parse_completion(data, provider="p") == ChatResponse(
        content=None,
        tool_calls=(ToolCall(id="call_0", name="f", arguments='{"a": 1}'),),
        usage=Usage(0, 0, problem="the response has no usage block"),
        model="m",
        provider="p",
        finish_reason="tool_calls",
    )


@pytest.mark.parametrize(
    ("usage", "context_window", "problem"),
    [
        ("lots", None, "usage is not an object"),
        (None, None, "the response has no usage block"),
        ({"prompt_tokens": "many"}, None, "usage token counts are not integers: ['many', 0]"),
        (
            {"prompt_tokens": -24, "completion_tokens": 1_999_999_999_999_998},
            None,
            "negative token counts (-24 in, 1999999999999998 out)",
        ),
        (
            {"prompt_tokens": 10, "completion_tokens": 9000},
            8192,
            "10 + 9000 tokens exceed the context window of 8192",
        ),
    ],
)
def test_impossible_usage_is_treated_as_missing_and_marked(
    usage: Any, context_window: int | None, problem: str
) -> None:
    """Usage that is missing or cannot be true becomes zero tokens with the reason, not
    an error and not a number in the totals (the recorder counts the tokens instead)."""
    data = {**completion({"content": "x"}), "usage": usage}
    response = parse_completion(data, provider="p", context_window=context_window)
    assert (response.content, response.usage) == ("x", Usage(0, 0, problem=problem))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ([], "body is not a JSON object"),
        ({"choices": []}, "no choices"),
        ({"choices": ["x"]}, "choices[0].message is missing"),
        (completion({"content": 5}), "message.content is not a string"),
        (completion({"content": None}), "message has neither content nor tool calls"),
        (
            completion({"content": None, "tool_calls": [{"function": {}}]}),
            "tool_calls[0] has no function name",
        ),
        (
            completion(
                {"content": None, "tool_calls": [{"function": {"name": "f", "arguments": 5}}]}
            ),
            "tool_calls[0].function.arguments is not a string",
        ),
    ],
    ids=[
        "not-object",
        "no-choices",
        "no-message",
        "content-type",
        "empty-message",
        "no-function-name",
        "bad-arguments",
    ],
)
def test_parse_completion_names_what_is_malformed(data: Any, why: str) -> None:
    """Each malformation raises ProviderResponseError naming the provider and the fault."""
    with pytest.raises(ProviderResponseError) as info:
        parse_completion(data, provider="p")
    assert str(info.value) == f"malformed response from p: {why}"


# -- replay ----------------------------------------------------------------------------------


RECORDED = [
    ChatResponse(
        content=None,
        tool_calls=(ToolCall("call_0_0", "read_file", '{"path": "a.txt"}'),),
        usage=Usage(11, 7),
        model="llama3.2",
        provider="ollama",
        cost_usd=0.01,
        finish_reason="tool_calls",
    ),
    ChatResponse(content="the answer", usage=Usage(20, 3), model="llama3.2", provider="ollama"),
]


def record_session(journal: Journal, session_id: str = "s1") -> None:
    """Journal a session the way the pipeline does: llm.response events between others."""
    journal.append(session_id, "session.created", {"agent": "a", "goal": "g"})
    for step, response in enumerate(RECORDED, start=1):
        journal.append(
            session_id,
            "llm.response",
            {
                "step": step,
                "message": response.message(),
                "model": response.model,
                "provider": response.provider,
                "finish_reason": response.finish_reason,
            },
            tokens_in=response.usage.tokens_in,
            tokens_out=response.usage.tokens_out,
            cost_usd=response.cost_usd or 0.0,
        )
        journal.append(session_id, "tool.result", {"step": step, "result": "x"})
    journal.append(session_id, "session.completed", {})


def replayed(response: ChatResponse) -> ChatResponse:
    """What the replay provider answers for a recorded response: same turn, no cost."""
    return ChatResponse(
        content=response.content,
        tool_calls=response.tool_calls,
        usage=response.usage,
        model=response.model,
        provider="replay",
        cost_usd=0.0,
        finish_reason=response.finish_reason,
    )


async def test_replay_from_journal_events_answers_turn_by_turn(tmp_path: Path) -> None:
    """The n-th call (n = assistant messages in the request) gets the n-th recorded
    response, at no cost; past the recording it raises ProviderResponseError."""
    store = open_store(tmp_path / "j.db")
    try:
        journal = Journal(store)
        record_session(journal)
        provider = ReplayProvider.from_events(journal.events("s1"), source="session s1")
    finally:
        store.close()

    first = await provider.complete(ChatRequest(messages=[USER]))
    assert first == replayed(RECORDED[0])
    conversation = [
        USER,
        first.message(),
        {"role": "tool", "tool_call_id": "call_0_0", "content": "x"},
    ]
    assert await provider.complete(ChatRequest(messages=conversation)) == replayed(RECORDED[1])
    # Stateless: asking for turn 0 again gives turn 0 again.
    assert await provider.complete(ChatRequest(messages=[USER])) == first

    done = [*conversation, RECORDED[1].message(), {"role": "user", "content": "more?"}]
    with pytest.raises(ProviderResponseError) as info:
        await provider.complete(ChatRequest(messages=done))
    assert str(info.value) == (
        "replay of session s1 has 2 responses; the session asked for response 3 "
        "(the run diverged from the recording)"
    )


def test_replay_needs_at_least_one_llm_response(tmp_path: Path) -> None:
    """Events without any llm.response cannot be replayed: ConfigError naming the source."""
    store = open_store(tmp_path / "j.db")
    try:
        journal = Journal(store)
        journal.append("s1", "session.created", {"agent": "a", "goal": "g"})
        with pytest.raises(ConfigError, match=r"^replay source s1 holds no LLM responses$"):
            ReplayProvider.from_events(journal.events("s1"), source="s1")
    finally:
        store.close()


async def test_replay_from_an_exported_file(tmp_path: Path) -> None:
    """An exported session file ({"events": [event dicts]}) replays like the journal."""
    store = open_store(tmp_path / "j.db")
    try:
        journal = Journal(store)
        record_session(journal)
        events = [e.to_dict() for e in journal.events("s1")]
    finally:
        store.close()
    path = tmp_path / "export.json"
    path.write_text(json.dumps({"session": {"id": "s1"}, "events": events}), encoding="utf-8")

    provider = ReplayProvider.from_file(path)
    assert provider.source == str(path)
    assert await provider.complete(ChatRequest(messages=[USER])) == replayed(RECORDED[0])


def test_replay_from_a_hand_written_minimal_file(tmp_path: Path) -> None:
    """Only kind and payload are required per event; the rest defaults."""
    path = tmp_path / "min.json"
    path.write_text(
        json.dumps(
            {
                "events": [
                    {
                        "kind": "llm.response",
                        "payload": {"message": {"role": "assistant", "content": "hi"}},
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    assert ReplayProvider.from_file(path)._responses == [
        ChatResponse(content="hi", usage=Usage(0, 0), provider="replay", finish_reason="stop")
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not an exported session (JSONDecodeError"),
        ("[]", "is not an exported session (TypeError"),
        ('{"session": {}}', "is not an exported session (KeyError"),
        ('{"events": [{"payload": {}}]}', "is not an exported session (KeyError"),
        (
            '{"events": [{"kind": "llm.response", "payload": "x"}]}',
            "is not an exported session (ValueError",
        ),
        (
            '{"events": [{"kind": "x", "payload": {}, "seq": "one"}]}',
            "is not an exported session (ValueError",
        ),
        (
            '{"events": [{"kind": "llm.response", "payload": {}}]}',
            "malformed response from replay: choices[0].message is missing",
        ),
        (
            '{"events": [{"kind": "llm.response", "payload": {"message": {"content": null}}}]}',
            "malformed response from replay: message has neither content nor tool calls",
        ),
        ('{"events": []}', "holds no LLM responses"),
    ],
    ids=[
        "not-json",
        "not-object",
        "no-events",
        "event-without-kind",
        "payload-not-object",
        "bad-seq",
        "response-without-message",
        "empty-message",
        "no-responses",
    ],
)
def test_corrupt_replay_files_raise_config_error(tmp_path: Path, text: str, message: str) -> None:
    """A file that is not a replayable export is a ConfigError naming the file."""
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        ReplayProvider.from_file(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_replay_file_raises_config_error(tmp_path: Path) -> None:
    """A replay file that does not exist is a ConfigError naming it."""
    path = tmp_path / "missing.json"
    with pytest.raises(ConfigError) as info:
        ReplayProvider.from_file(path)
    assert str(info.value) == f"cannot read replay file {path}: No such file or directory"


# -- scripted ----------------------------------------------------------------------------------


async def test_scripted_provider_follows_its_script_and_records_calls() -> None:
    """Turn n answers script[n] (content, tool calls, a raised error or a function);
    past the end it answers "done"; every request is recorded."""
    boom = ProviderUnavailable("scripted outage")
    provider = ScriptedProvider(
        [
            {
                "tool_calls": [
                    {"name": "f", "arguments": {"x": 1}},
                    {"name": "g", "arguments": "{}"},
                ]
            },
            boom,
            lambda request: ChatResponse(content=f"{len(request.messages)} messages"),
        ],
        cost_per_call=0.5,
        tokens=(3, 4),
    )
    assistant = {"role": "assistant", "content": "."}

    first = await provider.complete(ChatRequest(messages=[USER]))
    assert first == ChatResponse(
        content=None,
        tool_calls=(ToolCall("call_0_0", "f", '{"x": 1}'), ToolCall("call_0_1", "g", "{}")),
        usage=Usage(3, 4),
        model="scripted-1",
        provider="scripted",
        cost_usd=0.5,
        finish_reason="tool_calls",
    )
    with pytest.raises(ProviderUnavailable, match="scripted outage"):
        await provider.complete(ChatRequest(messages=[USER, assistant]))
    third = await provider.complete(ChatRequest(messages=[USER, assistant, assistant]))
    assert third.content == "3 messages"
    fourth = await provider.complete(ChatRequest(messages=[USER, *[assistant] * 3]))
    assert (fourth.content, fourth.finish_reason) == ("done", "stop")
    assert [len(r.messages) for r in provider.calls] == [1, 2, 3, 4]
