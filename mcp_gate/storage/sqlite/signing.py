"""Signed checkpoints stored in the SQLite file, the signed-head file beside it, and pruning under
a signed retention checkpoint."""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import datetime
from pathlib import Path

from mcp_gate.checkpoints import Checkpoint, Pruned, open_note, parse_checkpoint
from mcp_gate.clock import Clock, utc_iso
from mcp_gate.errors import CheckpointError, GateError, StoreError
from mcp_gate.evidence import GENESIS_HASH, ChainVerifier
from mcp_gate.notary import Notary, read_head, read_head_text, write_head
from mcp_gate.storage import rows as stored
from mcp_gate.storage.sqlite.tx import _head, _in_transaction

log = logging.getLogger(__name__)


def _last_checkpoint(conn: sqlite3.Connection) -> tuple[int, str | None]:
    row = conn.execute("SELECT size, created_at FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
    return (0, None) if row is None else (int(row[0]), str(row[1]))


def _check_head_at_open(conn: sqlite3.Connection, path: Path, notary: Notary, clock: Clock) -> None:
    """At start-up: the signed-head file must be backed by the checkpoint table and extended by the
    log. Without one, it is taken from the table (a log from before the file existed) or, for an
    empty log, started at size 0; a log with records but no checkpoint and no head is refused."""
    head_file = notary.head
    assert head_file is not None
    conn.execute("BEGIN IMMEDIATE")  # the write lock: no other process signs (and moves the head) meanwhile
    try:
        _settle_head(conn, notary)
        head = _read_head(notary)
        (table_max,) = conn.execute("SELECT MAX(size) FROM checkpoints").fetchone()
        if head is None:
            size, _ = _head(conn)
            last = conn.execute("SELECT note FROM checkpoints ORDER BY size DESC, id DESC LIMIT 1").fetchone()
            pinned = conn.execute(
                "SELECT seq FROM evidence WHERE event_type = 'gate.started' "
                'AND body LIKE \'%"signing_key":"%\' LIMIT 1'
            ).fetchone()
            if pinned is not None:
                raise StoreError(
                    f"the signed-head file {head_file} is missing, but the key was pinned at seq "
                    f"{pinned[0]} (deleted?); run `mcp-gate audit verify`"
                )
            if last is not None:
                note = str(last[0])
                _check_extends(conn, notary, _opened(note, notary, head_file))
                write_head(head_file, note)
                log.warning("%s: signed-head file created from the last stored checkpoint", head_file)
            elif size == 0:
                write_head(head_file, notary.sign(0, GENESIS_HASH, clock.now()))
            else:
                raise StoreError(
                    f"a signing key is configured but the log has {size} records, no signed "
                    f"checkpoint and no signed-head file {head_file} (checkpoint history deleted?); "
                    "run `mcp-gate audit verify`"
                )
            return
        if head.size > 0 and (table_max is None or int(table_max) < head.size):
            raise StoreError(
                f"the checkpoint table ends at size {table_max or 0} but this key signed a "
                f"checkpoint of {head.size} records ({head_file}): checkpoints were deleted; "
                "run `mcp-gate audit verify`"
            )
        _check_extends(conn, notary, head)
    except GateError as exc:
        raise StoreError(f"{path}: {exc}") from exc
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _pending_head(head: Path) -> Path:
    return head.with_name(head.name + ".next")


def _settle_head(conn: sqlite3.Connection, notary: Notary) -> None:
    """Inside a write transaction: a signed note waiting beside the head becomes the head if its
    checkpoint row was committed, and is dropped if not (the signer died before its COMMIT)."""
    if notary.head is None:
        return
    pending = _pending_head(notary.head)
    try:
        note = read_head_text(pending)
    except GateError:
        return
    if note is None:
        return
    committed = conn.execute("SELECT 1 FROM checkpoints WHERE note = ? LIMIT 1", (note,)).fetchone()
    try:
        if committed is not None:
            os.replace(pending, notary.head)
        else:
            pending.unlink(missing_ok=True)
    except OSError as exc:
        raise GateError(f"{notary.head}: cannot settle the signed head: {exc.strerror or exc}") from exc


def _promote_head(conn: sqlite3.Connection, notary: Notary) -> None:
    """After a commit: make a just-committed checkpoint the signed head."""
    if notary.head is None or not _pending_head(notary.head).exists():
        return
    _in_transaction(conn, lambda c: _settle_head(c, notary))


def _read_head(notary: Notary) -> Checkpoint | None:
    if notary.head is None:
        return None
    return read_head(notary.head, notary.key.verifier)


def _opened(note: str, notary: Notary, source: Path) -> Checkpoint:
    try:
        body, _ = open_note(note, [notary.key.verifier])
        return parse_checkpoint(body)
    except CheckpointError as exc:
        raise StoreError(f"{source}: the last stored checkpoint is not valid: {exc}") from exc


def _check_extends(conn: sqlite3.Connection, notary: Notary, head: Checkpoint | None) -> None:
    """StoreError unless the log is a consistent extension of `head` (the last checkpoint this key
    signed): the record at its size still has its root, and the chain runs on unbroken from it."""
    if head is None:
        return
    where = f"the last checkpoint this key signed ({head.size} records, {notary.head})"
    size, _ = _head(conn)
    if size < head.size:
        raise StoreError(f"refusing to sign: the log ends at seq {size}, before {where} (truncated?)")
    row = conn.execute("SELECT entry_hash FROM evidence WHERE seq = ?", (head.size,)).fetchone()
    if row is not None and str(row[0]) != head.root:
        raise StoreError(f"refusing to sign: record {head.size} differs from {where} (rewritten?)")
    chain = ChainVerifier(after_seq=head.size, after_hash=head.root)
    for record in conn.execute(
        f"SELECT {stored.RECORD_COLUMNS} FROM evidence WHERE seq > ? ORDER BY seq", (head.size,)
    ):
        chain.feed(*record)
        if not chain.ok:
            raise StoreError(f"refusing to sign: the log does not extend {where}: {chain.report().problem}")


def _sign_checkpoint(conn: sqlite3.Connection, notary: Notary, clock: Clock, *, force: bool) -> str | None:
    head = _read_head(notary)
    _check_extends(conn, notary, head)
    size, root = _head(conn)
    last_size, last_at = _last_checkpoint(conn)
    now = clock.now()
    if force:
        due = size > last_size or last_at is None
    else:
        decided = (
            conn.execute(
                "SELECT 1 FROM evidence WHERE seq > ? AND event_type = 'approval.decided' LIMIT 1",
                (last_size,),
            ).fetchone()
            is not None
        )
        last_time = None if last_at is None else stored.parse_time(last_at)
        due = notary.due(last_size=last_size, last_time=last_time, size=size, decided=decided, now=now)
    if not due:
        return None
    note = notary.sign(size, root, now)
    conn.execute(
        "INSERT INTO checkpoints (size, kind, created_at, note) VALUES (?, 'checkpoint', ?, ?)",
        (size, utc_iso(now), note),
    )
    if notary.head is not None:
        # Before COMMIT, beside the head: it becomes the head once its row is committed (a crash in
        # between leaves it to `_settle_head`), so the head never runs ahead of the table.
        write_head(_pending_head(notary.head), note)
    return note


def _checkpoint_notes(conn: sqlite3.Connection) -> list[str]:
    return [str(row[0]) for row in conn.execute("SELECT note FROM checkpoints ORDER BY id")]


def _prune(conn: sqlite3.Connection, notary: Notary, before: str, now: datetime) -> Pruned | None:
    low, high = conn.execute("SELECT MIN(seq), MAX(seq) FROM evidence").fetchone()
    if low is None:
        return None
    (young,) = conn.execute("SELECT MIN(seq) FROM evidence WHERE ts >= ?", (before,)).fetchone()
    # Only a prefix of old records goes, and the newest record always stays (it holds the head).
    last = (high if young is None else int(young)) - 1
    if last < low:
        return None
    row = conn.execute("SELECT entry_hash FROM evidence WHERE seq = ?", (last,)).fetchone()
    if row is None:
        raise StoreError(f"pruning found no record {last}; run `mcp-gate audit verify`")
    first, root = int(low), str(row[0])
    head = _read_head(notary)
    _check_extends(conn, notary, head)
    pruned = Pruned(first, last, last - first + 1, root)
    note = notary.sign(last, root, now, pruned=pruned)
    conn.execute(
        "INSERT INTO checkpoints (size, kind, created_at, note) VALUES (?, 'retention', ?, ?)",
        (last, utc_iso(now), note),
    )
    if notary.head is not None and (head is None or last >= head.size):
        write_head(_pending_head(notary.head), note)
    # The only path by which evidence rows leave: the guard comes back in the same transaction.
    conn.execute("DROP TRIGGER evidence_no_delete")
    deleted = conn.execute("DELETE FROM evidence WHERE seq <= ?", (last,)).rowcount
    conn.execute(
        "CREATE TRIGGER evidence_no_delete BEFORE DELETE ON evidence "
        "BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END"
    )
    if deleted != pruned.count:
        raise StoreError(f"pruning found a gap in seq {first}..{last}; run `mcp-gate audit verify`")
    return pruned
