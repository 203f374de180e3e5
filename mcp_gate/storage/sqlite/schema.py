"""The SQLite file itself: its schema, and opening a connection to it (pragmas, private permissions)."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

from mcp_gate.errors import StoreError
from mcp_gate.storage.sqlite.tx import _in_transaction, _one_line

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    ts TEXT NOT NULL,
    event_type TEXT NOT NULL,
    correlation_id TEXT,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_by_correlation ON evidence(correlation_id);
-- An approver looking at a request sees the requester's last calls: found through this index, so
-- the cost of showing (and of every Slack render) does not grow with the log. Only valid JSON is
-- indexed: a tampered body must still open, so that verification can say where it was changed.
CREATE INDEX IF NOT EXISTS evidence_calls_by_agent
    ON evidence(json_extract(body, '$.requester.agent'), seq)
    WHERE event_type = 'call.requested' AND json_valid(body);
CREATE TRIGGER IF NOT EXISTS evidence_no_update BEFORE UPDATE ON evidence
BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
CREATE TRIGGER IF NOT EXISTS evidence_no_delete BEFORE DELETE ON evidence
BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
CREATE TABLE IF NOT EXISTS pins (
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    pin TEXT NOT NULL,
    definition TEXT NOT NULL,
    drifted_pin TEXT,
    drifted_definition TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (server, tool)
);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    owner TEXT NOT NULL,
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    pin TEXT NOT NULL,
    args_sha256 TEXT NOT NULL,
    policy_sha256 TEXT NOT NULL,
    tier TEXT NOT NULL,
    required INTEGER NOT NULL,
    groups TEXT NOT NULL,
    rule TEXT NOT NULL,
    reason TEXT NOT NULL,
    args TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    state TEXT NOT NULL,
    closed_by TEXT,
    reported INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS approvals_by_call ON approvals(agent, server, tool, args_sha256, state);
CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals(state, expires_at);
CREATE TABLE IF NOT EXISTS votes (
    request_id TEXT NOT NULL REFERENCES approvals(id),
    approver TEXT NOT NULL,
    verdict TEXT NOT NULL,
    channel TEXT NOT NULL,
    at TEXT NOT NULL,
    note TEXT,
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    owner TEXT NOT NULL,
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    request_id TEXT,
    note TEXT,
    revoked_at TEXT,
    revoked_by TEXT,
    rule TEXT NOT NULL DEFAULT '',
    policy_sha256 TEXT NOT NULL DEFAULT '',
    pin TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS grants_by_tool ON grants(agent, server, tool);
CREATE TABLE IF NOT EXISTS inflight (
    correlation_id TEXT PRIMARY KEY,
    request_id TEXT,
    started_at TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS elicitation_nonces (
    nonce TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    used_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TABLE IF NOT EXISTS slack_messages (
    request_id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    ts TEXT,
    rendered_sha256 TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    lease_until TEXT,
    last_error TEXT,
    voters TEXT NOT NULL DEFAULT '{}',
    done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS slack_seen (
    key TEXT PRIMARY KEY,
    seen_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS slack_seen_by_time ON slack_seen(seen_at);
"""

# Columns added after a table was first shipped: added in place to files that lack them.
_ADDED_COLUMNS = (
    ("grants", "rule", "TEXT NOT NULL DEFAULT ''"),
    ("grants", "policy_sha256", "TEXT NOT NULL DEFAULT ''"),
    ("grants", "pin", "TEXT NOT NULL DEFAULT ''"),
    ("approvals", "justification", "TEXT"),
)


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _make_private(path)
    except OSError as exc:
        raise StoreError(f"cannot open the store at {path}: {_one_line(exc)}") from exc
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
        version = _in_transaction(connection, _create_schema)
    except sqlite3.Error as exc:
        if connection is not None:
            connection.close()
        raise StoreError(f"cannot open the store at {path}: {_one_line(exc)}") from exc
    if version != SCHEMA_VERSION:
        connection.close()
        raise StoreError(
            f"cannot open the store at {path}: schema version {version}, expected {SCHEMA_VERSION}"
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


def _create_schema(conn: sqlite3.Connection) -> str:
    for statement in _SCHEMA.split(";\n"):
        if statement.strip():
            conn.execute(statement)
    for table, column, declaration in _ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return str(row[0])
