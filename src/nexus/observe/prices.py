"""The model price table: what a model costs per 1M tokens, at which provider.

NEXUS ships a pinned table, `prices.json` beside this module, built by
`scripts/price_table.py` from pydantic's genai-prices (MIT): its header records the
source, version and date. It is read once, on the first lookup (`PriceTable.shipped`),
never at import. Prices are `Decimal`s, as written in the file: costs computed from
them are exact (`nexus.observe.costs`).

A model is looked up by the name a provider was asked for or answered with, which is
rarely the table's own: `lookup` tries, in order, the name as given (lower case), the
name without a `vendor/` prefix (`openai/gpt-4o`, as OpenRouter and LiteLLM write it),
then each of those without a dated or versioned suffix (`gpt-4o-2024-08-06` → `gpt-4o`,
`claude-3-5-sonnet@20240620`, `-latest`), against each model's exact names and name
prefixes. An exact name wins over a stripped one, so `gpt-4o-2024-05-13`, which has a
price of its own, keeps it. The provider asked first is the one given; then the vendor
a `vendor/` prefix names; then every provider in the table's order (vendors before
resellers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from typing import Any

from nexus.errors import ConfigError

SHIPPED = "prices.json"

# Names people give providers (and vendor prefixes of model names) that are not the
# table's ids.
ALIASES: Mapping[str, str] = {
    "gemini": "google",
    "vertex": "google",
    "vertexai": "google",
    "google-ai": "google",
    "xai": "x-ai",
    "grok": "x-ai",
    "mistralai": "mistral",
    "togetherai": "together",
    "together-ai": "together",
    "deepseek-ai": "deepseek",
}

# Suffixes that name a snapshot of a model rather than another model: a date
# (2024-08-06, 20241022, @20240620), a short version (-0613, -002), `-latest`.
_SNAPSHOT = re.compile(r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{8}|\d{3,4})|-latest)$")
_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """What one model costs at one provider: USD per 1M prompt and completion tokens."""

    provider: str
    model: str
    input_per_1m: Decimal
    output_per_1m: Decimal
    context_window: int | None = None


def names(model: str) -> list[str]:
    """The names `model` is looked up by, most specific first (see the module doc)."""
    given = model.strip().lower()
    bases = [given]
    if "/" in given:
        bases.append(given.rsplit("/", 1)[1])
    found = list(bases)
    for base in bases:
        name = _SNAPSHOT.sub("", base)
        while name and name not in found:
            found.append(name)
            name = _SNAPSHOT.sub("", name)
    return [n for n in found if n]


def vendor(model: str) -> str | None:
    """The provider a `vendor/model` name points at, if the table may know it."""
    if "/" not in model:
        return None
    head = model.strip().lower().split("/", 1)[0]
    return ALIASES.get(head, head)


class PriceTable:
    """Model prices by provider, in lookup order.

    Args:
        entries: the prices, in the order providers are searched.
        api_patterns: provider id → the regular expression its API URLs match.
        source: where the prices come from (name, version, licence).
        date: when they were in force.
    """

    def __init__(
        self,
        entries: Iterable[tuple[ModelPrice, Iterable[str], Iterable[str]]],
        *,
        api_patterns: Mapping[str, str] | None = None,
        source: str = "",
        date: str = "",
    ) -> None:
        self.source = source
        self.date = date
        self._exact: dict[str, dict[str, ModelPrice]] = {}
        self._prefixes: dict[str, list[tuple[str, ModelPrice]]] = {}
        for price, aliases, prefixes in entries:
            exact = self._exact.setdefault(price.provider, {})
            for name in (price.model, *aliases):
                exact.setdefault(name.lower(), price)
            self._prefixes.setdefault(price.provider, []).extend(
                (p.lower(), price) for p in prefixes
            )
        for found in self._prefixes.values():
            found.sort(key=lambda pair: -len(pair[0]))  # the longest prefix wins
        self._patterns = {pid: re.compile(rx) for pid, rx in (api_patterns or {}).items()}
        self._cache: dict[tuple[str | None, str], ModelPrice | None] = {}

    @staticmethod
    @cache
    def shipped() -> PriceTable:
        """The table shipped with NEXUS, read on first use and kept."""
        text = resources.files("nexus.observe").joinpath(SHIPPED).read_text(encoding="utf-8")
        return PriceTable.from_document(json.loads(text), origin=SHIPPED)

    @classmethod
    def from_document(cls, data: Any, *, origin: str) -> PriceTable:
        """A table from the JSON form of `prices.json`; `ConfigError` naming what is
        wrong with it."""
        try:
            entries = [
                (
                    ModelPrice(
                        provider=str(m["provider"]),
                        model=str(m["model"]).lower(),
                        input_per_1m=_decimal(m["input"]),
                        output_per_1m=_decimal(m["output"]),
                        context_window=_window(m.get("context_window")),
                    ),
                    [str(a) for a in m.get("aliases", ())],
                    [str(p) for p in m.get("prefixes", ())],
                )
                for m in data["models"]
            ]
            patterns = {str(k): str(v["api_pattern"]) for k, v in data["providers"].items()}
            return cls(entries, api_patterns=patterns, source=data["source"], date=data["date"])
        except (KeyError, TypeError, ValueError, AttributeError, re.error) as exc:
            raise ConfigError(
                f"price table {origin} is malformed ({type(exc).__name__}: {exc})"
            ) from None

    @property
    def providers(self) -> list[str]:
        """The provider ids, in lookup order."""
        return list(self._exact)

    def __len__(self) -> int:
        return sum(len({id(p) for p in e.values()}) for e in self._exact.values())

    def provider_for(self, *, name: str | None = None, base_url: str | None = None) -> str | None:
        """The table's provider for an endpoint: the one whose API URL `base_url`
        matches, else the one `name` names (`groq`, `gemini`), else None."""
        if base_url:
            for pid, pattern in self._patterns.items():
                if pattern.match(base_url):
                    return pid
        if name:
            key = ALIASES.get(name.lower(), name.lower())
            if key in self._exact:
                return key
        return None

    def lookup(self, provider: str | None, model: str) -> ModelPrice | None:
        """The price of `model` asked of `provider` (a table id, or None: unknown),
        or None if no provider in the table lists it."""
        key = (provider, model)
        if key in self._cache:
            return self._cache[key]
        found = self._find(provider, model)
        if len(self._cache) >= _CACHE_LIMIT:  # names come from responses: bound them
            self._cache.clear()
        self._cache[key] = found
        return found

    def _find(self, provider: str | None, model: str) -> ModelPrice | None:
        candidates = names(model)
        for pid in self._search_order(provider, model):
            exact = self._exact[pid]
            prefixes = self._prefixes.get(pid, ())
            for name in candidates:
                if name in exact:
                    return exact[name]
                for prefix, price in prefixes:
                    if name.startswith(prefix):
                        return price
        return None

    def _search_order(self, provider: str | None, model: str) -> Iterator[str]:
        first = [p for p in (provider, vendor(model)) if p is not None and p in self._exact]
        yield from dict.fromkeys(first)
        yield from (p for p in self._exact if p not in first)


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool | float):
        raise ValueError(f"price {value!r} must be a decimal string or an integer")
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"price {value!r} is not a number") from None
    if not price.is_finite() or price < 0:
        raise ValueError(f"price {value!r} must be a finite number, at least 0")
    return price


def _window(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"context_window {value!r} must be a positive integer")
    return value
