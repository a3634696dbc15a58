"""A worker process for the folding test: the real `serve_forever`, with a guard
whose state is a projection of the journal. The guard logs what it holds at every
step, so the test can compare it before a SIGKILL and after the resume.

    python -m tests.runtime.fold_worker   (NEXUS_HOME, NEXUS_PROVIDERS, FOLD_LOG,
                                           CRASH_RELEASE set by the test)
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from nexus.runtime.agents import Agent, AgentRegistry
from nexus.runtime.dispatch import serve_forever
from nexus.runtime.pipeline import BREAKER
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import Toolkit, tool
from nexus.types import Event, Guard, Next, Outcome, Projection, RunContext, Step


class ToolResultCounter(Guard, Projection[int]):
    """Counts the session's tool results; logs the count as each step passes."""

    stage = BREAKER
    name = "tool-result-counter"

    def initial(self) -> int:
        return 0

    def apply(self, state: int, event: Event) -> int:
        return state + 1 if event.kind == "tool.result" else state

    async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
        with Path(os.environ["FOLD_LOG"]).open("a") as f:
            f.write(f"{step.number} {run.view(self)}\n")
        return await call_next(step)


@tool(effect="read")
async def hold(tag: str) -> str:
    """Return the tag; when it is 'hold', wait until the release file exists."""
    if tag == "hold":
        release = Path(os.environ["CRASH_RELEASE"])
        while not release.exists():
            await asyncio.sleep(0.02)
    return f"held {tag}"


def registry() -> AgentRegistry:
    agents = AgentRegistry()
    agents.add(Agent(name="fold", toolkits=(Toolkit("fold", [hold]),)))
    return agents


if __name__ == "__main__":
    asyncio.run(serve_forever(Runtime(agents=registry(), guards=[ToolResultCounter()])))
