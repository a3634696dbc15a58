"""Agents: TOML definitions, their refusals, and the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.errors import ConfigError
from nexus.runtime.agents import (
    BUILTIN_AGENTS,
    DEFAULT_PROMPT,
    Agent,
    AgentRegistry,
    Limits,
    LoopPolicy,
    load_agent_file,
)
from nexus.runtime.tools import Toolkit, tool

RESEARCHER = """\
name = "researcher"
system_prompt = "You research questions using the files in your workspace."
description = "Digs through files."
model = "llama3.2"
toolkits = ["workspace", "http"]

[limits]
max_steps = 20
max_cost_usd = 0.50
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_agent_file_loads_every_field(tmp_path: Path) -> None:
    """A valid TOML file becomes an Agent with its prompt, model, toolkits, limits,
    description, and the file as its source."""
    path = write(tmp_path, "researcher.toml", RESEARCHER)
    agent = load_agent_file(path)
    assert agent == Agent(
        name="researcher",
        system_prompt="You research questions using the files in your workspace.",
        model="llama3.2",
        toolkits=("workspace", "http"),
        limits=Limits(max_steps=20, max_cost_usd=0.5),
        description="Digs through files.",
        source=str(path),
    )
    assert agent.toolbox().names() == [
        "read_file",
        "list_files",
        "write_file",
        "delete_file",
        "http_get",
    ]


def test_minimal_agent_file_gets_defaults(tmp_path: Path) -> None:
    """Only name and system_prompt are required; the rest takes defaults."""
    agent = load_agent_file(write(tmp_path, "m.toml", 'name = "m"\nsystem_prompt = "p"\n'))
    assert agent.to_dict() == {
        "name": "m",
        "description": "",
        "model": None,
        "toolkits": [],
        "limits": {
            "max_steps": 50,
            "max_tokens": None,
            "max_wall_s": None,
            "max_cost_usd": None,
            "max_tokens_per_call": 4096,
            "max_tool_calls_per_turn": 16,
            "loops": LoopPolicy().model_dump(),
        },
        "source": str(tmp_path / "m.toml"),
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('name = "x"\nsystem_prompt = "unterminated\n', "Illegal character"),
        (
            'name = "x"\nsystem_prompt = "p"\ncolour = "blue"\n',
            "colour: Extra inputs are not permitted",
        ),
        ('name = "x"\n', "system_prompt: Field required"),
        ('name = "bad name!"\nsystem_prompt = "p"\n', "name: String should match pattern"),
        (
            'name = "x"\nsystem_prompt = "p"\n[limits]\nmax_steps = "lots"\n',
            "limits.max_steps: Input should be a valid integer",
        ),
        (
            'name = "x"\nsystem_prompt = "p"\n[limits]\nmax_steps = 0\n',
            "limits.max_steps: Input should be greater than or equal to 1",
        ),
        (
            'name = "x"\nsystem_prompt = "p"\n[limits]\nmax_turns = 3\n',
            "limits.max_turns: Extra inputs are not permitted",
        ),
        (
            'name = "x"\nsystem_prompt = "p"\ntoolkits = ["workspace", "teleport"]\n',
            "agent x: unknown toolkit 'teleport' (known: http, workspace)",
        ),
    ],
    ids=[
        "broken-toml",
        "unknown-key",
        "missing-prompt",
        "bad-name",
        "bad-limits-type",
        "limit-out-of-range",
        "unknown-limit",
        "unknown-toolkit",
    ],
)
def test_bad_agent_files_raise_config_error_naming_the_file(
    tmp_path: Path, text: str, problem: str
) -> None:
    """Each kind of bad agent file is refused with a ConfigError that names the file and
    says what is wrong."""
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_agent_file(path)
    message = str(info.value)
    assert message.startswith(f"agent file {path}: ")
    assert problem in message


def test_unreadable_agent_file_names_the_file(tmp_path: Path) -> None:
    """A missing file or one that is not UTF-8 is a ConfigError naming it."""
    missing = tmp_path / "missing.toml"
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'name = "\xff\xfe"\n')
    for path in (missing, binary):
        with pytest.raises(ConfigError, match=f"^agent file {path}: "):
            load_agent_file(path)


def test_registry_loads_a_folder_over_the_builtins(tmp_path: Path) -> None:
    """load() holds the built-ins plus every *.toml of the folder (other files ignored);
    a file may override a built-in by name."""
    folder = tmp_path / "agents"
    write(folder, "researcher.toml", RESEARCHER)
    write(folder, "assistant.toml", 'name = "assistant"\nsystem_prompt = "mine"\ntoolkits = []\n')
    write(folder, "notes.txt", "not an agent")

    registry = AgentRegistry.load(folder)

    assert [a.name for a in registry.all()] == ["assistant", "researcher"]
    assistant = registry.get("assistant")
    assert (assistant.system_prompt, assistant.toolkits, assistant.source) == (
        "mine",
        (),
        str(folder / "assistant.toml"),
    )


def test_registry_without_a_folder_has_the_builtins(tmp_path: Path) -> None:
    """A missing folder is fine: the registry holds only the built-in agents."""
    registry = AgentRegistry.load(tmp_path / "nope")
    assert registry.all() == sorted(BUILTIN_AGENTS, key=lambda a: a.name)
    assert registry.get("assistant").to_dict() == {
        "name": "assistant",
        "description": "General assistant with a workspace folder and loopback HTTP fetch.",
        "model": None,
        "toolkits": ["workspace", "http"],
        "limits": {
            "max_steps": 50,
            "max_tokens": None,
            "max_wall_s": None,
            "max_cost_usd": None,
            "max_tokens_per_call": 4096,
            "max_tool_calls_per_turn": 16,
            "loops": LoopPolicy().model_dump(),
        },
        "source": "builtin",
    }
    assert registry.get("assistant").system_prompt == DEFAULT_PROMPT


def test_registry_folder_with_a_bad_file_fails_naming_it(tmp_path: Path) -> None:
    """One broken file makes load() fail with that file's name."""
    folder = tmp_path / "agents"
    write(folder, "ok.toml", RESEARCHER)
    bad = write(folder, "zz.toml", "name = [")
    with pytest.raises(ConfigError, match=f"^agent file {bad}: "):
        AgentRegistry.load(folder)


def test_get_of_an_unknown_agent_lists_the_known_ones() -> None:
    """get() of an unknown name raises ConfigError listing the known names."""
    registry = AgentRegistry([Agent(name="b"), Agent(name="a")])
    with pytest.raises(ConfigError) as info:
        registry.get("zed")
    assert str(info.value) == "unknown agent 'zed' (known: a, b)"
    with pytest.raises(ConfigError, match=r"\(known: none\)"):
        AgentRegistry([]).get("zed")


def test_python_agents_register_and_take_toolkit_objects() -> None:
    """add() registers or replaces an agent; a Python agent may carry Toolkit objects,
    listed by name in to_dict()."""

    @tool
    def ping() -> str:
        """Ping."""
        return "pong"

    kit = Toolkit("pings", [ping])
    agent = Agent(name="pinger", toolkits=(kit, "http"), limits=Limits(max_steps=None))
    registry = AgentRegistry()
    registry.add(agent)
    registry.add(Agent(name="assistant", description="replaced"))

    assert registry.get("pinger").toolbox().names() == ["ping", "http_get"]
    assert registry.get("assistant").description == "replaced"
    assert agent.to_dict() == {
        "name": "pinger",
        "description": "",
        "model": None,
        "toolkits": ["pings", "http"],
        "limits": {**Limits().model_dump(), "max_steps": None},
        "source": "python",
    }


def test_python_agent_with_an_unknown_toolkit_fails_when_its_toolbox_is_built() -> None:
    """An unknown toolkit name in a Python agent is a ConfigError naming the agent."""
    with pytest.raises(ConfigError, match=r"^agent a: unknown toolkit 'nope'"):
        Agent(name="a", toolkits=("nope",)).toolbox()
