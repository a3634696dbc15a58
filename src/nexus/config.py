"""Settings: one object, from `NEXUS_*` environment variables and an optional TOML file.

Precedence, highest first: keyword overrides, environment (`NEXUS_DURABILITY=full`,
nested with `__`: `NEXUS_PROVIDERS='[...]'` as JSON), the TOML file
(`NEXUS_CONFIG`, else `$NEXUS_HOME/nexus.toml`), defaults.
"""

from __future__ import annotations

import os
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from nexus.errors import ConfigError

DEFAULT_HOME = Path("~/.nexus")


class BudgetRule(BaseModel):
    """A spending cap shared by sessions over a rolling window: every session
    (`scope = "global"`) or one agent's (`scope = "agent:NAME"`)."""

    model_config = {"extra": "forbid"}

    scope: str = Field(pattern=r"^(global|agent:[a-zA-Z0-9_.-]{1,64})$")
    usd: float = Field(gt=0, le=1_000_000_000)
    window_s: float = Field(default=3600.0, gt=0, le=31 * 86400, description="rolling window")
    action: Literal["pause", "kill"] = Field(
        default="pause", description="what happens to the session whose call would pass it"
    )
    alert_at: float = Field(default=0.8, gt=0, lt=1, description="alert at this fraction")


class ProviderSettings(BaseModel):
    """One OpenAI-compatible endpoint."""

    model_config = {"extra": "forbid"}

    name: str
    base_url: str
    model: str
    api_key: SecretStr | None = None
    price_in_per_1m: float | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description=(
            "USD per 1M prompt tokens at this endpoint, over the price table (set either "
            "price: the other is then 0; set them on a local endpoint to charge for it)"
        ),
    )
    price_out_per_1m: float | None = Field(default=None, ge=0, le=1_000_000)
    timeout_s: float = Field(
        default=60.0, gt=0, description="deadline of one LLM call, retries and waits included"
    )
    retries: int = Field(default=2, ge=0, le=10)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(
        default=30.0, gt=0, description="wait for the first byte of an answer (and each next)"
    )
    max_connections: int | None = Field(
        default=None, ge=1, le=100_000, description="connection pool size (default: concurrency)"
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="max_tokens of every call to this model (wins over the agent's)",
    )
    max_response_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    context_window: int | None = Field(
        default=None, ge=1, description="usage beyond it is treated as missing"
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class PriceSetting(BaseModel):
    """A model's price, over the shipped table: `[prices."MODEL"]` in nexus.toml, or
    `NEXUS_PRICES='{"MODEL": {"input": 2.5, "output": 10}}'`."""

    model_config = {"extra": "forbid"}

    input: Decimal = Field(ge=0, le=1_000_000, description="USD per 1M prompt tokens")
    output: Decimal = Field(ge=0, le=1_000_000, description="USD per 1M completion tokens")
    context_window: int | None = Field(default=None, ge=1, le=1_000_000_000)


MAX_PRICES = 10_000


class Settings(BaseSettings):
    """Every NEXUS setting. Build it with `load_settings()`."""

    model_config = SettingsConfigDict(
        env_prefix="NEXUS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(default=DEFAULT_HOME, description="Folder holding all NEXUS state.")
    durability: Literal["normal", "full"] = Field(
        default="normal",
        description=(
            "SQLite synchronous mode for the journal. `normal` survives process crashes; "
            "after a power loss the last step may run again (idempotency keys absorb it). "
            "`full` fsyncs every step."
        ),
    )
    providers: list[ProviderSettings] = Field(default_factory=list)
    ollama_url: str = "http://localhost:11434/v1"
    ollama_model: str = "llama3.2"
    default_agent: str = "assistant"
    concurrency: int = Field(default=50, ge=1, le=10_000, description="Sessions in flight.")
    # How often a worker claims sessions off the queue. 0.05 s rather than 0.2 s: short
    # sessions ran at 113 runs/s instead of 87 on one PostgreSQL worker, 165 instead of
    # 109 on SQLite, and 1,000 sessions in flight finished within 1.27x of the ideal
    # instead of 1.38x (bench.scale), for 4.7% more of a core while the worker idles.
    queue_poll_s: float = Field(default=0.05, gt=0, le=60)
    audit_checkpoint_events: int = Field(
        default=1000,
        ge=1,
        description="A worker signs a checkpoint of every session's head after this many events.",
    )
    audit_checkpoint_s: float = Field(
        default=60.0, gt=0, description="…or after this many seconds with any event."
    )
    control_poll_s: float = Field(
        default=0.05,
        gt=0,
        le=5,
        description="How often a worker reads commands (kill, pause) posted by other processes.",
    )
    worker_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description=(
            "This worker's id (its DBOS executor id): letters, digits, '.', '_', '-' (up to "
            "64; `run-` is kept for `nexus run`). Default: `local` on SQLite; on PostgreSQL "
            "the host name and a random suffix kept in NEXUS_HOME/worker-id."
        ),
    )
    heartbeat_s: float = Field(
        default=3.0, gt=0, le=60, description="How often a worker beats its heartbeat row."
    )
    worker_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description=(
            "A worker whose heartbeat is older than this is declared dead and its "
            "unfinished sessions are handed to the living."
        ),
    )
    database_url: SecretStr | None = Field(
        default=None,
        description=(
            "The journal, session index and commands: default SQLite (nexus.db in "
            "NEXUS_HOME); postgresql://user:pass@host/db to keep them in PostgreSQL "
            "(the `postgres` extra)."
        ),
    )
    dbos_url: str | None = Field(
        default=None,
        description=(
            "DBOS system database: default the store's PostgreSQL database when "
            "NEXUS_DATABASE_URL is set, else SQLite in NEXUS_HOME; "
            "postgresql://user:pass@host/db to share one queue between many workers."
        ),
    )
    api_token: SecretStr | None = Field(
        default=None,
        description=(
            "The API token every server accepts, the same on all of them (at least 32 "
            "visible characters; never shown). Unset: the token is kept in the database "
            "when NEXUS_DATABASE_URL is set, else in NEXUS_HOME/api-token."
        ),
    )
    app_version: str = Field(default="nexus-1", min_length=1)
    toolkits: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description=(
            "Settings sections of toolkits, by name: `[toolkits.http]` in nexus.toml, "
            "NEXUS_TOOLKITS__HTTP__ALLOW_HOSTS='[\"a.example\"]'; each toolkit validates its own."
        ),
    )
    max_tool_result_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="A tool result larger than this (as JSON) goes back to the model as an error.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    # -- observability: budgets and alerts -----------------------------------------------
    budgets: list[BudgetRule] = Field(
        default_factory=list,
        description=(
            "Shared spending caps: `[[budgets]]` in nexus.toml with scope (global or "
            "agent:NAME), usd, window_s (rolling, default 3600), action (pause|kill), "
            "alert_at (default 0.8). A session's own cap is its agent's max_cost_usd."
        ),
    )
    budget_action: Literal["pause", "kill"] = Field(
        default="pause",
        description="What a session whose next call would pass its own max_cost_usd becomes.",
    )
    budget_alert_at: float = Field(
        default=0.8, gt=0, lt=1, description="A session's own budget alerts at this fraction."
    )
    alert_webhook_url: SecretStr | None = Field(
        default=None,
        description=(
            "Alerts (budgets, loops) are POSTed here as JSON, once each, by the server "
            "(http:// or https://; kept secret: a chat webhook's URL is its key)."
        ),
    )
    # -- observability: metrics -------------------------------------------------------
    metrics_public: bool = Field(
        default=False,
        description=(
            "Serve /metrics without the API token (a scraper on a private network); "
            "default: a scrape needs the token as a bearer token, like the API."
        ),
    )
    # -- cost accounting (issue 11) --
    prices: dict[str, PriceSetting] = Field(
        default_factory=dict,
        description=(
            "Model prices over the shipped table (nexus/observe/prices.json), by model "
            "name as sent or answered: input and output USD per 1M tokens, context_window. "
            "An endpoint's own price_in_per_1m/price_out_per_1m win over both."
        ),
    )

    @field_validator("prices")
    @classmethod
    def _price_names(cls, value: dict[str, PriceSetting]) -> dict[str, PriceSetting]:
        if len(value) > MAX_PRICES:
            raise ValueError(f"at most {MAX_PRICES} model prices")
        for name in value:
            if not 0 < len(name.strip()) <= 200:
                raise ValueError(f"model names must be 1-200 characters (got {name[:40]!r})")
        return value

    # -- observability: traces (OTLP export; nexus.observe.otel) ------------------------
    otlp_endpoint: str | None = Field(
        default=None,
        description=(
            "Export each session's spans over OTLP/HTTP (protobuf) to this collector: a base "
            "URL (http://collector:4318, `/v1/traces` is added) or the full traces URL. "
            "Unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT; "
            "none of them: no export. Needs the `otel` extra."
        ),
    )
    otlp_headers: SecretStr | None = Field(
        default=None,
        description=(
            "Headers of every export, `key=value,key2=value2` (the format of "
            "OTEL_EXPORTER_OTLP_HEADERS, read when this is unset); never shown."
        ),
    )
    otlp_service_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The spans' service.name (unset: OTEL_SERVICE_NAME, else `nexus`).",
    )
    otlp_timeout_s: float = Field(default=10.0, gt=0, le=300, description="Deadline of one export.")
    otlp_batch_delay_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Finished spans wait at most this long to leave in one batch.",
    )
    trace_content: bool = Field(
        default=False,
        description=(
            "Put prompts, completions, tool arguments and results in exported spans "
            "(always redacted); off: names, models, tokens, costs, timings and statuses only."
        ),
    )

    @field_validator("worker_id")
    @classmethod
    def _not_a_run(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("run-"):
            raise ValueError("`run-` starts the executor ids of `nexus run`; choose another")
        return value

    @model_validator(mode="after")
    def _timeout_spans_beats(self) -> Settings:
        if self.worker_timeout_s < 2 * self.heartbeat_s:
            raise ValueError(
                f"worker_timeout_s ({self.worker_timeout_s}) must be at least twice "
                f"heartbeat_s ({self.heartbeat_s}): one late beat must not declare a worker dead"
            )
        return self

    @field_validator("home", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (OTLP over HTTP)")
        return value

    @field_validator("otlp_headers")
    @classmethod
    def _otlp_headers(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_headers(value.get_secret_value())  # ValueError names the bad entry
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("must start with postgresql:// (unset: SQLite in NEXUS_HOME)")
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("api_token")
    @classmethod
    def _api_token(cls, value: SecretStr | None) -> SecretStr | None:
        # Stripped: a token pasted from a file often ends in a newline, and clients
        # strip what they send. At least 32 characters: the generated tokens have 43,
        # and this one guards every server at once.
        if value is None:
            return None
        token = value.get_secret_value().strip()
        if len(token) < 32 or not all("!" <= c <= "~" for c in token):
            raise ValueError("must be at least 32 visible ASCII characters, without spaces")
        return SecretStr(token)

    @field_validator("dbos_url")
    @classmethod
    def _dbos_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("sqlite:///", "postgresql://", "postgresql+psycopg://")
        ):
            raise ValueError("must start with sqlite:///, postgresql:// or postgresql+psycopg://")
        return value

    @property
    def db_path(self) -> Path:
        """The journal's SQLite file."""
        return self.home / "nexus.db"

    @property
    def dbos_path(self) -> Path:
        """DBOS's own SQLite system database."""
        return self.home / "dbos.sqlite"

    @property
    def system_database_url(self) -> str | None:
        """Where DBOS keeps its queue and workflows: `dbos_url` if set, else the
        store's PostgreSQL database when the store is PostgreSQL (one URL to set),
        else None: SQLite at `dbos_path`."""
        if self.dbos_url is not None:
            return self.dbos_url
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return None

    @property
    def agents_dir(self) -> Path:
        """Folder of TOML agent definitions."""
        return self.home / "agents"

    @property
    def workspaces_dir(self) -> Path:
        """Parent of the per-session workspace folders."""
        return self.home / "workspaces"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        given = getattr(init_settings, "init_kwargs", {}).get("home")
        toml = _toml_path(None if given is None else Path(given))
        if toml is not None:
            try:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{toml}: invalid TOML: {exc}") from None
        return tuple(sources)


def _toml_path(home: Path | None = None) -> Path | None:
    """The TOML file to read: NEXUS_CONFIG, else `nexus.toml` in the home given to
    `load_settings(home=...)`, else in NEXUS_HOME, else in the default home."""
    explicit = os.environ.get("NEXUS_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"NEXUS_CONFIG: no such file: {path}")
        return path
    if home is None:
        home = Path(os.environ.get("NEXUS_HOME") or DEFAULT_HOME)
    home = home.expanduser()
    candidate = home / "nexus.toml"
    return candidate if candidate.is_file() else None


def parse_headers(text: str) -> dict[str, str]:
    """`key=value,key2=value2` (OTEL_EXPORTER_OTLP_HEADERS's format, values
    percent-decoded) as a dict; `ValueError` naming an entry without `=` or a key."""
    from urllib.parse import unquote

    headers: dict[str, str] = {}
    for number, item in enumerate(text.split(","), 1):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"entry {number} is not key=value")
        headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, or raise `ConfigError` naming each bad setting.

    Example message: `NEXUS_DURABILITY: Input should be 'normal' or 'full' (got 'fast')`.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # pydantic-settings cannot decode a value, e.g. bad JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = "NEXUS_" + field.group(1).upper() if field else "settings"
        raise ConfigError(f"invalid settings:\n  {name}: {exc} (expected JSON)") from None


# Settings whose value may hold a password: a refusal names them, never echoes them.
_SECRET_SETTINGS = frozenset({"database_url", "api_token", "alert_webhook_url", "otlp_headers"})


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = "NEXUS_" + "__".join(str(p).upper() for p in err["loc"])
        got = err.get("input")
        secret = bool(err["loc"]) and err["loc"][0] in _SECRET_SETTINGS
        shown = "" if isinstance(got, dict) or secret else f" (got {got!r})"
        lines.append(f"{name}: {err['msg']}{shown}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def public_view(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-safe data, with secrets masked (for `nexus config show`)."""
    return settings.model_dump(mode="json")
