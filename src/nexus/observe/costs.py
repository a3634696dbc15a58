"""What an LLM request cost: tokens and USD, in one place.

Where the pricing lives, and why. It lives in the recorder (the pipeline's
`llm.response` record calls `Pricing.charge`), not in a provider wrapping providers:

- the recorder sees every LLM outcome, whatever provider answered: ones NEXUS built
  from settings, a scripted or replayed one, one a user passed to `Runtime`; a wrapper
  prices only the stacks it was put into;
- it holds the request (to count prompt tokens when the usage block is missing or
  impossible) and writes the journal row whose columns the totals sum;
- calls that never got a response (in flight at a crash, or cut short by a kill:
  `nexus.observe.lost`) have no provider call to wrap, and are priced by the same code.

A provider only reports: its `usage` block (checked: `check_usage`) and, if it knows
it, `ChatResponse.cost_usd` (a scripted provider's figure, a replay's zero). Which
price applies, first match wins:

1. the answering endpoint's own `price_in_per_1m`/`price_out_per_1m` (its settings);
2. the cost the provider reported, when it and the usage are believable (a finite,
   non-negative figure);
3. nothing, for a local endpoint (loopback or `localhost` base URL, or Ollama);
4. the `[prices]` settings, then the shipped table (`nexus.observe.prices`), for the
   response's model, then the request's, then the endpoint's default model;
5. else zero, marked `unpriced`.

Amounts are `Decimal`: tokens times the per-million price, divided by 10^6, exact; the
journal's `cost_usd` column holds the nearest float.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING

from nexus.observe.prices import ModelPrice, PriceTable, names
from nexus.observe.tokens import count_completion, count_prompt
from nexus.runtime.providers.base import DEFAULT_MAX_TOKENS, local_endpoint
from nexus.types import JSON, ChatRequest, ChatResponse, Provider

if TYPE_CHECKING:
    from nexus.config import Settings

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)

PROVIDER, REPORTED, LOCAL, OVERRIDE, TABLE, UNPRICED = (
    "provider", "reported", "local", "override", "table", "unpriced"
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Terms:
    """What one endpoint charges, from its settings (or its profile).

    Attributes:
        name: the endpoint's name, as responses carry it.
        base_url: its API root (which provider of the price table it is).
        model: the model it is asked for when a request names none.
        price_in_per_1m: its own prompt price (USD per 1M tokens), if set.
        price_out_per_1m: its own completion price, if set.
        local: it runs here (loopback, Ollama): free unless priced.
        max_tokens: the max_tokens it sends with every call, if set.
    """

    name: str
    base_url: str | None = None
    model: str | None = None
    price_in_per_1m: Decimal | None = None
    price_out_per_1m: Decimal | None = None
    local: bool = False
    max_tokens: int | None = None

    @property
    def priced(self) -> bool:
        """True when its settings set a price (the unset side is then zero)."""
        return self.price_in_per_1m is not None or self.price_out_per_1m is not None


@dataclass(frozen=True, slots=True)
class Rate:
    """The price that applies to a call, and where it came from."""

    input_per_1m: Decimal
    output_per_1m: Decimal
    source: str
    context_window: int | None = None

    def cost(self, tokens_in: int, tokens_out: int) -> Decimal:
        """USD for these tokens, exact."""
        return (tokens_in * self.input_per_1m + tokens_out * self.output_per_1m) / MILLION


@dataclass(frozen=True, slots=True)
class Charge:
    """What one LLM call is accounted at.

    Attributes:
        tokens_in: prompt tokens (the usage block's, or counted).
        tokens_out: completion tokens (the usage block's, counted, or estimated).
        cost: USD, exact.
        source: where the price came from (`provider`, `reported`, `local`,
            `override`, `table`, `unpriced`).
        estimated: the tokens were counted or estimated, not reported.
        problem: what was wrong with the reported usage, if anything.
    """

    tokens_in: int
    tokens_out: int
    cost: Decimal
    source: str
    estimated: bool = False
    problem: str | None = None

    @property
    def cost_usd(self) -> float:
        """The cost as the journal's `cost_usd` column holds it."""
        return float(self.cost)

    def annotate(self, payload: JSON) -> JSON:
        """Mark an event's payload with what is estimated or unknown about it."""
        if self.problem is not None:
            payload["usage_problem"] = self.problem
        if self.estimated:
            payload["usage_estimated"] = True
            payload["cost_estimated"] = True
        if self.source == UNPRICED:
            payload["unpriced"] = True
        return payload


def _decimal(value: float | None) -> Decimal | None:
    # repr: the shortest decimal that reads back as the float (0.15, not 0.1499…).
    return None if value is None else Decimal(repr(value))


@dataclass(frozen=True)
class Pricing:
    """Prices calls: the endpoints' terms, the `[prices]` overrides, the shipped
    table (read by the first call that needs it, not when this is built).

    Args:
        terms: each endpoint's terms.
        overrides: model name (lower case) → its price, over the table's.
        table: the price table (default: the shipped one).
    """

    terms: Mapping[str, Terms] = field(default_factory=dict)
    overrides: Mapping[str, ModelPrice] = field(default_factory=dict)
    table: PriceTable | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Pricing:
        """The pricing of `settings`: its providers (and Ollama's default endpoint)
        and its `[prices]` table."""
        found: dict[str, Terms] = {}
        for p in settings.providers:
            found.setdefault(
                p.name,
                Terms(
                    name=p.name,
                    base_url=p.base_url,
                    model=p.model,
                    price_in_per_1m=_decimal(p.price_in_per_1m),
                    price_out_per_1m=_decimal(p.price_out_per_1m),
                    local=local_endpoint(p.name, p.base_url),
                    max_tokens=p.max_tokens,
                ),
            )
        found.setdefault("ollama", Terms(name="ollama", model=settings.ollama_model, local=True))
        overrides = {
            model.lower(): ModelPrice(
                provider="settings",
                model=model.lower(),
                input_per_1m=price.input,
                output_per_1m=price.output,
                context_window=price.context_window,
            )
            for model, price in settings.prices.items()
        }
        return cls(found, overrides)

    def with_provider(self, provider: Provider) -> Pricing:
        """This pricing, knowing also a provider that was not built from settings
        (passed to `Runtime`): its terms from its profile."""
        if self.terms_of(provider.name) is not None:
            return self
        p = provider.profile
        terms = Terms(
            name=provider.name,
            base_url=getattr(provider, "base_url", None),
            model=getattr(provider, "model", None),
            price_in_per_1m=_decimal(p.price_in_per_1m),
            price_out_per_1m=_decimal(p.price_out_per_1m),
            local=p.local,
        )
        return replace(self, terms={**self.terms, provider.name: terms})

    def _table(self) -> PriceTable:
        return self.table if self.table is not None else PriceTable.shipped()

    def terms_of(self, provider: str | None) -> Terms | None:
        """The terms of the endpoint `provider` names; for a fallback stack
        (`a+b`), those of its first endpoint: the one a request goes to first."""
        if not provider:
            return None
        found = self.terms.get(provider)
        if found is None and "+" in provider:
            found = self.terms.get(provider.split("+", 1)[0])
        return found

    def rate(self, provider: str | None, *models: str | None) -> Rate:
        """The price of a call answered by `provider` for the first of `models`
        that has one (rules 1, 3, 4, 5 of the module doc)."""
        terms = self.terms_of(provider)
        if terms is not None and terms.priced:
            return Rate(terms.price_in_per_1m or ZERO, terms.price_out_per_1m or ZERO, PROVIDER)
        if terms is not None and terms.local:
            return Rate(ZERO, ZERO, LOCAL)
        table = self._table()  # read on the first call that needs it
        base_url = None if terms is None else terms.base_url
        table_provider = table.provider_for(name=provider, base_url=base_url)
        for model in (*models, None if terms is None else terms.model):
            if not model:
                continue
            for name in names(model):
                if name in self.overrides:
                    o = self.overrides[name]
                    return Rate(o.input_per_1m, o.output_per_1m, OVERRIDE, o.context_window)
            found = table.lookup(table_provider, model)
            if found is not None:
                return Rate(found.input_per_1m, found.output_per_1m, TABLE, found.context_window)
        return Rate(ZERO, ZERO, UNPRICED)

    def charge(self, request: ChatRequest, response: ChatResponse) -> Charge:
        """What `response` to `request` is accounted at: its usage block when it
        holds, else counted tokens (marked estimated), priced as the module says."""
        usage = response.usage
        problem = usage.problem
        if problem is None and (usage.tokens_in < 0 or usage.tokens_out < 0):
            problem = f"negative token counts ({usage.tokens_in} in, {usage.tokens_out} out)"
        model = response.model or request.model
        if problem is None:
            tokens_in, tokens_out, estimated = usage.tokens_in, usage.tokens_out, False
        else:
            tokens_in = count_prompt(request.messages, request.tools, model)
            tokens_out = count_completion(response, model)
            estimated = True
        terms = self.terms_of(response.provider)
        reported = response.cost_usd
        believable = reported is not None and math.isfinite(reported) and reported >= 0
        if believable and not estimated and not (terms and terms.priced):
            return Charge(tokens_in, tokens_out, Decimal(repr(reported)), REPORTED)
        rate = self.rate(response.provider, response.model, request.model)
        return Charge(
            tokens_in, tokens_out, rate.cost(tokens_in, tokens_out), rate.source, estimated, problem
        )

    def max_completion(self, provider: str | None, max_tokens: int | None) -> int:
        """The most completion tokens a call may bill: the endpoint's max_tokens
        setting, else the request's, else what NEXUS sends by default."""
        terms = self.terms_of(provider)
        return (terms.max_tokens if terms else None) or max_tokens or DEFAULT_MAX_TOKENS

    def unanswered(
        self,
        messages: Iterable[JSON],
        tools: Iterable[JSON],
        *,
        model: str | None,
        provider: str | None,
        max_tokens: int | None,
        mean_completion: float | None,
    ) -> Charge:
        """The estimated charge of a call that was sent and never answered: its
        counted prompt, and as completion the session's mean completion so far
        (rounded up), or the max_tokens cap when there is none yet; never more
        than the cap."""
        terms = self.terms_of(provider)
        model = model or (terms.model if terms else None)
        tokens_in = count_prompt(messages, tools, model)
        cap = self.max_completion(provider, max_tokens)
        tokens_out = cap if mean_completion is None else min(cap, math.ceil(mean_completion))
        rate = self.rate(provider, model)
        return Charge(tokens_in, tokens_out, rate.cost(tokens_in, tokens_out), rate.source, True)

    def estimate(
        self, request: ChatRequest, model: str | None, provider: str | None
    ) -> tuple[int, Decimal]:
        """`estimate_request_cost`, exact."""
        terms = self.terms_of(provider)
        model = model or request.model or (terms.model if terms else None)
        tokens_in = count_prompt(request.messages, request.tools, model)
        rate = self.rate(provider, model)
        out = self.max_completion(provider, request.max_tokens)
        if rate.context_window is not None:  # a model cannot write past its window
            out = max(0, min(out, rate.context_window - tokens_in))
        return tokens_in, rate.cost(tokens_in, out)


def estimate_request_cost(
    request: ChatRequest,
    model: str | None,
    provider: str | None,
    *,
    pricing: Pricing | None = None,
) -> tuple[int, float]:
    """The prompt tokens of `request`, counted, and the most it can cost: those
    tokens plus a completion of `max_tokens` (the endpoint's setting, else the
    request's, else 4096, what NEXUS sends), at the price `pricing` gives the model
    at `provider` (an endpoint's name).

    What a budget reserves before a call goes out, so that a cap is never overshot.
    Zero for a local or unpriced endpoint.

    Args:
        request: the chat request about to be sent.
        model: the model it goes to (default: the request's, else the endpoint's).
        provider: the endpoint's name (`RunContext.provider.name`).
        pricing: the session's pricing (`RunContext.pricing`); default: the shipped
            table alone.

    Returns:
        `(tokens_in_counted, worst_case_usd)`.
    """
    tokens_in, worst = (pricing or Pricing()).estimate(request, model, provider)
    return tokens_in, float(worst)
