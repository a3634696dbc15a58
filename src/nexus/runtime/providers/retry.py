"""Retry as a provider that wraps a provider.

Retries what a retry may cure (`ProviderUnavailable`: transport errors, timeouts,
408/409/425/429/5xx) with full-jitter exponential backoff, honouring the server's
`Retry-After`, all within one deadline for the whole call: a provider answering
429 with `Retry-After: 2` is asked again after 2 s, not three times in 0.7 s, and
a wait that would pass the deadline is not started.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from nexus.errors import ProviderUnavailable
from nexus.types import ChatDelta, ChatRequest, ChatResponse, Provider


class RetryProvider:
    """`inner`, tried up to `attempts` times within `deadline_s`.

    Args:
        inner: the provider to retry.
        attempts: tries in all (1 = no retry).
        backoff_s: the first backoff's upper bound; doubles per retry (full jitter:
            spreads the retries of many sessions hitting one outage).
        deadline_s: bound of the whole call, retries and waits included.
    """

    def __init__(
        self,
        inner: Provider,
        *,
        attempts: int = 3,
        backoff_s: float = 0.25,
        deadline_s: float = 120.0,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.profile = inner.profile
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.deadline_s = deadline_s

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """The inner answer, after as many tries as it takes and the deadline allows."""
        failures: list[str] = []
        deadline = time.monotonic() + self.deadline_s
        for attempt in range(1, self.attempts + 1):
            left = deadline - time.monotonic()
            try:
                async with asyncio.timeout(left):
                    response = await self.inner.complete(request)
            except ProviderUnavailable as exc:
                failures.append(str(exc))
                wait = self._wait(attempt, exc.retry_after)
                if attempt == self.attempts or time.monotonic() + wait >= deadline:
                    raise self._gave_up(failures, attempt) from None
                await asyncio.sleep(wait)
                continue
            except TimeoutError:
                failures.append(f"{self.name}: the call's deadline of {self.deadline_s:g}s passed")
                raise self._gave_up(failures, attempt) from None
            return replace(
                response,
                attempts=response.attempts + attempt - 1,
                failures=(*failures, *response.failures),
            )
        raise self._gave_up(failures, self.attempts)  # pragma: no cover - loop returns or raises

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        return random.uniform(0, self.backoff_s * 2 ** (attempt - 1))

    def _gave_up(self, failures: list[str], attempts: int) -> ProviderUnavailable:
        exc = ProviderUnavailable(
            f"unreachable after {attempts} attempt{'s' if attempts > 1 else ''}: {failures[-1]}"
        )
        exc.failures = tuple(failures)  # type: ignore[attr-defined]
        return exc

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Streams are not retried once they have started; a failure to start is."""
        async for delta in self.inner.stream(request):
            yield delta

    async def aclose(self) -> None:
        """Close the inner provider."""
        await self.inner.aclose()
