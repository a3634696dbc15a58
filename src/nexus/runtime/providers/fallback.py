"""Fallback as a provider that wraps providers: the first that answers wins.

Every configured provider is used: when one fails with what another may not
(`ProviderUnavailable`: down, slow, 5xx, 429 after its retries), the next is asked
within the same LLM step. A refusal of the request itself (`ProviderResponseError`:
a 400, a malformed answer) is not passed on: the next provider would get the same
request. The answer says which provider gave it and what failed before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from nexus.errors import ConfigError, ProviderUnavailable
from nexus.types import ChatDelta, ChatRequest, ChatResponse, Provider


class FallbackProvider:
    """`providers` in order; the profile is the first's (the preferred one)."""

    def __init__(self, providers: Sequence[Provider]) -> None:
        if not providers:
            raise ConfigError("a fallback needs at least one provider")
        self.providers = list(providers)
        self.name = "+".join(p.name for p in self.providers)
        self.profile = self.providers[0].profile

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """The first provider's answer that comes."""
        failures: list[str] = []
        attempts = 0
        for provider in self.providers:
            try:
                response = await provider.complete(request)
            except ProviderUnavailable as exc:
                tried = getattr(exc, "failures", (str(exc),))
                attempts += len(tried)
                failures.extend(tried)
                continue
            return replace(
                response,
                attempts=attempts + response.attempts,
                failures=(*failures, *response.failures),
            )
        raise ProviderUnavailable(
            f"every provider failed ({attempts} attempts): " + " | ".join(failures[-3:])
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """The first provider that starts streaming; the others if it cannot start."""
        last: ProviderUnavailable | None = None
        for provider in self.providers:
            started = False
            try:
                async for delta in provider.stream(request):
                    started = True
                    yield delta
                return
            except ProviderUnavailable as exc:
                if started:
                    raise
                last = exc
        raise ProviderUnavailable(f"every provider failed to stream: {last}")

    async def aclose(self) -> None:
        """Close every provider."""
        for provider in self.providers:
            await provider.aclose()
