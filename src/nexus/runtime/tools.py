"""Tools: typed Python callables the model may call, and toolkits that group them.

```python
@tool(effect="read")
async def word_count(text: str) -> int:
    \"\"\"Count the words of a text.\"\"\"
    return len(text.split())
```

The JSON schema comes from the type hints (pydantic). A `write` tool must declare
an `undo(args, result)` compensation, or say why it has none.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from nexus.errors import (
    ConfigError,
    SecretNotFound,
    ToolArgumentsError,
    ToolFenced,
    ToolStopped,
)
from nexus.runtime.redact import Redactor
from nexus.types import JSON, Effect

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class Secrets(Protocol):
    """Credentials for tools, by name. Environment-backed today (`EnvSecrets`); the
    vault will sit behind the same accessor."""

    def get(self, name: str) -> str:
        """The secret's value; `SecretNotFound` if it is not available to this tool."""
        ...


class EnvSecrets:
    """Secrets from `NEXUS_SECRET_<NAME>` environment variables, limited to the names
    a tool declares (`@tool(secrets=[...])`). Every value handed out is registered
    with the redactor first, so it cannot reach the journal or the logs.

    Args:
        allowed: the names this tool may read.
        redactor: masks the values from then on (None: nothing registered).
        environ: the environment to read (default: `os.environ`).
    """

    def __init__(
        self,
        allowed: Iterable[str] = (),
        *,
        redactor: Redactor | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.allowed = frozenset(allowed)
        self.redactor = redactor
        self.environ = os.environ if environ is None else environ

    def get(self, name: str) -> str:
        if name not in self.allowed:
            raise SecretNotFound(
                f"secret {name!r} is not declared by this tool (declared: "
                f"{', '.join(sorted(self.allowed)) or 'none'}); add it to @tool(secrets=[...])"
            )
        var = "NEXUS_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()
        value = self.environ.get(var)
        if not value:
            raise SecretNotFound(f"secret {name!r} is not set: export {var}")
        if self.redactor is not None and len(value) >= 4:
            self.redactor.register(value)
        return value


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may know about the call it serves.

    `idempotency_key` is derived from (session, step): a retried or replayed call
    carries the same key, so a tool talking to an outside system can dedupe.
    `retry` is True when the journal shows this call started before but never
    finished (the worker crashed mid-call); `attempt` counts the tries.
    `settings` is the tool's toolkit's settings section (validated by the
    toolkit's `settings_model`), `secrets` its credentials accessor. `stopped` is
    set (from any thread) the moment the session is killed: a sync tool, which
    runs in a thread that cannot be cancelled, calls `check_stopped()` before each
    side effect so that nothing happens after a kill.

    `epoch` is the fencing token of this run of the session: it grows each time a
    worker (re)starts the session, so a worker that was declared dead and comes
    back holds an older one. A service that keeps the highest epoch it has seen
    per session can refuse a stale write; `check_epoch()` asks the store whether
    this run is still the session's (the workspace toolkit does both).
    """

    session_id: str
    step: int
    idempotency_key: str
    workspace: Path
    retry: bool = False
    attempt: int = 1
    settings: Any = None
    secrets: Secrets = field(default_factory=EnvSecrets)
    stopped: threading.Event = field(default_factory=threading.Event)
    epoch: int = 0
    current_epoch: Callable[[], int] | None = field(default=None, repr=False)

    def check_stopped(self) -> None:
        """Raise `ToolStopped` if the session was killed: call it just before a side
        effect (a write, a request that changes something)."""
        if self.stopped.is_set():
            raise ToolStopped(f"session {self.session_id} was killed: the effect was not made")

    def check_epoch(self) -> None:
        """Raise `ToolFenced` if another worker has taken the session over since this
        run started (its epoch moved on): call it before a side effect."""
        if self.current_epoch is not None and (now := self.current_epoch()) != self.epoch:
            raise ToolFenced(
                f"session {self.session_id}: this run (epoch {self.epoch}) was taken over "
                f"(epoch {now}): the effect was not made"
            )


class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Any = _NotGiven()


@dataclass(frozen=True)
class Tool:
    """A callable the model can use, with its schema and its effect class."""

    name: str
    description: str
    fn: Callable[..., Any]
    effect: Effect
    args_model: type[BaseModel] | None  # None: validated against `_schema` (JSON Schema)
    undo: Callable[..., Any] | None = None
    why_no_undo: str | None = None
    timeout_s: float = 30.0
    idempotent: bool = False
    secrets: tuple[str, ...] = ()
    takes_ctx: bool = False
    _schema: JSON = field(default_factory=dict, repr=False)

    def spec(self) -> JSON:
        """The OpenAI `tools` entry for this tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self._schema,
            },
        }

    def parse(self, raw: str) -> JSON:
        """Decode and validate the model's arguments, or raise `ToolArgumentsError`."""
        try:
            data = json.loads(raw or "{}")
        except json.JSONDecodeError as exc:
            raise ToolArgumentsError(
                f"arguments for {self.name} are not valid JSON ({exc.msg} at position "
                f"{exc.pos}); send a JSON object matching the tool's schema"
            ) from None
        if not isinstance(data, dict):
            raise ToolArgumentsError(
                f"arguments for {self.name} must be a JSON object, not {type(data).__name__}"
            )
        if self.args_model is None:
            return self._check_schema(data)
        try:
            return self.args_model.model_validate(data).model_dump()
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {problems}") from None

    def _check_schema(self, data: JSON) -> JSON:
        from jsonschema import Draft202012Validator

        errors = sorted(
            Draft202012Validator(self._schema).iter_errors(data), key=lambda e: list(e.path)
        )
        if errors:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}" for e in errors[:5]
            )
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {problems}")
        return data

    @classmethod
    def from_schema(
        cls,
        *,
        name: str,
        description: str,
        parameters: JSON,
        fn: Callable[..., Any],
        effect: Effect | str = Effect.READ,
        undo: Callable[..., Any] | None = None,
        why_no_undo: str | None = None,
        timeout_s: float = 30.0,
        idempotent: bool | None = None,
        secrets: Iterable[str] = (),
        takes_ctx: bool = True,
    ) -> Tool:
        """A tool described by a JSON Schema instead of type hints (WASM plugins and
        MCP servers come with one). `fn(ctx, **arguments)` (or `fn(**arguments)` with
        `takes_ctx=False`) receives the arguments as validated JSON. Raises
        `ConfigError` if the name, the schema or the effect rules are wrong."""
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        if not _NAME.fullmatch(name):
            raise ConfigError(f"tool name {name!r} must match {_NAME.pattern}")
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise ConfigError(f"tool {name}: parameters must be a JSON Schema of type object")
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            raise ConfigError(f"tool {name}: invalid JSON Schema: {exc.message}") from None
        eff = Effect(effect)
        _check_effect(name, eff, undo, why_no_undo)
        if timeout_s <= 0:
            raise ConfigError(f"tool {name}: timeout_s must be > 0")
        return cls(
            name=name,
            description=description or name,
            fn=fn,
            effect=eff,
            args_model=None,
            undo=undo,
            why_no_undo=why_no_undo,
            timeout_s=timeout_s,
            idempotent=eff is Effect.READ if idempotent is None else idempotent,
            secrets=tuple(secrets),
            takes_ctx=takes_ctx,
            _schema={"type": "object", **parameters},
        )

    async def invoke(self, ctx: ToolContext, args: JSON) -> Any:
        """Run the tool (sync tools in a worker thread, so a timeout can fire)."""
        call_args = (ctx,) if self.takes_ctx else ()
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(*call_args, **args)
        return await asyncio.to_thread(self.fn, *call_args, **args)

    async def compensate(self, ctx: ToolContext, args: JSON, result: Any) -> Any:
        """Run the tool's `undo` for an earlier call."""
        if self.undo is None:
            raise ConfigError(f"tool {self.name} has no undo: {self.why_no_undo}")
        params = list(inspect.signature(self.undo).parameters)
        call = (ctx, args, result) if len(params) == 3 else (args, result)
        if inspect.iscoroutinefunction(self.undo):
            return await self.undo(*call)
        return await asyncio.to_thread(self.undo, *call)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    effect: Effect | str = Effect.READ,
    undo: Callable[..., Any] | None = NOT_GIVEN,
    why_no_undo: str | None = None,
    timeout_s: float = 30.0,
    idempotent: bool | None = None,
    secrets: Iterable[str] = (),
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    effect: Effect | str = Effect.READ,
    undo: Callable[..., Any] | None = NOT_GIVEN,
    why_no_undo: str | None = None,
    timeout_s: float = 30.0,
    idempotent: bool | None = None,
    secrets: Iterable[str] = (),
) -> Any:
    """Turn a typed function into a `Tool`. Use bare (`@tool`) or with options.

    Args:
        name: tool name shown to the model (default: the function's name).
        effect: `read`, `write` or `irreversible`.
        undo: for `write` tools, `undo(args, result)` (or `undo(ctx, args, result)`)
            that reverses one call. Required unless `undo=None` with `why_no_undo`.
        why_no_undo: the stated reason a write tool cannot be undone.
        timeout_s: wall-time limit of one call.
        idempotent: safe to call twice with the same arguments (default: True for
            `read` tools, False otherwise).
        secrets: vault secret names the tool needs.
    """

    def build(f: Callable[..., Any]) -> Tool:
        return make_tool(
            f,
            name=name,
            effect=Effect(effect),
            undo=undo,
            why_no_undo=why_no_undo,
            timeout_s=timeout_s,
            idempotent=idempotent,
            secrets=tuple(secrets),
        )

    return build if fn is None else build(fn)


def make_tool(
    fn: Callable[..., Any],
    *,
    name: str | None,
    effect: Effect,
    undo: Callable[..., Any] | None,
    why_no_undo: str | None,
    timeout_s: float,
    idempotent: bool | None,
    secrets: tuple[str, ...],
) -> Tool:
    """Build a `Tool`, checking every rule; raises `ConfigError`."""
    tool_name = name or fn.__name__
    if not _NAME.fullmatch(tool_name):  # match() would accept a trailing newline
        raise ConfigError(f"tool name {tool_name!r} must match {_NAME.pattern}")
    if timeout_s <= 0:
        raise ConfigError(f"tool {tool_name}: timeout_s must be > 0")
    _check_effect(tool_name, effect, undo, why_no_undo)
    takes_ctx, model = _args_model(fn, tool_name)
    description, _ = _doc(fn)
    return Tool(
        name=tool_name,
        description=description or tool_name,
        fn=fn,
        effect=effect,
        args_model=model,
        undo=None if undo is NOT_GIVEN else undo,
        why_no_undo=why_no_undo,
        timeout_s=timeout_s,
        idempotent=effect is Effect.READ if idempotent is None else idempotent,
        secrets=secrets,
        takes_ctx=takes_ctx,
        _schema=_clean_schema(model.model_json_schema()),
    )


def _check_effect(
    tool_name: str, effect: Effect, undo: Callable[..., Any] | None, why_no_undo: str | None
) -> None:
    if effect is Effect.WRITE:
        if undo is NOT_GIVEN:
            raise ConfigError(
                f"write tool {tool_name} must declare undo=..., or undo=None with "
                "why_no_undo='...' stating why it cannot be reversed"
            )
        if undo is None and not (why_no_undo or "").strip():
            raise ConfigError(f"write tool {tool_name} has undo=None but no why_no_undo reason")
    elif undo not in (None, NOT_GIVEN):
        raise ConfigError(f"tool {tool_name}: only write tools declare an undo")


def _args_model(fn: Callable[..., Any], tool_name: str) -> tuple[bool, type[BaseModel]]:
    try:
        hints = get_type_hints(fn)
    except NameError as exc:
        raise ConfigError(f"tool {tool_name}: cannot resolve type hints ({exc})") from None
    _, arg_docs = _doc(fn)
    fields: dict[str, Any] = {}
    takes_ctx = False
    for i, (pname, param) in enumerate(inspect.signature(fn).parameters.items()):
        hint = hints.get(pname)
        if i == 0 and hint is ToolContext:
            takes_ctx = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"tool {tool_name}: *args/**kwargs are not allowed")
        if hint is None:
            raise ConfigError(f"tool {tool_name}: parameter {pname!r} needs a type hint")
        from pydantic import Field

        default = ... if param.default is param.empty else param.default
        fields[pname] = (hint, Field(default, description=arg_docs.get(pname)))
    model = create_model(f"{tool_name}_args", __config__=ConfigDict(extra="forbid"), **fields)
    return takes_ctx, model


def _doc(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The summary and the Google-style `Args:` entries of a docstring."""
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    args: dict[str, str] = {}
    in_args = False
    entry_indent: int | None = None
    last: str | None = None
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:"):
            in_args = True
            continue
        if not in_args or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:  # the next section ("Returns:", ...)
            in_args = False
            continue
        if entry_indent is None:
            entry_indent = indent
        m = re.match(r"^\s+(\w+)(?:\s*\(.*?\))?:\s*(.+)$", line)
        if indent <= entry_indent and m:
            last = m.group(1)
            args[last] = m.group(2).strip()
        elif indent > entry_indent and last is not None:
            # Google style wraps a long description onto more-indented lines.
            args[last] += " " + line.strip()
    return summary, args


def _clean_schema(schema: JSON) -> JSON:
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


class Toolkit:
    """A named group of tools an agent can be given.

    Args:
        name: how agents name it (`toolkits = ["http"]`).
        tools: its tools.
        description: one line for listings.
        settings_model: a pydantic model of its settings section
            (`[toolkits.NAME]` in nexus.toml, `NEXUS_TOOLKITS__NAME__KEY`); the
            validated object reaches its tools as `ToolContext.settings`.
        on_open: `async (settings) -> None`, run once per worker before the first
            call (open a connection pool, log in).
        on_close: `async () -> None`, run at the worker's shutdown.
    """

    def __init__(
        self,
        name: str,
        tools: Iterable[Tool],
        *,
        description: str = "",
        settings_model: type[BaseModel] | None = None,
        on_open: Callable[[Any], Awaitable[None]] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.settings_model = settings_model
        self.on_open = on_open
        self.on_close = on_close
        self._tools: dict[str, Tool] = {}
        for t in tools:
            if t.name in self._tools:
                raise ConfigError(f"toolkit {name}: two tools named {t.name}")
            self._tools[t.name] = t

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def get(self, name: str) -> Tool | None:
        """The tool called `name`, or None."""
        return self._tools.get(name)

    def parse_settings(self, raw: Mapping[str, Any] | None) -> Any:
        """This toolkit's validated settings, or `ConfigError` naming the setting."""
        if self.settings_model is None:
            if raw:
                raise ConfigError(
                    f"NEXUS_TOOLKITS__{self.name.upper()}: toolkit {self.name} takes no settings"
                )
            return None
        data = {k: _maybe_json(v) for k, v in (raw or {}).items()}
        try:
            return self.settings_model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"NEXUS_TOOLKITS__{self.name.upper()}__"
                f"{'__'.join(str(p).upper() for p in e['loc'])}: {e['msg']}"
                for e in exc.errors()
            )
            raise ConfigError(f"invalid settings of toolkit {self.name}: {problems}") from None


def _maybe_json(value: Any) -> Any:
    # An environment variable holds text: `NEXUS_TOOLKITS__HTTP__ALLOW_HOSTS='["a"]'`.
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class ToolBox:
    """The tools one agent may call: the union of its toolkits."""

    def __init__(self, toolkits: Iterable[Toolkit]) -> None:
        self._tools: dict[str, Tool] = {}
        self._kits: dict[str, Toolkit] = {}
        for kit in toolkits:
            for t in kit:
                if t.name in self._tools:
                    raise ConfigError(f"tool {t.name} is defined by two toolkits")
                self._tools[t.name] = t
                self._kits[t.name] = kit
        self.specs = [t.spec() for t in self._tools.values()]

    def get(self, name: str) -> Tool | None:
        """The tool called `name`, or None."""
        return self._tools.get(name)

    def toolkit_of(self, name: str) -> Toolkit | None:
        """The toolkit that provides tool `name`."""
        return self._kits.get(name)

    def toolkits(self) -> list[Toolkit]:
        """The toolkits, each once, in order."""
        return list({id(k): k for k in self._kits.values()}.values())

    def names(self) -> list[str]:
        """The tool names, in order."""
        return list(self._tools)
