"""The PostgreSQL `Store`: one database that several gate processes (replicas) share, written by
group commit per process, every write transaction serialized on the chain head's row lock."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import psycopg
import psycopg_pool

from mcp_gate.checkpoints import Pruned, parse_checkpoint
from mcp_gate.clock import Clock, SystemClock, utc_iso
from mcp_gate.errors import EvidenceWriteError, GateError, StoreError, StoreUnreachable
from mcp_gate.events import EventType
from mcp_gate.evidence import Record, VerifyReport, canonical_json, new_event
from mcp_gate.notary import Notary
from mcp_gate.storage import rows as stored
from mcp_gate.storage.base import CommitObserver, PinRecord, Tx
from mcp_gate.storage.postgres.changes import PostgresChanges, Subscription
from mcp_gate.storage.postgres.commit import _commit_batch, _Job, _wake
from mcp_gate.storage.postgres.reader import verify_database
from mcp_gate.storage.postgres.schema import check_version, connect, redacted
from mcp_gate.storage.postgres.signing import (
    _check_head_at_open,
    _checkpoint_notes,
    _promote_head,
    _prune,
    _sign_checkpoint,
    _sign_due,
)
from mcp_gate.storage.postgres.tx import PostgresTx, _append, _get_pin, _head

__all__ = ["PostgresStore"]

T = TypeVar("T")

log = logging.getLogger(__name__)

_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"


class PostgresStore:
    """A `Store` in one PostgreSQL database; any number of processes may share it.

    Writes go through one connection per process (group commit: every queued writer's fn in one
    transaction), reads through a small pool. All work on a connection runs in a worker thread,
    one hop per operation, so a `Tx` is synchronous as on SQLite and a write commits whole or
    rolls back even if its caller is cancelled meanwhile. A connection the server dropped is
    opened again at the next operation: the store recovers by itself when the database returns.
    """

    def __init__(
        self,
        url: str,
        writer: psycopg.Connection,
        pool: psycopg_pool.ConnectionPool,
        clock: Clock,
        notary: Notary | None,
        connect_timeout: float,
        replica: str | None = None,
    ) -> None:
        self._url = url
        self.replica = replica  # this process's replica id (its calls in flight carry it), if it serves
        self._where = redacted(url)
        self._writer: psycopg.Connection | None = writer
        self._pool: psycopg_pool.ConnectionPool | None = pool
        self._clock = clock
        self._notary = notary
        self._connect_timeout = connect_timeout
        self._lock = anyio.Lock()
        self._queue: list[_Job] = []
        self._leading = False
        self._changes = PostgresChanges(url)
        self.commit_observer: CommitObserver | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Clock | None = None,
        notary: Notary | None = None,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
        create: bool = True,
        replica: str | None = None,
    ) -> PostgresStore:
        """Open the store in the database at `url`; StoreError naming it (never its password) if it
        cannot be reached or its schema is not this gate's. With `create`, a database the gate
        never touched gets the schema; an older schema needs `mcp-gate store migrate`. `replica`: the
        id of this serving process's lease (`replicas.ReplicaLock`), which its calls in flight carry."""
        clock = clock or SystemClock()
        writer = await anyio.to_thread.run_sync(lambda: connect(url, connect_timeout=connect_timeout))
        pool: psycopg_pool.ConnectionPool | None = None
        try:
            await anyio.to_thread.run_sync(lambda: _checked(writer, url, create))
            if notary is not None and notary.head is not None:
                await anyio.to_thread.run_sync(_check_head_at_open, writer, redacted(url), notary, clock)
            pool = psycopg_pool.ConnectionPool(
                url,
                min_size=1,
                max_size=max(1, pool_size),
                kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
                check=psycopg_pool.ConnectionPool.check_connection,
                timeout=connect_timeout,
                name="mcp-gate-reads",
                open=False,
            )
            await anyio.to_thread.run_sync(lambda: pool.open(wait=True, timeout=connect_timeout))
        except BaseException as exc:
            writer.close()
            if pool is not None:
                pool.close()
            if isinstance(exc, psycopg.Error | psycopg_pool.PoolTimeout):
                raise StoreError(f"cannot open the store at {redacted(url)}: {stored.one_line(exc)}") from exc
            raise
        return cls(url, writer, pool, clock, notary, connect_timeout, replica)

    async def __aenter__(self) -> PostgresStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        async with self._lock:
            writer, self._writer = self._writer, None
            pool, self._pool = self._pool, None
            await self._changes.close()
            if writer is not None:
                await anyio.to_thread.run_sync(writer.close)
            if pool is not None:
                await anyio.to_thread.run_sync(pool.close)

    # evidence

    async def append(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        return await self._write_evidence(lambda conn: _append(conn, events), events=events)

    async def records(
        self,
        *,
        correlation_id: str | None = None,
        event_type: EventType | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[Record]:
        where = ["seq > %s"]
        params: list[Any] = [after_seq]
        if correlation_id is not None:
            where.append("correlation_id = %s")
            params.append(correlation_id)
        if event_type is not None:
            where.append("event_type = %s")
            params.append(event_type)
        params.append(limit)  # LIMIT NULL is no limit
        query = (
            f"SELECT {stored.RECORD_COLUMNS} FROM evidence WHERE {' AND '.join(where)} ORDER BY seq LIMIT %s"
        )
        rows = await self._read(lambda conn: conn.execute(query, params).fetchall())
        return [stored.record(row) for row in rows]

    async def head(self) -> tuple[int, str]:
        return await self._read(_head)

    async def verify(self) -> VerifyReport:
        """Stream every row in seq order through a `ChainVerifier`, on a connection of its own so a
        long verification does not hold up appends."""
        self._require_open()
        verifiers = None if self._notary is None else [self._notary.key.verifier]
        return await verify_database(self._url, verifiers=verifiers)

    # pins

    async def get_pin(self, server: str, tool: str) -> PinRecord | None:
        return await self._read(lambda conn: _get_pin(conn, server, tool))

    async def list_pins(self) -> list[PinRecord]:
        query = f"SELECT {stored.PIN_COLUMNS} FROM pins ORDER BY server, tool"
        rows = await self._read(lambda conn: conn.execute(query).fetchall())
        return [stored.pin_record(row) for row in rows]

    async def set_pin(
        self,
        server: str,
        tool: str,
        *,
        pin: str,
        definition: Mapping[str, Any],
        events: Sequence[Mapping[str, Any]],
    ) -> list[Record]:
        updated_at = utc_iso(self._clock.now())

        def write(conn: psycopg.Connection) -> list[Record]:
            definition_text = canonical_json(dict(definition)).decode("utf-8")
            conn.execute(
                f"INSERT INTO pins ({stored.PIN_COLUMNS}) VALUES (%s, %s, %s, %s, NULL, NULL, %s) "
                "ON CONFLICT (server, tool) DO UPDATE SET pin = excluded.pin, "
                "definition = excluded.definition, drifted_pin = NULL, drifted_definition = NULL, "
                "updated_at = excluded.updated_at",
                (server, tool, pin, definition_text, updated_at),
            )
            return _append(conn, events)

        return await self._write_evidence(write)

    async def mark_drift(
        self,
        server: str,
        tool: str,
        *,
        pin: str,
        definition: Mapping[str, Any],
        events: Sequence[Mapping[str, Any]],
    ) -> list[Record]:
        updated_at = utc_iso(self._clock.now())

        def write(conn: psycopg.Connection) -> list[Record]:
            definition_text = canonical_json(dict(definition)).decode("utf-8")
            changed = conn.execute(
                "UPDATE pins SET drifted_pin = %s, drifted_definition = %s, updated_at = %s "
                "WHERE server = %s AND tool = %s",
                (pin, definition_text, updated_at, server, tool),
            ).rowcount
            if changed != 1:
                raise StoreError(f"cannot record drift for {server}__{tool}: it has no accepted pin")
            return _append(conn, events)

        return await self._write_evidence(write)

    async def hold_new(
        self,
        server: str,
        tool: str,
        *,
        pin: str,
        definition: Mapping[str, Any],
        events: Sequence[Mapping[str, Any]],
    ) -> list[Record]:
        updated_at = utc_iso(self._clock.now())

        def write(conn: psycopg.Connection) -> list[Record]:
            definition_text = canonical_json(dict(definition)).decode("utf-8")
            added = conn.execute(
                f"INSERT INTO pins ({stored.PIN_COLUMNS}) VALUES (%s, %s, '', '{{}}', %s, %s, %s) "
                "ON CONFLICT (server, tool) DO NOTHING",
                (server, tool, pin, definition_text, updated_at),
            ).rowcount
            return _append(conn, events) if added == 1 else []

        return await self._write_evidence(write)

    async def accept_drift(self, server: str, tool: str, *, events: Sequence[Mapping[str, Any]]) -> PinRecord:
        updated_at = utc_iso(self._clock.now())

        def write(conn: psycopg.Connection) -> PinRecord:
            changed = conn.execute(
                "UPDATE pins SET pin = drifted_pin, definition = drifted_definition, drifted_pin = NULL, "
                "drifted_definition = NULL, updated_at = %s "
                "WHERE server = %s AND tool = %s AND drifted_pin IS NOT NULL",
                (updated_at, server, tool),
            ).rowcount
            if changed != 1:
                raise StoreError(
                    f"cannot accept drift for {server}__{tool}: no changed definition is waiting"
                )
            _append(conn, events)
            accepted = _get_pin(conn, server, tool)
            assert accepted is not None  # updated just above, in this transaction
            return accepted

        return await self._write_evidence(write)

    # transactions over approvals, grants and calls in flight

    async def transact(self, fn: Callable[[Tx], T]) -> T:
        return await self._write_evidence(lambda conn: fn(PostgresTx(conn, self.replica)))

    async def read(self, fn: Callable[[Tx], T]) -> T:
        return await self._read(lambda conn: fn(PostgresTx(conn)))

    def changes(self) -> AbstractAsyncContextManager[Subscription]:
        """A subscription to every commit to the database: this handle's wake it at once, another
        handle's or replica's by LISTEN/NOTIFY, or by the write counter within a second if a notice
        was lost."""
        return self._changes.subscribe()

    # plumbing

    def _require_open(self) -> psycopg_pool.ConnectionPool:
        if self._pool is None:
            raise StoreError(f"the store at {self._where} is closed")
        return self._pool

    async def _read(self, fn: Callable[[psycopg.Connection], T]) -> T:
        pool = self._require_open()

        def run() -> T:
            with pool.connection() as conn:
                conn.execute(_READ)
                try:
                    return fn(conn)
                finally:
                    if not conn.broken:
                        conn.execute("ROLLBACK")

        try:
            return await anyio.to_thread.run_sync(run)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise StoreUnreachable(
                f"the store at {self._where} is unreachable: {stored.one_line(exc)}"
            ) from exc
        except psycopg.Error as exc:
            raise StoreError(f"cannot read the store at {self._where}: {stored.one_line(exc)}") from exc

    def _writer_connection(self) -> psycopg.Connection:
        """The writer, opened again if the server dropped it (in the worker thread)."""
        writer = self._writer
        if writer is None:
            raise EvidenceWriteError(f"cannot write to {self._where}: the store is closed")
        if writer.closed or writer.broken:
            writer.close()
            writer = self._writer = connect(self._url, connect_timeout=self._connect_timeout)
        return writer

    async def _write_evidence(
        self,
        fn: Callable[[psycopg.Connection], T],
        *,
        quiet: bool = False,
        events: Sequence[Mapping[str, Any]] | None = None,
    ) -> T:
        """Group commit: writers queue their `fn`; whoever holds the lock runs every queued fn in one
        transaction, each under its own SAVEPOINT, so one commit (one WAL flush) serves them all.

        Each fn still commits whole or not at all, its exception reaches only its own caller, and no
        caller returns before its writes are durable. `quiet` writes never trigger a checkpoint.
        `events`: `fn` is a plain append of these, which a batch of plain appends writes in one
        insert. (The queue is the SQLite backend's, line for line.)"""
        job = _Job(fn, quiet, events)
        self._queue.append(job)
        note: str | None = None
        try:
            while not job.taken:
                if self._leading:
                    job.wake = wake = anyio.Event()
                    await wake.wait()
                    continue
                self._leading = True
                try:
                    async with self._lock:
                        batch, self._queue = self._queue, []
                        for queued in batch:
                            queued.taken = True
                        note = await self._run_batch(batch)
                finally:
                    self._leading = False
                    if self._queue:
                        _wake(self._queue[0])
        except anyio.get_cancelled_exc_class():
            if not job.taken:
                self._queue.remove(job)
                if self._queue and not self._leading:
                    _wake(self._queue[0])
                raise
        with anyio.CancelScope(shield=True):
            await job.finished.wait()
        if note is not None:
            await self._copy_note(note)
        if job.error is not None:
            exc = job.error
            if isinstance(exc, StoreUnreachable | psycopg.OperationalError):
                # The database is away (or the connection broke): nothing of this write is known to
                # have committed, and a later try may succeed.
                raise EvidenceWriteError(
                    f"the evidence store at {self._where} is unreachable: {stored.one_line(exc)}",
                    unreachable=True,
                ) from exc
            if isinstance(exc, StoreError):
                raise exc
            if isinstance(exc, psycopg.Error | ValueError | TypeError):
                raise EvidenceWriteError(f"cannot write to {self._where}: {stored.one_line(exc)}") from exc
            raise exc
        result: T = job.result
        return result

    async def _run_batch(self, batch: list[_Job]) -> str | None:
        try:
            try:
                writer = await anyio.to_thread.run_sync(self._writer_connection)
            except StoreError as exc:
                for job in batch:
                    job.error = exc
                if self.commit_observer is not None:
                    self.commit_observer(len(batch), 0.0, len(batch))
                return None
            notary = None if all(job.quiet for job in batch) else self._notary
            started = time.perf_counter()
            note = await anyio.to_thread.run_sync(
                _commit_batch, writer, batch, notary, self._clock, _sign_due
            )
            if self.commit_observer is not None:
                failed = sum(1 for job in batch if job.error is not None)
                self.commit_observer(len(batch), time.perf_counter() - started, failed)
            if any(job.error is None for job in batch):
                self._changes.committed()
            if self._notary is not None:
                try:
                    await anyio.to_thread.run_sync(_promote_head, writer, self._notary)
                except (psycopg.Error, GateError) as exc:  # settled at the next commit or start
                    log.error("cannot move the signed head: %s", stored.one_line(exc))
            return note
        finally:
            for job in batch:
                job.finished.set()
                if job.wake is not None:
                    job.wake.set()

    async def _copy_note(self, note: str) -> None:
        notary = self._notary
        if notary is None or not notary.sinks:
            return
        failures = await anyio.to_thread.run_sync(notary.copy, note)
        if failures:
            event = new_event(
                "checkpoint.copy_failed",
                ts=utc_iso(self._clock.now()),
                correlation_id=None,
                size=parse_checkpoint(note.partition("\n\n")[0] + "\n").size,
                failed=failures,
            )
            try:
                await self._write_evidence(lambda conn: _append(conn, [event]), quiet=True)
            except StoreError as exc:
                log.error("cannot record a missed checkpoint copy: %s", exc)

    # checkpoints and retention

    async def checkpoint(self) -> str | None:
        notary = self._notary
        if notary is None:
            return None
        note = await self._write_evidence(
            lambda conn: _sign_checkpoint(conn, notary, self._clock, force=True)
        )
        if note is not None:
            await self._copy_note(note)
        return note

    async def checkpoint_notes(self) -> list[str]:
        return await self._read(_checkpoint_notes)

    async def prune(
        self, before: str, *, events: Callable[[Pruned], Sequence[Mapping[str, Any]]]
    ) -> Pruned | None:
        notary = self._notary
        if notary is None:
            raise StoreError(
                "pruning needs a signing key: records may only go under a signed retention checkpoint"
            )
        now = self._clock.now()

        def write(conn: psycopg.Connection) -> Pruned | None:
            pruned = _prune(conn, notary, before, now)
            if pruned is not None:
                _append(conn, events(pruned))
            return pruned

        return await self._write_evidence(write)


def _checked(conn: psycopg.Connection, url: str, create: bool) -> None:
    try:
        check_version(conn, create=create)
    except StoreError as exc:
        raise StoreError(f"cannot open the store at {redacted(url)}: {exc}") from exc
