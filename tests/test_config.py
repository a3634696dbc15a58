"""Settings: environment, nexus.toml, precedence, and refusals that name the setting."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nexus.config import ProviderSettings, load_settings, public_view
from nexus.errors import ConfigError

KEY = "sk-test-" + "0123456789abcdef"


NEW_PROVIDER_DEFAULTS = {
    "connect_timeout_s": 10.0,
    "read_timeout_s": 30.0,
    "max_connections": None,
    "max_tokens": None,
    "max_response_bytes": 4 * 1024 * 1024,
    "context_window": None,
}


def defaults(home: Path) -> dict[str, object]:
    """The settings with nothing configured but what the nexus_home fixture sets,
    including the test's store: NEXUS_DATABASE_URL (masked) with --store=postgres."""
    store = os.environ.get("NEXUS_DATABASE_URL")
    return {
        "home": str(home),
        "durability": "normal",
        "providers": [],
        "ollama_url": "http://127.0.0.1:9/v1",  # set by the nexus_home fixture
        "ollama_model": "llama3.2",
        "default_agent": "assistant",
        "concurrency": 50,
        "queue_poll_s": 0.05,
        "audit_checkpoint_events": 1000,
        "audit_checkpoint_s": 60.0,
        "control_poll_s": 0.05,
        "worker_id": None,
        "heartbeat_s": 3.0,
        "worker_timeout_s": 15.0,
        "database_url": None if store is None else "**********",
        "dbos_url": None,
        "api_token": None,
        "app_version": "nexus-1",
        "toolkits": {},
        "max_tool_result_bytes": 262144,
        "log_level": "warning",
        "budgets": [],
        "budget_action": "pause",
        "budget_alert_at": 0.8,
        "alert_webhook_url": None,
        "metrics_public": False,
        "otlp_endpoint": None,  # traces
        "otlp_headers": None,
        "otlp_service_name": None,
        "otlp_timeout_s": 10.0,
        "otlp_batch_delay_s": 1.0,
        "trace_content": False,
        "prices": {},  # cost accounting (issue 11)
    }


def test_defaults_on_an_empty_home(nexus_home: Path) -> None:
    """With only NEXUS_HOME set (and the store's URL, with --store=postgres), every
    setting has its default, and the derived paths live under the home."""
    settings = load_settings()
    assert public_view(settings) == defaults(nexus_home)
    assert (settings.db_path, settings.dbos_path, settings.agents_dir, settings.workspaces_dir) == (
        nexus_home / "nexus.db",
        nexus_home / "dbos.sqlite",
        nexus_home / "agents",
        nexus_home / "workspaces",
    )


def test_environment_variables_set_settings(
    nexus_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NEXUS_* variables set scalar and list settings (lists as JSON)."""
    monkeypatch.setenv("NEXUS_DURABILITY", "full")
    monkeypatch.setenv("NEXUS_CONCURRENCY", "7")
    monkeypatch.setenv("NEXUS_QUEUE_POLL_S", "0.5")
    monkeypatch.setenv("NEXUS_TOOLKITS__HTTP__ALLOW_HOSTS", '["api.example.org"]')
    monkeypatch.setenv("NEXUS_LOG_LEVEL", "debug")
    monkeypatch.setenv("NEXUS_WORKER_ID", "w-2")
    assert public_view(load_settings()) == {
        **defaults(nexus_home),
        "durability": "full",
        "concurrency": 7,
        "queue_poll_s": 0.5,
        "toolkits": {"http": {"allow_hosts": '["api.example.org"]'}},
        "log_level": "debug",
        "worker_id": "w-2",
    }


def test_home_expands_the_user_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A NEXUS_HOME starting with ~ is expanded."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NEXUS_HOME", "~/nx")
    assert load_settings().home == tmp_path / "nx"


def test_providers_come_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """NEXUS_PROVIDERS holds a JSON list of providers; base_url loses its trailing
    slash, missing fields take defaults, api_key is a secret."""
    monkeypatch.setenv(
        "NEXUS_PROVIDERS",
        json.dumps(
            [
                {
                    "name": "groq",
                    "base_url": "https://api.groq.com/openai/v1/",
                    "model": "m1",
                    "api_key": KEY,
                    "price_in_per_1m": 0.05,
                    "retries": 3,
                },
                {"name": "local", "base_url": "http://127.0.0.1:8000/v1", "model": "m2"},
            ]
        ),
    )
    settings = load_settings()
    assert [p.model_dump() for p in settings.providers] == [
        {
            "name": "groq",
            "base_url": "https://api.groq.com/openai/v1",
            "model": "m1",
            "api_key": settings.providers[0].api_key,
            "price_in_per_1m": 0.05,
            "price_out_per_1m": None,  # unset: then 0 (tests/observe/test_costs.py)
            "timeout_s": 60.0,
            "retries": 3,
            **NEW_PROVIDER_DEFAULTS,
        },
        {
            "name": "local",
            "base_url": "http://127.0.0.1:8000/v1",
            "model": "m2",
            "api_key": None,
            "price_in_per_1m": None,
            "price_out_per_1m": None,
            "timeout_s": 60.0,
            "retries": 2,
            **NEW_PROVIDER_DEFAULTS,
        },
    ]
    key = settings.providers[0].api_key
    assert key is not None and key.get_secret_value() == KEY


def test_public_view_masks_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """public_view never shows a provider's api_key."""
    monkeypatch.setenv(
        "NEXUS_PROVIDERS",
        json.dumps([{"name": "p", "base_url": "http://x", "model": "m", "api_key": KEY}]),
    )
    view = public_view(load_settings())
    assert view["providers"][0]["api_key"] == "**********"  # type: ignore[index]
    assert KEY not in json.dumps(view)
    assert KEY not in repr(load_settings())


TOML = """\
durability = "full"
concurrency = 3

[toolkits.http]
allow_hosts = ["a.example"]

[[providers]]
name = "from-toml"
base_url = "http://127.0.0.1:1234/v1"
model = "tm"
"""


def test_nexus_toml_in_the_home_is_read(nexus_home: Path) -> None:
    """$NEXUS_HOME/nexus.toml sets settings, including provider tables."""
    nexus_home.mkdir(parents=True)
    (nexus_home / "nexus.toml").write_text(TOML, encoding="utf-8")
    settings = load_settings()
    assert (settings.durability, settings.concurrency, settings.toolkits) == (
        "full",
        3,
        {"http": {"allow_hosts": ["a.example"]}},
    )
    assert settings.providers == [
        ProviderSettings(name="from-toml", base_url="http://127.0.0.1:1234/v1", model="tm")
    ]


def test_nexus_config_points_at_another_file(
    nexus_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NEXUS_CONFIG names the TOML file to read, instead of the one in the home."""
    nexus_home.mkdir(parents=True)
    (nexus_home / "nexus.toml").write_text('worker_id = "from-home"\n', encoding="utf-8")
    other = tmp_path / "elsewhere.toml"
    other.write_text('worker_id = "from-config"\n', encoding="utf-8")
    monkeypatch.setenv("NEXUS_CONFIG", str(other))
    assert load_settings().worker_id == "from-config"


def test_precedence_is_overrides_then_env_then_toml(
    nexus_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Environment beats the TOML file; keyword overrides beat both; TOML beats defaults."""
    nexus_home.mkdir(parents=True)
    (nexus_home / "nexus.toml").write_text(TOML, encoding="utf-8")
    monkeypatch.setenv("NEXUS_DURABILITY", "normal")
    monkeypatch.setenv("NEXUS_CONCURRENCY", "9")
    settings = load_settings(concurrency=11)
    assert (settings.durability, settings.concurrency, settings.toolkits) == (
        "normal",
        11,
        {"http": {"allow_hosts": ["a.example"]}},
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"NEXUS_DURABILITY": "fast"},
            "NEXUS_DURABILITY: Input should be 'normal' or 'full' (got 'fast')",
        ),
        (
            {"NEXUS_LOG_LEVEL": "loud"},
            "NEXUS_LOG_LEVEL: Input should be 'debug', 'info', 'warning' or 'error' (got 'loud')",
        ),
        (
            {"NEXUS_CONCURRENCY": "0"},
            "NEXUS_CONCURRENCY: Input should be greater than or equal to 1 (got '0')",
        ),
        ({"NEXUS_CONCURRENCY": "many"}, "NEXUS_CONCURRENCY: Input should be a valid integer"),
        ({"NEXUS_QUEUE_POLL_S": "0"}, "NEXUS_QUEUE_POLL_S: Input should be greater than 0"),
        ({"NEXUS_WORKER_ID": "../x"}, "NEXUS_WORKER_ID: String should match pattern"),
        ({"NEXUS_WORKER_ID": "run-1"}, "NEXUS_WORKER_ID: Value error, `run-` starts"),
        (
            {"NEXUS_PROVIDERS": '[{"name": "p", "base_url": "localhost:1", "model": "m"}]'},
            "NEXUS_PROVIDERS__0__BASE_URL: Value error, must start with http:// or https:// "
            "(got 'localhost:1')",
        ),
        (
            {
                "NEXUS_PROVIDERS": '[{"name": "p", "base_url": "http://x", "model": "m", '
                '"retries": -1}]'
            },
            "NEXUS_PROVIDERS__0__RETRIES: Input should be greater than or equal to 0",
        ),
        (
            {
                "NEXUS_PROVIDERS": '[{"name": "p", "base_url": "http://x", "model": "m", '
                '"color": 1}]'
            },
            "NEXUS_PROVIDERS__0__COLOR: Extra inputs are not permitted",
        ),
        ({"NEXUS_PROVIDERS": '[{"name": "p"}]'}, "NEXUS_PROVIDERS__0__BASE_URL: Field required"),
        ({"NEXUS_PROVIDERS": "not json"}, "NEXUS_PROVIDERS: error parsing value"),
    ],
    ids=[
        "durability",
        "log-level",
        "concurrency-zero",
        "concurrency-text",
        "poll-zero",
        "worker-id-path",
        "worker-id-run",
        "base-url-scheme",
        "retries-negative",
        "provider-unknown-key",
        "provider-missing",
        "providers-not-json",
    ],
)
def test_bad_environment_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    """A bad value raises ConfigError naming the NEXUS_* setting, what is wrong, the
    accepted values of a choice, and the value given."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("invalid settings:\n  ")
    assert message in str(info.value)


def test_unknown_key_in_toml_is_refused(nexus_home: Path) -> None:
    """A key the settings do not know, in nexus.toml, is a ConfigError naming it."""
    nexus_home.mkdir(parents=True)
    (nexus_home / "nexus.toml").write_text('durabilty = "full"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "NEXUS_DURABILTY: Extra inputs are not permitted" in str(info.value)


def test_bad_value_in_toml_names_the_setting(nexus_home: Path) -> None:
    """A bad value from nexus.toml is reported like one from the environment."""
    nexus_home.mkdir(parents=True)
    (nexus_home / "nexus.toml").write_text('durability = "fast"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"NEXUS_DURABILITY: Input should be 'normal' or 'full'"):
        load_settings()


def test_broken_toml_syntax_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TOML syntax error is a ConfigError naming the file that holds it."""
    path = tmp_path / "broken.toml"
    path.write_text("durability = [\n", encoding="utf-8")
    monkeypatch.setenv("NEXUS_CONFIG", str(path))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(f"{path}: invalid TOML: ")


def test_nexus_config_pointing_nowhere_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NEXUS_CONFIG naming a missing file is a ConfigError, not a silent default."""
    missing = tmp_path / "missing.toml"
    monkeypatch.setenv("NEXUS_CONFIG", str(missing))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == f"NEXUS_CONFIG: no such file: {missing}"


def test_a_home_given_as_an_override_reads_its_own_toml(nexus_home: Path, tmp_path: Path) -> None:
    """`load_settings(home=X)` reads X's nexus.toml, not the default home's
    (NEXUS_HOME points elsewhere here)."""
    nexus_home.mkdir(parents=True)
    (nexus_home / "nexus.toml").write_text('worker_id = "from-env-home"\n', encoding="utf-8")
    other = tmp_path / "other-home"
    other.mkdir()
    (other / "nexus.toml").write_text('worker_id = "from-other"\n', encoding="utf-8")
    settings = load_settings(home=other)
    assert (settings.home, settings.worker_id) == (other, "from-other")
