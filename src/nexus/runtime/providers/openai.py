"""An OpenAI-compatible chat-completions client on aiohttp: one attempt per call.

Retries and fallback are providers that wrap this one (`retry.py`, `fallback.py`).
aiohttp was chosen by measurement: on this machine, at 50 requests in flight
against a loopback server, raw aiohttp did 8,254 calls/s and raw httpx 496/s.
One pooled `ClientSession` per provider, created on first use inside the loop.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from nexus.errors import ProviderResponseError, ProviderUnavailable
from nexus.runtime.providers.base import (
    DEFAULT_MAX_TOKENS,
    check_usage,
    local_endpoint,
    parse_completion,
)
from nexus.types import ChatDelta, ChatRequest, ChatResponse, ProviderProfile, ToolCall

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class OpenAIProvider:
    """A provider speaking `/v1/chat/completions` at `base_url`.

    Args:
        name: how the journal names it.
        base_url: the API root, e.g. `http://localhost:11434/v1`.
        model: the default model.
        api_key: sent as a bearer token.
        timeout_s: bound of one attempt (the whole call's deadline is the retry
            wrapper's).
        connect_timeout_s: bound of opening a connection.
        read_timeout_s: bound of waiting for the first byte of the answer, and for
            each later piece of it (a server that sends its headers after 30 s is
            not waited for silently).
        max_connections: the connection pool's size: as many as LLM calls may be in
            flight (the worker's concurrency), so the pool never queues them.
        max_tokens: sent with every call, overriding the request's (a per-model
            setting); without either, `DEFAULT_MAX_TOKENS`. No call goes out unbounded.
        max_response_bytes: a larger answer fails the call.
        price_in_per_1m: the endpoint's own prompt price (USD per 1M tokens), for its
            profile: the recorder prices calls (`nexus.observe.costs`), not this client.
        price_out_per_1m: its completion price.
        context_window: usage beyond it is impossible (the recorder counts instead).
    """

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        max_connections: int = 100,
        max_tokens: int | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        price_in_per_1m: float | None = None,
        price_out_per_1m: float | None = None,
        context_window: int | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_tokens = max_tokens
        self.max_response_bytes = max_response_bytes
        self.max_connections = max_connections
        self.profile = ProviderProfile(
            context_window=context_window,
            price_in_per_1m=price_in_per_1m,
            price_out_per_1m=price_out_per_1m,
            local=local_endpoint(name, base_url),
        )
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=30)
            self._http = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers
            )
        return self._http

    def body(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        """The JSON body of a request: the set parameters passed through, and always
        a `max_tokens`."""
        body: dict[str, Any] = {"model": request.model or self.model, "messages": request.messages}
        if request.tools:
            body["tools"] = request.tools
        body.update(request.params())
        body["max_tokens"] = self.max_tokens or request.max_tokens or DEFAULT_MAX_TOKENS
        if stream:
            body["stream"] = True
            body.setdefault("stream_options", {"include_usage": True})
        return body

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """POST one chat request (one attempt). `ProviderUnavailable` for what a
        retry or another provider may cure (transport errors, timeouts, 408/409/425/
        429/5xx, with the server's `Retry-After`), `ProviderResponseError` otherwise."""
        url = f"{self.base_url}/chat/completions"
        try:
            async with self._session().post(url, data=json.dumps(self.body(request))) as resp:
                if resp.status >= 300:
                    self._check_status(resp.status, resp.headers, await _read(resp, 2048))
                text = await _read(resp, self.max_response_bytes, refuse=self.name)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ProviderResponseError(
                f"malformed response from {self.name}: body is not JSON: {text[:120]!r}"
            ) from None
        return parse_completion(
            data, provider=self.name, context_window=self.profile.context_window
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """POST with `stream: true`; yields text as it arrives, then the response."""
        url = f"{self.base_url}/chat/completions"
        content: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage_raw: Any = {}
        finish, model, size = "stop", "", 0
        try:
            body = json.dumps(self.body(request, stream=True))
            async with self._session().post(url, data=body) as resp:
                if resp.status >= 300:
                    self._check_status(resp.status, resp.headers, await _read(resp, 2048))
                async for raw in resp.content:
                    size += len(raw)
                    if size > self.max_response_bytes:
                        raise _too_large(self.name, self.max_response_bytes)
                    line = raw.strip()
                    if not line.startswith(b"data:") or line == b"data: [DONE]":
                        continue
                    chunk = _chunk(line[5:], self.name)
                    model = chunk.get("model") or model
                    usage_raw = chunk.get("usage") or usage_raw
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        finish = choice.get("finish_reason") or finish
                        if delta.get("content"):
                            content.append(delta["content"])
                            yield ChatDelta(content=delta["content"])
                        for c in delta.get("tool_calls") or ():
                            slot = calls.setdefault(int(c.get("index", 0)), {"arguments": ""})
                            fn = c.get("function") or {}
                            slot["id"] = c.get("id") or slot.get("id", "")
                            slot["name"] = fn.get("name") or slot.get("name", "")
                            slot["arguments"] += fn.get("arguments") or ""
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        tool_calls = tuple(
            ToolCall(c.get("id") or f"call_{i}", c.get("name", ""), c["arguments"])
            for i, c in sorted(calls.items())
        )
        response = ChatResponse(
            content="".join(content) if content or not tool_calls else None,
            tool_calls=tool_calls,
            usage=check_usage(usage_raw, self.profile.context_window),
            model=str(model),
            provider=self.name,
            finish_reason=str(finish),
        )
        yield ChatDelta(response=response)

    def _check_status(self, status: int, headers: Any, text: str) -> None:
        if status in RETRYABLE_STATUS:
            raise ProviderUnavailable(
                f"{self.name} at {self.base_url}: HTTP {status}: {text[:200]}",
                retry_after=retry_after(headers.get("Retry-After")),
            )
        if status >= 400:
            raise ProviderResponseError(
                f"{self.name} refused the request: HTTP {status}: {text[:300]}"
            )

    def _unavailable(self, exc: BaseException) -> ProviderUnavailable:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ProviderUnavailable(f"{self.name} at {self.base_url}: {why}")

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


async def _read(resp: aiohttp.ClientResponse, limit: int, refuse: str | None = None) -> str:
    """At most `limit` bytes of the body as text. With `refuse` (the provider's
    name), a longer body fails the call instead of being held whole in memory."""
    body = bytearray()
    while len(body) <= limit:
        chunk = await resp.content.read(limit + 1 - len(body))
        if not chunk:
            break
        body.extend(chunk)
    if len(body) > limit and refuse is not None:
        raise _too_large(refuse, limit)
    return bytes(body[:limit]).decode(resp.charset or "utf-8", errors="replace")


def _too_large(name: str, limit: int) -> ProviderResponseError:
    return ProviderResponseError(
        f"{name} answered more than {limit} bytes (max_response_bytes): refused"
    )


def _chunk(data: bytes, name: str) -> Any:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise ProviderResponseError(
            f"malformed stream from {name}: a chunk is not JSON: {data[:120]!r}"
        ) from None
    if not isinstance(chunk, dict):
        raise ProviderResponseError(f"malformed stream from {name}: a chunk is not an object")
    return chunk


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
