"""Where the API token comes from: the environment, the database, or a file.

Every server on one database must accept the same token, and a dashboard cookie
issued by one must verify on the others (its key derives from the token, so the
token is all they need to share). The settings choose, in this order:

* `NEXUS_API_TOKEN` (`EnvToken`): whoever deploys the servers gives each the same
  value; NEXUS cannot rotate it.
* the database (`DatabaseToken`), the default when the store is PostgreSQL: one row
  of the server's own table (`SCHEMA`). Any server or `nexus token rotate` replaces
  it; every server re-reads it at most `ttl_s` (1 s) later.
* `NEXUS_HOME/api-token` (`TokenFile`), the default on SQLite (one machine).

The database keeps the token itself, not a hash of it. A hash would stop a reader of
the database from using the token, but not from using the API: the cookie key must
be the same on every server, so it would have to sit in the database beside the
hash, and a forged cookie (with the CSRF token the same key gives) is as good as the
token. The database is already trusted with every journal, and whoever holds
NEXUS_DATABASE_URL can post commands into it directly; so the token stays readable,
and `nexus token show` works on any machine that reaches the database.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from nexus.config import Settings
from nexus.errors import ConfigError, StorageError
from nexus.storage.base import Schema, Store
from nexus.storage.migrations import Dialect


class TokenSource(Protocol):
    """The API token of a server, wherever it is kept."""

    where: str
    """Where the token is, for people: `NEXUS_API_TOKEN`, a file, the database."""

    def ensure(self) -> str:
        """The token, made on first use where NEXUS keeps it."""
        ...

    def read(self) -> str:
        """The current token (a rotation elsewhere shows within a second)."""
        ...

    def rotate(self) -> str:
        """Replace the token; returns the new one. `ConfigError` where NEXUS cannot."""
        ...

    def close(self) -> None:
        """Release what reading the token holds open."""
        ...


def _new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 random bits, 43 characters


class TokenFile:
    """The API token on disk, re-read when the file changes (rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._cached: tuple[float, str] | None = None

    def ensure(self) -> str:
        """The token, creating the file (0600) on first use."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write(_new_token())
        return self.read()

    def read(self) -> str:
        """The current token."""
        mtime = self.path.stat().st_mtime
        if self._cached is None or self._cached[0] != mtime:
            self._cached = (mtime, self.path.read_text(encoding="utf-8").strip())
        return self._cached[1]

    def rotate(self) -> str:
        """Replace the token; returns the new one."""
        token = _new_token()
        self._write(token)
        return token

    def close(self) -> None:
        """Nothing stays open."""

    def _write(self, token: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._cached = None


class EnvToken:
    """The token of `NEXUS_API_TOKEN`: fixed for the life of the process."""

    where = "NEXUS_API_TOKEN"

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def ensure(self) -> str:
        """The token as set."""
        return self._token.get_secret_value()

    def read(self) -> str:
        """The token as set."""
        return self._token.get_secret_value()

    def rotate(self) -> str:
        """Refused: the environment belongs to whoever started the servers."""
        raise ConfigError(
            "the API token comes from NEXUS_API_TOKEN, which NEXUS cannot rotate: set a "
            "new value there and restart every server"
        )

    def close(self) -> None:
        """Nothing stays open."""


SCHEMA = Schema(
    "server",
    (
        (
            1,
            # One row (id 1): the token every server on this database accepts.
            """
            CREATE TABLE api_token (
                id          INTEGER PRIMARY KEY CHECK (id = 1),
                token       TEXT NOT NULL,
                rotated_at  DOUBLE PRECISION NOT NULL
            )
            """,
        ),
    ),
)

# Written with `?`; PostgreSQL's driver takes `%s` (`DatabaseToken._execute`).
_READ = "SELECT token FROM api_token WHERE id = 1"
# Servers starting together on a fresh database: one insert wins, each reads the winner.
_CREATE = "INSERT INTO api_token VALUES (1, ?, ?) ON CONFLICT (id) DO NOTHING"
_REPLACE = (
    "INSERT INTO api_token VALUES (1, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET token = excluded.token, rotated_at = excluded.rotated_at"
)


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...


class _Connection(Protocol):
    """What both stores' `connect()` give (sqlite3 and psycopg, autocommit)."""

    def execute(self, sql: str, params: Sequence[object], /) -> _Cursor: ...

    def close(self) -> None: ...


class DatabaseToken:
    """The token in the store's database, cached for `ttl_s`.

    Read on every request, so it is cached: one query a second per server on a kept
    connection (0.06 ms on loopback PostgreSQL; a new connection each time would be
    2 ms, and far more over TLS). A rotation on another server is honoured here at
    most `ttl_s` later; one made here at once.

    Raises:
        StorageError: the database cannot be read (the server answers 503 rather than
            trust a token that may have been rotated meanwhile).
    """

    def __init__(self, store: Store, *, dialect: Dialect, ttl_s: float = 1.0) -> None:
        # `connect()` is the SQL stores' door for a subsystem's own tables.
        connect: Callable[[], _Connection] | None = getattr(store, "connect", None)
        if connect is None:
            raise ConfigError(f"the store {store.path} cannot keep the API token")
        store.migrate(SCHEMA)
        self.where = f"the database {store.path}"
        self.ttl_s = ttl_s
        self._connect = connect
        self._param = "?" if dialect == "sqlite" else "%s"
        self._db: _Connection | None = None
        self._cached: tuple[float, str] | None = None
        self._lock = threading.Lock()

    def ensure(self) -> str:
        """The token, made on first use by whichever server comes first."""
        return self.read()

    def read(self) -> str:
        """The token, from the cache while it is younger than `ttl_s`."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.ttl_s:
                self._cached = (now, self._fetch())
            return self._cached[1]

    def rotate(self) -> str:
        """Replace the token for every server on the database; returns the new one."""
        token = _new_token()
        with self._lock:
            self._execute(_REPLACE, (token, time.time()))
            self._cached = (time.monotonic(), token)
        return token

    def close(self) -> None:
        """Close the kept connection."""
        with self._lock:
            self._drop()

    def _fetch(self) -> str:
        row = self._execute(_READ).fetchone()
        if row is None:
            self._execute(_CREATE, (_new_token(), time.time()))
            row = self._execute(_READ).fetchone()
        return str(row[0])

    def _execute(self, sql: str, params: Sequence[object] = ()) -> _Cursor:
        """Run one statement on the kept connection; once more on a new one when it
        fails (a restarted database ends every connection). Each statement here may
        run twice: a read, an insert that does nothing when the row is there, an
        upsert of the same values."""
        sql = sql.replace("?", self._param)
        # sqlite3.Error and psycopg.Error share no base class below Exception.
        try:
            return self._run(sql, params)
        except Exception:
            self._drop()
        try:
            return self._run(sql, params)
        except Exception as exc:
            self._drop()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise StorageError(f"cannot read the API token from {self.where}: {reason}") from None

    def _run(self, sql: str, params: Sequence[object]) -> _Cursor:
        if self._db is None:
            self._db = self._connect()
        return self._db.execute(sql, params)

    def _drop(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            # A broken connection may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                db.close()


def token_source(settings: Settings, store: Callable[[], Store]) -> TokenSource:
    """The source the settings choose: `NEXUS_API_TOKEN`, else the database when the
    store is PostgreSQL (several servers on it accept one token with nothing else
    configured), else `NEXUS_HOME/api-token`. `store` opens the store only when the
    database is the source."""
    if settings.api_token is not None:
        return EnvToken(settings.api_token)
    if settings.database_url is not None:
        return DatabaseToken(store(), dialect="postgresql")
    return TokenFile(settings.home / "api-token")


@contextlib.contextmanager
def opened_token_source(settings: Settings) -> Iterator[TokenSource]:
    """`token_source` outside a runtime (the CLI): the store is opened only when the
    token lives in the database, and closed, with the source, after."""
    from nexus.storage.base import open_store

    opened: list[Store] = []

    def store() -> Store:
        url = settings.database_url
        secret = None if url is None else url.get_secret_value()
        opened.append(open_store(settings.db_path, settings.durability, url=secret))
        return opened[-1]

    try:
        tokens = token_source(settings, store)
        try:
            yield tokens
        finally:
            tokens.close()
    finally:
        for each in opened:
            each.close()
