"""The auditor's side of the PostgreSQL database: read-only snapshots (`PostgresLogReader`) and
`verify_database`, each on a connection of its own in one REPEATABLE READ, READ ONLY transaction."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread
import psycopg

from mcp_gate.audit import AuditReport, LogVerifier, check_notes
from mcp_gate.checkpoints import VerifierKey
from mcp_gate.errors import StoreError
from mcp_gate.events import EventType
from mcp_gate.storage import rows as stored
from mcp_gate.storage.postgres.schema import connect, redacted
from mcp_gate.storage.postgres.tx import _head

__all__ = ["PostgresLogReader", "read_only", "verify_database"]

_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
_BATCH = 5_000  # rows fetched per round trip by the streaming cursors
_cursor_names = itertools.count()  # one name per open cursor: a reader may stream two at once


async def verify_database(
    url: str,
    *,
    verifiers: Sequence[VerifierKey] | None = None,
    extra_notes: Sequence[tuple[str, str]] = (),
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Verify the evidence chain in the database at `url` without writing to it, as
    `storage.sqlite.reader.verify_file` does a file: with `verifiers`, every stored checkpoint and
    every one in `extra_notes` is checked too. `progress(done, total)` every 50,000 records."""
    try:
        return await anyio.to_thread.run_sync(
            _verify, url, verifiers, tuple(extra_notes), progress, abandon_on_cancel=True
        )
    except psycopg.Error as exc:
        raise StoreError(f"cannot verify the evidence in {redacted(url)}: {stored.one_line(exc)}") from exc


def _verify(
    url: str,
    verifiers: Sequence[VerifierKey] | None,
    extra_notes: Sequence[tuple[str, str]],
    progress: Callable[[int, int], None] | None,
) -> AuditReport:
    with connect(url) as conn:
        conn.execute(_SNAPSHOT)
        notes: list[tuple[str, str]] = []
        if verifiers is not None:
            notes = [
                (f"{redacted(url)} checkpoint {i}", str(n))
                for i, n in conn.execute("SELECT id, note FROM checkpoints ORDER BY id")
            ]
            notes.extend(extra_notes)
        verifier = LogVerifier(check_notes(notes, verifiers or ()), keys_checked=verifiers is not None)
        total = 0
        if progress is not None:
            row = conn.execute("SELECT COUNT(*) FROM evidence").fetchone()
            total = 0 if row is None else int(row[0])
        rows = _stream(conn, f"SELECT {stored.RECORD_COLUMNS} FROM evidence ORDER BY seq", ())
        for done, row in enumerate(rows, start=1):
            verifier.feed(*row)
            if progress is not None and done % 50_000 == 0:
                progress(done, total)
        if progress is not None:
            progress(total, total)
        conn.execute("COMMIT")
        return verifier.report()


def _stream(conn: psycopg.Connection, query: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
    """Rows through a server-side cursor: constant memory however long the log."""
    with conn.cursor(name=f"mcp_gate_rows_{next(_cursor_names)}") as cursor:
        cursor.itersize = _BATCH
        cursor.execute(query, params)
        yield from cursor


@contextmanager
def read_only(url: str) -> Iterator[PostgresLogReader]:
    """A consistent read-only snapshot of the evidence in the database at `url` (for exports and
    reports, in a worker thread); it never writes."""
    conn = connect(url)
    try:
        conn.execute(_SNAPSHOT)
        conn.execute("SELECT 1")  # the snapshot is taken by the first statement, not by BEGIN
        yield PostgresLogReader(conn, url)
    except psycopg.Error as exc:
        raise StoreError(f"cannot read the evidence in {redacted(url)}: {stored.one_line(exc)}") from exc
    finally:
        conn.close()


class PostgresLogReader:
    """The `LogReader` of a PostgreSQL database: streaming reads of evidence rows and checkpoint
    notes over one read-only snapshot."""

    def __init__(self, conn: psycopg.Connection, url: str) -> None:
        self._conn = conn
        self.url = redacted(url)

    def seq_range(self, since: str | None, until: str | None) -> tuple[int, int] | None:
        row = self._conn.execute(
            "SELECT (SELECT MIN(seq) FROM evidence WHERE ts >= %s), "
            "(SELECT MAX(seq) FROM evidence WHERE ts < %s)",
            (since or "", until or "\uffff"),
        ).fetchone()
        if row is None or row[0] is None or row[1] is None or row[0] > row[1]:
            return None
        return int(row[0]), int(row[1])

    def rows(self, first: int = 0, last: int | None = None) -> Iterator[tuple[Any, ...]]:
        if last is None:
            yield from _stream(
                self._conn,
                f"SELECT {stored.RECORD_COLUMNS} FROM evidence WHERE seq >= %s ORDER BY seq",
                (first,),
            )
        else:
            yield from _stream(
                self._conn,
                f"SELECT {stored.RECORD_COLUMNS} FROM evidence WHERE seq >= %s AND seq <= %s ORDER BY seq",
                (first, last),
            )

    def notes(self) -> list[tuple[int, str, str]]:
        return [
            (int(size), str(kind), str(note))
            for size, kind, note in self._conn.execute("SELECT size, kind, note FROM checkpoints ORDER BY id")
        ]

    def head(self) -> tuple[int, str]:
        return _head(self._conn)

    def bodies_of(self, *event_types: EventType, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        if event_types:
            rows = _stream(
                self._conn,
                "SELECT body FROM evidence WHERE seq > %s AND event_type = ANY(%s) ORDER BY seq",
                (after_seq, list(event_types)),
            )
        else:
            rows = _stream(self._conn, "SELECT body FROM evidence WHERE seq > %s ORDER BY seq", (after_seq,))
        yield from stored.parsed_bodies(rows)

    def bodies_for(self, correlation_id: str, *, before_seq: int) -> Iterator[dict[str, Any]]:
        yield from stored.parsed_bodies(
            self._conn.execute(
                "SELECT body FROM evidence WHERE correlation_id = %s AND seq < %s ORDER BY seq",
                (correlation_id, before_seq),
            )
        )

    def count(self) -> int:
        row = self._conn.execute("SELECT COUNT(*) FROM evidence").fetchone()
        return 0 if row is None else int(row[0])
