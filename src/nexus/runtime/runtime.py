"""The runtime: settings, store, journal, agents and providers, assembled once.

`Runtime` is what the CLI, the server and the tests all call. It creates sessions
and runs them inline (`run`); `nexus.runtime.dispatch` runs them durably on
DBOS queues by calling the same `run`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nexus import events as ev
from nexus.config import Settings, load_settings
from nexus.errors import ConfigError, JournalError, NexusError, SessionNotFound
from nexus.observe.costs import Pricing
from nexus.observe.lost import LostCalls
from nexus.observe.otel import trace_export
from nexus.runtime.agents import Agent, AgentRegistry, Limits
from nexus.runtime.audit import KEY_FILE, AuditKeys
from nexus.runtime.control import Applied, Control, resume_pending
from nexus.runtime.fold import Conversation, CounterFold
from nexus.runtime.journal import Journal
from nexus.runtime.labels import check_labels
from nexus.runtime.loop import run_session
from nexus.runtime.pipeline import Pipeline, default_guards
from nexus.runtime.providers.replay import ReplayProvider
from nexus.runtime.redact import Redactor
from nexus.runtime.toolkits import ToolkitRegistry
from nexus.runtime.tools import EnvSecrets, ToolBox, ToolContext
from nexus.runtime.workers import worker_identity
from nexus.storage.base import SessionQuery, SessionRow, Store, open_store
from nexus.types import (
    JSON,
    Event,
    Guard,
    Projection,
    Provider,
    RunContext,
    SessionHook,
    SessionStatus,
    Step,
)

EXPORT_FORMAT = "nexus.session/1"
MAX_GOAL = 100_000
MAX_PRIORITY = 1000


def new_session_id() -> str:
    """A fresh, URL-safe session id."""
    return "s_" + secrets.token_hex(8)


class Runtime:
    """The assembled runtime (the kernel). Build with `Runtime.open()`; close with `aclose()`.

    Args:
        settings: the settings (default: `load_settings()`).
        store: storage (default: SQLite under `settings.home`).
        agents: agent registry (default: built-ins plus `NEXUS_HOME/agents/*.toml`).
        provider: a provider for every session that does not replay (default: the
            configured providers, else Ollama if it answers).
        guards: extra guards, merged with the kernel's by stage. A guard that is
            also a `Projection` or a `SessionHook` is registered as one too.
        hooks: components that see each session start, resume and end.
        projections: state folded from each session's journal, for components
            that are not guards.
        toolkits: the toolkit registry (default: built-ins and entry points, with
            `settings.toolkits` as their settings).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        agents: AgentRegistry | None = None,
        provider: Provider | None = None,
        guards: list[Guard] | None = None,
        hooks: list[SessionHook] | None = None,
        projections: list[Projection[Any]] | None = None,
        toolkits: ToolkitRegistry | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        url = self.settings.database_url
        self.store = store or open_store(
            self.settings.db_path,
            self.settings.durability,
            url=None if url is None else url.get_secret_value(),
        )
        self.redactor = Redactor()
        for p in self.settings.providers:
            if p.api_key is not None and len(p.api_key.get_secret_value()) >= 4:
                self.redactor.register(p.api_key.get_secret_value())
        # The environment's API token; a server registers one it reads elsewhere (auth.py).
        if self.settings.api_token is not None:
            self.redactor.register(self.settings.api_token.get_secret_value())
        self.journal = Journal(self.store, self.redactor, keys=_url_store_keys(self))
        self.toolkits = toolkits or ToolkitRegistry(self.settings.toolkits)
        self.agents = agents or AgentRegistry.load(self.settings.agents_dir, self.toolkits)
        self.control = Control(self.store, self.journal, poll_s=self.settings.control_poll_s)
        # Prices every LLM call (the recorder's `llm.response`, budgets' estimates).
        self.pricing = Pricing.from_settings(self.settings)
        # First: a call lost in flight is accounted before any hook may end the session.
        self.lost_calls = LostCalls()
        from nexus.observe.budgets import BudgetGuard

        self.budgets = BudgetGuard(
            self.store,
            self.settings.budgets,
            post=self.control.post,
            session_action=self.settings.budget_action,
            session_alert_at=self.settings.budget_alert_at,
        )
        from nexus.observe.loops import LoopGuard

        self.guards: list[Guard] = [
            self.control,
            *default_guards(),
            self.budgets,
            LoopGuard(self.control.post),
            *(guards or []),
        ]
        # Spans over OTLP when an endpoint is configured (nexus.observe.otel).
        self.traces = trace_export(self.settings, self.redactor, self.journal)
        observers = [] if self.traces is None else [self.traces]
        self.hooks: list[SessionHook] = [
            self.lost_calls,
            *(g for g in self.guards if isinstance(g, SessionHook)),
            *(hooks or []),
            *observers,
        ]
        self.projections: list[Projection[Any]] = [
            self.lost_calls,
            *(g for g in self.guards if isinstance(g, Projection)),
            *(projections or []),
            *observers,
        ]
        self._provider = provider
        self._owned: list[Any] = []
        # Who runs this process's sessions (the claim of each run names it); a
        # dispatcher sets its executor id.
        self.worker_id = worker_identity(self.settings)

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

        Every input is checked before anything is written (`ConfigError` naming
        the bad one), and the agent is recorded as resolved now (prompt, model,
        tools, limits): a resumed session runs with that record, not with the
        agent's definition of the day. `limits` overrides the agent's limits for
        this session (keys of `Limits`); `replay_pace_s` waits that long before
        each replayed answer (demos).
        """
        if not isinstance(goal, str) or not goal.strip():
            raise ConfigError("a session needs a non-empty goal")
        if len(goal) > MAX_GOAL:
            raise ConfigError(f"the goal is {len(goal)} characters, over {MAX_GOAL}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigError("priority must be an integer")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ConfigError(f"priority must be from 0 (the highest) to {MAX_PRIORITY}")
        if model is not None and not (0 < len(model) <= 200):
            raise ConfigError("model must be 1-200 characters")
        if not 0 <= replay_pace_s <= 60:
            raise ConfigError("replay_pace_s must be from 0 to 60 seconds")
        clean_labels = check_labels(labels)
        name = agent or self.settings.default_agent
        chosen = self.agents.get(name)  # unknown agent: fail before anything is written
        session = session_limits(chosen.limits, limits)  # invalid budget: fail now
        toolbox = chosen.toolbox(self.toolkits)
        if replay is not None:
            self._replay_provider(replay)  # bad replay source: fail now, clearly
        session_id = new_session_id()
        payload: JSON = {
            "goal": goal,
            "agent": name,
            "priority": priority,
            "labels": clean_labels,
            "spec": agent_spec(chosen, model=model, limits=session, toolbox=toolbox),
        }
        if replay is not None:
            payload["replay"] = replay
            if replay_pace_s:
                payload["replay_pace_s"] = replay_pace_s
        if model is not None:
            payload["model"] = model
        if limits:
            payload["limits"] = limits
        self.journal.append(session_id, ev.SESSION_CREATED, payload)
        return session_id

    async def run(self, session_id: str) -> SessionStatus:
        """Run or resume a session in this task until it ends.

        A session that cannot run at all (its agent or toolkit is gone, no LLM
        provider, a bad replay source) ends `failed` with the reason journaled."""
        # Claim before reading: from here on, an older run's appends are refused, and
        # everything it committed before is in what this run reads (a run that read
        # first could miss a completion committed meanwhile, and finish it twice).
        try:
            epoch = self.store.claim_session(session_id, self.worker_id)
        except JournalError:
            self.session(session_id)  # SessionNotFound, when that is why
            raise
        self.journal.fence(session_id, epoch)
        row = self.session(session_id)
        # The database is the truth: another process may have run part of this
        # session since this one cached its chain head (it created it, say).
        events = self.journal.events(session_id)
        self.journal.resume_after(session_id, events)
        if SessionStatus(row.status).finished:
            self.journal.fence(session_id, None)
            return SessionStatus(row.status)
        if row.status == SessionStatus.PAUSED.value and not resume_pending(self.store, events):
            self.journal.fence(session_id, None)
            return SessionStatus.PAUSED  # a stale run of a paused session: wait for a resume
        created = events[0].payload
        try:
            try:
                run, spec = await self._prepare(session_id, created, epoch)
            except NexusError as exc:
                await self.fail_session(session_id, f"{type(exc).__name__}: {exc}")
                return SessionStatus.FAILED
            return await run_session(
                run,
                Pipeline(self.guards, run),
                events,
                model=spec["model"],
                tools=spec["tools"],
                hooks=self.hooks,
            )
        finally:
            self.journal.fence(session_id, None)

    async def fail_session(self, session_id: str, reason: str) -> bool:
        """End a session that cannot run (or could not be dispatched) `failed`, with
        the reason journaled; False if it had already ended."""
        row = self.store.session(session_id)
        if row is None or SessionStatus(row.status).finished:
            return False
        steps = row.steps
        self.journal.discard(session_id)
        await self.journal.append_async(
            session_id, ev.SESSION_FAILED, {"reason": reason, "steps": steps}, reason=reason
        )
        self.journal.forget(session_id)
        return True

    async def _prepare(
        self, session_id: str, created: JSON, epoch: int
    ) -> tuple[RunContext, ev.AgentSpec]:
        spec: ev.AgentSpec | None = created.get("spec")
        agent: Agent | None = None
        if spec is None:  # a session created before the agent was recorded
            agent = self.agents.get(created["agent"])
            limits = session_limits(agent.limits, created.get("limits"))
            spec = agent_spec(agent, model=created.get("model"), limits=limits)
        toolbox = self._toolbox(created["agent"], spec, agent)
        limits = Limits.model_validate(spec["limits"])
        provider: Provider
        replay = created.get("replay")
        if replay:
            replayer = self._replay_provider(replay)
            replayer.pace_s = float(created.get("replay_pace_s", 0.0))
            provider = replayer
        else:
            provider = await self.provider()
        kit_settings = {kit.name: await self.toolkits.open(kit) for kit in toolbox.toolkits()}
        workspace = self.workspace(session_id)
        workspace.mkdir(parents=True, exist_ok=True)

        def tool_context(step: Step) -> ToolContext:
            name = step.tool_call().name
            kit = toolbox.toolkit_of(name)
            tool = toolbox.get(name)
            return ToolContext(
                session_id=session_id,
                step=step.number,
                idempotency_key=step.idempotency_key,
                workspace=workspace,
                retry=step.retry,
                attempt=step.attempt,
                settings=None if kit is None else kit_settings.get(kit.name),
                secrets=EnvSecrets(() if tool is None else tool.secrets, redactor=self.redactor),
                stopped=self.control.stop_event(session_id),
                epoch=epoch,
                current_epoch=lambda: self.store.session_owner(session_id)[0],
            )

        run = RunContext(
            session_id=session_id,
            agent_name=spec["name"],
            journal=self.journal,
            provider=provider,
            toolbox=toolbox,
            limits=limits,
            tool_context=tool_context,
            projections=[
                Conversation(
                    system_prompt=spec["system_prompt"],
                    max_calls_per_turn=limits.max_tool_calls_per_turn,
                ),
                CounterFold(),
                Applied(),
                *self.projections,
            ],
            max_tool_result_bytes=self.settings.max_tool_result_bytes,
            pricing=self.pricing.with_provider(provider),
        )
        return run, spec

    def _toolbox(self, name: str, spec: ev.AgentSpec, agent: Agent | None) -> ToolBox:
        """The agent's tools today; if the agent is gone, its recorded toolkits."""
        if agent is None:
            try:
                agent = self.agents.get(name)
            except ConfigError:
                kits = [self.toolkits.get(k) for k in spec["toolkits"]]
                return ToolBox(kits)
        return agent.toolbox(self.toolkits)

    def session(self, session_id: str) -> SessionRow:
        """The session's index row; raises `SessionNotFound`."""
        row = self.store.session(session_id)
        if row is None:
            raise SessionNotFound(f"no session {session_id!r}")
        return row

    def resolve(self, given: str) -> str:
        """The session id `given` names: itself, or the one id it is a prefix of.
        `SessionNotFound` if none; `ConfigError` naming the candidates if several."""
        if self.store.session(given) is not None:
            return given
        found = self.store.ids_with_prefix(given, 6) if given else []
        if not found:
            raise SessionNotFound(f"no session {given!r}")
        if len(found) > 1:
            shown = ", ".join(found[:5]) + (", …" if len(found) > 5 else "")
            raise ConfigError(f"{given!r} is the start of several session ids: {shown}")
        return found[0]

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
        """The default provider stack (`nexus.runtime.providers.compose`); raises
        `NoProviderConfigured` in one clear line."""
        if self._provider is not None:
            return self._provider
        from nexus.runtime.providers.compose import open_provider

        prov = await open_provider(self.settings)
        self._provider = prov
        self._owned.append(prov)
        return prov

    def _replay_provider(self, source: str) -> ReplayProvider:
        # A session id first: it must never depend on which files the working
        # directory happens to hold.
        if self.store.session(source) is not None:
            return ReplayProvider.from_events(self.journal.events(source), source=source)
        path = Path(source).expanduser()
        if path.is_file():
            return ReplayProvider.from_file(path)
        raise ConfigError(f"replay source {source!r} is neither a file nor a session id")

    async def aclose_providers(self) -> None:
        """Close the providers this runtime opened (their connection pools)."""
        for owned in self._owned:
            await owned.aclose()
        self._owned.clear()
        self._provider = None

    async def aclose(self) -> None:
        """Close owned providers, opened toolkits and the store."""
        await self.control.aclose()
        self.budgets.close()
        if self.traces is not None:  # flushes what is queued: a thread's blocking wait
            await asyncio.to_thread(self.traces.shutdown)
        await self.aclose_providers()
        await self.toolkits.aclose()
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


def agent_spec(
    agent: Agent, *, model: str | None, limits: Limits, toolbox: ToolBox | None = None
) -> ev.AgentSpec:
    """The record of `agent` as a session will run it."""
    box = toolbox or agent.toolbox()
    return {
        "name": agent.name,
        "system_prompt": agent.system_prompt,
        "model": model or agent.model,
        "toolkits": agent.toolkit_names(),
        "tools": box.specs,
        "limits": limits.model_dump(),
    }


def export_document(session: JSON, events: Iterable[Event]) -> JSON:
    """The export format (`nexus export`, `--replay FILE`) of a session row and its events."""
    return {"format": EXPORT_FORMAT, "session": session, "events": [e.to_dict() for e in events]}


def dump_export(data: JSON) -> str:
    """An export as pretty JSON text."""
    return json.dumps(data, indent=2, ensure_ascii=False)


def _url_store_keys(rt: Runtime) -> AuditKeys | None:
    """The audit keys of a store behind a URL (PostgreSQL): it has no folder to keep
    them beside, so they live in the home, which nothing else may have created yet.
    None for a store in a file (the keys beside it)."""
    if "://" not in rt.store.path:
        return None
    rt.settings.home.mkdir(parents=True, exist_ok=True)
    return AuditKeys(rt.settings.home / KEY_FILE)
