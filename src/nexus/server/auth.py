"""Authentication: a bearer token for the API, a signed cookie for the dashboard.

* The token is 256 random bits from a `TokenSource` (`nexus.server.tokens`):
  `NEXUS_API_TOKEN`, else the database when the store is PostgreSQL, else
  `NEXUS_HOME/api-token` (mode 0600), made on first start. `nexus token rotate`
  replaces it, which also invalidates every dashboard cookie: their key derives from
  the token, so every server that accepts one token accepts the same cookies.
* The dashboard logs in with the token once and then carries an HttpOnly,
  SameSite=Strict cookie `nexus_session` = `sid.expiry.signature`.
* Cookie-authenticated state changes must carry the CSRF token (header
  `X-CSRF-Token` or form field `csrf_token`): an HMAC of the cookie's sid.
* Failures are counted per client address; past `max_failures` in `window_s`
  a failing client gets 429 until the window passes, while a correct credential
  always passes. 401s never say which part failed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

from starlette.requests import Request

from nexus.errors import StorageError
from nexus.runtime.redact import Redactor
from nexus.server.problems import Problem
from nexus.server.tokens import TokenSource

COOKIE = "nexus_session"
CSRF_HEADER = "x-csrf-token"
COOKIE_TTL_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request and how."""

    via: str  # "bearer" | "cookie" | "open"
    sid: str | None = None

    def sender(self, surface: str) -> str:
        """Who a command comes from, as the journal records it: `api:token`,
        `dashboard:login-1a2b3c4d`, `api:open` (auth off).

        A login is named by a digest of its sid, never the sid itself: the journal
        is exported and shared, and the sid is half of a live cookie."""
        if self.via == "bearer":
            return f"{surface}:token"
        if self.via == "cookie" and self.sid is not None:
            return f"{surface}:login-{hashlib.sha256(self.sid.encode()).hexdigest()[:8]}"
        return f"{surface}:open"


class FailureLimiter:
    """Counts authentication failures per client; blocks past the limit."""

    def __init__(self, *, max_failures: int = 10, window_s: float = 60.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def blocked_for(self, client: str) -> float:
        """Seconds the client must wait, 0 if not blocked."""
        q = self._failures.get(client)
        if not q:
            return 0.0
        now = time.monotonic()
        while q and now - q[0] > self.window_s:
            q.popleft()
        if len(q) < self.max_failures:
            return 0.0
        return self.window_s - (now - q[0])

    def fail(self, client: str) -> None:
        """Record one failure."""
        q = self._failures.setdefault(client, deque())
        q.append(time.monotonic())
        if len(self._failures) > 10_000:  # bound memory under a spray of addresses
            self._failures.pop(next(iter(self._failures)))


class Auth:
    """Checks requests; `enabled=False` (loopback only) lets everything through.

    Args:
        tokens: where the token is.
        enabled: require credentials.
        redactor: masks each token this server accepts (a goal or a tool result that
            quotes it never reaches the journal or the logs).
    """

    def __init__(
        self, tokens: TokenSource, *, enabled: bool = True, redactor: Redactor | None = None
    ) -> None:
        self.tokens = tokens
        self.enabled = enabled
        self.redactor = redactor
        self.limiter = FailureLimiter()
        self._seen: str | None = None

    def token(self) -> str:
        """The current token; 503 when its database cannot be read (a token that may
        have been rotated meanwhile is not trusted)."""
        try:
            token = self.tokens.read()
        except StorageError as exc:
            raise Problem(503, str(exc)) from None
        if token != self._seen:
            if self.redactor is not None:
                self.redactor.register(token)
            self._seen = token
        return token

    # -- cookies and CSRF ---------------------------------------------------------

    def _key(self) -> bytes:
        return hmac.new(self.token().encode(), b"nexus-dashboard-cookie", "sha256").digest()

    def _sign(self, text: str) -> str:
        mac = hmac.new(self._key(), text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue_cookie(self, now: float | None = None) -> tuple[str, str]:
        """A new `(cookie value, csrf token)` pair."""
        sid = secrets.token_urlsafe(16)
        expiry = int((now or time.time()) + COOKIE_TTL_S)
        body = f"{sid}.{expiry}"
        return f"{body}.{self._sign(body)}", self.csrf_for(sid)

    def csrf_for(self, sid: str) -> str:
        """The CSRF token bound to a cookie session."""
        return self._sign(f"csrf.{sid}")

    def cookie_sid(self, value: str | None) -> str | None:
        """The sid of a valid, unexpired cookie, else None (forged, expired, stale)."""
        if not value:
            return None
        parts = value.split(".")
        if len(parts) != 3:
            return None
        sid, expiry, sig = parts
        if not hmac.compare_digest(sig, self._sign(f"{sid}.{expiry}")):
            return None
        try:
            if int(expiry) < time.time():
                return None
        except ValueError:
            return None
        return sid

    def check_token(self, presented: str) -> bool:
        """Constant-time comparison with the current token."""
        return hmac.compare_digest(presented.encode(), self.token().encode())

    # -- requests -------------------------------------------------------------------

    def identify(self, request: Request) -> Principal | None:
        """The principal of a request, or None; counts failed attempts."""
        if not self.enabled:
            return Principal("open")
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token and self.check_token(token.strip()):
                return Principal("bearer")
            self.limiter.fail(_client(request))
            return None
        cookie = request.cookies.get(COOKIE)
        if cookie is not None:
            sid = self.cookie_sid(cookie)
            if sid is not None:
                return Principal("cookie", sid)
            self.limiter.fail(_client(request))
        return None

    def require(self, request: Request) -> Principal:
        """The API's check: 429 when rate-limited, 401 without valid credentials,
        403 for a cookie-authenticated state change without its CSRF token."""
        # A correct credential always passes: counting failures must never let one
        # local process lock every user out (the limit used to refuse the right token
        # too). Failures are counted, and past the limit they get 429 instead of 401.
        wait = self.limiter.blocked_for(_client(request))  # before this attempt counts
        principal = self.identify(request)
        if principal is None:
            if wait > 0:
                raise Problem(
                    429,
                    "too many failed authentication attempts; retry later",
                    headers={"Retry-After": str(int(wait) + 1)},
                )
            raise Problem(
                401, "authentication required", headers={"WWW-Authenticate": 'Bearer realm="nexus"'}
            )
        if principal.via == "cookie" and request.method not in SAFE_METHODS:
            self.require_csrf(principal, request.headers.get(CSRF_HEADER))
        return principal

    def require_csrf(self, principal: Principal, presented: str | None) -> None:
        """403 unless `presented` is the CSRF token of the principal's cookie."""
        if principal.via != "cookie" or principal.sid is None:
            return
        if not presented or not hmac.compare_digest(presented, self.csrf_for(principal.sid)):
            raise Problem(403, "missing or invalid CSRF token", slug="csrf")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"
