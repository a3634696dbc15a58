"""Built-in toolkits that let an agent do real work offline."""

from __future__ import annotations

from collections.abc import Callable

from nexus.runtime.tools import Toolkit


def _workspace() -> Toolkit:
    from nexus.runtime.toolkits.workspace import toolkit

    return toolkit


def _http() -> Toolkit:
    from nexus.runtime.toolkits.http import toolkit

    return toolkit


BUILTIN: dict[str, Callable[[], Toolkit]] = {"workspace": _workspace, "http": _http}
