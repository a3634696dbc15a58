"""HTTP fetch toolkit: a read-only GET, to loopback and allow-listed hosts only."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from nexus.errors import ToolExecutionError
from nexus.runtime.tools import ToolContext, Toolkit, tool

MAX_BODY = 512 * 1024


class HttpSettings(BaseModel):
    """`[toolkits.http]` in nexus.toml, or `NEXUS_TOOLKITS__HTTP__ALLOW_HOSTS='["a.example"]'`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_hosts: tuple[str, ...] = Field(
        default=(), description="Hosts besides loopback that http_get may fetch."
    )


def check_url(url: str, allow_hosts: tuple[str, ...]) -> str:
    """Return the host of `url` if NEXUS may fetch it, else refuse.

    Allowed: http(s) to loopback (localhost, 127.0.0.0/8, ::1) and hosts named in
    the toolkit's `allow_hosts` setting. Names are compared literally, not resolved, so
    a DNS answer cannot smuggle a request elsewhere.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ToolExecutionError(f"only http and https URLs can be fetched, not {parts.scheme!r}")
    host = (parts.hostname or "").lower()
    if not host:
        raise ToolExecutionError(f"URL has no host: {url!r}")
    if host == "localhost" or host in {h.lower() for h in allow_hosts}:
        return host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ToolExecutionError(
        f"host {host!r} is not allowed: only loopback and the hosts in "
        "NEXUS_TOOLKITS__HTTP__ALLOW_HOSTS may be fetched"
    )


@tool(effect="read", timeout_s=30.0)
async def http_get(ctx: ToolContext, url: str) -> dict[str, Any]:
    """Fetch a URL with HTTP GET and return its status, content type and text body.

    Args:
        url: an http(s) URL on an allowed host.
    """
    import aiohttp

    settings = ctx.settings if isinstance(ctx.settings, HttpSettings) else HttpSettings()
    check_url(url, settings.allow_hosts)
    timeout = aiohttp.ClientTimeout(total=25)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url, allow_redirects=False) as resp,
        ):
            # read(n) returns what has arrived, up to n: loop until the cap or EOF.
            body = bytearray()
            while len(body) <= MAX_BODY:
                chunk = await resp.content.read(MAX_BODY + 1 - len(body))
                if not chunk:
                    break
                body.extend(chunk)
            truncated = len(body) > MAX_BODY
            return {
                "status": resp.status,
                "content_type": resp.headers.get("Content-Type", ""),
                "body": _decode(bytes(body[:MAX_BODY]), resp.charset),
                "truncated": truncated,
            }
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ToolExecutionError(f"GET {url} failed: {str(exc) or type(exc).__name__}") from None


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:  # the server named a charset Python does not know
        return data.decode("utf-8", errors="replace")


toolkit = Toolkit(
    "http",
    [http_get],
    description="Fetch web pages from allowed hosts.",
    settings_model=HttpSettings,
)
