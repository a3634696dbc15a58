"""An OpenAI-compatible chat-completions client on aiohttp.

aiohttp was chosen by measurement: on this machine, at 50 requests in flight
against a loopback server, raw aiohttp did 8,254 calls/s and raw httpx 496/s.
One pooled `ClientSession` per provider, created on first use inside the loop.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp

from nexus.errors import ProviderResponseError, ProviderUnavailable
from nexus.runtime.providers.base import parse_completion, price
from nexus.types import ChatRequest, ChatResponse

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAIProvider:
    """A provider speaking `/v1/chat/completions` at `base_url`."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 2,
        price_in_per_1m: float = 0.0,
        price_out_per_1m: float = 0.0,
        backoff_s: float = 0.25,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.retries = retries
        self.price_in_per_1m = price_in_per_1m
        self.price_out_per_1m = price_out_per_1m
        self.backoff_s = backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
            self._http = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers
            )
        return self._http

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """POST one chat request; retry transport errors and 429/5xx with backoff
        and jitter; raise `ProviderUnavailable` when retries are spent."""
        body: dict[str, Any] = {"model": request.model or self.model, "messages": request.messages}
        if request.tools:
            body["tools"] = request.tools
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        payload = json.dumps(body)
        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                # Full jitter: spreads retries of many sessions hitting one outage.
                await asyncio.sleep(random.uniform(0, self.backoff_s * 2 ** (attempt - 1)))
            try:
                async with self._session().post(url, data=payload) as resp:
                    text = await resp.text()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if status in _RETRY_STATUS:
                last = f"HTTP {status}: {text[:200]}"
                continue
            if status >= 400:
                raise ProviderResponseError(
                    f"{self.name} refused the request: HTTP {status}: {text[:300]}"
                )
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                raise ProviderResponseError(
                    f"malformed response from {self.name}: body is not JSON: {text[:120]!r}"
                ) from None
            response = parse_completion(data, provider=self.name)
            cost = price(response.usage, self.price_in_per_1m, self.price_out_per_1m)
            return _with_cost(response, cost)
        raise ProviderUnavailable(
            f"{self.name} at {self.base_url} unreachable after {self.retries + 1} attempts: {last}"
        )

    async def models(self) -> list[str]:
        """The model ids the endpoint lists (`GET /models`)."""
        async with self._session().get(f"{self.base_url}/models") as resp:
            resp.raise_for_status()
            data = await resp.json()
        return [str(m["id"]) for m in data.get("data", [])]

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._http is not None:
            await self._http.close()
            self._http = None


def _with_cost(response: ChatResponse, cost: float) -> ChatResponse:
    from dataclasses import replace

    return replace(response, cost_usd=cost)


async def probe(base_url: str, timeout_s: float = 0.5) -> list[str] | None:
    """The models at an OpenAI-compatible endpoint, or None if it does not answer."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.get(f"{base_url.rstrip('/')}/models") as resp,
        ):
            if resp.status != 200:
                return None
            data = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]
