"""The PostgreSQL database itself: its versioned schema, migrations, and opening a connection to it."""

from __future__ import annotations

import psycopg
from psycopg import sql

from mcp_gate.errors import StoreError, StoreUnreachable
from mcp_gate.evidence import GENESIS_HASH
from mcp_gate.storage import rows as stored

# Every version's statements, in order; a database at version N has run 1..N. A shipped version is
# never edited: a change is a new version.
_V1 = f"""
CREATE TABLE evidence (
    seq BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    ts TEXT NOT NULL,
    event_type TEXT NOT NULL,
    correlation_id TEXT,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL,
    -- Not covered by the hash: only how an approver finds a requester's last calls without reading
    -- the log (SQLite indexes a JSON expression; a cast to jsonb here would refuse a tampered body).
    requester_agent TEXT
);
CREATE INDEX evidence_by_correlation ON evidence (correlation_id);
CREATE INDEX evidence_by_ts ON evidence (ts);
CREATE INDEX evidence_calls_by_agent ON evidence (requester_agent, seq) WHERE event_type = 'call.requested';
-- One row: the chain's head, locked by every write transaction (so writers serialize as under
-- SQLite's BEGIN IMMEDIATE, whatever replica they run on), and a counter every write moves.
CREATE TABLE evidence_head (
    id INT PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    entry_hash TEXT NOT NULL,
    version BIGINT NOT NULL
);
INSERT INTO evidence_head VALUES (1, 0, '{GENESIS_HASH}', 0);
-- Append-only: no UPDATE, DELETE or TRUNCATE, except a DELETE of records at or below the seq that
-- a prune in the same transaction set (under its signed retention checkpoint).
CREATE FUNCTION mcp_gate_evidence_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.seq <= coalesce(
        nullif(current_setting('mcp_gate.prune_through', true), '')::bigint, 0) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'evidence is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER evidence_no_change BEFORE UPDATE OR DELETE ON evidence
    FOR EACH ROW EXECUTE FUNCTION mcp_gate_evidence_append_only();
CREATE FUNCTION mcp_gate_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER evidence_no_truncate BEFORE TRUNCATE ON evidence
    FOR EACH STATEMENT EXECUTE FUNCTION mcp_gate_append_only();
CREATE TABLE checkpoints (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    size BIGINT NOT NULL,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE TRIGGER checkpoints_no_change BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION mcp_gate_append_only();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION mcp_gate_append_only();
CREATE TABLE pins (
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    pin TEXT NOT NULL,
    definition TEXT NOT NULL,
    drifted_pin TEXT,
    drifted_definition TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (server, tool)
);
CREATE TABLE approvals (
    n BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
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
    reported INTEGER NOT NULL DEFAULT 0,
    justification TEXT
);
CREATE INDEX approvals_by_call ON approvals (agent, server, tool, args_sha256, state);
CREATE INDEX approvals_by_state ON approvals (state, expires_at);
CREATE TABLE votes (
    n BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    request_id TEXT NOT NULL REFERENCES approvals (id),
    approver TEXT NOT NULL,
    verdict TEXT NOT NULL,
    channel TEXT NOT NULL,
    at TEXT NOT NULL,
    note TEXT,
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE grants (
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
CREATE INDEX grants_by_tool ON grants (agent, server, tool);
CREATE TABLE inflight (
    correlation_id TEXT PRIMARY KEY,
    request_id TEXT,
    started_at TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE TABLE elicitation_nonces (
    nonce TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    used_at TEXT NOT NULL
);
CREATE TABLE slack_messages (
    n BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    request_id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    ts TEXT,
    rendered_sha256 TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    lease_until TEXT,
    last_error TEXT,
    voters TEXT NOT NULL DEFAULT '{{}}',
    done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE slack_seen (
    key TEXT PRIMARY KEY,
    seen_at TEXT NOT NULL
);
CREATE INDEX slack_seen_by_time ON slack_seen (seen_at)
"""

# The Teams card of each approval request: conversation id (channel), activity id (ts), retries.
_V2 = """
CREATE TABLE teams_messages (
    n BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    request_id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    ts TEXT,
    rendered_sha256 TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    lease_until TEXT,
    last_error TEXT,
    voters TEXT NOT NULL DEFAULT '{{}}',
    done INTEGER NOT NULL DEFAULT 0
)
"""

# Each replica's lease (renewed by its heartbeat, on the database's clock), and which replica a
# call in flight was sent by: a live replica turns a lapsed one's calls into outcome_unknown.
_V3 = """
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    lease_until TIMESTAMPTZ NOT NULL,
    stopped_at TIMESTAMPTZ,
    taken_over_by TEXT,
    taken_over_at TIMESTAMPTZ
);
ALTER TABLE inflight ADD COLUMN replica_id TEXT;
CREATE INDEX inflight_by_replica ON inflight (replica_id)
"""

# Leases on pieces of work that one replica of several does: a mail, a notice, the webhook's
# delivery. A lease that ran out is as good as none.
_V4 = """
CREATE TABLE claims (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until TEXT NOT NULL
);
CREATE INDEX claims_by_until ON claims (until)
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION = len(MIGRATIONS)

# Taken (transaction-scoped) by whoever creates or migrates the schema, so two replicas starting
# at once on an empty database do not both create it.
_MIGRATION_LOCK = 0x6D6370_67617465  # "mcp" "gate"


def connect(url: str, *, connect_timeout: float = 10.0, autocommit: bool = True) -> psycopg.Connection:
    """A connection to the database at `url`; StoreError (without the password) if there is none."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(connect_timeout)))
    except psycopg.Error as exc:
        raise StoreUnreachable(f"cannot reach the store at {redacted(url)}: {stored.one_line(exc)}") from exc


def redacted(url: str) -> str:
    """The URL as it may be shown: user, host, port and database, never a password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(unreadable url)"
    port = str(info.get("port") or "")
    if port and not port.isdigit():
        # A password with an unencoded / # or ? is read as (part of) the port: show nothing of it.
        return "postgresql://(unreadable url)"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{port}" if port else ""
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}"


def schema_version(conn: psycopg.Connection) -> int:
    """The version the database is at: 0 for a database the gate never touched."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return 0 if found is None or found[0] is None else int(found[0])


def migrate(conn: psycopg.Connection, *, target: int = SCHEMA_VERSION) -> tuple[int, int]:
    """Bring the schema to `target` in one transaction: (version before, version after).
    StoreError if the database is newer than this gate."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        before = schema_version(conn)
        if before > SCHEMA_VERSION:
            raise StoreError(
                f"the database is at schema version {before}, this gate knows up to {SCHEMA_VERSION}: "
                "this gate is older than its database"
            )
        if before == 0:
            conn.execute(
                "CREATE TABLE schema_version (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL "
                "DEFAULT now())"
            )
        for version in range(before + 1, target + 1):
            # One execute: without parameters PostgreSQL takes several statements at once, and the
            # functions' bodies hold semicolons of their own.
            conn.execute(sql.SQL(MIGRATIONS[version - 1]))
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        return before, max(before, target)


def check_version(conn: psycopg.Connection, *, create: bool) -> None:
    """StoreError unless the schema is the one this gate knows; with `create`, an untouched database
    gets the whole schema (as SQLite creates a new file)."""
    version = schema_version(conn)
    if version == 0 and create:
        migrate(conn)
        version = schema_version(conn)
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"the database is at schema version {version}, this gate needs {SCHEMA_VERSION}: "
            "run `mcp-gate store migrate`"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database is at schema version {version}, this gate knows up to {SCHEMA_VERSION}: "
            "this gate is older than its database"
        )
