"""The replay provider: answers from a recorded session's LLM responses.

Deterministic re-runs, regression cases from post-mortems, offline demos. The
recording is either a session in the journal or an exported JSON file
(`nexus export`), whose `events` list holds the `llm.response` events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nexus.errors import ConfigError, ProviderResponseError
from nexus.runtime.providers.base import as_stream, parse_completion
from nexus.types import ChatDelta, ChatRequest, ChatResponse, Event, ProviderProfile, Usage


class ReplayProvider:
    """Answers the n-th LLM call of a session with the n-th recorded response.

    The position is the number of assistant messages already in the request, so
    a resumed session picks up at the right answer without any state here.
    """

    def __init__(
        self, responses: list[ChatResponse], *, source: str = "replay", pace_s: float = 0.0
    ) -> None:
        self.name = "replay"
        self.profile = ProviderProfile()
        self.source = source
        self.pace_s = pace_s  # wait before each answer: demos look like a live model
        self._responses = responses

    @classmethod
    def from_events(cls, events: list[Event], *, source: str) -> ReplayProvider:
        """Build from journal events (only `llm.response` events are used)."""
        responses = []
        for e in events:
            if e.kind != "llm.response":
                continue
            p = e.payload
            body = {
                "model": p.get("model", ""),
                "choices": [{"message": p.get("message"), "finish_reason": p.get("finish_reason")}],
                "usage": {"prompt_tokens": e.tokens_in, "completion_tokens": e.tokens_out},
            }
            r = parse_completion(body, provider="replay")
            responses.append(r)
        if not responses:
            raise ConfigError(f"replay source {source} holds no LLM responses")
        return cls(responses, source=source)

    @classmethod
    def from_file(cls, path: Path) -> ReplayProvider:
        """Build from an exported session file (`nexus export`)."""
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read replay file {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(
                f"replay file {path} is not an exported session ({type(exc).__name__}: {exc})"
            ) from None
        return cls.from_document(data, source=str(path))

    @classmethod
    def from_document(cls, data: Any, *, source: str) -> ReplayProvider:
        """Build from an export document already parsed (a file's, or one uploaded
        to the API); `ConfigError` naming `source` if it is not one."""
        try:
            events = [
                Event(
                    session_id=str(e.get("session_id", "")),
                    seq=int(e.get("seq", 0)),
                    ts=float(e.get("ts", 0)),
                    kind=str(e["kind"]),
                    payload=dict(e["payload"]),
                    tokens_in=int(e.get("tokens_in", 0)),
                    tokens_out=int(e.get("tokens_out", 0)),
                )
                for e in data["events"]
            ]
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise ConfigError(
                f"replay {source} is not an exported session ({type(exc).__name__}: {exc})"
            ) from None
        try:
            return cls.from_events(events, source=source)
        except ProviderResponseError as exc:
            raise ConfigError(f"replay {source}: {exc}") from None

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """The recorded answer for this point of the conversation."""
        turn = sum(1 for m in request.messages if m.get("role") == "assistant")
        if turn >= len(self._responses):
            raise ProviderResponseError(
                f"replay of {self.source} has {len(self._responses)} responses; the session "
                f"asked for response {turn + 1} (the run diverged from the recording)"
            )
        r = self._responses[turn]
        if self.pace_s > 0:
            await asyncio.sleep(self.pace_s)
        return ChatResponse(
            content=r.content,
            tool_calls=r.tool_calls,
            usage=Usage(r.usage.tokens_in, r.usage.tokens_out),
            model=r.model,
            provider="replay",
            cost_usd=0.0,
            finish_reason=r.finish_reason,
        )

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """The answer as a stream (its text, then the response)."""
        return as_stream(self.complete(request))

    async def aclose(self) -> None:
        """Nothing to release."""
