"""Build NEXUS's shipped price table (`src/nexus/observe/prices.json`) from pydantic's
genai-prices (MIT).

    pip download --no-deps genai-prices==0.2.3 -d /tmp/gp
    python scripts/price_table.py /tmp/gp/genai_prices-0.2.3-py3-none-any.whl \
        > src/nexus/observe/prices.json

genai-prices is read, not installed: its wheel (or an unpacked copy) is opened, and its
`data.py` imported without the package's `__init__` (which pulls in an HTTP client for
live updates). What is kept, and why:

- the chat models (an input and an output price per 1M tokens) of the providers NEXUS
  users call most (`KEPT`), in that order: a model looked up without a known provider
  is found at the first that lists it, so vendors come before resellers;
- on OpenRouter, only the open-weight families most used through it (`OPENROUTER_VENDORS`):
  the models of vendors kept themselves are priced at the vendor (`openai/gpt-4o` as
  OpenAI's `gpt-4o`: OpenRouter passes vendor prices through), and the long tail is left
  out to keep the table a few hundred entries (a `[prices]` setting adds any model);
- the price in force on `--date` (start-date price changes applied); time-of-day
  discounts (DeepSeek's off-peak hours) and tiers above a prompt size (Gemini's
  over-200k prices) are not modelled: the standard, base-tier price is kept;
- each model's exact names (`equals` clauses) and name prefixes (`starts_with`); the
  rarer `contains`/`regex` clauses are dropped (the lookup's normalisation covers the
  dated suffixes they mostly exist for).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
import tempfile
import types
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

KEPT = ("openai", "anthropic", "google", "mistral", "deepseek", "x-ai", "groq", "together")
RESELLER = "openrouter"
OPENROUTER_VENDORS = frozenset(
    {"meta-llama", "qwen", "moonshotai", "z-ai", "minimax", "nvidia", "microsoft", "cohere"}
)
VERSION = "0.2.3"


def load(source: Path, workdir: Path) -> tuple[list[Any], str]:
    """genai-prices' `providers` list and its version, from a wheel or a folder."""
    root = source
    if source.is_file():
        with zipfile.ZipFile(source) as wheel:
            wheel.extractall(workdir)
        root = workdir
    meta = next(root.glob("genai_prices-*.dist-info/METADATA"), None)
    version = "unknown"
    if meta is not None:
        for line in meta.read_text().splitlines():
            if line.startswith("Version:"):
                version = line.split(":", 1)[1].strip()
    package = types.ModuleType("genai_prices")
    package.__path__ = [str(root / "genai_prices")]
    sys.modules["genai_prices"] = package
    data = importlib.import_module("genai_prices.data")
    return list(data.providers), version


def standard_price(model: Any, on: dt.datetime) -> Any:
    """The price in force on `on`, ignoring time-of-day windows."""
    prices = model.prices
    if not isinstance(prices, list):
        return prices
    for conditional in reversed(prices):
        constraint = conditional.constraint
        if constraint is None:
            return conditional.prices
        if hasattr(constraint, "start_date") and constraint.active(on):
            return conditional.prices
    return prices[0].prices


def per_million(value: Any) -> str | None:
    """A price as a plain decimal string (a tiered price: its base)."""
    if value is None:
        return None
    base = getattr(value, "base", value)
    text = format(Decimal(base).normalize(), "f")
    return text


def names(clause: Any) -> tuple[list[str], list[str]]:
    """The exact names and the prefixes a match clause accepts."""
    exact: list[str] = []
    prefixes: list[str] = []
    stack = [clause]
    while stack:
        c = stack.pop()
        if hasattr(c, "or_"):
            stack.extend(reversed(c.or_))
        elif hasattr(c, "equals"):
            exact.append(c.equals.lower())
        elif hasattr(c, "starts_with"):
            prefixes.append(c.starts_with.lower())
    return exact, prefixes


def entries(providers: list[Any], on: dt.datetime) -> list[dict[str, Any]]:
    """The kept models, one dict each, in lookup order."""
    by_id = {p.id: p for p in providers}
    out: list[dict[str, Any]] = []
    for pid in (*KEPT, RESELLER):
        for model in by_id[pid].models:
            if pid == RESELLER and model.id.split("/", 1)[0] not in OPENROUTER_VENDORS:
                continue
            price = standard_price(model, on)
            given = getattr(price, "input_mtok", None), getattr(price, "output_mtok", None)
            if given[0] is None or given[1] is None:
                continue  # not a chat model (embeddings, images, audio)
            exact, prefixes = names(model.match)
            entry: dict[str, Any] = {
                "provider": pid,
                "model": model.id.lower(),
                "input": per_million(given[0]),
                "output": per_million(given[1]),
                "context_window": model.context_window,
            }
            aliases = sorted(set(exact) - {model.id.lower()})
            if aliases:
                entry["aliases"] = aliases
            if prefixes:
                entry["prefixes"] = sorted(set(prefixes))
            out.append(entry)
    return out


def document(providers: list[Any], version: str, on: dt.datetime) -> str:
    """The table as JSON text: a header, the providers, one model per line."""
    kept = [p for p in providers if p.id in (*KEPT, RESELLER)]
    header = {
        "source": f"genai-prices {version} (MIT), https://github.com/pydantic/genai-prices",
        "license": "MIT",
        "date": on.date().isoformat(),
        "units": "USD per 1M tokens",
        "notes": (
            "standard prices in force on `date`: no time-of-day discounts, base tier only; "
            "built by scripts/price_table.py"
        ),
        "providers": {
            p.id: {"name": p.name, "api_pattern": p.api_pattern}
            for p in sorted(kept, key=lambda p: (*KEPT, RESELLER).index(p.id))
        },
    }
    head = json.dumps(header, indent=2, ensure_ascii=False)[:-2]  # reopen the object
    models = ",\n".join("    " + json.dumps(e, ensure_ascii=False) for e in entries(kept, on))
    return f'{head},\n  "models": [\n{models}\n  ]\n}}\n'


def main(argv: list[str] | None = None) -> None:
    """Print the table for the genai-prices wheel or folder given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="genai-prices wheel, or its unpacked folder")
    parser.add_argument("--date", default=dt.datetime.now(dt.UTC).date().isoformat())
    args = parser.parse_args(argv)
    on = dt.datetime.fromisoformat(args.date).replace(tzinfo=dt.UTC)
    with tempfile.TemporaryDirectory() as work:
        providers, version = load(args.source, Path(work))
        if version != VERSION:
            print(f"warning: genai-prices {version}, the table pins {VERSION}", file=sys.stderr)
        sys.stdout.write(document(providers, version, on))


if __name__ == "__main__":
    main()
