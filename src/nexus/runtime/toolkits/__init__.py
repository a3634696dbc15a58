"""The toolkit registry: toolkits by name, for agents to name.

Three sources, in this order of precedence: toolkits registered on the runtime
(`runtime.toolkits.register(...)`, later plugins and MCP servers), Python entry
points in the `nexus.toolkits` group (an installed package declares
`[project.entry-points."nexus.toolkits"] name = "pkg.module:toolkit"`, naming a
`Toolkit` or a function returning one), and the built-ins (`workspace`, `http`).

The registry also runs each toolkit's lifecycle in this process: its settings
section is validated and its `on_open` awaited once, before its first tool call;
`aclose` runs every `on_close` at shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from nexus.errors import ConfigError
from nexus.runtime.tools import Toolkit

ENTRY_POINT_GROUP = "nexus.toolkits"
log = logging.getLogger("nexus.toolkits")

Factory = Callable[[], Toolkit]


def _workspace() -> Toolkit:
    from nexus.runtime.toolkits.workspace import toolkit

    return toolkit


def _http() -> Toolkit:
    from nexus.runtime.toolkits.http import toolkit

    return toolkit


BUILTIN: dict[str, Factory] = {"workspace": _workspace, "http": _http}


class ToolkitRegistry:
    """Toolkits by name, built on first use; one per runtime.

    Args:
        settings: the `toolkits` settings sections, by toolkit name.
    """

    def __init__(self, settings: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._factories: dict[str, Factory] = dict(BUILTIN)
        self._built: dict[str, Toolkit] = {}
        self._entry_points_loaded = False
        self._settings = dict(settings or {})
        self._opened: dict[int, tuple[Toolkit, Any]] = {}

    def register(self, toolkit: Toolkit | Factory, *, name: str | None = None) -> None:
        """Add (or replace) a toolkit, or a function that builds one on first use."""
        if isinstance(toolkit, Toolkit):
            kit = toolkit
            self._factories[name or kit.name] = lambda: kit
            self._built.pop(name or kit.name, None)
            return
        if name is None:
            raise ConfigError("a toolkit factory is registered with a name")
        self._factories[name] = toolkit
        self._built.pop(name, None)

    def names(self) -> list[str]:
        """Every toolkit name known, sorted."""
        self._load_entry_points()
        return sorted(self._factories)

    def get(self, name: str) -> Toolkit:
        """The toolkit called `name`; `ConfigError` listing the known ones."""
        kit = self._built.get(name)
        if kit is not None:
            return kit
        factory = self._factories.get(name)
        if factory is None:
            self._load_entry_points()
            factory = self._factories.get(name)
        if factory is None:
            raise ConfigError(f"unknown toolkit {name!r} (known: {', '.join(self.names())})")
        try:
            kit = factory()
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise ConfigError(f"toolkit {name!r} failed to load: {why}") from None
        if not isinstance(kit, Toolkit):
            raise ConfigError(f"toolkit {name!r} is a {type(kit).__name__}, not a Toolkit")
        self._built[name] = kit
        return kit

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._factories:
                continue  # registered and built-in toolkits win over installed ones
            self._factories[ep.name] = _entry_point_factory(ep.name, ep.load)

    async def open(self, kit: Toolkit) -> Any:
        """Validate `kit`'s settings and run its `on_open` once in this process;
        returns the settings object its tools get."""
        opened = self._opened.get(id(kit))
        if opened is not None:
            return opened[1]
        settings = kit.parse_settings(self._settings.get(kit.name))
        if kit.on_open is not None:
            await kit.on_open(settings)
        self._opened[id(kit)] = (kit, settings)
        return settings

    async def aclose(self) -> None:
        """Run the `on_close` of every toolkit opened here."""
        opened, self._opened = list(self._opened.values()), {}
        for kit, _ in opened:
            if kit.on_close is not None:
                try:
                    await kit.on_close()
                except Exception:  # shutdown goes on: one toolkit cannot block the rest
                    log.exception("toolkit %s failed to close", kit.name)


def _entry_point_factory(name: str, load: Callable[[], Any]) -> Factory:
    def build() -> Toolkit:
        target = load()
        kit = target() if callable(target) and not isinstance(target, Toolkit) else target
        if not isinstance(kit, Toolkit):
            raise ConfigError(
                f"entry point {ENTRY_POINT_GROUP}:{name} gives a {type(kit).__name__}, "
                "not a Toolkit"
            )
        return kit

    return build
