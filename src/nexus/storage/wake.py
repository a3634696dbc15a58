"""Waking readers when rows may have been committed, instead of polling them.

The live readers of a process (the SSE broadcaster, `Journal.follow`, the control
watcher) wait on their store's `Wakeup` between two reads. It is rung:

* by this process's writers: the journal rings `EVENTS` after each commit (every
  store);
* on PostgreSQL, also by every other process: appends and posted commands
  `NOTIFY` in their transaction, and one connection per process `LISTEN`s and
  rings (`nexus.storage.postgres.Listener`). `live` says that connection is up.

A ring carries no data: a woken reader reads what is new after its last id
(`events_after`, `commands_after`), so a ring that is lost, or many rings merged
into one, lose nothing. Readers still read after `timeout(poll_s)` unwoken: their
own `poll_s` while nothing hears other processes (SQLite, memory, or PostgreSQL
while the listen connection is down), the slow `safety_s` while it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Final, Literal, TypeVar

Channel = Literal["events", "commands"]
EVENTS: Final = "events"
COMMANDS: Final = "commands"
CHANNELS: Final[tuple[Channel, ...]] = (EVENTS, COMMANDS)


class Waiter:
    """One thread's doorbell on one channel.

    Read after `clear`, not before: a ring that lands between the read and the
    next `wait` is then kept for that wait."""

    def __init__(self, hub: Wakeup, channel: Channel) -> None:
        self.channel = channel
        self._hub = hub
        self._event = threading.Event()

    def set(self) -> None:
        """Ring this waiter alone (any thread)."""
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Block until rung or `timeout` seconds pass; whether it was rung."""
        return self._event.wait(timeout)

    def clear(self) -> None:
        """Forget the rings so far (then read)."""
        self._event.clear()

    def close(self) -> None:
        """Stop being rung."""
        self._hub.discard(self)


class AsyncWaiter:
    """One task's doorbell on one channel, on the event loop it was made on; rung
    from any thread (`call_soon_threadsafe`, once until it is cleared: a storm of
    rings costs the loop one wake-up)."""

    def __init__(self, hub: Wakeup, channel: Channel) -> None:
        self.channel = channel
        self._hub = hub
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._pending = False  # rung and not yet cleared

    def set(self) -> None:
        """Ring this waiter alone (any thread)."""
        if self._pending:
            return
        self._pending = True
        if threading.get_ident() == self._thread:
            self._event.set()
            return
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._event.set)

    def is_set(self) -> bool:
        """Whether it was rung since the last `clear`."""
        return self._event.is_set()

    async def wait(self) -> None:
        """Until rung (bound it with `asyncio.timeout`)."""
        await self._event.wait()

    def clear(self) -> None:
        """Forget the rings so far (then read)."""
        self._pending = False
        self._event.clear()

    def close(self) -> None:
        """Stop being rung."""
        self._hub.discard(self)


W = TypeVar("W", Waiter, AsyncWaiter)


class Wakeup:
    """A store's doorbells in this process. This one hears only this process's
    writers; `postgres.Listener` adds every other process's commits.

    Thread-safe: rung from any thread, waiters added and removed from any thread.
    """

    safety_s: float = 1.0  # the unwoken read interval while `live`

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Replaced, never changed in place: `ring` reads them without the lock (it
        # runs after every commit).
        self._waiters: dict[Channel, tuple[Waiter | AsyncWaiter, ...]] = {c: () for c in CHANNELS}

    @property
    def live(self) -> bool:
        """Whether other processes' commits ring this process's waiters now."""
        return False

    def timeout(self, poll_s: float) -> float:
        """How long a reader polling every `poll_s` waits unwoken before it reads."""
        return max(poll_s, self.safety_s) if self.live else poll_s

    def ring(self, channel: Channel) -> None:
        """Wake every waiter of `channel` (any thread)."""
        for waiter in self._waiters[channel]:
            waiter.set()

    def ring_all(self) -> None:
        """Wake every waiter of every channel."""
        for channel in CHANNELS:
            self.ring(channel)

    def waiter(self, channel: Channel) -> Waiter:
        """A new waiter for a thread; `close` it when done."""
        return self._add(Waiter(self, channel))

    def async_waiter(self, channel: Channel) -> AsyncWaiter:
        """A new waiter on the running event loop; `close` it when done."""
        return self._add(AsyncWaiter(self, channel))

    def discard(self, waiter: Waiter | AsyncWaiter) -> None:
        """Stop ringing `waiter`."""
        with self._lock:
            ours = self._waiters[waiter.channel]
            self._waiters[waiter.channel] = tuple(w for w in ours if w is not waiter)

    def close(self) -> None:
        """Release what hears other processes (nothing here)."""

    def _add(self, waiter: W) -> W:
        with self._lock:
            self._waiters[waiter.channel] = (*self._waiters[waiter.channel], waiter)
        self._watched()
        return waiter

    def _watched(self) -> None:
        """Called when a waiter is added: a listener starts hearing here, lazily
        (a process that never waits opens no listen connection)."""
