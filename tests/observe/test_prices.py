"""The shipped price table: its source, its lookups by the names providers use, and
the settings that override it."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from nexus.config import load_settings
from nexus.errors import ConfigError
from nexus.observe.costs import Pricing, Rate
from nexus.observe.prices import ModelPrice, PriceTable, names

GPT_4O = ModelPrice("openai", "gpt-4o", Decimal("2.5"), Decimal("10"), 128000)


def test_the_shipped_table_records_its_source_and_stays_small() -> None:
    """prices.json says where its prices come from and when, keeps a few hundred chat
    models of the major providers (vendors first), and is read once."""
    table = PriceTable.shipped()
    assert (table.source, table.date) == (
        "genai-prices 0.2.3 (MIT), https://github.com/pydantic/genai-prices",
        "2026-12-03",
    )
    assert table.providers == [
        "openai",
        "anthropic",
        "google",
        "mistral",
        "deepseek",
        "x-ai",
        "groq",
        "together",
        "openrouter",
    ]
    assert 300 <= len(table) <= 600
    shipped = Path(__file__).parents[2] / "src/nexus/observe/prices.json"
    assert shipped.stat().st_size < 150_000
    header = json.loads(shipped.read_text())
    assert {k: header[k] for k in ("license", "units")} == {
        "license": "MIT",
        "units": "USD per 1M tokens",
    }
    assert PriceTable.shipped() is table


def test_building_a_pricing_does_not_read_the_table() -> None:
    """The table is read by the first price that needs it, not at start-up."""
    PriceTable.shipped.cache_clear()
    pricing = Pricing.from_settings(load_settings())
    assert PriceTable.shipped.cache_info().currsize == 0
    assert pricing.rate("openai", "gpt-4o") == Rate(Decimal("2.5"), Decimal("10"), "table", 128000)
    assert PriceTable.shipped.cache_info().currsize == 1


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("openai", "gpt-4o", GPT_4O),
        ("openai", "GPT-4o", GPT_4O),
        ("openai", "gpt-4o-2024-08-06", GPT_4O),  # a snapshot the table names
        ("openai", "gpt-4o-2025-01-31", GPT_4O),  # one it does not: the date is dropped
        # A snapshot with a price of its own keeps it.
        (
            "openai",
            "gpt-4o-2024-05-13",
            ModelPrice("openai", "gpt-4o-2024-05-13", Decimal("5"), Decimal("15"), 128000),
        ),
        (None, "openai/gpt-4o", GPT_4O),  # vendor/model, as OpenRouter and LiteLLM write it
        ("openrouter", "openai/gpt-4o", GPT_4O),  # OpenRouter passes vendor prices through
        (
            "anthropic",
            "claude-3-5-haiku-20241022",
            ModelPrice(
                "anthropic", "claude-3-5-haiku-latest", Decimal("0.8"), Decimal("4"), 200000
            ),
        ),
        (
            None,
            "claude-sonnet-4-5@20250929",  # Vertex's form
            ModelPrice("anthropic", "claude-sonnet-4-5", Decimal("3"), Decimal("15"), 200000),
        ),
        (
            "groq",
            "llama-3.3-70b-versatile",
            ModelPrice("groq", "llama-3.3-70b-versatile", Decimal("0.59"), Decimal("0.79")),
        ),
        (
            "together",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",  # a slash that is the model's own
            ModelPrice(
                "together",
                "meta-llama/llama-3.3-70b-instruct-turbo",
                Decimal("0.88"),
                Decimal("0.88"),
            ),
        ),
        (None, "my-private-model", None),
        (None, "", None),
    ],
)
def test_lookup_normalises_model_names(
    provider: str | None, model: str, expected: ModelPrice | None
) -> None:
    """Dated suffixes, `vendor/` prefixes and case find the model's price; an exact
    name wins over a stripped one; an unknown model has none."""
    assert PriceTable.shipped().lookup(provider, model) == expected


def test_names_tried_most_specific_first() -> None:
    """The candidate names: as given, without the vendor, then each without its
    snapshot suffix."""
    assert names("OpenAI/gpt-4o-mini-2024-07-18") == [
        "openai/gpt-4o-mini-2024-07-18",
        "gpt-4o-mini-2024-07-18",
        "openai/gpt-4o-mini",
        "gpt-4o-mini",
    ]
    assert names("claude-3-5-sonnet-latest") == ["claude-3-5-sonnet-latest", "claude-3-5-sonnet"]


@pytest.mark.parametrize(
    ("name", "base_url", "expected"),
    [
        ("anything", "https://api.groq.com/openai/v1", "groq"),
        ("router", "https://openrouter.ai/api/v1", "openrouter"),
        ("gemini", "https://example.org/v1", "google"),  # by an alias of its name
        ("xai", None, "x-ai"),
        ("peer", "http://127.0.0.1:8000/v1", None),
    ],
)
def test_an_endpoint_is_matched_to_the_table_by_url_then_name(
    name: str, base_url: str | None, expected: str | None
) -> None:
    assert PriceTable.shipped().provider_for(name=name, base_url=base_url) == expected


def test_prices_in_nexus_toml_override_the_table(nexus_home: Path) -> None:
    """`[prices."MODEL"]` adds a model and overrides a shipped one, for any provider."""
    nexus_home.mkdir(parents=True, exist_ok=True)
    (nexus_home / "nexus.toml").write_text(
        '[prices."my-model"]\ninput = 1.5\noutput = 3\ncontext_window = 32000\n\n'
        '[prices."gpt-4o"]\ninput = 1\noutput = 4\n'
    )
    pricing = Pricing.from_settings(load_settings())
    assert [
        pricing.rate(None, "my-model-2025-01-01"),
        pricing.rate("openai", "gpt-4o"),
        pricing.rate("openai", "gpt-4o-mini"),
    ] == [
        Rate(Decimal("1.5"), Decimal("3"), "override", 32000),
        Rate(Decimal("1"), Decimal("4"), "override"),
        Rate(Decimal("0.15"), Decimal("0.6"), "table", 128000),
    ]


def test_prices_in_the_environment_override_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_PRICES", '{"Team-Model": {"input": "0.2", "output": "0.4"}}')
    assert Pricing.from_settings(load_settings()).rate(None, "team-model") == Rate(
        Decimal("0.2"), Decimal("0.4"), "override"
    )


def test_an_endpoints_own_prices_win_over_overrides_and_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """price_in/out_per_1m of a provider's settings apply to all its calls; set on one
    side only, the other is zero (as before the table existed)."""
    monkeypatch.setenv("NEXUS_PRICES", '{"gpt-4o": {"input": 1, "output": 4}}')
    monkeypatch.setenv(
        "NEXUS_PROVIDERS",
        json.dumps(
            [
                {
                    "name": "openai",
                    "base_url": "https://api.openai.com/v1",
                    "model": "gpt-4o",
                    "price_in_per_1m": 0.07,
                },
            ]
        ),
    )
    pricing = Pricing.from_settings(load_settings())
    assert pricing.rate("openai", "gpt-4o") == Rate(Decimal("0.07"), Decimal("0"), "provider")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            '{"my-model": {"input": -1, "output": 2}}',
            "NEXUS_PRICES__MY-MODEL__INPUT: Input should be greater than or equal to 0 (got -1)",
        ),
        ('{"my-model": {"input": 1}}', "NEXUS_PRICES__MY-MODEL__OUTPUT: Field required"),
        (
            '{"my-model": {"input": 1, "output": 2, "inputs": 3}}',
            "NEXUS_PRICES__MY-MODEL__INPUTS: Extra inputs are not permitted (got 3)",
        ),
        (
            '{"my-model": {"input": "cheap", "output": 2}}',
            "NEXUS_PRICES__MY-MODEL__INPUT: Input should be a valid decimal (got 'cheap')",
        ),
        (
            '{"m": {"input": "NaN", "output": 2}}',
            "NEXUS_PRICES__M__INPUT: Input should be a finite number (got 'NaN')",
        ),
        (
            '{" ": {"input": 1, "output": 2}}',
            "NEXUS_PRICES: Value error, model names must be 1-200 characters (got ' ')",
        ),
        (
            '{"m": 5}',
            "NEXUS_PRICES__M: Input should be a valid dictionary or instance of PriceSetting "
            "(got 5)",
        ),
    ],
)
def test_broken_price_settings_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("NEXUS_PRICES", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == f"invalid settings:\n  {message}"


@pytest.mark.parametrize(
    ("document", "why"),
    [
        ({"source": "s", "date": "d", "providers": {}}, "KeyError: 'models'"),
        (
            {
                "source": "s",
                "date": "d",
                "providers": {},
                "models": [{"provider": "p", "model": "m", "input": -1, "output": "1"}],
            },
            "ValueError: price -1 must be a finite number, at least 0",
        ),
        (
            {
                "source": "s",
                "date": "d",
                "providers": {},
                "models": [{"provider": "p", "model": "m", "input": 0.1, "output": "1"}],
            },
            "ValueError: price 0.1 must be a decimal string or an integer",
        ),
    ],
)
def test_a_malformed_price_file_is_a_config_error(document: object, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        PriceTable.from_document(document, origin="custom.json")
    assert str(info.value) == f"price table custom.json is malformed ({why})"
