"""LLM providers: OpenAI-compatible HTTP, retry and fallback wrappers, replay of
recorded sessions, scripted; `open_provider` builds the stack from settings."""

from nexus.runtime.providers.base import parse_completion
from nexus.runtime.providers.fallback import FallbackProvider
from nexus.runtime.providers.replay import ReplayProvider
from nexus.runtime.providers.retry import RetryProvider
from nexus.runtime.providers.scripted import ScriptedProvider

__all__ = [
    "FallbackProvider",
    "ReplayProvider",
    "RetryProvider",
    "ScriptedProvider",
    "parse_completion",
]
