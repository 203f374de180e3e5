"""Group commit, SQLite's answer to a single writer: queued writers' fns in one transaction, a
SAVEPOINT each, then a signed checkpoint when one is due."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from mcp_gate.clock import Clock
from mcp_gate.errors import GateError
from mcp_gate.notary import Notary
from mcp_gate.storage import rows as stored
from mcp_gate.storage.sqlite.signing import _sign_checkpoint
from mcp_gate.storage.sqlite.tx import _in_transaction

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    """One writer's fn waiting in the group-commit queue, and its outcome."""

    fn: Callable[[sqlite3.Connection], Any]
    quiet: bool
    taken: bool = False
    result: Any = None
    error: BaseException | None = None
    finished: anyio.Event = field(default_factory=anyio.Event)
    wake: anyio.Event | None = None


def _wake(job: _Job) -> None:
    # A queued job always waits on its `wake` (it has none only before it first looks).
    if job.wake is not None:
        job.wake.set()


def _commit_batch(
    conn: sqlite3.Connection, batch: Sequence[_Job], notary: Notary | None, clock: Clock
) -> str | None:
    """Run the batch's fns in one transaction (a SAVEPOINT each), commit, then sign a checkpoint if due."""
    if len(batch) == 1:
        job = batch[0]
        try:
            job.result = _in_transaction(conn, job.fn)
        except Exception as exc:
            job.error = exc
            return None
    else:
        done: list[_Job] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.fn(conn)
                except Exception as exc:
                    job.error, job.result = exc, None
                    if not conn.in_transaction:
                        raise  # SQLite gave up the whole transaction: the earlier fns' writes are gone
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    continue
                conn.execute("RELEASE job")
                done.append(job)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in batch:
                if job in done or job.error is None:
                    job.error, job.result = exc, None
            if not isinstance(exc, Exception):
                raise
            return None
    if notary is None:
        return None
    try:
        return _in_transaction(conn, lambda c: _sign_checkpoint(c, notary, clock, force=False))
    except (sqlite3.Error, GateError) as exc:
        # The writes above are committed; a missed checkpoint is retried on the next commit.
        log.error("cannot write a checkpoint: %s", stored.one_line(exc))
        return None
