"""What every provider shares: parsing a chat completion and pricing it."""

from __future__ import annotations

from typing import Any

from nexus.errors import ProviderResponseError
from nexus.types import ChatResponse, ToolCall, Usage


def price(usage: Usage, price_in_per_1m: float, price_out_per_1m: float) -> float:
    """Cost in USD of `usage` at the given per-million-token prices."""
    return (usage.tokens_in * price_in_per_1m + usage.tokens_out * price_out_per_1m) / 1e6


def parse_completion(data: Any, *, provider: str) -> ChatResponse:
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
    usage_raw = data.get("usage") or {}
    if not isinstance(usage_raw, dict):
        raise bad("usage is not an object")
    try:
        usage = Usage(
            tokens_in=int(usage_raw.get("prompt_tokens") or 0),
            tokens_out=int(usage_raw.get("completion_tokens") or 0),
        )
    except (TypeError, ValueError):
        raise bad("usage token counts are not integers") from None
    return ChatResponse(
        content=content,
        tool_calls=tuple(calls),
        usage=usage,
        model=str(data.get("model") or ""),
        provider=provider,
        finish_reason=str(choice.get("finish_reason") or ("tool_calls" if calls else "stop")),
    )
