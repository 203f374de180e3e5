"""Which replicas are alive on one database: a session advisory lock each holds for its life (the
PostgreSQL counterpart of the data directory's `gate.lock`, which only sees one host), and a lease
row each renews by a heartbeat, so a live replica can tell a dead one's calls in flight apart from
its own.

The lock answers one question at start: is this replica alone? Every replica holds it shared. One
that starts while no other replica is connected gets it exclusively first (`exclusive`) and only
then recovers every in-flight marker at once (nobody else can be running them); it then shares
the lock. While other replicas run, the leases answer instead: each replica's row says until when
(on the database's clock, so hosts' clocks never matter) it vouches for its calls in flight, and
`lapsed_calls` hands a live replica the markers of every replica whose lease ran out. A replica
whose lease lapsed begins no call (`PostgresTx.begin_inflight` checks the lease in the same
statement) until its heartbeat renews it; a result it brings back for a call already taken over
is recorded as `call.late_result` (`holds.ApprovalEngine.finish`)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import anyio
import anyio.to_thread
import psycopg

from mcp_gate.errors import StoreError
from mcp_gate.storage import rows as stored
from mcp_gate.storage.base import Inflight, Tx
from mcp_gate.storage.postgres.schema import connect, redacted
from mcp_gate.storage.postgres.tx import PostgresTx

__all__ = ["ReplicaLock", "lapsed_calls"]

log = logging.getLogger(__name__)

_LOCK_CLASS = 0x6D6367  # "mcg": the first key of the two-key advisory lock; the schema's hash is the second
_KEY = "%s, hashtext(current_schema())"

# One statement: renew (or first write) this replica's lease, saying whether another replica had
# taken it over meanwhile (its calls in flight then are outcome_unknown by now).
_RENEW = (
    "WITH before AS (SELECT taken_over_by FROM replicas WHERE id = %(id)s) "
    "INSERT INTO replicas (id, host, pid, lease_until) "
    "VALUES (%(id)s, %(host)s, %(pid)s, clock_timestamp() + make_interval(secs => %(lease)s)) "
    "ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp(), lease_until = excluded.lease_until, "
    "host = excluded.host, pid = excluded.pid, stopped_at = NULL, taken_over_by = NULL, "
    "taken_over_at = NULL "
    "RETURNING (SELECT taken_over_by FROM before)"
)


class ReplicaLock:
    """The replicas' lock on the database at `url`, held on a connection of its own, and (with a
    `replica` id) this replica's lease, renewed over the same connection by `renew`."""

    def __init__(
        self,
        url: str,
        *,
        replica: str | None = None,
        lease_seconds: float = 15.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self.replica = replica
        self.lease_seconds = lease_seconds
        self.exclusive = False
        self._conn: psycopg.Connection | None = None
        self._closed = False

    @property
    def heartbeat_seconds(self) -> float:
        """How often `renew` should run: three beats per lease, so one late beat loses nothing."""
        return self.lease_seconds / 3

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
        self._renew()

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

    def _renew(self) -> str | None:
        """Renew the lease (no-op without a replica id); who had taken it over, if anyone did."""
        if self.replica is None or self._conn is None:
            return None
        about = {"id": self.replica, "host": socket.gethostname(), "pid": os.getpid()}
        row = self._conn.execute(_RENEW, {**about, "lease": self.lease_seconds}).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    async def renew(self) -> None:
        """One heartbeat: renew the lease, connecting again (and taking the shared lock again) if
        the database dropped the lock's connection. StoreError, renewing nothing, while the
        database cannot be reached; the next beat tries again."""

        def beat() -> str | None:
            if self._closed:
                return None
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                if conn is not None:
                    conn.close()
                self._conn = connect(self._url, connect_timeout=self._connect_timeout)
                self.exclusive = False
                self._share(wait=True)
                log.warning("the replica lock's connection was lost; connected again and took it again")
            try:
                return self._renew()
            except psycopg.Error as exc:
                raise StoreError(
                    f"cannot renew this gate's lease at {redacted(self._url)}: {stored.one_line(exc)}"
                ) from exc

        taken_by = await anyio.to_thread.run_sync(beat)
        if taken_by is not None:
            log.warning(
                "this gate's lease (replica %s) had lapsed and replica %s took over its calls in flight "
                "(recorded as outcome_unknown); renewed",
                self.replica,
                taken_by,
            )

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        self._closed = True
        if conn is not None:

            def close() -> None:
                if self.replica is not None and not conn.broken:
                    try:  # a clean stop: the lease ends now, so a live replica need not wait it out
                        conn.execute(
                            "UPDATE replicas SET stopped_at = clock_timestamp(), "
                            "lease_until = clock_timestamp() WHERE id = %s",
                            (self.replica,),
                        )
                    except psycopg.Error as exc:
                        log.warning("cannot end this gate's lease: %s", stored.one_line(exc))
                if not conn.broken:
                    try:  # at once: a closed session's locks go only when its backend has exited
                        conn.execute("SELECT pg_advisory_unlock_all()")
                    except psycopg.Error as exc:
                        log.debug("cannot release the replica lock: %s", stored.one_line(exc))
                conn.close()  # closing the session releases the lock in any case

            await anyio.to_thread.run_sync(close)


def lapsed_calls(tx: Tx, me: str) -> list[Inflight]:
    """Inside a write transaction: mark every other replica whose lease ran out as taken over by
    `me`, and return (locked, oldest first) the in-flight markers of every replica taken over, for
    the caller to record as outcome_unknown and clear in the same transaction."""
    if not isinstance(tx, PostgresTx):
        raise StoreError("leases are kept by the PostgreSQL store only")
    conn = tx.conn
    conn.execute(
        "UPDATE replicas SET taken_over_by = %s, taken_over_at = clock_timestamp() "
        "WHERE id <> %s AND taken_over_at IS NULL AND lease_until < clock_timestamp()",
        (me, me),
    )
    rows = conn.execute(
        "SELECT i.correlation_id, i.request_id, i.started_at, i.fields, i.replica_id FROM inflight i "
        "JOIN replicas r ON r.id = i.replica_id "
        "WHERE r.id <> %s AND r.taken_over_at IS NOT NULL "
        "ORDER BY i.started_at FOR UPDATE OF i SKIP LOCKED",
        (me,),
    ).fetchall()
    return [Inflight(c, r, s, json.loads(f), replica) for c, r, s, f, replica in rows]


def replica_of(tx: Tx, replica: str) -> dict[str, object] | None:
    """The lease row of `replica` (host, pid, heartbeat), for what the evidence says of it."""
    if not isinstance(tx, PostgresTx):
        return None
    row = tx.conn.execute(
        "SELECT host, pid, heartbeat_at, stopped_at FROM replicas WHERE id = %s", (replica,)
    ).fetchone()
    if row is None:
        return None
    host, pid, heartbeat, stopped = row
    return {
        "host": host,
        "pid": pid,
        "last_heartbeat": heartbeat.isoformat(),
        "stopped_cleanly": stopped is not None,
    }
