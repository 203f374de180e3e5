"""Change notification shared by the backends: a commit counter in this process and `Changes`
subscriptions that wait on it; a backend that must look for other processes' commits gives it a poll."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from mcp_gate.storage.base import Changes

__all__ = ["CommitSignal"]


class CommitSignal:
    """Commits made through one store handle, counted, and the subscriptions waiting for the next.

    `poll()` (if given) says whether something was committed elsewhere since it was last asked; it
    is asked every `interval` seconds, only while someone waits, and by one waiter for all of
    them, so many held calls cost one poll."""

    def __init__(self, poll: Callable[[], bool] | None = None, *, interval: float = 0.005) -> None:
        self._poll = poll
        self._interval = interval
        self._count = 0
        self._changed = anyio.Event()
        self._polling = False

    def committed(self) -> None:
        """Something was committed: wake every subscription."""
        self._count += 1
        self._kick()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Changes]:
        self.look()  # a commit from elsewhere before now is not news to this subscription
        yield _Subscription(self)

    def look(self) -> None:
        """Ask the poll now; a commit found elsewhere wakes every subscription."""
        if self._poll is not None and self._poll():
            self.committed()

    def _kick(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait(self, seen: int) -> int:
        while self._count == seen:
            if self._poll is None or self._polling:
                await self._changed.wait()
                continue
            self._polling = True
            try:
                while self._count == seen:
                    with anyio.move_on_after(self._interval):
                        await self._changed.wait()
                    self.look()
            finally:
                self._polling = False
                self._kick()  # a subscription still waiting polls from now on
        return self._count


class _Subscription:
    def __init__(self, signal: CommitSignal) -> None:
        self._signal = signal
        self._seen = signal._count

    async def wait(self) -> None:
        self._seen = await self._signal._wait(self._seen)
