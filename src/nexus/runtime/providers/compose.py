"""Where the provider stack is built, so its order is visible in one place:

    Fallback([Retry(OpenAI(p1)), Retry(OpenAI(p2)), ...])     (NEXUS_PROVIDERS)
    Retry(OpenAI(ollama))                                     (none configured, Ollama answers)

Later layers (breakers, tracing, the cost-aware router) wrap the same interface
and are added here.
"""

from __future__ import annotations

from nexus.config import ProviderSettings, Settings
from nexus.errors import NoProviderConfigured
from nexus.runtime.providers.fallback import FallbackProvider
from nexus.runtime.providers.openai import OpenAIProvider, probe
from nexus.runtime.providers.retry import RetryProvider
from nexus.types import Provider


def endpoint(p: ProviderSettings, *, concurrency: int) -> Provider:
    """One configured endpoint with its retries: `Retry(OpenAI(p))`."""
    http = OpenAIProvider(
        name=p.name,
        base_url=p.base_url,
        model=p.model,
        api_key=p.api_key.get_secret_value() if p.api_key else None,
        timeout_s=p.timeout_s,
        connect_timeout_s=p.connect_timeout_s,
        read_timeout_s=p.read_timeout_s,
        max_connections=p.max_connections or concurrency,
        max_tokens=p.max_tokens,
        max_response_bytes=p.max_response_bytes,
        price_in_per_1m=p.price_in_per_1m,
        price_out_per_1m=p.price_out_per_1m,
        context_window=p.context_window,
    )
    return RetryProvider(http, attempts=p.retries + 1, deadline_s=p.timeout_s)


async def open_provider(settings: Settings) -> Provider:
    """The provider stack for `settings`; `NoProviderConfigured` in one clear line
    when none is configured and Ollama does not answer."""
    configured = [endpoint(p, concurrency=settings.concurrency) for p in settings.providers]
    if len(configured) == 1:
        return configured[0]
    if configured:
        return FallbackProvider(configured)
    models = await probe(settings.ollama_url)
    if models is None:
        raise NoProviderConfigured(
            f"no LLM provider: none is configured and Ollama does not answer at "
            f"{settings.ollama_url}; start Ollama, set NEXUS_PROVIDERS (see README), "
            f"or replay a recorded session with --replay FILE"
        )
    model = settings.ollama_model if settings.ollama_model in models or not models else models[0]
    return endpoint(
        ProviderSettings(name="ollama", base_url=settings.ollama_url, model=model),
        concurrency=settings.concurrency,
    )
