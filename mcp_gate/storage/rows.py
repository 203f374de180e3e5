"""The rows every SQL backend stores, read back as the gate's values: the column lists, the row
mappers (records, pins, grants, chat messages), time text, errors as one line, and the copies
the memory store gives of its chat messages, as a table would read them back.

Pure: no driver is imported here, so the SQLite and PostgreSQL backends share one reading of a row."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from mcp_gate.approvals import Grant
from mcp_gate.errors import StoreError
from mcp_gate.evidence import Record
from mcp_gate.storage.base import PinRecord, SlackMessage

__all__ = [
    "APPROVAL_COLUMNS",
    "GRANT_COLUMNS",
    "PIN_COLUMNS",
    "RECORD_COLUMNS",
    "SLACK_COLUMNS",
    "get_message",
    "grant",
    "list_messages",
    "one_line",
    "parse_time",
    "parsed_bodies",
    "pin_record",
    "record",
    "save_message",
    "slack_message",
]

APPROVAL_COLUMNS = (
    "id, correlation_id, agent, owner, server, tool, pin, args_sha256, policy_sha256, tier, required, "
    "groups, rule, reason, args, created_at, expires_at, state, closed_by, reported, justification"
)


GRANT_COLUMNS = (
    "id, agent, owner, server, tool, created_by, created_at, expires_at, request_id, note, "
    "revoked_at, revoked_by, rule, policy_sha256, pin"
)


RECORD_COLUMNS = "seq, event_id, ts, event_type, correlation_id, body, prev_hash, entry_hash"


PIN_COLUMNS = "server, tool, pin, definition, drifted_pin, drifted_definition, updated_at"


SLACK_COLUMNS = (
    "request_id, channel, ts, rendered_sha256, attempts, next_attempt_at, lease_until, last_error, "
    "voters, done"
)


def slack_message(row: Sequence[Any]) -> SlackMessage:
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


def record(row: Sequence[Any]) -> Record:
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


def pin_record(row: Sequence[Any]) -> PinRecord:
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


def parsed_bodies(cursor: Iterable[Sequence[Any]]) -> Iterator[dict[str, Any]]:
    for (text,) in cursor:
        try:
            body = json.loads(text)
        except (TypeError, ValueError):
            continue  # unreadable rows are for `audit verify` to name
        if isinstance(body, dict):
            yield body


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def grant(row: Sequence[Any]) -> Grant:
    (gid, agent, owner, server, tool, created_by, created_at, expires_at, request_id, note,
     revoked_at, revoked_by, rule, policy_sha256, pin) = row  # fmt: skip
    return Grant(
        id=gid,
        agent=agent,
        owner=owner,
        server=server,
        tool=tool,
        created_by=created_by,
        created_at=parse_time(created_at),
        expires_at=parse_time(expires_at),
        request_id=request_id,
        note=note,
        revoked_at=None if revoked_at is None else parse_time(revoked_at),
        revoked_by=revoked_by,
        rule=rule,
        policy_sha256=policy_sha256,
        pin=pin,
    )


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# The memory store keeps its messages as values; these copy them as a table would read them back.


def get_message(table: dict[str, SlackMessage], request_id: str) -> SlackMessage | None:
    message = table.get(request_id)
    return None if message is None else replace(message, voters=dict(message.voters))


def list_messages(table: dict[str, SlackMessage], done: bool) -> list[SlackMessage]:
    return [replace(m, voters=dict(m.voters)) for m in table.values() if m.done == done]


def save_message(table: dict[str, SlackMessage], message: SlackMessage) -> None:
    # INSERT OR REPLACE: a replaced row is a new row, last in rowid order.
    table.pop(message.request_id, None)
    voters = json.loads(json.dumps(dict(message.voters), sort_keys=True))
    table[message.request_id] = replace(
        message, attempts=int(message.attempts), voters=voters, done=bool(message.done)
    )
