"""Tests for the OpenAI-compatible peer, driven over real HTTP."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from .openai_server import MALFORMED_MODES, PeerConfig, PeerServer, ThreadedPeerServer

Json = dict[str, Any]

READ_FILE_TOOL: Json = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "limit": {"type": "integer"},
                "ratio": {"type": "number"},
                "follow": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "options": {"type": "object"},
                "mode": {"type": "string", "enum": ["text", "binary"]},
                "encoding": {"type": ["string", "null"]},
                "optional": {"type": "string"},
            },
            "required": ["path", "limit", "ratio", "follow", "tags", "options", "mode", "encoding"],
        },
    },
}
OTHER_TOOL: Json = {
    "type": "function",
    "function": {"name": "other", "parameters": {"type": "object"}},
}
USER = {"role": "user", "content": "read the file"}


@pytest_asyncio.fixture
async def server() -> AsyncIterator[PeerServer]:
    """A started peer, stopped after the test."""
    peer = PeerServer()
    await peer.start()
    yield peer
    await peer.stop()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session, closed after the test."""
    async with aiohttp.ClientSession() as session:
        yield session


async def chat(http: aiohttp.ClientSession, server: PeerServer, **body: Any) -> Json:
    """Posts a chat request that must succeed and returns the completion."""
    body.setdefault("model", "gpt-test")
    async with http.post(server.url + "/chat/completions", json=body) as response:
        assert response.status == 200
        result: Json = await response.json()
        return result


async def chat_stream(http: aiohttp.ClientSession, server: PeerServer, **body: Any) -> list[str]:
    """Posts a streaming chat request and returns the SSE data payloads."""
    body.setdefault("model", "gpt-test")
    async with http.post(
        server.url + "/chat/completions", json={**body, "stream": True}
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = await response.text()
    events = [block for block in text.split("\n\n") if block]
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]


def reassemble(payloads: list[str]) -> tuple[Json, str | None, Json | None]:
    """Rebuilds (message, finish_reason, usage) from streamed chunks."""
    assert payloads[-1] == "[DONE]"
    content: list[str] = []
    calls: dict[int, Json] = {}
    role, finish, usage = None, None, None
    for chunk in map(json.loads, payloads[:-1]):
        assert chunk["object"] == "chat.completion.chunk"
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            role = delta.get("role", role)
            content.append(delta.get("content") or "")
            finish = choice["finish_reason"] or finish
            for part in delta.get("tool_calls", []):
                call = calls.setdefault(
                    part["index"], {"type": "function", "function": {"arguments": ""}}
                )
                call["id"] = part.get("id", call.get("id"))
                call["function"]["name"] = part.get("function", {}).get(
                    "name", call["function"].get("name")
                )
                call["function"]["arguments"] += part.get("function", {}).get("arguments", "")
    message: Json = {"role": role, "content": "".join(content) or None}
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    return message, finish, usage


@pytest.mark.asyncio
async def test_default_flow_calls_first_tool_then_answers(
    server: PeerServer, http: aiohttp.ClientSession
) -> None:
    first = await chat(http, server, messages=[USER], tools=[READ_FILE_TOOL, OTHER_TOOL])
    assert first["object"] == "chat.completion"
    assert first["model"] == "gpt-test"
    choice = first["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "call_0_0"
    assert call["function"]["name"] == "read_file"
    assert json.loads(call["function"]["arguments"]) == {
        "path": "x",
        "limit": 1,
        "ratio": 1,
        "follow": True,
        "tags": [],
        "options": {},
        "mode": "text",
        "encoding": "x",
    }
    tool_result = {"role": "tool", "tool_call_id": call["id"], "content": "file body"}
    messages = [USER, choice["message"], tool_result]
    second = await chat(http, server, messages=messages, tools=[READ_FILE_TOOL])
    assert second["choices"][0]["finish_reason"] == "stop"
    assert second["choices"][0]["message"] == {"role": "assistant", "content": "final: file body"}


@pytest.mark.asyncio
async def test_default_without_tools_echoes_last_user_message(
    server: PeerServer, http: aiohttp.ClientSession
) -> None:
    messages = [{"role": "system", "content": "be brief"}, USER]
    result = await chat(http, server, messages=messages)
    assert result["choices"][0]["message"]["content"] == "final: read the file"
    assert "tool_calls" not in result["choices"][0]["message"]


@pytest.mark.asyncio
async def test_script_is_indexed_by_assistant_turns_and_deterministic(
    server: PeerServer, http: aiohttp.ClientSession
) -> None:
    server.config.script = [
        {"content": "looking", "tool_calls": [{"name": "a", "arguments": {"n": 1}}, {"name": "b"}]},
        {"content": "all good"},
    ]
    first = await chat(http, server, messages=[USER])
    message = first["choices"][0]["message"]
    assert message["content"] == "looking"
    assert [call["id"] for call in message["tool_calls"]] == ["call_0_0", "call_0_1"]
    assert [call["function"]["name"] for call in message["tool_calls"]] == ["a", "b"]
    assert [json.loads(call["function"]["arguments"]) for call in message["tool_calls"]] == [
        {"n": 1},
        {},
    ]

    again = await chat(http, server, messages=[USER])
    assert again["choices"] == first["choices"]
    assert again["usage"] == first["usage"]

    results = [{"role": "tool", "tool_call_id": f"call_0_{i}", "content": "ok"} for i in range(2)]
    second = await chat(http, server, messages=[USER, message, *results])
    assert second["choices"][0]["message"] == {"role": "assistant", "content": "all good"}
    assert second["choices"][0]["finish_reason"] == "stop"

    later = [USER, message, *results, second["choices"][0]["message"], USER]
    past_end = await chat(http, server, messages=later)
    assert past_end["choices"][0]["message"]["content"] == "done"


@pytest.mark.asyncio
async def test_concurrent_conversations_are_independent(
    server: PeerServer, http: aiohttp.ClientSession
) -> None:
    server.config.script = [{"content": f"answer {i}"} for i in range(5)]
    server.config.latency_ms = 20

    async def converse(turns: int) -> str:
        history = [USER] + [{"role": "assistant", "content": "..."}, USER] * turns
        result = await chat(http, server, messages=history)
        content: str = result["choices"][0]["message"]["content"]
        return content

    answers = await asyncio.gather(*(converse(i % 5) for i in range(50)))
    assert answers == [f"answer {i % 5}" for i in range(50)]
    assert len(server.requests) == 50


@pytest.mark.asyncio
async def test_usage_block_is_consistent(server: PeerServer, http: aiohttp.ClientSession) -> None:
    messages = [
        {"role": "system", "content": "s" * 10},
        {"role": "user", "content": [{"type": "text", "text": "u" * 7}]},
    ]
    result = await chat(http, server, messages=messages)
    usage = result["usage"]
    answer = result["choices"][0]["message"]["content"]
    assert usage["prompt_tokens"] == 17 // 4 + 1
    assert usage["completion_tokens"] == len(answer) // 4 + 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    longer = await chat(http, server, messages=[*messages, {"role": "user", "content": "z" * 40}])
    assert longer["usage"]["prompt_tokens"] == 57 // 4 + 1


@pytest.mark.asyncio
@pytest.mark.parametrize("with_tools", [True, False])
async def test_stream_reassembles_to_the_plain_answer(
    server: PeerServer, http: aiohttp.ClientSession, with_tools: bool
) -> None:
    tools = {"tools": [READ_FILE_TOOL]} if with_tools else {}
    messages = [{"role": "user", "content": "a fairly long question to split into chunks"}]
    plain = await chat(http, server, messages=messages, **tools)
    payloads = await chat_stream(
        http, server, messages=messages, stream_options={"include_usage": True}, **tools
    )
    message, finish, usage = reassemble(payloads)
    assert message == plain["choices"][0]["message"]
    assert finish == plain["choices"][0]["finish_reason"]
    assert usage == plain["usage"]
    first_chunk = json.loads(payloads[0])
    assert first_chunk["model"] == "gpt-test"
    assert first_chunk["choices"][0]["finish_reason"] is None
    if not with_tools:
        content_chunks = [
            p for p in payloads[:-1] if json.loads(p)["choices"][:1] and "content" in p
        ]
        assert len(content_chunks) > 1


@pytest.mark.asyncio
async def test_stream_without_include_usage_has_no_usage_chunk(
    server: PeerServer, http: aiohttp.ClientSession
) -> None:
    payloads = await chat_stream(http, server, messages=[USER])
    _, finish, usage = reassemble(payloads)
    assert finish == "stop"
    assert usage is None


@pytest.mark.asyncio
async def test_latency_is_honoured(server: PeerServer, http: aiohttp.ClientSession) -> None:
    server.config.latency_ms = 150
    started = time.perf_counter()
    await chat(http, server, messages=[USER])
    # Lower bound only; the event loop clock may fire a hair early.
    assert time.perf_counter() - started >= 0.15 - 0.005


async def status_of(http: aiohttp.ClientSession, server: PeerServer) -> int:
    """Posts a minimal chat request and returns the HTTP status."""
    async with http.post(server.url + "/chat/completions", json={"messages": [USER]}) as response:
        if response.status == 500:
            error = (await response.json())["error"]
            assert error["type"] == "server_error"
            assert error["message"]
        return response.status


@pytest.mark.asyncio
async def test_fail_next_fails_exactly_n_requests(
    server: PeerServer, http: aiohttp.ClientSession
) -> None:
    server.config.fail_next = 2
    statuses = [await status_of(http, server) for _ in range(4)]
    assert statuses == [500, 500, 200, 200]
    assert server.config.fail_next == 0
    assert len(server.requests) == 4


@pytest.mark.asyncio
async def test_failure_rate_follows_the_seeded_generator(
    server: PeerServer, http: aiohttp.ClientSession
) -> None:
    server.config.failure_rate, server.config.seed = 0.5, 7
    rng = random.Random(7)
    expected = [500 if rng.random() < 0.5 else 200 for _ in range(30)]
    assert 500 in expected and 200 in expected
    assert [await status_of(http, server) for _ in range(30)] == expected

    server.reset()
    server.config.failure_rate, server.config.seed = 0.5, 7
    assert [await status_of(http, server) for _ in range(30)] == expected

    server.config.failure_rate = 1.0
    assert {await status_of(http, server) for _ in range(5)} == {500}


@pytest.mark.asyncio
async def test_malformed_not_json(server: PeerServer, http: aiohttp.ClientSession) -> None:
    server.config.malformed = "not_json"
    async with http.post(server.url + "/chat/completions", json={"messages": [USER]}) as response:
        assert response.status == 200
        text = await response.text()
    assert text == '{"choices": ['
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.asyncio
async def test_malformed_no_choices(server: PeerServer, http: aiohttp.ClientSession) -> None:
    server.config.malformed = "no_choices"
    result = await chat(http, server, messages=[USER])
    assert result == {"id": "x", "object": "chat.completion"}
    payloads = await chat_stream(http, server, messages=[USER])
    assert payloads == ['{"id": "x", "object": "chat.completion"}', "[DONE]"]


@pytest.mark.asyncio
async def test_malformed_bad_tool_args(server: PeerServer, http: aiohttp.ClientSession) -> None:
    server.config.malformed = "bad_tool_args"
    result = await chat(http, server, messages=[USER], tools=[READ_FILE_TOOL])
    arguments = result["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(arguments)
    message, _, _ = reassemble(
        await chat_stream(http, server, messages=[USER], tools=[READ_FILE_TOOL])
    )
    assert message == result["choices"][0]["message"]


@pytest.mark.asyncio
async def test_malformed_unknown_tool(server: PeerServer, http: aiohttp.ClientSession) -> None:
    server.config.malformed = "unknown_tool"
    tools = [READ_FILE_TOOL, OTHER_TOOL]
    result = await chat(http, server, messages=[USER], tools=tools)
    name = result["choices"][0]["message"]["tool_calls"][0]["function"]["name"]
    assert name and name not in {tool["function"]["name"] for tool in tools}


@pytest.mark.asyncio
async def test_malformed_bad_schema_args(server: PeerServer, http: aiohttp.ClientSession) -> None:
    server.config.malformed = "bad_schema_args"
    result = await chat(http, server, messages=[USER], tools=[READ_FILE_TOOL])
    call = result["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "read_file"
    arguments = json.loads(call["arguments"])
    properties = READ_FILE_TOOL["function"]["parameters"]["properties"]
    assert arguments["path"] == 42
    assert arguments["limit"] == "x"
    assert set(arguments) == set(properties)

    server.config.script = [{"tool_calls": [{"name": "other", "arguments": {"a": 1}}]}]
    no_properties = await chat(http, server, messages=[USER], tools=[OTHER_TOOL])
    wrong = json.loads(
        no_properties["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    )
    assert not isinstance(wrong, dict)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["bad_tool_args", "unknown_tool", "bad_schema_args"])
async def test_tool_malformed_modes_leave_final_answers_alone(
    server: PeerServer, http: aiohttp.ClientSession, mode: str
) -> None:
    server.config.malformed = mode
    result = await chat(http, server, messages=[USER])
    assert result["choices"][0]["message"] == {
        "role": "assistant",
        "content": "final: read the file",
    }


@pytest.mark.asyncio
async def test_models_endpoint(server: PeerServer, http: aiohttp.ClientSession) -> None:
    server.config.model = "peer-x"
    async with http.get(server.url + "/models") as response:
        assert response.status == 200
        body = await response.json()
    assert body["object"] == "list"
    assert [(model["id"], model["object"]) for model in body["data"]] == [("peer-x", "model")]


@pytest.mark.asyncio
async def test_control_endpoints(http: aiohttp.ClientSession) -> None:
    server = PeerServer(PeerConfig(latency_ms=1))
    await server.start()
    try:
        control = server.root_url + "/_peer"
        async with http.post(
            control + "/config", json={"fail_next": 1, "malformed": "no_choices"}
        ) as response:
            assert response.status == 200
            assert (await response.json())["fail_next"] == 1
        assert server.config.fail_next == 1
        assert server.config.malformed == "no_choices"
        for bad in ({"nope": 1}, {"malformed": "weird"}, [1]):
            async with http.post(control + "/config", json=bad) as response:
                assert response.status == 400
                assert "error" in await response.json()

        bodies = [
            {"model": "m", "messages": [{"role": "user", "content": str(i)}]} for i in range(3)
        ]
        for body in bodies:
            async with http.post(server.url + "/chat/completions", json=body) as response:
                await response.read()
        async with http.get(control + "/requests") as response:
            assert await response.json() == bodies
        assert server.requests == bodies

        async with http.post(control + "/reset") as response:
            assert response.status == 200
        async with http.get(control + "/requests") as response:
            assert await response.json() == []
        async with http.get(control + "/config") as response:
            assert await response.json() == {
                "latency_ms": 1,
                "failure_rate": 0.0,
                "fail_next": 0,
                "malformed": None,
                "script": None,
                "seed": 0,
                "model": "peer-model",
                "fail_status": 500,
                "retry_after": None,
                "pad_bytes": 0,
            }
    finally:
        await server.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "body", [b"{not json", b"[]", b'{"messages": "hi"}', b'{"messages": [], "tools": [1]}']
)
async def test_invalid_requests_get_400(
    server: PeerServer, http: aiohttp.ClientSession, body: bytes
) -> None:
    async with http.post(server.url + "/chat/completions", data=body) as response:
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    assert server.requests == []


def test_malformed_modes_are_validated() -> None:
    config = PeerConfig()
    for mode in MALFORMED_MODES:
        config.update({"malformed": mode})
    with pytest.raises(ValueError):
        config.update({"malformed": "weird"})
    with pytest.raises(ValueError):
        config.update({"latency": 3})


def post_json(url: str, body: Json) -> tuple[int, Json]:
    """Posts JSON synchronously with urllib and returns (status, body)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_threaded_server_serves_sync_callers() -> None:
    with ThreadedPeerServer(PeerConfig(script=[{"content": "hello"}])) as peer:
        status, body = post_json(peer.url + "/chat/completions", {"messages": [USER]})
        assert (status, body["choices"][0]["message"]["content"]) == (200, "hello")
        peer.config.fail_next = 1
        assert post_json(peer.url + "/chat/completions", {"messages": [USER]})[0] == 500
        assert post_json(peer.root_url + "/_peer/config", {"model": "m2"})[0] == 200
        assert peer.config.model == "m2"
        assert len(peer.requests) == 2
        peer.reset()
        assert peer.requests == []
        url = peer.url
    with pytest.raises(urllib.error.URLError):
        post_json(url + "/chat/completions", {"messages": [USER]})


def test_threaded_server_start_stop_restart() -> None:
    peer = ThreadedPeerServer()
    peer.start()
    try:
        with pytest.raises(RuntimeError):
            peer.start()
        with urllib.request.urlopen(peer.url + "/models", timeout=10) as response:
            assert json.loads(response.read())["data"][0]["id"] == "peer-model"
    finally:
        peer.stop()
    peer.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = peer.url
    peer.start()
    peer.stop()


def test_threaded_server_reports_bind_errors() -> None:
    with ThreadedPeerServer() as first:
        port = int(first.url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(OSError):
            ThreadedPeerServer(port=port).start()


@pytest.mark.slow
def test_standalone_process_serves_until_sigterm() -> None:
    repo_root = Path(__file__).resolve().parents[2]
    command = [
        sys.executable,
        "-m",
        "tests.peers.openai_server",
        "--port",
        "0",
        "--latency-ms",
        "1",
    ]
    with subprocess.Popen(command, cwd=repo_root, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
            status, body = post_json(url + "/chat/completions", {"messages": [USER]})
            assert (status, body["choices"][0]["message"]["content"]) == (
                200,
                "final: read the file",
            )
            process.terminate()
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
