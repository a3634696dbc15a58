"""Tools: schemas from type hints, the effect rules, argument parsing, toolkits and undo."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

import pytest

from nexus.errors import ConfigError, RecoverableError, ToolArgumentsError
from nexus.runtime.tools import Tool, ToolBox, ToolContext, Toolkit, tool
from nexus.types import Effect


@tool(effect="read")
def search(
    query: str,
    limit: int = 5,
    mode: Literal["fast", "deep"] = "fast",
    tags: list[str] | None = None,
) -> list[str]:
    """Search the notes
    for a query.

    Longer text that is not part of the summary.

    Args:
        query: words to look for.
        limit (int): how many results
            at most.
        tags: only notes with these tags.

    Returns:
        matching note names.
    """
    return [query] * limit


def ctx(tmp_path: Path, **kw: Any) -> ToolContext:
    return ToolContext(session_id="s1", step=3, idempotency_key="key-3", workspace=tmp_path, **kw)


# -- schema -----------------------------------------------------------------------------


def test_spec_is_built_from_type_hints_and_docstring() -> None:
    """spec() is the OpenAI tools entry: summary as description, schema from the hints,
    Args: entries (also wrapped ones) as property descriptions, no extra properties."""
    assert search.spec() == {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the notes for a query.",
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "query": {"type": "string", "description": "words to look for."},
                    "limit": {
                        "type": "integer",
                        "default": 5,
                        "description": "how many results at most.",
                    },
                    "mode": {"type": "string", "enum": ["fast", "deep"], "default": "fast"},
                    "tags": {
                        "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                        "default": None,
                        "description": "only notes with these tags.",
                    },
                },
                "required": ["query"],
            },
        },
    }


def test_bare_decorator_gives_a_read_tool_with_defaults() -> None:
    """@tool without options: name from the function, read effect, idempotent, 30 s
    timeout, no undo; no docstring means the name is the description."""

    @tool
    def ping() -> str:
        return "pong"

    assert isinstance(ping, Tool)
    assert (ping.name, ping.description, ping.effect, ping.idempotent, ping.timeout_s) == (
        "ping",
        "ping",
        Effect.READ,
        True,
        30.0,
    )
    assert (ping.undo, ping.why_no_undo, ping.secrets, ping.takes_ctx) == (None, None, (), False)
    assert ping.spec()["function"]["parameters"] == {
        "type": "object",
        "additionalProperties": False,
        "properties": {},
    }


def test_options_are_kept_on_the_tool() -> None:
    """name, timeout, idempotency and secrets options end up on the Tool."""

    def undo(args: dict[str, Any], result: Any) -> None:
        return None

    @tool(name="send-it", effect=Effect.WRITE, undo=undo, timeout_s=2.5, secrets=["smtp"])
    def send(to: str) -> str:
        """Send."""
        return to

    assert (send.name, send.effect, send.undo, send.timeout_s, send.secrets, send.idempotent) == (
        "send-it",
        Effect.WRITE,
        undo,
        2.5,
        ("smtp",),
        False,
    )

    @tool(effect="irreversible", idempotent=True)
    def launch() -> None:
        """Launch."""

    assert (launch.effect, launch.idempotent, launch.undo) == (Effect.IRREVERSIBLE, True, None)


# -- invocation ---------------------------------------------------------------------------


async def test_sync_tool_runs_in_a_worker_thread(tmp_path: Path) -> None:
    """A sync tool is called with the parsed arguments off the event loop's thread."""
    seen: dict[str, Any] = {}

    @tool
    def add(a: int, b: int = 2) -> int:
        """Add."""
        seen["thread"] = threading.current_thread()
        return a + b

    assert await add.invoke(ctx(tmp_path), add.parse('{"a": 40}')) == 42
    assert seen["thread"] is not threading.current_thread()


async def test_async_tool_is_awaited(tmp_path: Path) -> None:
    """An async tool is awaited on the loop."""

    @tool
    async def upper(text: str) -> str:
        """Upper-case."""
        return text.upper()

    assert await upper.invoke(ctx(tmp_path), {"text": "abc"}) == "ABC"


async def test_tool_context_is_injected_and_hidden_from_the_schema(tmp_path: Path) -> None:
    """A first parameter typed ToolContext is not in the schema and receives the
    call's context, for sync and async tools alike."""

    @tool
    def where(context: ToolContext, name: str) -> str:
        """Where."""
        return f"{context.session_id}/{context.step}/{context.idempotency_key}/{name}"

    @tool
    async def where_async(context: ToolContext) -> bool:
        """Where, async."""
        return context.retry

    assert where.takes_ctx and where_async.takes_ctx
    assert list(where.spec()["function"]["parameters"]["properties"]) == ["name"]
    assert await where.invoke(ctx(tmp_path), {"name": "n"}) == "s1/3/key-3/n"
    assert await where_async.invoke(ctx(tmp_path, retry=True), {}) is True


# -- rules ------------------------------------------------------------------------------


def test_write_tool_without_undo_is_refused() -> None:
    """A write tool must declare undo=..., or say why it has none."""
    with pytest.raises(
        ConfigError,
        match=r"write tool save must declare undo=\.\.\., or undo=None with why_no_undo",
    ):

        @tool(effect="write")
        def save(text: str) -> None:
            """Save."""


@pytest.mark.parametrize("why", [None, "", "   "])
def test_write_tool_with_undo_none_needs_a_reason(why: str | None) -> None:
    """undo=None without a (non-blank) why_no_undo is refused."""
    with pytest.raises(ConfigError, match="has undo=None but no why_no_undo reason"):

        @tool(effect="write", undo=None, why_no_undo=why)
        def save(text: str) -> None:
            """Save."""


async def test_write_tool_with_a_stated_reason_has_no_undo(tmp_path: Path) -> None:
    """undo=None with a reason is accepted; compensating it raises ConfigError with it."""

    @tool(effect="write", undo=None, why_no_undo="the printer cannot unprint")
    def print_page(text: str) -> None:
        """Print."""

    assert (print_page.undo, print_page.why_no_undo) == (None, "the printer cannot unprint")
    with pytest.raises(
        ConfigError, match="tool print_page has no undo: the printer cannot unprint"
    ):
        await print_page.compensate(ctx(tmp_path), {"text": "x"}, None)


@pytest.mark.parametrize("effect", ["read", "irreversible"])
def test_undo_on_a_non_write_tool_is_refused(effect: str) -> None:
    """Only write tools may declare an undo."""
    with pytest.raises(ConfigError, match="only write tools declare an undo"):

        @tool(effect=effect, undo=lambda args, result: None)
        def look() -> None:
            """Look."""


@pytest.mark.parametrize(
    "name", ["", "has space", "x" * 65, "dot.name", "slash/name", "trailing\n", "ünï"]
)
def test_bad_tool_names_are_refused(name: str) -> None:
    """Tool names must be 1-64 characters of letters, digits, _ and -."""
    with pytest.raises(ConfigError, match="must match"):
        tool(name=name)(lambda: None)


@pytest.mark.parametrize("name", ["a", "a-b_C9", "x" * 64])
def test_good_tool_names_are_accepted(name: str) -> None:
    """Names within the allowed alphabet and length are accepted."""

    def fn() -> None:
        """Fn."""

    assert tool(name=name)(fn).name == name


def test_bad_signatures_are_refused() -> None:
    """*args/**kwargs, a parameter without a hint, an unresolvable hint and a
    non-positive timeout are each refused with ConfigError naming the tool."""

    def star(*items: int) -> None: ...

    def kwargs(**items: int) -> None: ...

    def untyped(x) -> None: ...  # type: ignore[no-untyped-def]

    def unresolved(x: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    def fine(x: int) -> None: ...

    cases = [
        (star, "tool star: *args/**kwargs are not allowed"),
        (kwargs, "tool kwargs: *args/**kwargs are not allowed"),
        (untyped, "tool untyped: parameter 'x' needs a type hint"),
        (unresolved, "tool unresolved: cannot resolve type hints"),
    ]
    for fn, message in cases:
        with pytest.raises(ConfigError) as info:
            tool(fn)
        assert str(info.value).startswith(message)
    with pytest.raises(ConfigError, match="tool fine: timeout_s must be > 0"):
        tool(timeout_s=0)(fine)


# -- parse --------------------------------------------------------------------------------


def test_parse_returns_validated_arguments_with_defaults() -> None:
    """Valid JSON is validated and completed with the defaults."""
    assert search.parse('{"query": "cats", "tags": ["a"]}') == {
        "query": "cats",
        "limit": 5,
        "mode": "fast",
        "tags": ["a"],
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "not json",
            "arguments for search are not valid JSON (Expecting value at position 0); "
            "send a JSON object matching the tool's schema",
        ),
        ('{"query": ', "arguments for search are not valid JSON (Expecting value at position 10)"),
        ("[1, 2]", "arguments for search must be a JSON object, not list"),
        ('"cats"', "arguments for search must be a JSON object, not str"),
        ("{}", "invalid arguments for search: query: Field required"),
        ('{"query": 5}', "invalid arguments for search: query: Input should be a valid string"),
        (
            '{"query": "x", "limit": "many"}',
            "invalid arguments for search: limit: Input should be a valid integer",
        ),
        (
            '{"query": "x", "mode": "slow"}',
            "invalid arguments for search: mode: Input should be 'fast' or 'deep'",
        ),
        (
            '{"query": "x", "tags": "a"}',
            "invalid arguments for search: tags: Input should be a valid list",
        ),
        (
            '{"query": "x", "extra": 1}',
            "invalid arguments for search: extra: Extra inputs are not permitted",
        ),
        (
            '{"limit": true, "other": 1}',
            "invalid arguments for search: query: Field required; "
            "other: Extra inputs are not permitted",
        ),
    ],
    ids=[
        "not-json",
        "truncated-json",
        "array",
        "string",
        "missing-required",
        "wrong-type-str",
        "wrong-type-int",
        "bad-enum",
        "wrong-type-list",
        "extra-field",
        "several",
    ],
)
def test_parse_rejects_bad_arguments_clearly(raw: str, message: str) -> None:
    """Non-JSON, non-object JSON and schema violations raise ToolArgumentsError, a
    recoverable error whose message tells the model what is wrong."""
    with pytest.raises(ToolArgumentsError) as info:
        search.parse(raw)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, RecoverableError)


def test_parse_treats_empty_arguments_as_an_empty_object() -> None:
    """An empty argument string (models send it for no-argument tools) means {}."""

    @tool
    def now() -> str:
        """Now."""
        return "now"

    assert now.parse("") == {}


# -- toolkits -----------------------------------------------------------------------------


def _named(name: str) -> Tool:
    def fn() -> None:
        """A tool."""

    return tool(name=name)(fn)


def test_toolkit_groups_tools_and_refuses_duplicates() -> None:
    """A toolkit iterates its tools in order, finds them by name, and refuses two tools
    with one name."""
    a, b = _named("a"), _named("b")
    kit = Toolkit("kit", [a, b], description="Two tools.")
    assert (kit.name, kit.description, len(kit), list(kit)) == ("kit", "Two tools.", 2, [a, b])
    assert (kit.get("b"), kit.get("zzz")) == (b, None)
    with pytest.raises(ConfigError, match="toolkit kit: two tools named a"):
        Toolkit("kit", [a, _named("a")])


def test_toolbox_unions_toolkits_and_refuses_clashes() -> None:
    """A toolbox merges its toolkits' tools (names, specs, lookup) and refuses a name
    defined by two toolkits."""
    a, b, c = _named("a"), _named("b"), _named("c")
    box = ToolBox([Toolkit("one", [a, b]), Toolkit("two", [c])])
    assert box.names() == ["a", "b", "c"]
    assert box.specs == [a.spec(), b.spec(), c.spec()]
    assert (box.get("c"), box.get("d")) == (c, None)
    with pytest.raises(ConfigError, match="tool b is defined by two toolkits"):
        ToolBox([Toolkit("one", [a, b]), Toolkit("two", [_named("b")])])


# -- compensate -----------------------------------------------------------------------------


async def test_compensate_calls_a_two_argument_undo(tmp_path: Path) -> None:
    """undo(args, result) gets the call's arguments and result."""
    calls: list[Any] = []

    def undo(args: dict[str, Any], result: Any) -> str:
        calls.append((args, result))
        return "undone"

    @tool(effect="write", undo=undo)
    def put(key: str) -> int:
        """Put."""
        return 7

    assert await put.compensate(ctx(tmp_path), {"key": "k"}, 7) == "undone"
    assert calls == [({"key": "k"}, 7)]


async def test_compensate_calls_a_three_argument_async_undo_with_the_context(
    tmp_path: Path,
) -> None:
    """undo(ctx, args, result), here async, also gets the ToolContext."""
    calls: list[Any] = []

    async def undo(context: ToolContext, args: dict[str, Any], result: Any) -> None:
        calls.append((context.idempotency_key, args, result))

    @tool(effect="write", undo=undo)
    def put(key: str) -> int:
        """Put."""
        return 7

    assert await put.compensate(ctx(tmp_path), {"key": "k"}, 7) is None
    assert calls == [("key-3", {"key": "k"}, 7)]
