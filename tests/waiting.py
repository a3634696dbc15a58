"""Waiting on observable state in tests: poll, never sleep as an assertion."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll `predicate` until it is true; fail naming `what` after `timeout` seconds
    (a bound against hangs, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """`wait_for` for async tests: polls without blocking the event loop (the
    workers under test may run on it)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def until_async(
    predicate: Callable[[], Awaitable[object]], what: str, timeout: float = 30.0
) -> None:
    """`until` for a predicate that must itself await (an HTTP request to an app on
    this loop)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
