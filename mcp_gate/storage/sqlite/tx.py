"""One transaction over the SQLite file: the typed queries of `SQLiteTx` and the evidence chain's inserts."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from mcp_gate.approvals import ApprovalRequest, Binding, Grant, Vote
from mcp_gate.clock import utc_iso
from mcp_gate.events import EventType, RequestState
from mcp_gate.evidence import GENESIS_HASH, Record, canonical_json, chain_events
from mcp_gate.storage import rows as stored
from mcp_gate.storage.base import Inflight, PinRecord, SlackMessage

T = TypeVar("T")


class SQLiteTx:
    """The `Tx` of the SQLite store: typed reads and writes over one connection, inside
    `SQLiteStore.transact` / `read`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def append(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        return _append(self.conn, events)

    # approval requests

    def get_request(self, request_id: str) -> ApprovalRequest | None:
        row = self.conn.execute(
            f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals WHERE id = ?", (request_id,)
        ).fetchone()
        return None if row is None else self._request(row)

    def find_open_request(self, binding: Binding) -> ApprovalRequest | None:
        """The newest pending or approved request for the same requester, tool and arguments."""
        row = self.conn.execute(
            f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals WHERE agent = ? AND owner = ? AND server = ? "
            "AND tool = ? AND args_sha256 = ? AND state IN ('pending', 'approved') "
            "ORDER BY created_at DESC LIMIT 1",
            (binding.agent, binding.owner, binding.server, binding.tool, binding.args_sha256),
        ).fetchone()
        return None if row is None else self._request(row)

    def find_latest_request(self, binding: Binding) -> ApprovalRequest | None:
        """The newest request, in any state, for the same requester, tool and arguments."""
        row = self.conn.execute(
            f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals WHERE agent = ? AND owner = ? AND server = ? "
            "AND tool = ? AND args_sha256 = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (binding.agent, binding.owner, binding.server, binding.tool, binding.args_sha256),
        ).fetchone()
        return None if row is None else self._request(row)

    def recent_calls(self, agent: str, limit: int) -> list[Record]:
        rows = self.conn.execute(
            f"SELECT {stored.RECORD_COLUMNS} FROM evidence WHERE event_type = 'call.requested' "
            "AND json_valid(body) AND json_extract(body, '$.requester.agent') = ? "
            "ORDER BY seq DESC LIMIT ?",
            (agent, limit),
        ).fetchall()
        return [stored.record(row) for row in reversed(rows)]

    def bodies_for(self, correlation_id: str, event_types: Sequence[EventType]) -> list[dict[str, Any]]:
        """The evidence bodies of these types under one correlation id, in order."""
        marks = ", ".join("?" for _ in event_types)
        rows = self.conn.execute(
            f"SELECT body FROM evidence WHERE correlation_id = ? AND event_type IN ({marks}) ORDER BY seq",
            (correlation_id, *event_types),
        )
        return list(stored.parsed_bodies(rows))

    def mark_reported(self, request_id: str) -> None:
        self.conn.execute("UPDATE approvals SET reported = 1 WHERE id = ?", (request_id,))

    def requests(self, *, states: Sequence[RequestState] = (), limit: int = 200) -> list[ApprovalRequest]:
        if states:
            marks = ", ".join("?" for _ in states)
            rows = self.conn.execute(
                f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals WHERE state IN ({marks}) "
                "ORDER BY created_at LIMIT ?",
                (*states, limit),
            ).fetchall()
        else:
            rows = self.conn.execute(
                f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [self._request(row) for row in rows]

    def count_pending(self, agent: str) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM approvals WHERE agent = ? AND state = 'pending'", (agent,)
        ).fetchone()
        return int(row[0])

    def due_for_expiry(self, now: str) -> list[ApprovalRequest]:
        rows = self.conn.execute(
            f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals WHERE state IN ('pending', 'approved') "
            "AND expires_at <= ?",
            (now,),
        ).fetchall()
        return [self._request(row) for row in rows]

    def insert_request(self, request: ApprovalRequest) -> None:
        b = request.binding
        self.conn.execute(
            f"INSERT INTO approvals ({stored.APPROVAL_COLUMNS}) VALUES ({', '.join('?' for _ in range(21))})",
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
            Vote(approver=a, verdict=v, channel=c, at=stored.parse_time(at), note=n)
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
            created_at=stored.parse_time(created_at),
            expires_at=stored.parse_time(expires_at),
            state=state,
            votes=votes,
            closed_by=closed_by,
            reported=bool(reported),
            justification=justification,
        )

    # grants

    def insert_grant(self, grant: Grant) -> None:
        self.conn.execute(
            f"INSERT INTO grants ({stored.GRANT_COLUMNS}) VALUES ({', '.join('?' for _ in range(15))})",
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
        row = self.conn.execute(
            f"SELECT {stored.GRANT_COLUMNS} FROM grants WHERE id = ?", (grant_id,)
        ).fetchone()
        return None if row is None else stored.grant(row)

    def grants_for(self, agent: str, owner: str, server: str, tool: str) -> list[Grant]:
        rows = self.conn.execute(
            f"SELECT {stored.GRANT_COLUMNS} FROM grants "
            "WHERE agent = ? AND owner = ? AND server = ? AND tool = ? "
            "AND revoked_at IS NULL ORDER BY expires_at DESC",
            (agent, owner, server, tool),
        ).fetchall()
        return [stored.grant(row) for row in rows]

    def grants(self, *, live_at: str | None = None) -> list[Grant]:
        if live_at is None:
            rows = self.conn.execute(
                f"SELECT {stored.GRANT_COLUMNS} FROM grants ORDER BY created_at DESC"
            ).fetchall()
        else:
            rows = self.conn.execute(
                f"SELECT {stored.GRANT_COLUMNS} FROM grants WHERE revoked_at IS NULL AND expires_at > ? "
                "ORDER BY created_at DESC",
                (live_at,),
            ).fetchall()
        return [stored.grant(row) for row in rows]

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

    def start_executing(self, request_id: str) -> bool:
        cursor = self.conn.execute(
            "UPDATE approvals SET state = 'executing' WHERE id = ? AND state = 'approved'", (request_id,)
        )
        return cursor.rowcount == 1

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

    # Slack and Teams messages of approval requests, and the chat deliveries already seen

    def slack_message(self, request_id: str) -> SlackMessage | None:
        return self._message("slack_messages", request_id)

    def teams_message(self, request_id: str) -> SlackMessage | None:
        return self._message("teams_messages", request_id)

    def _message(self, table: str, request_id: str) -> SlackMessage | None:
        row = self.conn.execute(
            f"SELECT {stored.SLACK_COLUMNS} FROM {table} WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else stored.slack_message(row)

    def slack_messages(self, *, done: bool = False) -> list[SlackMessage]:
        return self._messages("slack_messages", done)

    def teams_messages(self, *, done: bool = False) -> list[SlackMessage]:
        return self._messages("teams_messages", done)

    def _messages(self, table: str, done: bool) -> list[SlackMessage]:
        rows = self.conn.execute(
            f"SELECT {stored.SLACK_COLUMNS} FROM {table} WHERE done = ? ORDER BY rowid", (int(done),)
        ).fetchall()
        return [stored.slack_message(row) for row in rows]

    def save_slack_message(self, message: SlackMessage) -> None:
        self._save_message("slack_messages", message)

    def save_teams_message(self, message: SlackMessage) -> None:
        self._save_message("teams_messages", message)

    def _save_message(self, table: str, message: SlackMessage) -> None:
        self.conn.execute(
            f"INSERT OR REPLACE INTO {table} ({stored.SLACK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    def claim(self, key: str, holder: str, now: str, until: str) -> bool:
        self.conn.execute("DELETE FROM claims WHERE until <= ?", (now,))
        cursor = self.conn.execute(
            "INSERT INTO claims (key, holder, until) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
            "SET until = excluded.until WHERE claims.holder = excluded.holder",
            (key, holder, until),
        )
        return cursor.rowcount == 1


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
    chained = chain_events(events, *_head(conn))
    rows = [
        (r.seq, r.event_id, r.ts, r.event_type, r.correlation_id, text, r.prev_hash, r.entry_hash)
        for r, text in chained
    ]
    insert = f"INSERT INTO evidence ({stored.RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    if len(rows) == 1:
        conn.execute(insert, rows[0])
    else:
        conn.executemany(insert, rows)
    return [record for record, _ in chained]


def _get_pin(conn: sqlite3.Connection, server: str, tool: str) -> PinRecord | None:
    row = conn.execute(
        f"SELECT {stored.PIN_COLUMNS} FROM pins WHERE server = ? AND tool = ?", (server, tool)
    ).fetchone()
    return None if row is None else stored.pin_record(row)
