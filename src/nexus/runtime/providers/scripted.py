"""A scripted in-process provider for tests of pure runtime logic."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from nexus.runtime.providers.base import as_stream
from nexus.types import ChatDelta, ChatRequest, ChatResponse, ProviderProfile, ToolCall, Usage

Turn = dict[str, Any] | Callable[[ChatRequest], ChatResponse]


class ScriptedProvider:
    """Answers turn n (counted from the assistant messages in the request) with
    `script[n]`: `{"content": "..."}`, `{"tool_calls": [{"name", "arguments"}]}`,
    an `Exception` instance to raise, or a function of the request.

    `calls` records every request, so tests can assert what the loop sent.
    """

    def __init__(
        self,
        script: list[Any],
        *,
        name: str = "scripted",
        model: str = "scripted-1",
        cost_per_call: float = 0.0,
        tokens: tuple[int, int] = (10, 5),
    ) -> None:
        self.name = name
        self.profile = ProviderProfile()
        self.model = model
        self.script = script
        self.calls: list[ChatRequest] = []
        self.cost_per_call = cost_per_call
        self.tokens = tokens

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """The scripted answer for this turn."""
        self.calls.append(request)
        turn = sum(1 for m in request.messages if m.get("role") == "assistant")
        entry = self.script[turn] if turn < len(self.script) else {"content": "done"}
        if isinstance(entry, BaseException):
            raise entry
        if callable(entry):
            result: ChatResponse = entry(request)
            return result
        calls = tuple(
            ToolCall(
                id=f"call_{turn}_{j}",
                name=c["name"],
                arguments=c["arguments"]
                if isinstance(c["arguments"], str)
                else json.dumps(c["arguments"]),
            )
            for j, c in enumerate(entry.get("tool_calls", ()))
        )
        return ChatResponse(
            content=entry.get("content"),
            tool_calls=calls,
            usage=Usage(*self.tokens),
            model=self.model,
            provider=self.name,
            cost_usd=self.cost_per_call,
            finish_reason="tool_calls" if calls else "stop",
        )

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """The answer as a stream (its text, then the response)."""
        return as_stream(self.complete(request))

    async def aclose(self) -> None:
        """Nothing to release."""
