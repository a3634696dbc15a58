"""The runtime: settings, store, journal, agents and providers, assembled once.

`Runtime` is what the CLI, the server and the tests all call. It creates sessions
and runs them inline (`run`); `nexus.runtime.dispatch` runs them durably on
DBOS queues by calling the same `run`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nexus.config import Settings, load_settings
from nexus.errors import ConfigError, NoProviderConfigured, SessionNotFound
from nexus.runtime.agents import AgentRegistry, Limits
from nexus.runtime.journal import Journal
from nexus.runtime.loop import run_session
from nexus.runtime.pipeline import Guard, default_guards
from nexus.runtime.providers.replay import ReplayProvider
from nexus.runtime.redact import Redactor
from nexus.storage.base import SessionQuery, SessionRow, Store, open_store
from nexus.types import JSON, Event, Provider, SessionStatus

EXPORT_FORMAT = "nexus.session/1"


def new_session_id() -> str:
    """A fresh, URL-safe session id."""
    return "s_" + secrets.token_hex(8)


class Runtime:
    """The assembled kernel. Build with `Runtime.open()`; close with `aclose()`.

    Args:
        settings: the settings (default: `load_settings()`).
        store: storage (default: SQLite under `settings.home`).
        agents: agent registry (default: built-ins plus `NEXUS_HOME/agents/*.toml`).
        provider: a provider for every session that does not replay (default: the
            first configured provider, else Ollama if it answers).
        guards: extra guards, merged with the kernel's by stage.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        agents: AgentRegistry | None = None,
        provider: Provider | None = None,
        guards: list[Guard] | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.store = store or open_store(self.settings.db_path, self.settings.durability)
        self.redactor = Redactor()
        for p in self.settings.providers:
            if p.api_key is not None and len(p.api_key.get_secret_value()) >= 4:
                self.redactor.register(p.api_key.get_secret_value())
        self.journal = Journal(self.store, self.redactor)
        self.agents = agents or AgentRegistry.load(self.settings.agents_dir)
        self.guards: list[Guard] = [*default_guards(), *(guards or [])]
        self._provider = provider
        self._owned: list[Any] = []

    @classmethod
    def open(cls, **overrides: Any) -> Runtime:
        """A runtime on `load_settings(**overrides)`."""
        return cls(load_settings(**overrides))

    # -- sessions -----------------------------------------------------------------

    def create_session(
        self,
        goal: str,
        *,
        agent: str | None = None,
        priority: int = 0,
        labels: dict[str, str] | None = None,
        replay: str | None = None,
        replay_pace_s: float = 0.0,
        model: str | None = None,
        limits: dict[str, Any] | None = None,
    ) -> str:
        """Journal a new `queued` session and return its id (it does not run yet).

        `limits` overrides the agent's limits for this session (keys of `Limits`);
        `replay_pace_s` waits that long before each replayed answer (demos).
        """
        if not goal.strip():
            raise ConfigError("a session needs a non-empty goal")
        name = agent or self.settings.default_agent
        chosen = self.agents.get(name)  # unknown agent: fail before anything is written
        if limits:
            session_limits(chosen.limits, limits)  # invalid budget: fail now
        if replay is not None:
            self._replay_provider(replay)  # bad replay source: fail now, clearly
        session_id = new_session_id()
        payload: JSON = {
            "goal": goal,
            "agent": name,
            "priority": priority,
            "labels": labels or {},
        }
        if replay is not None:
            payload["replay"] = replay
            if replay_pace_s:
                payload["replay_pace_s"] = replay_pace_s
        if model is not None:
            payload["model"] = model
        if limits:
            payload["limits"] = limits
        self.journal.append(session_id, "session.created", payload)
        return session_id

    async def run(self, session_id: str) -> SessionStatus:
        """Run or resume a session in this task until it ends."""
        row = self.session(session_id)
        if SessionStatus(row.status).finished:
            return SessionStatus(row.status)
        created = self.journal.events(session_id)[0].payload
        agent = self.agents.get(created["agent"])
        replay = created.get("replay")
        provider: Provider
        if replay:
            replayer = self._replay_provider(replay)
            replayer.pace_s = float(created.get("replay_pace_s", 0.0))
            provider = replayer
        else:
            provider = await self.provider()
        return await run_session(
            session_id,
            journal=self.journal,
            agent=agent,
            provider=provider,
            guards=self.guards,
            workspace=self.workspace(session_id),
            allow_hosts=tuple(self.settings.http_allow_hosts),
            limits=session_limits(agent.limits, created.get("limits")),
        )

    def session(self, session_id: str) -> SessionRow:
        """The session's index row; raises `SessionNotFound`."""
        row = self.store.session(session_id)
        if row is None:
            raise SessionNotFound(f"no session {session_id!r}")
        return row

    def sessions(self, query: SessionQuery | None = None) -> list[SessionRow]:
        """Sessions, newest first."""
        return self.store.sessions(query or SessionQuery())

    def workspace(self, session_id: str) -> Path:
        """The session's private folder."""
        return self.settings.workspaces_dir / session_id

    def export(self, session_id: str) -> JSON:
        """The session and its events as JSON data, replayable with `--replay`."""
        return export_document(self.session(session_id).to_dict(), self.journal.events(session_id))

    # -- providers ------------------------------------------------------------------

    async def provider(self) -> Provider:
        """The default provider; raises `NoProviderConfigured` in one clear line."""
        if self._provider is not None:
            return self._provider
        from nexus.runtime.providers.openai import OpenAIProvider, probe

        s = self.settings
        if s.providers:
            p = s.providers[0]
            prov = OpenAIProvider(
                name=p.name,
                base_url=p.base_url,
                model=p.model,
                api_key=p.api_key.get_secret_value() if p.api_key else None,
                timeout_s=p.timeout_s,
                retries=p.retries,
                price_in_per_1m=p.price_in_per_1m,
                price_out_per_1m=p.price_out_per_1m,
            )
        else:
            models = await probe(s.ollama_url)
            if models is None:
                raise NoProviderConfigured(
                    f"no LLM provider: none is configured and Ollama does not answer at "
                    f"{s.ollama_url}; start Ollama, set NEXUS_PROVIDERS (see README), "
                    f"or replay a recorded session with --replay FILE"
                )
            model = s.ollama_model if s.ollama_model in models or not models else models[0]
            prov = OpenAIProvider(name="ollama", base_url=s.ollama_url, model=model)
        self._provider = prov
        self._owned.append(prov)
        return prov

    def _replay_provider(self, source: str) -> ReplayProvider:
        path = Path(source).expanduser()
        if path.is_file():
            return ReplayProvider.from_file(path)
        if self.store.session(source) is not None:
            return ReplayProvider.from_events(self.journal.events(source), source=source)
        raise ConfigError(f"replay source {source!r} is neither a file nor a session id")

    async def aclose_providers(self) -> None:
        """Close the providers this runtime opened (their connection pools)."""
        for owned in self._owned:
            await owned.aclose()
        self._owned.clear()
        self._provider = None

    async def aclose(self) -> None:
        """Close owned providers and the store."""
        await self.aclose_providers()
        self.store.close()


def session_limits(base: Limits, override: dict[str, Any] | None) -> Limits:
    """The agent's limits with a session's budget laid over them; `ConfigError` if
    the budget is invalid."""
    if not override:
        return base
    try:
        return Limits.model_validate({**base.model_dump(), **override})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid budget: {problems}") from None


def export_document(session: JSON, events: Iterable[Event]) -> JSON:
    """The export format (`nexus export`, `--replay FILE`) of a session row and its events."""
    return {"format": EXPORT_FORMAT, "session": session, "events": [e.to_dict() for e in events]}


def dump_export(data: JSON) -> str:
    """An export as pretty JSON text."""
    return json.dumps(data, indent=2, ensure_ascii=False)
