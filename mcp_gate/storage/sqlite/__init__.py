"""The SQLite `Store`: one file that several gate processes share, written by group commit."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from mcp_gate.checkpoints import Pruned, parse_checkpoint
from mcp_gate.clock import Clock, SystemClock, utc_iso
from mcp_gate.errors import EvidenceWriteError, GateError, StoreError
from mcp_gate.events import EventType
from mcp_gate.evidence import Record, VerifyReport, canonical_json, new_event
from mcp_gate.notary import Notary
from mcp_gate.storage import rows as stored
from mcp_gate.storage.base import Changes, CommitObserver, PinRecord, Tx
from mcp_gate.storage.changes import CommitSignal
from mcp_gate.storage.sqlite.commit import _commit_batch, _Job, _wake
from mcp_gate.storage.sqlite.reader import verify_file
from mcp_gate.storage.sqlite.schema import _connect
from mcp_gate.storage.sqlite.signing import (
    _check_head_at_open,
    _checkpoint_notes,
    _promote_head,
    _prune,
    _sign_checkpoint,
)
from mcp_gate.storage.sqlite.tx import SQLiteTx, _append, _get_pin, _head

__all__ = ["SQLiteStore"]

T = TypeVar("T")

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.005  # seconds between looks for commits by other processes, while someone waits


class SQLiteStore:
    """A `Store` in one SQLite file; several processes may share it (writes use BEGIN IMMEDIATE).

    All work on the connection runs in a worker thread, one hop per operation, so a write is a
    plain synchronous transaction: it either commits whole or rolls back, even if the caller
    is cancelled meanwhile (the hop is not abandoned).
    """

    def __init__(
        self, path: Path, connection: sqlite3.Connection, clock: Clock, notary: Notary | None = None
    ) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = connection
        self._clock = clock
        self._lock = anyio.Lock()
        self._watch: sqlite3.Connection | None = None
        self._notary = notary
        self._queue: list[_Job] = []
        self._leading = False
        self._version: int | None = None  # PRAGMA data_version when last polled
        self._signal = CommitSignal(self._changed_elsewhere, interval=WATCH_INTERVAL)
        self.commit_observer: CommitObserver | None = None

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Clock | None = None,
        busy_timeout: float = 10.0,
        notary: Notary | None = None,
    ) -> SQLiteStore:
        """Open (creating if needed) the store at `path`; StoreError naming the path if it cannot.

        `busy_timeout` is how long a write waits for another process holding the file's lock.
        With a `notary`, commits are followed by signed checkpoints when one is due."""
        connection = await anyio.to_thread.run_sync(_connect, path, busy_timeout)
        if notary is not None and notary.head is not None:
            try:
                await anyio.to_thread.run_sync(
                    _check_head_at_open, connection, path, notary, clock or SystemClock()
                )
            except BaseException:
                connection.close()
                raise
        return cls(path, connection, clock or SystemClock(), notary)

    async def __aenter__(self) -> SQLiteStore:
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
            connection, self._connection = self._connection, None
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            if connection is not None:
                await anyio.to_thread.run_sync(connection.close)

    # evidence

    async def append(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        return await self._write_evidence(len(events), lambda conn: _append(conn, events))

    async def records(
        self,
        *,
        correlation_id: str | None = None,
        event_type: EventType | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[Record]:
        where = ["seq > ?"]
        params: list[Any] = [after_seq]
        if correlation_id is not None:
            where.append("correlation_id = ?")
            params.append(correlation_id)
        if event_type is not None:
            where.append("event_type = ?")
            params.append(event_type)
        params.append(-1 if limit is None else limit)
        sql = f"SELECT {stored.RECORD_COLUMNS} FROM evidence WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [stored.record(row) for row in rows]

    async def head(self) -> tuple[int, str]:
        return await self._read(_head)

    async def verify(self) -> VerifyReport:
        """Stream every row in stored order (rowid, not seq) through a `ChainVerifier`.

        Uses its own short-lived connection so a long verification does not hold up appends.
        """
        self._require_open()
        verifiers = None if self._notary is None else [self._notary.key.verifier]
        return await verify_file(self._path, verifiers=verifiers)

    # pins

    async def get_pin(self, server: str, tool: str) -> PinRecord | None:
        return await self._read(lambda conn: _get_pin(conn, server, tool))

    async def list_pins(self) -> list[PinRecord]:
        sql = f"SELECT {stored.PIN_COLUMNS} FROM pins ORDER BY server, tool"
        rows = await self._read(lambda conn: conn.execute(sql).fetchall())
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

        def write(conn: sqlite3.Connection) -> list[Record]:
            definition_text = canonical_json(dict(definition)).decode("utf-8")
            conn.execute(
                f"INSERT INTO pins ({stored.PIN_COLUMNS}) VALUES (?, ?, ?, ?, NULL, NULL, ?) "
                "ON CONFLICT (server, tool) DO UPDATE SET pin = excluded.pin, "
                "definition = excluded.definition, drifted_pin = NULL, drifted_definition = NULL, "
                "updated_at = excluded.updated_at",
                (server, tool, pin, definition_text, updated_at),
            )
            return _append(conn, events)

        return await self._write_evidence(len(events), write)

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

        def write(conn: sqlite3.Connection) -> list[Record]:
            definition_text = canonical_json(dict(definition)).decode("utf-8")
            changed = conn.execute(
                "UPDATE pins SET drifted_pin = ?, drifted_definition = ?, updated_at = ? "
                "WHERE server = ? AND tool = ?",
                (pin, definition_text, updated_at, server, tool),
            ).rowcount
            if changed != 1:
                raise StoreError(f"cannot record drift for {server}__{tool}: it has no accepted pin")
            return _append(conn, events)

        return await self._write_evidence(len(events), write)

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

        def write(conn: sqlite3.Connection) -> list[Record]:
            definition_text = canonical_json(dict(definition)).decode("utf-8")
            added = conn.execute(
                f"INSERT INTO pins ({stored.PIN_COLUMNS}) VALUES (?, ?, '', '{{}}', ?, ?, ?) "
                "ON CONFLICT (server, tool) DO NOTHING",
                (server, tool, pin, definition_text, updated_at),
            ).rowcount
            return _append(conn, events) if added == 1 else []

        return await self._write_evidence(len(events), write)

    async def accept_drift(self, server: str, tool: str, *, events: Sequence[Mapping[str, Any]]) -> PinRecord:
        updated_at = utc_iso(self._clock.now())

        def write(conn: sqlite3.Connection) -> PinRecord:
            changed = conn.execute(
                "UPDATE pins SET pin = drifted_pin, definition = drifted_definition, drifted_pin = NULL, "
                "drifted_definition = NULL, updated_at = ? "
                "WHERE server = ? AND tool = ? AND drifted_pin IS NOT NULL",
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

        return await self._write_evidence(len(events), write)

    # transactions over approvals, grants and calls in flight

    async def transact(self, fn: Callable[[Tx], T]) -> T:
        return await self._write_evidence(0, lambda conn: fn(SQLiteTx(conn)))

    async def read(self, fn: Callable[[Tx], T]) -> T:
        return await self._read(lambda conn: fn(SQLiteTx(conn)))

    def changes(self) -> AbstractAsyncContextManager[Changes]:
        """Commits through this store wake subscriptions at once; another process's commit (which
        nothing here hears of) is found by `PRAGMA data_version`, polled while someone waits."""
        return self._signal.subscribe()

    def _changed_elsewhere(self) -> bool:
        # A separate connection: PRAGMA data_version only changes for commits made by *other*
        # connections, and this one never writes. It reads a counter in shared memory, so it is
        # cheap enough to ask on the event loop.
        if self._connection is None:
            return False
        try:
            if self._watch is None:
                self._watch = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            version = int(self._watch.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot watch the store at {self._path}: {stored.one_line(exc)}") from exc
        changed = self._version is not None and version != self._version
        self._version = version
        return changed

    # plumbing

    def _require_open(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"the store at {self._path} is closed")
        return self._connection

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            connection = self._require_open()
            try:
                return await anyio.to_thread.run_sync(fn, connection)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the store at {self._path}: {stored.one_line(exc)}") from exc

    async def _write_evidence(
        self, count: int, fn: Callable[[sqlite3.Connection], T], *, quiet: bool = False
    ) -> T:
        """Group commit: writers queue their `fn`; whoever holds the lock runs every queued fn in one
        transaction, each under its own SAVEPOINT, so one commit (one fsync) serves them all.

        Each fn still commits whole or not at all, its exception reaches only its own caller, and
        no caller returns before its writes are durable. `quiet` writes never trigger a checkpoint.
        """
        job = _Job(fn, quiet)
        self._queue.append(job)
        note: str | None = None
        try:
            while not job.taken:
                if self._leading:
                    # A batch is being committed: wait to be taken by the next one, or to lead it.
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
                    if self._queue:  # writers that came during the commit: the first one leads next
                        _wake(self._queue[0])
        except anyio.get_cancelled_exc_class():
            if not job.taken:
                self._queue.remove(job)
                if self._queue and not self._leading:
                    _wake(self._queue[0])
                raise
        # Taken by another writer's batch: its outcome stands, so wait for it even if cancelled.
        with anyio.CancelScope(shield=True):
            await job.finished.wait()
        if note is not None:
            await self._copy_note(note)
        if job.error is not None:
            exc = job.error
            if isinstance(exc, StoreError):
                raise exc
            if isinstance(exc, sqlite3.Error | ValueError | TypeError):
                raise EvidenceWriteError(f"cannot write to {self._path}: {stored.one_line(exc)}") from exc
            raise exc
        result: T = job.result
        return result

    async def _run_batch(self, batch: list[_Job]) -> str | None:
        try:
            if self._connection is None:
                closed = EvidenceWriteError(f"cannot write to {self._path}: the store is closed")
                for job in batch:
                    job.error = closed
                return None
            notary = None if all(job.quiet for job in batch) else self._notary
            started = time.perf_counter()
            note = await anyio.to_thread.run_sync(_commit_batch, self._connection, batch, notary, self._clock)
            if self.commit_observer is not None:
                failed = sum(1 for job in batch if job.error is not None)
                self.commit_observer(len(batch), time.perf_counter() - started, failed)
            if self._notary is not None:
                try:
                    await anyio.to_thread.run_sync(_promote_head, self._connection, self._notary)
                except (sqlite3.Error, GateError) as exc:  # settled at the next commit or start
                    log.error("cannot move the signed head: %s", stored.one_line(exc))
            return note
        finally:
            self._signal.committed()
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
                await self._write_evidence(1, lambda conn: _append(conn, [event]), quiet=True)
            except StoreError as exc:
                log.error("cannot record a missed checkpoint copy: %s", exc)

    # checkpoints and retention

    async def checkpoint(self) -> str | None:
        """Sign a checkpoint of the log now if it grew since the last one (shutdown, before an
        export); the note, or None without a notary or when nothing is new."""
        notary = self._notary
        if notary is None:
            return None
        note = await self._write_evidence(
            0, lambda conn: _sign_checkpoint(conn, notary, self._clock, force=True)
        )
        if note is not None:
            await self._copy_note(note)
        return note

    async def checkpoint_notes(self) -> list[str]:
        """Every signed note stored beside the log, oldest first."""
        return await self._read(_checkpoint_notes)

    async def prune(
        self, before: str, *, events: Callable[[Pruned], Sequence[Mapping[str, Any]]]
    ) -> Pruned | None:
        """Remove the oldest records with `ts` < `before`, only under a signed retention checkpoint
        that names their range, count and chain head (stored in the same transaction), and append
        `events(pruned)`. None if nothing is old enough. StoreError without a notary."""
        notary = self._notary
        if notary is None:
            raise StoreError(
                "pruning needs a signing key: records may only go under a signed retention checkpoint"
            )
        now = self._clock.now()

        def write(conn: sqlite3.Connection) -> Pruned | None:
            pruned = _prune(conn, notary, before, now)
            if pruned is not None:
                _append(conn, events(pruned))
            return pruned

        return await self._write_evidence(0, write)
