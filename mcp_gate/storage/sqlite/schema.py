"""The SQLite file itself: its schema, as numbered migrations, and opening a connection to it
(pragmas, private permissions)."""

from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from mcp_gate.errors import StoreError
from mcp_gate.storage import rows as stored
from mcp_gate.storage.sqlite.tx import _in_transaction

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"  # the file's format; the numbered migrations change the tables within it

# The schema is the migrations in migrations/NNNN_*.sql, applied in order, each once; the last one
# applied is recorded in the file's meta table.
_MIGRATION_FILE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
_MIGRATED = "schema_migration"

# A file from before the migrations were numbered was kept up to date column by column: it gets
# what 0001 creates and these columns (what 0002 and 0003 add) if it lacks them, and then counts
# as migrated to 0003.
_BEFORE_NUMBERING = 3
_LEGACY_COLUMNS = (
    ("grants", "rule", "TEXT NOT NULL DEFAULT ''"),
    ("grants", "policy_sha256", "TEXT NOT NULL DEFAULT ''"),
    ("grants", "pin", "TEXT NOT NULL DEFAULT ''"),
    ("approvals", "justification", "TEXT"),
)


@functools.cache
def migrations() -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    """(number, file name, statements) of every migration shipped, in order; numbered 1, 2, 3, ..."""
    found: list[tuple[int, str, tuple[str, ...]]] = []
    for entry in (resources.files(__package__) / "migrations").iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match is not None:
            found.append(
                (int(match[1]), entry.name, tuple(_statements(entry.read_text("utf-8"), entry.name)))
            )
    found.sort()
    numbers = [number for number, _, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise StoreError(f"the shipped schema migrations are not numbered 1..{len(found)}: {numbers}")
    return tuple(found)


def _statements(script: str, name: str) -> Iterator[str]:
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if any(line.strip() and not line.strip().startswith("--") for line in pending.splitlines()):
        raise StoreError(f"schema migration {name} ends in the middle of a statement")


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _make_private(path)
    except OSError as exc:
        raise StoreError(f"cannot open the store at {path}: {stored.one_line(exc)}") from exc
    connection: sqlite3.Connection | None = None
    try:
        # isolation_level=None: no implicit transactions, we BEGIN IMMEDIATE ourselves.
        connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
        )
        connection.execute(
            f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}"
        )  # first: the WAL switch below may wait
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        version, migrated = _in_transaction(connection, _migrate)
    except (sqlite3.Error, StoreError) as exc:
        if connection is not None:
            connection.close()
        raise StoreError(f"cannot open the store at {path}: {stored.one_line(exc)}") from exc
    if version != SCHEMA_VERSION:
        connection.close()
        raise StoreError(
            f"cannot open the store at {path}: schema version {version}, expected {SCHEMA_VERSION}"
        )
    known = len(migrations())
    if migrated > known:
        connection.close()
        raise StoreError(
            f"cannot open the store at {path}: its schema is at migration {migrated}, this mcp-gate "
            f"knows {known} (written by a newer version?)"
        )
    return connection


def _make_private(path: Path) -> None:
    """The data dir 0700, the store file and its WAL 0600: nobody but the gate's own user reads or
    writes them. Created so; tightened when found looser and owned by this user."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for each, mode in (
        (path.parent, 0o700),
        (path, 0o600),
        (path.with_name(path.name + "-wal"), 0o600),
        (path.with_name(path.name + "-shm"), 0o600),
    ):
        try:
            st = each.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(each, mode)
            log.warning("%s was open to other users; made it %o", each, mode)


def _migrate(conn: sqlite3.Connection) -> tuple[str, int]:
    """Inside the opening transaction: apply the migrations this file has not had, in order, and
    record the last; (the file's schema version, its migration)."""
    recorded = migrated = _migration(conn)
    if migrated is None:
        migrated = 0 if not _has_table(conn, "evidence") else _adopt(conn)
    shipped = migrations()
    if migrated > len(shipped):  # a newer gate's file: refused by the caller, and left as it is
        return SCHEMA_VERSION, migrated
    for number, _, statements in shipped[migrated:]:
        for statement in statements:
            conn.execute(statement)
        migrated = number
    if migrated != recorded:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (_MIGRATED, str(migrated)))
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return str(row[0]), migrated


def _migration(conn: sqlite3.Connection) -> int | None:
    if not _has_table(conn, "meta"):
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_MIGRATED,)).fetchone()
    if row is None:
        return None
    try:
        return int(row[0])
    except (TypeError, ValueError) as exc:
        raise StoreError(f"the recorded schema migration {row[0]!r} is not a number") from exc


def _adopt(conn: sqlite3.Connection) -> int:
    """A file from before the migrations were numbered: bring it to where they take over."""
    _, _, initial = migrations()[0]
    for statement in initial:
        conn.execute(statement)  # each IF NOT EXISTS
    for table, column, declaration in _LEGACY_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    return _BEFORE_NUMBERING


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return found is not None
