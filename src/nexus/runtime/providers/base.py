"""What every provider shares: parsing a chat completion and checking its usage.

Providers do not price their answers: the recorder does, in one place
(`nexus.observe.costs`), from the usage checked here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Awaitable
from typing import Any
from urllib.parse import urlsplit

from nexus.errors import ProviderResponseError
from nexus.types import ChatDelta, ChatResponse, ToolCall, Usage

DEFAULT_MAX_TOKENS = 4096
"""The max_tokens sent when neither the endpoint nor the request sets one."""

OLLAMA_PORT = 11434


def local_endpoint(name: str, base_url: str) -> bool:
    """True for an endpoint that runs on this machine (a loopback or `localhost`
    base URL) or is Ollama (named so, or on Ollama's port): its calls cost nothing."""
    try:
        parts = urlsplit(base_url)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return False
    if name.lower() == "ollama" or port == OLLAMA_PORT:
        return True
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def as_stream(answer: Awaitable[ChatResponse]) -> AsyncIterator[ChatDelta]:
    """A whole answer as a stream: its text, then the response (for providers that
    do not stream natively)."""
    response = await answer
    if response.content:
        yield ChatDelta(content=response.content)
    yield ChatDelta(response=response)


def check_usage(raw: Any, context_window: int | None) -> Usage:
    """The token counts of a `usage` block, or `Usage(0, 0, problem=...)` when they
    are missing or impossible (not integers, negative, or more than the context window
    allows): a hostile or broken server must not write its numbers into the totals;
    the recorder counts the tokens instead."""
    if raw is None or raw == {}:
        return Usage(problem="the response has no usage block")
    if not isinstance(raw, dict):
        return Usage(problem="usage is not an object")
    values = [raw.get("prompt_tokens") or 0, raw.get("completion_tokens") or 0]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return Usage(problem=f"usage token counts are not integers: {values!r}"[:200])
    tokens_in, tokens_out = values
    if tokens_in < 0 or tokens_out < 0:
        return Usage(problem=f"negative token counts ({tokens_in} in, {tokens_out} out)")
    if context_window is not None and tokens_in + tokens_out > context_window:
        return Usage(
            problem=f"{tokens_in} + {tokens_out} tokens exceed the context window of "
            f"{context_window}"
        )
    return Usage(tokens_in, tokens_out)


def parse_completion(
    data: Any, *, provider: str, context_window: int | None = None
) -> ChatResponse:
    """Turn an OpenAI chat.completion body into a `ChatResponse`.

    Raises `ProviderResponseError` naming what is wrong: a provider answering with
    something else must fail the session clearly, not crash the loop.
    """

    def bad(why: str) -> ProviderResponseError:
        return ProviderResponseError(f"malformed response from {provider}: {why}")

    if not isinstance(data, dict):
        raise bad("body is not a JSON object")
    if "error" in data and "choices" not in data:
        raise bad(f"error object instead of a completion: {str(data['error'])[:200]}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise bad("no choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise bad("choices[0].message is missing")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise bad("message.content is not a string")
    calls = []
    for i, raw in enumerate(message.get("tool_calls") or ()):
        fn = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad(f"tool_calls[{i}] has no function name")
        args = fn.get("arguments", "")
        if isinstance(args, dict | list):  # some servers send objects, not strings
            import json

            args = json.dumps(args)
        if not isinstance(args, str):
            raise bad(f"tool_calls[{i}].function.arguments is not a string")
        call_id = raw.get("id") or f"call_{i}"
        calls.append(ToolCall(id=str(call_id), name=fn["name"], arguments=args))
    if content is None and not calls:
        raise bad("message has neither content nor tool calls")
    usage = check_usage(data.get("usage"), context_window)
    return ChatResponse(
        content=content,
        tool_calls=tuple(calls),
        usage=usage,
        model=str(data.get("model") or ""),
        provider=provider,
        finish_reason=str(choice.get("finish_reason") or ("tool_calls" if calls else "stop")),
    )
