"""NEXUS: a production runtime for AI agents.

The public API is exported lazily, so `import nexus` stays fast; heavy modules
(pydantic, aiohttp, DBOS) load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Agent": "nexus.runtime.agents",
    "AgentRegistry": "nexus.runtime.agents",
    "Limits": "nexus.runtime.agents",
    "Runtime": "nexus.runtime.runtime",
    "Journal": "nexus.runtime.journal",
    "Guard": "nexus.types",
    "RunContext": "nexus.types",
    "Projection": "nexus.types",
    "SessionHook": "nexus.types",
    "ToolkitRegistry": "nexus.runtime.toolkits",
    "Tool": "nexus.runtime.tools",
    "ToolContext": "nexus.runtime.tools",
    "Toolkit": "nexus.runtime.tools",
    "tool": "nexus.runtime.tools",
    "ReplayProvider": "nexus.runtime.providers.replay",
    "ScriptedProvider": "nexus.runtime.providers.scripted",
    "Settings": "nexus.config",
    "load_settings": "nexus.config",
    "Event": "nexus.types",
    "Step": "nexus.types",
    "Outcome": "nexus.types",
    "SessionStatus": "nexus.types",
    "Effect": "nexus.types",
}

__all__ = [
    "Agent",
    "AgentRegistry",
    "Effect",
    "Event",
    "Guard",
    "Journal",
    "Limits",
    "Outcome",
    "Projection",
    "ReplayProvider",
    "RunContext",
    "Runtime",
    "ScriptedProvider",
    "SessionHook",
    "SessionStatus",
    "Settings",
    "Step",
    "Tool",
    "ToolContext",
    "Toolkit",
    "ToolkitRegistry",
    "__version__",
    "load_settings",
    "tool",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nexus' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
