"""Which replicas are alive on one database: a session advisory lock each holds for its life, the
PostgreSQL counterpart of the data directory's `gate.lock` (which only sees one host).

Every replica holds the lock shared. One that starts while no other replica is connected gets it
exclusively first (`exclusive`) and only that one may take in-flight markers for a crash's; it then
shares the lock. A replica that dies loses its connection and with it its share, so the next
replica that finds itself alone recovers what the dead one left."""

from __future__ import annotations

import time

import anyio
import anyio.to_thread
import psycopg

from mcp_gate.storage.postgres.schema import connect

__all__ = ["ReplicaLock"]

_LOCK_CLASS = 0x6D6367  # "mcg": the first key of the two-key advisory lock; the schema's hash is the second
_KEY = "%s, hashtext(current_schema())"


class ReplicaLock:
    """The replicas' lock on the database at `url`, held on a connection of its own."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self.exclusive = False
        self._conn: psycopg.Connection | None = None

    async def __aenter__(self) -> ReplicaLock:
        # Connecting and waiting out another replica's recovery block: in a worker thread.
        await anyio.to_thread.run_sync(self._take)
        return self

    def _take(self) -> None:
        self._conn = connect(self._url, connect_timeout=self._connect_timeout)
        row = self._conn.execute(f"SELECT pg_try_advisory_lock({_KEY})", (_LOCK_CLASS,)).fetchone()
        self.exclusive = bool(row and row[0])
        if not self.exclusive:
            self._share(wait=True)

    def share(self) -> None:
        if self.exclusive and self._conn is not None:
            self._share(wait=False)
            self._conn.execute(f"SELECT pg_advisory_unlock({_KEY})", (_LOCK_CLASS,))
            self.exclusive = False

    def _share(self, *, wait: bool) -> None:
        assert self._conn is not None
        # Another replica holds it exclusively only for its brief recovery: wait for that, but
        # never forever (serving matters more than holding it).
        for _ in range(500 if wait else 1):
            row = self._conn.execute(f"SELECT pg_try_advisory_lock_shared({_KEY})", (_LOCK_CLASS,)).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.close)  # closing the session releases the lock
