"""`mcp-gate store copy`: an installation's SQLite file moved into an empty PostgreSQL database, row
for row (the chain, checkpoints, requests and votes, grants, pins, calls in flight, nonces, the
Slack outbox and replay memory) in one transaction, then verified on the target."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from mcp_gate.errors import StoreError
from mcp_gate.storage import rows as stored
from mcp_gate.storage.postgres.schema import check_version, connect, redacted
from mcp_gate.storage.postgres.tx import LOCK_HEAD, _head, _requester_agent

__all__ = ["copy_sqlite"]

_BATCH = 2_000  # evidence rows per round trip

# Besides the evidence: (table, its columns, the order the SQLite rows are read in).
_TABLES: tuple[tuple[str, str, str], ...] = (
    ("checkpoints", "size, kind, created_at, note", "id"),
    ("pins", stored.PIN_COLUMNS, "server, tool"),
    ("approvals", stored.APPROVAL_COLUMNS, "rowid"),
    ("votes", "request_id, approver, verdict, channel, at, note", "rowid"),
    ("grants", stored.GRANT_COLUMNS, "rowid"),
    ("inflight", "correlation_id, request_id, started_at, fields", "rowid"),
    ("elicitation_nonces", "nonce, correlation_id, used_at", "rowid"),
    ("slack_messages", stored.SLACK_COLUMNS, "rowid"),
    ("slack_seen", "key, seen_at", "rowid"),
    ("teams_messages", stored.SLACK_COLUMNS, "rowid"),
)
_STATE_TABLES = ("evidence", *(table for table, _, _ in _TABLES))


def copy_sqlite(
    source: Path, url: str, *, progress: Callable[[int, int], None] | None = None
) -> tuple[int, str]:
    """Copy the SQLite file `source` into the database at `url`, giving an untouched database the
    schema first; (seq, hash) of the copied head. StoreError, with nothing written, if the target
    holds anything already (a second run is refused, never merged) or the source cannot be read.
    `progress(done, total)` after each batch of evidence rows."""
    if not source.is_file():
        raise StoreError(f"{source}: no such store file")
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {source}: {stored.one_line(exc)}") from exc
    try:
        src.execute("BEGIN")  # one snapshot of the file for the whole copy
        with connect(url) as conn:
            try:
                check_version(conn, create=True)
                with conn.transaction():
                    conn.execute(LOCK_HEAD)
                    _refuse_non_empty(conn, url)
                    head = _copy(src, conn, progress)
            except psycopg.Error as exc:
                raise StoreError(f"cannot copy into {redacted(url)}: {stored.one_line(exc)}") from exc
            return head
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {source}: {stored.one_line(exc)}") from exc
    finally:
        src.close()


def _refuse_non_empty(conn: psycopg.Connection, url: str) -> None:
    for table in _STATE_TABLES:
        if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone() not in (None, (False,)):
            raise StoreError(
                f"{redacted(url)} already holds gate data ({table} is not empty): "
                "copy only into an empty database; nothing was written"
            )


def _copy(
    src: sqlite3.Connection, conn: psycopg.Connection, progress: Callable[[int, int], None] | None
) -> tuple[int, str]:
    total = int(src.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])
    done = 0
    last: tuple[int, str] | None = None
    for batch in _batches(src.execute(f"SELECT {stored.RECORD_COLUMNS} FROM evidence ORDER BY seq")):
        rows = [(*row, _requester_agent(_body(row[5]))) for row in batch]
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO evidence ({stored.RECORD_COLUMNS}, requester_agent) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
        last = (int(batch[-1][0]), str(batch[-1][7]))
        done += len(batch)
        if progress is not None:
            progress(done, total)
    if last is not None:
        conn.execute("UPDATE evidence_head SET seq = %s, entry_hash = %s WHERE id = 1", last)
    for table, columns, order in _TABLES:
        marks = ", ".join("%s" for _ in columns.split(","))
        for batch in _batches(src.execute(f"SELECT {columns} FROM {table} ORDER BY {order}")):
            with conn.cursor() as cursor:
                cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", batch)
    return _head(conn)


def _batches(cursor: sqlite3.Cursor) -> Iterator[Sequence[tuple[Any, ...]]]:
    while batch := cursor.fetchmany(_BATCH):
        yield batch


def _body(text: Any) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except (TypeError, ValueError):
        return {}  # copied as it is: `audit verify` on the target names it
    return body if isinstance(body, dict) else {}
