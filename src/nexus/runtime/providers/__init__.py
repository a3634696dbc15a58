"""LLM providers: OpenAI-compatible HTTP, replay of recorded sessions, scripted."""

from nexus.runtime.providers.base import parse_completion, price
from nexus.runtime.providers.replay import ReplayProvider
from nexus.runtime.providers.scripted import ScriptedProvider

__all__ = ["ReplayProvider", "ScriptedProvider", "parse_completion", "price"]
