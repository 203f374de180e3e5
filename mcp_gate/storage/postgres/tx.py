"""One transaction on the PostgreSQL database: the typed queries of `PostgresTx` and the chain's inserts.

The rows read back are the SQLite backend's (same columns, same text forms): both read them with
`storage.rows`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from mcp_gate.approvals import ApprovalRequest, Binding, Grant, Vote
from mcp_gate.clock import utc_iso
from mcp_gate.errors import EvidenceWriteError
from mcp_gate.events import EventType, RequestState
from mcp_gate.evidence import GENESIS_HASH, Record, canonical_json, chain_events
from mcp_gate.storage import rows as stored
from mcp_gate.storage.base import Inflight, PinRecord, SlackMessage

__all__ = ["PostgresTx"]

Row = tuple[Any, ...]

# Taken first by every write transaction: the head row, locked until COMMIT. It serializes every
# writer on the database (as BEGIN IMMEDIATE does a SQLite file) and moves the counter that
# the safety poll reads, and tells listeners (`changes.CHANNEL`) once the transaction commits.
LOCK_HEAD = (
    "UPDATE evidence_head SET version = version + 1 WHERE id = 1 "
    "RETURNING seq, entry_hash, pg_notify('mcp_gate_commits', current_schema())"
)


class PostgresTx:
    """The `Tx` of the PostgreSQL store: typed reads and writes over one connection, inside
    `PostgresStore.transact` / `read`."""

    def __init__(self, conn: psycopg.Connection, replica: str | None = None) -> None:
        self.conn = conn
        # The replica this process is (`replicas.ReplicaLock`): its calls in flight carry its id
        # and begin only while its lease is live. None: a process that serves no calls.
        self.replica = replica

    def append(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        return _append(self.conn, events)

    # approval requests

    def get_request(self, request_id: str) -> ApprovalRequest | None:
        row = self.conn.execute(
            f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals WHERE id = %s", (request_id,)
        ).fetchone()
        return None if row is None else self._request(row)

    def find_open_request(self, binding: Binding) -> ApprovalRequest | None:
        row = self.conn.execute(
            f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals "
            "WHERE agent = %s AND owner = %s AND server = %s "
            "AND tool = %s AND args_sha256 = %s AND state IN ('pending', 'approved') "
            "ORDER BY created_at DESC, n DESC LIMIT 1",
            (binding.agent, binding.owner, binding.server, binding.tool, binding.args_sha256),
        ).fetchone()
        return None if row is None else self._request(row)

    def find_latest_request(self, binding: Binding) -> ApprovalRequest | None:
        row = self.conn.execute(
            f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals "
            "WHERE agent = %s AND owner = %s AND server = %s "
            "AND tool = %s AND args_sha256 = %s ORDER BY created_at DESC, n DESC LIMIT 1",
            (binding.agent, binding.owner, binding.server, binding.tool, binding.args_sha256),
        ).fetchone()
        return None if row is None else self._request(row)

    def recent_calls(self, agent: str, limit: int) -> list[Record]:
        rows = self.conn.execute(
            f"SELECT {stored.RECORD_COLUMNS} FROM evidence WHERE event_type = 'call.requested' "
            "AND requester_agent = %s ORDER BY seq DESC LIMIT %s",
            (agent, limit),
        ).fetchall()
        return [stored.record(row) for row in reversed(rows)]

    def bodies_for(self, correlation_id: str, event_types: Sequence[EventType]) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT body FROM evidence WHERE correlation_id = %s AND event_type = ANY(%s) ORDER BY seq",
            (correlation_id, list(event_types)),
        )
        return list(stored.parsed_bodies(rows))

    def mark_reported(self, request_id: str) -> None:
        self.conn.execute("UPDATE approvals SET reported = 1 WHERE id = %s", (request_id,))

    def requests(self, *, states: Sequence[RequestState] = (), limit: int = 200) -> list[ApprovalRequest]:
        if states:
            rows = self.conn.execute(
                f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals WHERE state = ANY(%s) "
                "ORDER BY created_at, n LIMIT %s",
                (list(states), limit),
            ).fetchall()
        else:
            rows = self.conn.execute(
                f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals ORDER BY created_at DESC, n DESC LIMIT %s",
                (limit,),
            ).fetchall()
        return [self._request(row) for row in rows]

    def count_pending(self, agent: str) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM approvals WHERE agent = %s AND state = 'pending'", (agent,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def due_for_expiry(self, now: str) -> list[ApprovalRequest]:
        rows = self.conn.execute(
            f"SELECT {stored.APPROVAL_COLUMNS} FROM approvals WHERE state IN ('pending', 'approved') "
            "AND expires_at <= %s ORDER BY n",
            (now,),
        ).fetchall()
        return [self._request(row) for row in rows]

    def insert_request(self, request: ApprovalRequest) -> None:
        b = request.binding
        self.conn.execute(
            f"INSERT INTO approvals ({stored.APPROVAL_COLUMNS}) "
            f"VALUES ({', '.join('%s' for _ in range(21))})",
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
            "UPDATE approvals SET state = %s, closed_by = %s, reported = %s WHERE id = %s",
            (request.state, request.closed_by, int(request.reported), request.id),
        )
        if request.votes:
            with self.conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO votes (request_id, approver, verdict, channel, at, note) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [
                        (request.id, v.approver, v.verdict, v.channel, utc_iso(v.at), v.note)
                        for v in request.votes
                    ],
                )

    def start_executing(self, request_id: str) -> bool:
        cursor = self.conn.execute(
            "UPDATE approvals SET state = 'executing' WHERE id = %s AND state = 'approved'", (request_id,)
        )
        return cursor.rowcount == 1

    def set_request_state(self, request_id: str, state: RequestState) -> None:
        self.conn.execute("UPDATE approvals SET state = %s WHERE id = %s", (state, request_id))

    def _request(self, row: Sequence[Any]) -> ApprovalRequest:
        (rid, correlation_id, agent, owner, server, tool, pin, args_sha256, policy_sha256, tier, required,
         groups, rule, reason, args, created_at, expires_at, state, closed_by, reported,
         justification) = row  # fmt: skip
        votes = tuple(
            Vote(approver=a, verdict=v, channel=c, at=stored.parse_time(at), note=n)
            for a, v, c, at, n in self.conn.execute(
                "SELECT approver, verdict, channel, at, note FROM votes WHERE request_id = %s ORDER BY at, n",
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
            f"INSERT INTO grants ({stored.GRANT_COLUMNS}) VALUES ({', '.join('%s' for _ in range(15))})",
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
            "UPDATE grants SET revoked_at = %s, revoked_by = %s WHERE id = %s",
            (utc_iso(grant.revoked_at), grant.revoked_by, grant.id),
        )

    def get_grant(self, grant_id: str) -> Grant | None:
        row = self.conn.execute(
            f"SELECT {stored.GRANT_COLUMNS} FROM grants WHERE id = %s", (grant_id,)
        ).fetchone()
        return None if row is None else stored.grant(row)

    def grants_for(self, agent: str, owner: str, server: str, tool: str) -> list[Grant]:
        rows = self.conn.execute(
            f"SELECT {stored.GRANT_COLUMNS} FROM grants WHERE agent = %s AND owner = %s AND server = %s "
            "AND tool = %s AND revoked_at IS NULL ORDER BY expires_at DESC",
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
                f"SELECT {stored.GRANT_COLUMNS} FROM grants WHERE revoked_at IS NULL AND expires_at > %s "
                "ORDER BY created_at DESC",
                (live_at,),
            ).fetchall()
        return [stored.grant(row) for row in rows]

    # calls in flight

    def begin_inflight(
        self, correlation_id: str, request_id: str | None, started_at: str, fields: Mapping[str, Any]
    ) -> None:
        text = canonical_json(dict(fields)).decode("utf-8")
        if self.replica is None:
            self.conn.execute(
                "INSERT INTO inflight (correlation_id, request_id, started_at, fields) "
                "VALUES (%s, %s, %s, %s)",
                (correlation_id, request_id, started_at, text),
            )
            return
        # Only under a live lease: a replica another one may already take for dead sends nothing.
        added = self.conn.execute(
            "INSERT INTO inflight (correlation_id, request_id, started_at, fields, replica_id) "
            "SELECT %s, %s, %s, %s, id FROM replicas "
            "WHERE id = %s AND taken_over_at IS NULL AND lease_until > clock_timestamp()",
            (correlation_id, request_id, started_at, text, self.replica),
        ).rowcount
        if added != 1:
            raise EvidenceWriteError(
                f"this gate's lease on the database (replica {self.replica}) has lapsed; "
                "it sends no call until the lease is renewed"
            )

    def end_inflight(self, correlation_id: str) -> None:
        self.conn.execute("DELETE FROM inflight WHERE correlation_id = %s", (correlation_id,))

    def inflight(self) -> list[Inflight]:
        rows = self.conn.execute(
            "SELECT correlation_id, request_id, started_at, fields, replica_id FROM inflight "
            "ORDER BY started_at"
        ).fetchall()
        return [Inflight(c, r, s, json.loads(f), replica) for c, r, s, f, replica in rows]

    # elicitation request_state nonces

    def use_nonce(self, nonce: str, correlation_id: str, used_at: str) -> bool:
        """Mark a sealed request_state's nonce used; False if it already was (a replay)."""
        cursor = self.conn.execute(
            "INSERT INTO elicitation_nonces (nonce, correlation_id, used_at) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING",
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
            f"SELECT {stored.SLACK_COLUMNS} FROM {table} WHERE request_id = %s", (request_id,)
        ).fetchone()
        return None if row is None else stored.slack_message(row)

    def slack_messages(self, *, done: bool = False) -> list[SlackMessage]:
        return self._messages("slack_messages", done)

    def teams_messages(self, *, done: bool = False) -> list[SlackMessage]:
        return self._messages("teams_messages", done)

    def _messages(self, table: str, done: bool) -> list[SlackMessage]:
        rows = self.conn.execute(
            f"SELECT {stored.SLACK_COLUMNS} FROM {table} WHERE done = %s ORDER BY n", (int(done),)
        ).fetchall()
        return [stored.slack_message(row) for row in rows]

    def save_slack_message(self, message: SlackMessage) -> None:
        self._save_message("slack_messages", message)

    def save_teams_message(self, message: SlackMessage) -> None:
        self._save_message("teams_messages", message)

    def _save_message(self, table: str, message: SlackMessage) -> None:
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in stored.SLACK_COLUMNS.replace(" ", "").split(",")[1:]
        )
        self.conn.execute(
            f"INSERT INTO {table} ({stored.SLACK_COLUMNS}) "
            f"VALUES ({', '.join('%s' for _ in range(10))}) "
            # A new n, as SQLite's INSERT OR REPLACE gives a new rowid: the outbox is in the order last saved.
            f"ON CONFLICT (request_id) DO UPDATE SET n = DEFAULT, {updates}",
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
        self.conn.execute("DELETE FROM slack_seen WHERE seen_at < %s", (forget_before,))
        cursor = self.conn.execute(
            "INSERT INTO slack_seen (key, seen_at) VALUES (%s, %s) ON CONFLICT DO NOTHING", (key, now)
        )
        return cursor.rowcount == 1

    def claim(self, key: str, holder: str, now: str, until: str) -> bool:
        self.conn.execute("DELETE FROM claims WHERE until <= %s", (now,))
        cursor = self.conn.execute(
            "INSERT INTO claims (key, holder, until) VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE "
            "SET until = EXCLUDED.until WHERE claims.holder = EXCLUDED.holder",
            (key, holder, until),
        )
        return cursor.rowcount == 1


def _head(conn: psycopg.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT seq, entry_hash FROM evidence_head WHERE id = 1").fetchone()
    return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))


def _append(conn: psycopg.Connection, events: Sequence[Mapping[str, Any]]) -> list[Record]:
    """Chain and insert events; runs inside a write transaction that holds the head row's lock
    (`LOCK_HEAD`), so no other writer on the database moves the head meanwhile."""
    if not events:
        return []
    records, rows = _chain(*_head(conn), events)
    _insert(conn, rows, records[-1].seq, records[-1].entry_hash)
    return records


def _chain(seq: int, prev_hash: str, events: Sequence[Mapping[str, Any]]) -> tuple[list[Record], list[Row]]:
    """The records (and their rows) of `events` chained after (seq, prev_hash) by the one chaining
    every backend uses: pure, so an event that cannot be chained is refused before anything
    reaches the database."""
    chained = chain_events(events, seq, prev_hash)
    records = [record for record, _ in chained]
    rows: list[Row] = [
        (
            record.seq,
            record.event_id,
            record.ts,
            record.event_type,
            record.correlation_id,
            text,
            record.prev_hash,
            record.entry_hash,
            _requester_agent(record.body),
        )
        for record, text in chained
    ]
    return records, rows


def _insert(conn: psycopg.Connection, rows: Sequence[Row], seq: int, head_hash: str) -> None:
    """Insert chained rows and move the head to (seq, head_hash): two statements however many rows."""
    if rows:
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO evidence ({stored.RECORD_COLUMNS}, requester_agent) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
    conn.execute("UPDATE evidence_head SET seq = %s, entry_hash = %s WHERE id = 1", (seq, head_hash))


def _requester_agent(body: Mapping[str, Any]) -> str | None:
    requester = body.get("requester")
    if body.get("event_type") != "call.requested" or not isinstance(requester, dict):
        return None
    agent = requester.get("agent")
    return agent if isinstance(agent, str) else None


def _get_pin(conn: psycopg.Connection, server: str, tool: str) -> PinRecord | None:
    row = conn.execute(
        f"SELECT {stored.PIN_COLUMNS} FROM pins WHERE server = %s AND tool = %s", (server, tool)
    ).fetchone()
    return None if row is None else stored.pin_record(row)
