"""Wake-ups for held calls: one watcher reads what each commit added to the log and wakes only the
calls it names, so a held call costs nothing while nothing happens to its request.

Every change to an approval request is committed with an evidence record naming it (`request_id`,
under the call's correlation id), so the log says which held calls to wake. One of the held calls
at a time is the watcher: it subscribes to the store's Changes, reads the records after the last
one it read, and sets the wake-up of each held call a record names. When it stops (its own call
is released, runs out of budget or is cancelled), it wakes one other held call, which takes over.
At least every `interval` seconds the watcher also reads the log woken or not (a backend may lose
a notification) and wakes every held call whose request's `expires_at` has passed by the clock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import anyio

from mcp_gate.approvals import ApprovalRequest
from mcp_gate.clock import Clock
from mcp_gate.errors import StoreError
from mcp_gate.storage.base import Store

__all__ = ["HeldCalls", "Waiter"]

log = logging.getLogger("mcp_gate.holds")

READ_BATCH = 500  # records read from the log per query while catching up


class Waiter:
    """One held call's wake-up: set when a record names its request (or it may have expired)."""

    __slots__ = ("correlation_id", "event", "expires_at", "request_id")

    def __init__(self, request: ApprovalRequest) -> None:
        self.request_id = request.id
        self.correlation_id = request.correlation_id
        self.expires_at: datetime = request.expires_at
        self.event = anyio.Event()

    def reset(self) -> None:
        """Before reading the request: a record committed after the read wakes the call again."""
        if self.event.is_set():
            self.event = anyio.Event()


class HeldCalls:
    """The calls held in this process, by request id and correlation id, and their one watcher."""

    def __init__(self, store: Store, clock: Clock, *, interval: float) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._by_request: dict[str, set[Waiter]] = {}
        self._by_correlation: dict[str, set[Waiter]] = {}
        self._seen: int | None = None  # the seq of the last record read, while any call is held
        self._watching = False

    def __len__(self) -> int:
        return sum(len(w) for w in self._by_request.values())

    @asynccontextmanager
    async def holding(self, request: ApprovalRequest) -> AsyncIterator[Waiter]:
        """Register a held call, before its first read of the request; unregistered on exit."""
        if self._seen is None:
            self._seen = (await self._store.head())[0]
        waiter = Waiter(request)
        self._by_request.setdefault(waiter.request_id, set()).add(waiter)
        self._by_correlation.setdefault(waiter.correlation_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            self._drop(waiter)

    async def wait(self, waiter: Waiter, seconds: float) -> None:
        """Until the waiter is woken, or `seconds` have passed."""
        with anyio.move_on_after(seconds):
            while not waiter.event.is_set():
                if self._watching:
                    await waiter.event.wait()
                else:
                    await self._watch(waiter)

    # -- the watcher ----------------------------------------------------------------------------

    async def _watch(self, waiter: Waiter) -> None:
        self._watching = True
        try:
            async with self._store.changes() as changes:  # subscribed before the read: none is missed
                next_expiry_check = anyio.current_time()
                while not waiter.event.is_set():
                    await self._read_log()
                    if anyio.current_time() >= next_expiry_check:  # not per commit: it looks at every call
                        self._wake_expired()
                        next_expiry_check = anyio.current_time() + self._interval
                    if waiter.event.is_set():
                        return
                    with anyio.move_on_after(self._interval):
                        await changes.wait()
        finally:
            self._watching = False
            self._hand_over()

    async def _read_log(self) -> None:
        while self._seen is not None:
            after = self._seen
            try:
                records = await self._store.records(after_seq=after, limit=READ_BATCH)
            except StoreError as exc:  # a database outage: the calls stay held; read again later
                log.warning("cannot read the log for held calls' decisions (they stay held): %s", exc)
                return
            for record in records:
                request_id = record.body.get("request_id")
                if isinstance(request_id, str):
                    self._wake(self._by_request.get(request_id))
                if record.correlation_id is not None:
                    self._wake(self._by_correlation.get(record.correlation_id))
                if self._seen is not None:
                    self._seen = max(self._seen, record.seq)
            if len(records) < READ_BATCH:
                return

    def _wake_expired(self) -> None:
        now = self._clock.now()
        for waiters in self._by_request.values():
            for w in waiters:
                if w.expires_at <= now:
                    w.event.set()

    @staticmethod
    def _wake(waiters: set[Waiter] | None) -> None:
        for w in waiters or ():
            w.event.set()

    def _hand_over(self) -> None:
        """Wake one held call, which becomes the watcher (one extra read of its request)."""
        for waiters in self._by_request.values():
            for w in waiters:
                if not w.event.is_set():
                    w.event.set()
                    return

    def _drop(self, waiter: Waiter) -> None:
        indexes = ((self._by_request, waiter.request_id), (self._by_correlation, waiter.correlation_id))
        for index, key in indexes:
            waiters = index.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del index[key]
        if not self._by_request:
            self._seen = None  # the next held call starts from the log's head then
