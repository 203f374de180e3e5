"""The auditor's side of the SQLite file: read-only snapshots (`SQLiteLogReader`) and `verify_file`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from mcp_gate.audit import AuditReport, LogVerifier, check_notes
from mcp_gate.checkpoints import VerifierKey
from mcp_gate.errors import StoreError
from mcp_gate.events import EventType
from mcp_gate.storage import rows as stored
from mcp_gate.storage.sqlite.tx import _head


async def verify_file(
    path: Path,
    *,
    verifiers: Sequence[VerifierKey] | None = None,
    extra_notes: Sequence[tuple[str, str]] = (),
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Verify the evidence chain in the file at `path` without writing to it or creating anything
    (an auditor's copy may be read-only).

    With `verifiers` (trusted public keys), every signed checkpoint stored in the file and every
    one in `extra_notes` ((source, note) pairs, e.g. from a sink file) is checked too: its
    signature, and that the log still holds what it covered. `progress(done, total)` is called
    every 50,000 records (from a worker thread)."""
    if not await anyio.to_thread.run_sync(path.is_file):
        raise StoreError(f"{path}: no such evidence file")
    try:
        return await anyio.to_thread.run_sync(
            _verify_file, path, verifiers, tuple(extra_notes), progress, abandon_on_cancel=True
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot verify the evidence in {path}: {stored.one_line(exc)}") from exc


def _verify_file(
    path: Path,
    verifiers: Sequence[VerifierKey] | None,
    extra_notes: Sequence[tuple[str, str]],
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    # Read-only, and never creates a file: verifying must not change what it verifies.
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    try:
        # One transaction is one consistent snapshot under WAL, for the notes and the rows.
        connection.execute("BEGIN")
        notes: list[tuple[str, str]] = []
        if verifiers is not None:
            has_table = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'checkpoints'"
            ).fetchone()
            if has_table is not None:
                notes = [(f"{path.name} checkpoint {i}", n) for i, n in _numbered_notes(connection)]
            notes.extend(extra_notes)
        checks = check_notes(notes, verifiers or ())
        verifier = LogVerifier(checks, keys_checked=verifiers is not None)
        rows = connection.execute(f"SELECT {stored.RECORD_COLUMNS} FROM evidence ORDER BY rowid")
        if progress is None:
            for row in rows:
                verifier.feed(*row)
        else:
            (total,) = connection.execute("SELECT COUNT(*) FROM evidence").fetchone()
            for done, row in enumerate(rows, start=1):
                verifier.feed(*row)
                if done % 50_000 == 0:
                    progress(done, int(total))
            progress(int(total), int(total))
        connection.execute("COMMIT")
        return verifier.report()
    finally:
        connection.close()


def _numbered_notes(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return [(int(i), str(n)) for i, n in conn.execute("SELECT id, note FROM checkpoints ORDER BY id")]


@contextmanager
def read_only(path: Path) -> Iterator[SQLiteLogReader]:
    """A consistent read-only snapshot of the evidence file at `path` (for exports and reports, in a
    worker thread); it never writes to the file or creates one."""
    if not path.is_file():
        raise StoreError(f"{path}: no such evidence file")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the evidence in {path}: {stored.one_line(exc)}") from exc
    try:
        connection.execute("BEGIN")
        yield SQLiteLogReader(connection, path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the evidence in {path}: {stored.one_line(exc)}") from exc
    finally:
        connection.close()


class SQLiteLogReader:
    """The `LogReader` of a SQLite file: streaming reads of evidence rows and checkpoint notes over
    one read-only snapshot."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    def seq_range(self, since: str | None, until: str | None) -> tuple[int, int] | None:
        """The first seq with ts >= since and the last with ts < until (None when none falls in)."""
        low = self._conn.execute("SELECT MIN(seq) FROM evidence WHERE ts >= ?", (since or "",)).fetchone()[0]
        high = self._conn.execute(
            "SELECT MAX(seq) FROM evidence WHERE ts < ?", (until or "\uffff",)
        ).fetchone()[0]
        if low is None or high is None or low > high:
            return None
        return int(low), int(high)

    def rows(self, first: int = 0, last: int | None = None) -> Iterator[tuple[Any, ...]]:
        """Raw rows (the `ChainVerifier.feed` arguments) with first <= seq <= last, in seq order."""
        yield from (
            self._conn.execute(
                f"SELECT {stored.RECORD_COLUMNS} FROM evidence WHERE seq >= ? AND seq <= ? ORDER BY seq",
                (first, -1 if last is None else last),
            )
            if last is not None
            else self._conn.execute(
                f"SELECT {stored.RECORD_COLUMNS} FROM evidence WHERE seq >= ? ORDER BY seq", (first,)
            )
        )

    def notes(self) -> list[tuple[int, str, str]]:
        """(size, kind, note) of every stored checkpoint, oldest first."""
        has_table = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'checkpoints'"
        ).fetchone()
        if has_table is None:
            return []
        return [
            (int(size), str(kind), str(note))
            for size, kind, note in self._conn.execute("SELECT size, kind, note FROM checkpoints ORDER BY id")
        ]

    def head(self) -> tuple[int, str]:
        return _head(self._conn)

    def bodies_of(self, *event_types: EventType, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        """The parsed bodies of the records of these types, in seq order (all types if none given)."""
        if event_types:
            marks = ", ".join("?" for _ in event_types)
            cursor = self._conn.execute(
                f"SELECT body FROM evidence WHERE seq > ? AND event_type IN ({marks}) ORDER BY seq",
                (after_seq, *event_types),
            )
        else:
            cursor = self._conn.execute("SELECT body FROM evidence WHERE seq > ? ORDER BY seq", (after_seq,))
        yield from stored.parsed_bodies(cursor)

    def bodies_for(self, correlation_id: str, *, before_seq: int) -> Iterator[dict[str, Any]]:
        """The parsed bodies of one call's records before `before_seq`, in seq order."""
        yield from stored.parsed_bodies(
            self._conn.execute(
                "SELECT body FROM evidence WHERE correlation_id = ? AND seq < ? ORDER BY seq",
                (correlation_id, before_seq),
            )
        )

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])
