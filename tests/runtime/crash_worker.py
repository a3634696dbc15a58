"""A NEXUS worker process for crash tests: the real `serve_forever`, plus one tool
that logs each execution and can be held mid-call.

    python -m tests.runtime.crash_worker   (NEXUS_HOME, NEXUS_PROVIDERS, CRASH_LOG,
                                            CRASH_RELEASE set by the test)
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from nexus.runtime.agents import Agent, AgentRegistry
from nexus.runtime.dispatch import serve_forever
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import ToolContext, Toolkit, tool


@tool(effect="read")
async def mark(ctx: ToolContext, tag: str) -> str:
    """Log this execution; when tag is 'hold', wait until the release file exists."""
    log = Path(os.environ["CRASH_LOG"])
    with log.open("a") as f:
        f.write(f"start {tag} {ctx.idempotency_key} {ctx.retry}\n")
    if tag == "hold":
        release = Path(os.environ["CRASH_RELEASE"])
        while not release.exists():
            await asyncio.sleep(0.02)
    with log.open("a") as f:
        f.write(f"end {tag} {ctx.idempotency_key} {ctx.retry}\n")
    return f"marked {tag}"


def registry() -> AgentRegistry:
    """The agents of the crash tests."""
    agents = AgentRegistry()
    agents.add(Agent(name="crash", toolkits=(Toolkit("crash", [mark]),)))
    return agents


if __name__ == "__main__":
    asyncio.run(serve_forever(Runtime(agents=registry())))
