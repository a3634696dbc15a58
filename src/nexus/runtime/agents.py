"""Agents: a system prompt, a model preference, toolkits and limits.

Defined in Python (`Agent(...)`) or as TOML files under `NEXUS_HOME/agents/`:

```toml
name = "researcher"
system_prompt = "You research questions using the files in your workspace."
model = "llama3.2"
toolkits = ["workspace", "http"]

[limits]
max_steps = 20
max_cost_usd = 0.50
```
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nexus.errors import ConfigError
from nexus.runtime.toolkits import ToolkitRegistry
from nexus.runtime.tools import ToolBox, Toolkit
from nexus.types import JSON


class LoopPolicy(BaseModel):
    """How the loop guard watches an agent's sessions (`nexus.observe.loops`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    repeats: int = Field(default=3, ge=2, le=100, description="repetitions that make a loop")
    window: int = Field(default=20, ge=2, le=200, description="tool calls looked back at")
    max_period: int = Field(default=4, ge=2, le=20, description="longest cycle looked for")
    similarity: float = Field(default=0.95, gt=0, le=1, description="near-duplicate answers")
    action: Literal["pause", "kill"] = "pause"


class Limits(BaseModel):
    """How far one session of an agent may go; `None` means unbounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int | None = Field(default=50, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_wall_s: float | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, ge=0)
    max_tokens_per_call: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="max_tokens sent with every LLM call (a provider's model setting wins)",
    )
    max_tool_calls_per_turn: int = Field(
        default=16, ge=1, le=1000, description="calls of one response past this are refused"
    )
    loops: LoopPolicy = Field(default_factory=LoopPolicy)


class _AgentFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    system_prompt: str
    description: str = ""
    model: str | None = None
    toolkits: list[str] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)


DEFAULT_PROMPT = (
    "You are a careful assistant working inside a private workspace folder. Use the "
    "tools to inspect and change files, then give a short final answer."
)


@dataclass(frozen=True)
class Agent:
    """One kind of worker: what it is told, which model it prefers, what it may use."""

    name: str
    system_prompt: str = DEFAULT_PROMPT
    model: str | None = None
    toolkits: tuple[str | Toolkit, ...] = ("workspace",)
    limits: Limits = field(default_factory=Limits)
    description: str = ""
    source: str = "python"

    def toolbox(self, registry: ToolkitRegistry | None = None) -> ToolBox:
        """The tools of this agent, resolving toolkit names in `registry` (default:
        the built-ins and installed entry points)."""
        registry = registry or ToolkitRegistry()
        kits: list[Toolkit] = []
        for kit in self.toolkits:
            if isinstance(kit, Toolkit):
                kits.append(kit)
                continue
            try:
                kits.append(registry.get(kit))
            except ConfigError as exc:
                raise ConfigError(f"agent {self.name}: {exc}") from None
        return ToolBox(kits)

    def toolkit_names(self) -> list[str]:
        """The names of its toolkits."""
        return [k if isinstance(k, str) else k.name for k in self.toolkits]

    def to_dict(self) -> JSON:
        """As plain data (for listings)."""
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "toolkits": self.toolkit_names(),
            "limits": self.limits.model_dump(),
            "source": self.source,
        }


def load_agent_file(path: Path, toolkits: ToolkitRegistry | None = None) -> Agent:
    """Read one TOML agent definition; raises `ConfigError` naming the file (and any
    toolkit it names that `toolkits` does not know)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        spec = _AgentFile.model_validate(raw)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"agent file {path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"agent file {path}: {problems}") from None
    agent = Agent(
        name=spec.name,
        system_prompt=spec.system_prompt,
        model=spec.model,
        toolkits=tuple(spec.toolkits),
        limits=spec.limits,
        description=spec.description,
        source=str(path),
    )
    try:
        agent.toolbox(toolkits)  # fail now on unknown toolkits, not when a session starts
    except ConfigError as exc:
        raise ConfigError(f"agent file {path}: {exc}") from None
    return agent


BUILTIN_AGENTS = (
    Agent(
        name="assistant",
        description="General assistant with a workspace folder and loopback HTTP fetch.",
        toolkits=("workspace", "http"),
        source="builtin",
    ),
)


class AgentRegistry:
    """Agents by name: built-ins, then TOML files, then Python registrations."""

    def __init__(self, agents: Iterable[Agent] = BUILTIN_AGENTS) -> None:
        self._agents: dict[str, Agent] = {a.name: a for a in agents}

    @classmethod
    def load(cls, folder: Path, toolkits: ToolkitRegistry | None = None) -> AgentRegistry:
        """Built-ins plus every `*.toml` in `folder` (a file may override a built-in);
        toolkit names resolve in `toolkits`."""
        registry = cls()
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                registry.add(load_agent_file(path, toolkits))
        return registry

    def add(self, agent: Agent) -> None:
        """Register (or replace) an agent."""
        self._agents[agent.name] = agent

    def get(self, name: str) -> Agent:
        """The agent called `name`; raises `ConfigError` listing the known ones."""
        try:
            return self._agents[name]
        except KeyError:
            known = ", ".join(sorted(self._agents)) or "none"
            raise ConfigError(f"unknown agent {name!r} (known: {known})") from None

    def all(self) -> list[Agent]:
        """Every agent, by name."""
        return sorted(self._agents.values(), key=lambda a: a.name)
