"""The storage interface (`Store`) and its SQLite implementation: evidence, pins, approvals, grants."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, TypeVar

import anyio
import anyio.to_thread

from mcp_gate.approvals import ApprovalRequest, Binding, Grant, RequestState, Vote
from mcp_gate.audit import AuditReport, LogVerifier, check_notes
from mcp_gate.checkpoints import Checkpoint, Pruned, VerifierKey, open_note, parse_checkpoint
from mcp_gate.clock import Clock, SystemClock, utc_iso
from mcp_gate.errors import CheckpointError, EvidenceWriteError, GateError, StoreError
from mcp_gate.evidence import (
    GENESIS_HASH,
    ChainVerifier,
    Record,
    VerifyReport,
    canonical_json,
    chain_hash,
    new_event,
)
from mcp_gate.notary import Notary, read_head, read_head_text, write_head

__all__ = [
    "DataDirLock",
    "RunMarker",
    "Inflight",
    "PinRecord",
    "SQLiteStore",
    "SlackMessage",
    "Store",
    "Tx",
    "verify_file",
]

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

_APPROVAL_COLUMNS = (
    "id, correlation_id, agent, owner, server, tool, pin, args_sha256, policy_sha256, tier, required, "
    "groups, rule, reason, args, created_at, expires_at, state, closed_by, reported, justification"
)
_GRANT_COLUMNS = (
    "id, agent, owner, server, tool, created_by, created_at, expires_at, request_id, note, "
    "revoked_at, revoked_by, rule, policy_sha256, pin"
)
_RECORD_COLUMNS = "seq, event_id, ts, event_type, correlation_id, body, prev_hash, entry_hash"
_PIN_COLUMNS = "server, tool, pin, definition, drifted_pin, drifted_definition, updated_at"
_REQUIRED_TEXT = ("event_id", "ts", "event_type")

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PinRecord:
    """The accepted definition of one downstream tool, and a newer one held in quarantine.

    A tool its server added after its tools were first pinned has no accepted definition yet
    (`new`): its first definition waits in quarantine like a changed one."""

    server: str
    tool: str
    pin: str
    definition: Mapping[str, Any]
    drifted_pin: str | None
    drifted_definition: Mapping[str, Any] | None
    updated_at: str

    @property
    def new(self) -> bool:
        return self.pin == ""


class Store(Protocol):
    """Where the gate keeps evidence and pins. Every write that carries events commits them atomically."""

    async def append(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Chain event bodies (from `new_event`) in one transaction; EvidenceWriteError if not."""
        ...

    async def records(
        self,
        *,
        correlation_id: str | None = None,
        event_type: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[Record]: ...

    async def head(self) -> tuple[int, str]:
        """(last seq or 0, last entry hash or the genesis hash)."""
        ...

    async def verify(self) -> VerifyReport: ...

    async def get_pin(self, server: str, tool: str) -> PinRecord | None: ...

    async def list_pins(self) -> list[PinRecord]: ...

    async def set_pin(
        self,
        server: str,
        tool: str,
        *,
        pin: str,
        definition: Mapping[str, Any],
        events: Sequence[Mapping[str, Any]],
    ) -> list[Record]:
        """Accept `pin` for the tool, clearing any drift, and append `events` in the same transaction."""
        ...

    async def mark_drift(
        self,
        server: str,
        tool: str,
        *,
        pin: str,
        definition: Mapping[str, Any],
        events: Sequence[Mapping[str, Any]],
    ) -> list[Record]:
        """Hold a changed definition of a pinned tool in quarantine; StoreError if the tool has no pin."""
        ...

    async def hold_new(
        self,
        server: str,
        tool: str,
        *,
        pin: str,
        definition: Mapping[str, Any],
        events: Sequence[Mapping[str, Any]],
    ) -> list[Record]:
        """Hold the first definition of a tool with no pin in quarantine (a `new` PinRecord) and
        append `events`; nothing at all if the tool has a pin by now."""
        ...

    async def accept_drift(self, server: str, tool: str, *, events: Sequence[Mapping[str, Any]]) -> PinRecord:
        """Make the quarantined definition the accepted one; StoreError if there is none."""
        ...

    async def transact(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in one BEGIN IMMEDIATE transaction: it commits whole or not at all, and no other
        writer (thread or process) interleaves. Failures raise EvidenceWriteError."""
        ...

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` over a consistent read; StoreError if the store cannot be read."""
        ...

    def data_version(self) -> int:
        """Changes whenever another connection (process) commits: a cheap wake-up signal."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Inflight:
    """A call whose execution began: it has no recorded outcome yet."""

    correlation_id: str
    request_id: str | None
    started_at: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class SlackMessage:
    """The Slack message of one approval request: where it is, what it last showed, retries."""

    request_id: str
    channel: str
    ts: str | None = None  # None until posted
    rendered_sha256: str | None = None
    attempts: int = 0
    next_attempt_at: str | None = None
    lease_until: str | None = None  # a gate is posting it until then
    last_error: str | None = None
    voters: Mapping[str, str] = field(default_factory=dict)  # approver -> Slack user id
    done: bool = False  # shows a final outcome: never updated again


_SLACK_COLUMNS = (
    "request_id, channel, ts, rendered_sha256, attempts, next_attempt_at, lease_until, last_error, "
    "voters, done"
)


def _slack_message(row: Sequence[Any]) -> SlackMessage:
    request_id, channel, ts, rendered, attempts, next_at, lease, error, voters, done = row
    return SlackMessage(
        request_id,
        channel,
        ts,
        rendered,
        int(attempts),
        next_at,
        lease,
        error,
        json.loads(voters),
        bool(done),
    )


class Tx:
    """Typed reads and writes over one SQLite connection, used inside `Store.transact` / `read`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def append(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        return _append(self.conn, events)

    # approval requests

    def get_request(self, request_id: str) -> ApprovalRequest | None:
        row = self.conn.execute(
            f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE id = ?", (request_id,)
        ).fetchone()
        return None if row is None else self._request(row)

    def find_open_request(self, binding: Binding) -> ApprovalRequest | None:
        """The newest pending or approved request for the same requester, tool and arguments."""
        row = self.conn.execute(
            f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE agent = ? AND owner = ? AND server = ? "
            "AND tool = ? AND args_sha256 = ? AND state IN ('pending', 'approved') "
            "ORDER BY created_at DESC LIMIT 1",
            (binding.agent, binding.owner, binding.server, binding.tool, binding.args_sha256),
        ).fetchone()
        return None if row is None else self._request(row)

    def find_latest_request(self, binding: Binding) -> ApprovalRequest | None:
        """The newest request, in any state, for the same requester, tool and arguments."""
        row = self.conn.execute(
            f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE agent = ? AND owner = ? AND server = ? "
            "AND tool = ? AND args_sha256 = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (binding.agent, binding.owner, binding.server, binding.tool, binding.args_sha256),
        ).fetchone()
        return None if row is None else self._request(row)

    def bodies_for(self, correlation_id: str, event_types: Sequence[str]) -> list[dict[str, Any]]:
        """The evidence bodies of these types under one correlation id, in order."""
        marks = ", ".join("?" for _ in event_types)
        rows = self.conn.execute(
            f"SELECT body FROM evidence WHERE correlation_id = ? AND event_type IN ({marks}) ORDER BY seq",
            (correlation_id, *event_types),
        )
        return list(_parsed_bodies(rows))

    def mark_reported(self, request_id: str) -> None:
        self.conn.execute("UPDATE approvals SET reported = 1 WHERE id = ?", (request_id,))

    def requests(self, *, states: Sequence[RequestState] = (), limit: int = 200) -> list[ApprovalRequest]:
        if states:
            marks = ", ".join("?" for _ in states)
            rows = self.conn.execute(
                f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE state IN ({marks}) "
                "ORDER BY created_at LIMIT ?",
                (*states, limit),
            ).fetchall()
        else:
            rows = self.conn.execute(
                f"SELECT {_APPROVAL_COLUMNS} FROM approvals ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [self._request(row) for row in rows]

    def count_pending(self, agent: str) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM approvals WHERE agent = ? AND state = 'pending'", (agent,)
        ).fetchone()
        return int(row[0])

    def due_for_expiry(self, now: str) -> list[ApprovalRequest]:
        rows = self.conn.execute(
            f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE state IN ('pending', 'approved') "
            "AND expires_at <= ?",
            (now,),
        ).fetchall()
        return [self._request(row) for row in rows]

    def insert_request(self, request: ApprovalRequest) -> None:
        b = request.binding
        self.conn.execute(
            f"INSERT INTO approvals ({_APPROVAL_COLUMNS}) VALUES ({', '.join('?' for _ in range(21))})",
            (
                request.id,
                request.correlation_id,
                b.agent,
                b.owner,
                b.server,
                b.tool,
                b.pin,
                b.args_sha256,
                b.policy_sha256,
                request.tier,
                request.required,
                json.dumps(list(request.groups)),
                request.rule,
                request.reason,
                canonical_json(request.args).decode("utf-8"),
                utc_iso(request.created_at),
                utc_iso(request.expires_at),
                request.state,
                request.closed_by,
                int(request.reported),
                request.justification,
            ),
        )

    def save_request(self, request: ApprovalRequest) -> None:
        """Store the request's state and any votes not stored yet (a vote is never changed)."""
        self.conn.execute(
            "UPDATE approvals SET state = ?, closed_by = ?, reported = ? WHERE id = ?",
            (request.state, request.closed_by, int(request.reported), request.id),
        )
        self.conn.executemany(
            "INSERT OR IGNORE INTO votes (request_id, approver, verdict, channel, at, note) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(request.id, v.approver, v.verdict, v.channel, utc_iso(v.at), v.note) for v in request.votes],
        )

    def _request(self, row: Sequence[Any]) -> ApprovalRequest:
        (rid, correlation_id, agent, owner, server, tool, pin, args_sha256, policy_sha256, tier, required,
         groups, rule, reason, args, created_at, expires_at, state, closed_by, reported,
         justification) = row  # fmt: skip
        votes = tuple(
            Vote(approver=a, verdict=v, channel=c, at=_parse_time(at), note=n)
            for a, v, c, at, n in self.conn.execute(
                "SELECT approver, verdict, channel, at, note FROM votes WHERE request_id = ? "
                "ORDER BY at, rowid",
                (rid,),
            )
        )
        return ApprovalRequest(
            id=rid,
            binding=Binding(agent, owner, server, tool, pin, args_sha256, policy_sha256),
            correlation_id=correlation_id,
            tier=tier,
            required=int(required),
            groups=tuple(json.loads(groups)),
            rule=rule,
            reason=reason,
            args=json.loads(args),
            created_at=_parse_time(created_at),
            expires_at=_parse_time(expires_at),
            state=state,
            votes=votes,
            closed_by=closed_by,
            reported=bool(reported),
            justification=justification,
        )

    # grants

    def insert_grant(self, grant: Grant) -> None:
        self.conn.execute(
            f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES ({', '.join('?' for _ in range(15))})",
            (
                grant.id,
                grant.agent,
                grant.owner,
                grant.server,
                grant.tool,
                grant.created_by,
                utc_iso(grant.created_at),
                utc_iso(grant.expires_at),
                grant.request_id,
                grant.note,
                None if grant.revoked_at is None else utc_iso(grant.revoked_at),
                grant.revoked_by,
                grant.rule,
                grant.policy_sha256,
                grant.pin,
            ),
        )

    def revoke_grant(self, grant: Grant) -> None:
        assert grant.revoked_at is not None
        self.conn.execute(
            "UPDATE grants SET revoked_at = ?, revoked_by = ? WHERE id = ?",
            (utc_iso(grant.revoked_at), grant.revoked_by, grant.id),
        )

    def get_grant(self, grant_id: str) -> Grant | None:
        row = self.conn.execute(f"SELECT {_GRANT_COLUMNS} FROM grants WHERE id = ?", (grant_id,)).fetchone()
        return None if row is None else _grant(row)

    def grants_for(self, agent: str, owner: str, server: str, tool: str) -> list[Grant]:
        rows = self.conn.execute(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE agent = ? AND owner = ? AND server = ? AND tool = ? "
            "AND revoked_at IS NULL ORDER BY expires_at DESC",
            (agent, owner, server, tool),
        ).fetchall()
        return [_grant(row) for row in rows]

    def grants(self, *, live_at: str | None = None) -> list[Grant]:
        if live_at is None:
            rows = self.conn.execute(
                f"SELECT {_GRANT_COLUMNS} FROM grants ORDER BY created_at DESC"
            ).fetchall()
        else:
            rows = self.conn.execute(
                f"SELECT {_GRANT_COLUMNS} FROM grants WHERE revoked_at IS NULL AND expires_at > ? "
                "ORDER BY created_at DESC",
                (live_at,),
            ).fetchall()
        return [_grant(row) for row in rows]

    # calls in flight

    def begin_inflight(
        self, correlation_id: str, request_id: str | None, started_at: str, fields: Mapping[str, Any]
    ) -> None:
        self.conn.execute(
            "INSERT INTO inflight (correlation_id, request_id, started_at, fields) VALUES (?, ?, ?, ?)",
            (correlation_id, request_id, started_at, canonical_json(dict(fields)).decode("utf-8")),
        )

    def end_inflight(self, correlation_id: str) -> None:
        self.conn.execute("DELETE FROM inflight WHERE correlation_id = ?", (correlation_id,))

    def inflight(self) -> list[Inflight]:
        rows = self.conn.execute(
            "SELECT correlation_id, request_id, started_at, fields FROM inflight ORDER BY started_at"
        ).fetchall()
        return [Inflight(c, r, s, json.loads(f)) for c, r, s, f in rows]

    def set_request_state(self, request_id: str, state: RequestState) -> None:
        self.conn.execute("UPDATE approvals SET state = ? WHERE id = ?", (state, request_id))

    # elicitation request_state nonces

    def use_nonce(self, nonce: str, correlation_id: str, used_at: str) -> bool:
        """Mark a sealed request_state's nonce used; False if it already was (a replay)."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO elicitation_nonces (nonce, correlation_id, used_at) VALUES (?, ?, ?)",
            (nonce, correlation_id, used_at),
        )
        return cursor.rowcount == 1

    # Slack messages of approval requests, and the Slack deliveries already seen

    def slack_message(self, request_id: str) -> SlackMessage | None:
        row = self.conn.execute(
            f"SELECT {_SLACK_COLUMNS} FROM slack_messages WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else _slack_message(row)

    def slack_messages(self, *, done: bool = False) -> list[SlackMessage]:
        rows = self.conn.execute(
            f"SELECT {_SLACK_COLUMNS} FROM slack_messages WHERE done = ? ORDER BY rowid", (int(done),)
        ).fetchall()
        return [_slack_message(row) for row in rows]

    def save_slack_message(self, message: SlackMessage) -> None:
        self.conn.execute(
            f"INSERT OR REPLACE INTO slack_messages ({_SLACK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.request_id,
                message.channel,
                message.ts,
                message.rendered_sha256,
                message.attempts,
                message.next_attempt_at,
                message.lease_until,
                message.last_error,
                json.dumps(dict(message.voters), sort_keys=True),
                int(message.done),
            ),
        )

    def slack_first_sight(self, key: str, now: str, forget_before: str) -> bool:
        """Remember `key` (a delivery's signature or envelope id); False if it was seen already."""
        self.conn.execute("DELETE FROM slack_seen WHERE seen_at < ?", (forget_before,))
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO slack_seen (key, seen_at) VALUES (?, ?)", (key, now)
        )
        return cursor.rowcount == 1


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
        event_type: str | None = None,
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
        sql = f"SELECT {_RECORD_COLUMNS} FROM evidence WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [_record(row) for row in rows]

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
        sql = f"SELECT {_PIN_COLUMNS} FROM pins ORDER BY server, tool"
        rows = await self._read(lambda conn: conn.execute(sql).fetchall())
        return [_pin_record(row) for row in rows]

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
                f"INSERT INTO pins ({_PIN_COLUMNS}) VALUES (?, ?, ?, ?, NULL, NULL, ?) "
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
                f"INSERT INTO pins ({_PIN_COLUMNS}) VALUES (?, ?, '', '{{}}', ?, ?, ?) "
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
        return await self._write_evidence(0, lambda conn: fn(Tx(conn)))

    async def read(self, fn: Callable[[Tx], T]) -> T:
        return await self._read(lambda conn: fn(Tx(conn)))

    def data_version(self) -> int:
        # A separate connection: PRAGMA data_version only changes for commits made by *other*
        # connections, and this one never writes. It reads a counter in shared memory, so it is
        # cheap enough to ask on the event loop.
        if self._watch is None:
            self._watch = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        return int(self._watch.execute("PRAGMA data_version").fetchone()[0])

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
                raise StoreError(f"cannot read the store at {self._path}: {_one_line(exc)}") from exc

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
                raise EvidenceWriteError(f"cannot write to {self._path}: {_one_line(exc)}") from exc
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
            note = await anyio.to_thread.run_sync(_commit_batch, self._connection, batch, notary, self._clock)
            if self._notary is not None:
                try:
                    await anyio.to_thread.run_sync(_promote_head, self._connection, self._notary)
                except (sqlite3.Error, GateError) as exc:  # settled at the next commit or start
                    log.error("cannot move the signed head: %s", _one_line(exc))
            return note
        finally:
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
        log.error("cannot write a checkpoint: %s", _one_line(exc))
        return None


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
        f"SELECT {_RECORD_COLUMNS} FROM evidence WHERE seq > ? ORDER BY seq", (head.size,)
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
        last_time = None if last_at is None else _parse_time(last_at)
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


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may already have rolled back on its own
            conn.execute("ROLLBACK")
        raise
    return result


def _head(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT seq, entry_hash FROM evidence ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))


def _append(conn: sqlite3.Connection, events: Sequence[Mapping[str, Any]]) -> list[Record]:
    """Chain and insert events; runs inside a BEGIN IMMEDIATE transaction so the head cannot move."""
    if not events:
        return []
    seq, prev_hash = _head(conn)
    records: list[Record] = []
    rows: list[tuple[Any, ...]] = []
    for index, event in enumerate(events):
        body = dict(event)
        for name in _REQUIRED_TEXT:
            if not isinstance(body.get(name), str):
                raise EvidenceWriteError(f"event {index} has no text {name!r}; build events with new_event()")
        correlation_id = body.get("correlation_id")
        if correlation_id is not None and not isinstance(correlation_id, str):
            raise EvidenceWriteError(f"event {index} has a correlation_id that is not text or null")
        seq += 1
        body["seq"] = seq
        text = canonical_json(body)
        entry_hash = chain_hash(prev_hash, text)
        record = Record(
            seq=seq,
            event_id=body["event_id"],
            ts=body["ts"],
            event_type=body["event_type"],
            correlation_id=correlation_id,
            body=body,
            prev_hash=prev_hash,
            entry_hash=entry_hash,
        )
        records.append(record)
        rows.append(
            (
                seq,
                record.event_id,
                record.ts,
                record.event_type,
                correlation_id,
                text.decode("utf-8"),
                prev_hash,
                entry_hash,
            )
        )
        prev_hash = entry_hash
    insert = f"INSERT INTO evidence ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    if len(rows) == 1:
        conn.execute(insert, rows[0])
    else:
        conn.executemany(insert, rows)
    return records


def _record(row: Sequence[Any]) -> Record:
    seq, event_id, ts, event_type, correlation_id, body_text, prev_hash, entry_hash = row
    try:
        body = json.loads(body_text)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"evidence seq {seq} is not readable JSON; run `mcp-gate audit verify`") from exc
    return Record(
        seq=seq,
        event_id=event_id,
        ts=ts,
        event_type=event_type,
        correlation_id=correlation_id,
        body=body,
        prev_hash=prev_hash,
        entry_hash=entry_hash,
    )


def _get_pin(conn: sqlite3.Connection, server: str, tool: str) -> PinRecord | None:
    row = conn.execute(
        f"SELECT {_PIN_COLUMNS} FROM pins WHERE server = ? AND tool = ?", (server, tool)
    ).fetchone()
    return None if row is None else _pin_record(row)


def _pin_record(row: Sequence[Any]) -> PinRecord:
    server, tool, pin, definition, drifted_pin, drifted_definition, updated_at = row
    return PinRecord(
        server=server,
        tool=tool,
        pin=pin,
        definition=json.loads(definition),
        drifted_pin=drifted_pin,
        drifted_definition=None if drifted_definition is None else json.loads(drifted_definition),
        updated_at=updated_at,
    )


class DataDirLock:
    """`data_dir/gate.lock`, held by every gate process for its whole life.

    Every gate holds it shared. A gate that starts while no other gate runs gets it exclusively
    first (`exclusive`), and only that gate may treat in-flight markers as left over from a
    crash; it then shares the lock (`share()`). A `check` beside a serving gate never recovers.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "gate.lock"
        self.exclusive = False
        self._handle: IO[str] | None = None

    def __enter__(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a")
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.exclusive = True
        except OSError:
            self._share(wait=True)
        return self

    def share(self) -> None:
        if self.exclusive:
            self._share(wait=False)
            self.exclusive = False

    def _share(self, *, wait: bool) -> None:
        assert self._handle is not None
        # Another gate holds it exclusively only for its brief recovery: wait for that, but
        # never forever (the lock is advisory; serving matters more than holding it).
        for _ in range(500 if wait else 1):
            try:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except OSError:
                time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the lock
            self._handle = None


class RunMarker:
    """`data_dir/runs/<run>`: present while a gate runs, removed once its stop is recorded.

    A marker left by an earlier run means that run ended without a clean stop (killed, crashed,
    power lost). Only a gate holding the data-dir lock exclusively reads the left-over markers,
    so no live gate's marker is taken for a crash."""

    def __init__(self, data_dir: Path, run: str) -> None:
        self.folder = data_dir / "runs"
        self.path = self.folder / run

    def __enter__(self) -> RunMarker:
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # the marker stays unless remove() was called: that is the point

    def left_over(self) -> list[str]:
        """The earlier runs that left a marker."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.is_file() and p != self.path)

    def forget(self, runs: list[str]) -> None:
        """Remove the markers of `runs` once their unclean end is recorded, so it is recorded once."""
        for run in runs:
            (self.folder / run).unlink(missing_ok=True)

    def create(self) -> None:
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path.write_text(f"{os.getpid()}\n", encoding="utf-8")
        except OSError as exc:
            log.warning(
                "cannot write the run marker %s (%s): a crash of this run will go unnoticed", self.path, exc
            )

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


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
    if not path.is_file():
        raise StoreError(f"{path}: no such evidence file")
    try:
        return await anyio.to_thread.run_sync(
            _verify_file, path, verifiers, tuple(extra_notes), progress, abandon_on_cancel=True
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot verify the evidence in {path}: {_one_line(exc)}") from exc


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
        rows = connection.execute(f"SELECT {_RECORD_COLUMNS} FROM evidence ORDER BY rowid")
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
def read_only(path: Path) -> Iterator[LogReader]:
    """A consistent read-only snapshot of the evidence file at `path` (for exports and reports, in a
    worker thread); it never writes to the file or creates one."""
    if not path.is_file():
        raise StoreError(f"{path}: no such evidence file")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the evidence in {path}: {_one_line(exc)}") from exc
    try:
        connection.execute("BEGIN")
        yield LogReader(connection, path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the evidence in {path}: {_one_line(exc)}") from exc
    finally:
        connection.close()


class LogReader:
    """Streaming reads of evidence rows and checkpoint notes over one read-only snapshot."""

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
                f"SELECT {_RECORD_COLUMNS} FROM evidence WHERE seq >= ? AND seq <= ? ORDER BY seq",
                (first, -1 if last is None else last),
            )
            if last is not None
            else self._conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM evidence WHERE seq >= ? ORDER BY seq", (first,)
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

    def bodies_of(self, *event_types: str, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        """The parsed bodies of the records of these types, in seq order (all types if none given)."""
        if event_types:
            marks = ", ".join("?" for _ in event_types)
            cursor = self._conn.execute(
                f"SELECT body FROM evidence WHERE seq > ? AND event_type IN ({marks}) ORDER BY seq",
                (after_seq, *event_types),
            )
        else:
            cursor = self._conn.execute("SELECT body FROM evidence WHERE seq > ? ORDER BY seq", (after_seq,))
        yield from _parsed_bodies(cursor)

    def bodies_for(self, correlation_id: str, *, before_seq: int) -> Iterator[dict[str, Any]]:
        """The parsed bodies of one call's records before `before_seq`, in seq order."""
        yield from _parsed_bodies(
            self._conn.execute(
                "SELECT body FROM evidence WHERE correlation_id = ? AND seq < ? ORDER BY seq",
                (correlation_id, before_seq),
            )
        )

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])


def _parsed_bodies(cursor: Iterable[Sequence[Any]]) -> Iterator[dict[str, Any]]:
    for (text,) in cursor:
        try:
            body = json.loads(text)
        except (TypeError, ValueError):
            continue  # unreadable rows are for `audit verify` to name
        if isinstance(body, dict):
            yield body


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _grant(row: Sequence[Any]) -> Grant:
    (gid, agent, owner, server, tool, created_by, created_at, expires_at, request_id, note,
     revoked_at, revoked_by, rule, policy_sha256, pin) = row  # fmt: skip
    return Grant(
        id=gid,
        agent=agent,
        owner=owner,
        server=server,
        tool=tool,
        created_by=created_by,
        created_at=_parse_time(created_at),
        expires_at=_parse_time(expires_at),
        request_id=request_id,
        note=note,
        revoked_at=None if revoked_at is None else _parse_time(revoked_at),
        revoked_by=revoked_by,
        rule=rule,
        policy_sha256=policy_sha256,
        pin=pin,
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
