"""Commits to the PostgreSQL database heard by one store handle: LISTEN/NOTIFY on a connection of its
own, shared by every subscription, with a slow poll of the head row's write counter in case a
notice is lost (a notice is a hint, the row is the truth).

Every write transaction notifies (its head-row lock already serializes writers, so the lock NOTIFY
takes at commit costs no concurrency); the payload is the schema written, so stores in other
schemas of one database only ever see a spurious wake-up."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import psycopg

from mcp_gate.storage import rows as stored

__all__ = ["CHANNEL", "PostgresChanges", "Subscription"]

CHANNEL = "mcp_gate_commits"
SAFETY_POLL = 1.0  # seconds between reads of the write counter while someone waits
RETRY = 1.0  # seconds between attempts to listen again after the connection was lost

log = logging.getLogger(__name__)


class PostgresChanges:
    """The commits one store handle hears of: its own (at once) and every other handle's or
    replica's (by NOTIFY, or by the write counter within `SAFETY_POLL`)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._count = 0
        self._changed = anyio.Event()
        self._reading = False
        self._scope: anyio.CancelScope | None = None
        self._conn: psycopg.AsyncConnection | None = None
        self._schema = ""
        self._version: int | None = None
        self._subscribers = 0

    def committed(self) -> None:
        """Something was committed: wake every subscription."""
        self._count += 1
        self._kick()
        if self._scope is not None:
            self._scope.cancel()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        self._subscribers += 1
        try:
            await self._listen()  # from now on, a commit elsewhere is news to this subscription
            yield Subscription(self)
        finally:
            self._subscribers -= 1
            if self._subscribers == 0:
                await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.close()

    def _kick(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait(self, seen: int) -> int:
        while self._count == seen:
            if self._reading:  # another waiter reads the connection for every subscription
                await self._changed.wait()
                continue
            self._reading = True
            try:
                while self._count == seen:
                    if await self._hear():
                        self.committed()
            finally:
                self._reading = False
                self._kick()  # a subscription still waiting reads from now on
        return self._count

    async def _listen(self) -> bool:
        if self._conn is not None and not self._conn.closed:
            return True
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, connect_timeout=2)
            try:
                cursor = await conn.execute(
                    "SELECT current_schema(), version FROM evidence_head WHERE id = 1"
                )
                row = await cursor.fetchone()
                await conn.execute(f"LISTEN {CHANNEL}")
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await conn.close()
                raise
        except psycopg.Error as exc:
            log.warning("cannot listen for commits to the store: %s", stored.one_line(exc))
            return False
        assert row is not None  # the schema's one row
        self._conn, self._schema = conn, str(row[0])
        self._version = int(row[1])
        return True

    async def _hear(self) -> bool:
        """Wait up to `SAFETY_POLL` for a commit elsewhere; True if one came (or may have)."""
        if not await self._listen():
            with anyio.move_on_after(RETRY):
                await self._changed.wait()
            return await self._listen()  # listening again after an outage: look again
        conn = self._conn
        assert conn is not None
        try:
            with anyio.move_on_after(SAFETY_POLL) as scope:
                self._scope = scope
                async for notice in conn.notifies():
                    if notice.payload == self._schema:
                        return True
            self._scope = None
            # Our own commit cut the wait short, or a safety poll is due: the counter says which.
            cursor = await conn.execute("SELECT version FROM evidence_head WHERE id = 1")
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            log.warning("lost the connection listening for commits: %s", stored.one_line(exc))
            await self.close()
            return True
        finally:
            self._scope = None
        version = None if row is None else int(row[0])
        if version != self._version:
            self._version = version
            return True
        return False


class Subscription:
    """One waiter's view of the commits (the `Changes` Protocol)."""

    def __init__(self, changes: PostgresChanges) -> None:
        self._changes = changes
        self._seen = changes._count

    async def wait(self) -> None:
        """Return once anything was committed since the subscription opened or `wait` last returned."""
        self._seen = await self._changes._wait(self._seen)
