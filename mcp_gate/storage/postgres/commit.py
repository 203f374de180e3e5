"""Group commit on PostgreSQL: one process's queued writers' fns in one transaction (a SAVEPOINT each)
under the chain head's row lock, then a signed checkpoint when one is due."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg.pq import TransactionStatus

from mcp_gate.clock import Clock
from mcp_gate.errors import GateError
from mcp_gate.notary import Notary
from mcp_gate.storage import rows as stored
from mcp_gate.storage.postgres.tx import LOCK_HEAD, Row, _chain, _insert

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    """One writer's fn waiting in the group-commit queue, and its outcome."""

    fn: Callable[[psycopg.Connection], Any]
    quiet: bool
    events: Sequence[Mapping[str, Any]] | None = None  # a plain append: `fn` only chains these
    taken: bool = False
    result: Any = None
    error: BaseException | None = None
    finished: anyio.Event = field(default_factory=anyio.Event)
    wake: anyio.Event | None = None


def _wake(job: _Job) -> None:
    if job.wake is not None:
        job.wake.set()


def _in_transaction(conn: psycopg.Connection, fn: Callable[[psycopg.Connection], T]) -> T:
    """`fn` in one write transaction, serialized with every other writer on the database."""
    conn.execute("BEGIN")
    try:
        conn.execute(LOCK_HEAD)
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return result


def _append_batch(conn: psycopg.Connection, batch: Sequence[_Job]) -> bool:
    """A batch of plain appends in three round trips whatever its size: chained in Python from the
    head (an event that cannot be chained fails only its own writer, before any statement), then
    one insert of every row and one move of the head. False, with nothing written and every job
    as it came, when the database refused the statements: the caller then runs the batch a
    SAVEPOINT per job, so a refusal reaches only the writer it belongs to. A failed COMMIT or a
    lost connection fails the whole batch (whether it committed is unknown: nothing is retried)."""
    committing = False
    try:
        conn.execute("BEGIN")
        head = conn.execute(LOCK_HEAD).fetchone()
        assert head is not None  # the schema's one row
        seq, prev = int(head[0]), str(head[1])
        rows: list[Row] = []
        for job in batch:
            assert job.events is not None
            try:
                records, job_rows = _chain(seq, prev, job.events)
            except Exception as exc:
                job.error = exc
                continue
            job.result = records
            rows.extend(job_rows)
            if records:
                seq, prev = records[-1].seq, records[-1].entry_hash
        _insert(conn, rows, seq, prev)
        committing = True
        conn.execute("COMMIT")
    except BaseException as exc:
        _rollback(conn)
        lost = committing or conn.closed or conn.broken or isinstance(exc, psycopg.OperationalError)
        for job in batch:
            job.result, job.error = None, exc if lost else None
        if not isinstance(exc, Exception):
            raise
        return lost
    return True


def _rollback(conn: psycopg.Connection) -> None:
    if conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error as exc:  # the connection is gone: the server rolls back on its own
        log.debug("rollback failed: %s", stored.one_line(exc))


def _commit_batch(
    conn: psycopg.Connection,
    batch: Sequence[_Job],
    notary: Notary | None,
    clock: Clock,
    sign: Callable[[psycopg.Connection, Notary, Clock], str | None],
) -> str | None:
    """Run the batch's fns in one transaction (a SAVEPOINT each), commit, then `sign` if there is a notary."""
    if len(batch) > 1 and all(job.events is not None for job in batch) and _append_batch(conn, batch):
        if all(job.error is not None for job in batch):
            return None
    elif len(batch) == 1:
        job = batch[0]
        try:
            job.result = _in_transaction(conn, job.fn)
        except Exception as exc:
            job.error = exc
            return None
    else:
        done: list[_Job] = []
        try:
            conn.execute("BEGIN")
            conn.execute(LOCK_HEAD)
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.fn(conn)
                except Exception as exc:
                    job.error, job.result = exc, None
                    if conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
                        raise  # the transaction is gone: the earlier fns' writes with it
                    conn.execute("ROLLBACK TO SAVEPOINT job")
                    conn.execute("RELEASE SAVEPOINT job")
                    continue
                conn.execute("RELEASE SAVEPOINT job")
                done.append(job)
            conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            for job in batch:
                if job in done or job.error is None:
                    job.error, job.result = exc, None
            if not isinstance(exc, Exception):
                raise
            return None
    if notary is None:
        return None
    try:
        return _in_transaction(conn, lambda c: sign(c, notary, clock))
    except (psycopg.Error, GateError) as exc:
        # The writes above are committed; a missed checkpoint is retried on the next commit.
        log.error("cannot write a checkpoint: %s", stored.one_line(exc))
        return None
