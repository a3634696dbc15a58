"""A NEXUS worker process for the many-machines tests: the real `serve_forever`, with
one tool whose side effect lands in a shared folder (standing for an outside
system), made once per idempotency key and refused from a stale run.

    python -m tests.fleet.worker   (NEXUS_HOME, NEXUS_DATABASE_URL, NEXUS_PROVIDERS,
                                    FLEET_EFFECTS, FLEET_RELEASE set by the test)
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from nexus.errors import ToolFenced
from nexus.runtime.agents import Agent, AgentRegistry
from nexus.runtime.dispatch import serve_forever
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import ToolContext, Toolkit, tool


def _log(line: str) -> None:
    with (Path(os.environ["FLEET_EFFECTS"]) / "log").open("a") as f:
        f.write(line + "\n")


@tool(effect="write", undo=None, why_no_undo="an outside system, deduped by key", idempotent=True)
async def effect(ctx: ToolContext, tag: str) -> str:
    """Make the effect `tag` once per idempotency key. The first attempt of tag
    'hold' waits for the release file first (a call in flight)."""
    _log(f"start {tag} {ctx.idempotency_key} epoch={ctx.epoch} pid={os.getpid()}")
    if tag == "hold" and ctx.attempt == 1:
        release = Path(os.environ["FLEET_RELEASE"])
        while not release.exists():
            await asyncio.sleep(0.02)
    try:
        ctx.check_epoch()  # a stale run makes no effect
    except ToolFenced:
        _log(f"fenced {tag} {ctx.idempotency_key} epoch={ctx.epoch} pid={os.getpid()}")
        raise
    path = Path(os.environ["FLEET_EFFECTS"]) / ctx.idempotency_key
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return f"{tag} was already made"  # a retried call: the effect exists
    os.write(fd, f"{tag} epoch={ctx.epoch}".encode())
    os.close(fd)
    return f"made {tag}"


def registry() -> AgentRegistry:
    """The agent of the fleet tests."""
    agents = AgentRegistry()
    agents.add(Agent(name="fleet", toolkits=(Toolkit("fleet", [effect]),)))
    return agents


if __name__ == "__main__":
    asyncio.run(serve_forever(Runtime(agents=registry())))
