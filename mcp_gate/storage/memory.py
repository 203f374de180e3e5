"""The in-memory `Store`: the same contracts as the SQLite file, kept in this process, for tests.

Records are chained and hashed exactly as SQLite stores them (`evidence.chain_events`), so
`audit` checks, exports and reports read them the same way. A transaction runs on the event loop
in one go (nothing interleaves with it), and rolls back whole if it raises. `reopen()` gives a
second handle on the same data, as a second process (or a restarted gate) opens the same file:
what survives a "crash" of one handle is what it committed.

The signed-head file (`Notary.head`) guards a file on disk against being rolled back; memory has
no file to roll back, so it is not read or written here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from mcp_gate.approvals import ApprovalRequest, Binding, Grant, Vote
from mcp_gate.audit import AuditReport, LogVerifier, check_notes
from mcp_gate.checkpoints import Pruned, parse_checkpoint
from mcp_gate.clock import Clock, SystemClock, utc_iso
from mcp_gate.errors import EvidenceWriteError, GateError, StoreError
from mcp_gate.events import OPEN_STATES, EventType, RequestState
from mcp_gate.evidence import GENESIS_HASH, Record, canonical_json, chain_events, new_event
from mcp_gate.notary import Notary
from mcp_gate.storage import rows as stored
from mcp_gate.storage.base import Changes, CommitObserver, Inflight, PinRecord, SlackMessage, Tx
from mcp_gate.storage.changes import CommitSignal

__all__ = ["MemoryStore", "MemoryTx"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# An evidence row as SQLite stores it: seq, event_id, ts, event_type, correlation_id, body text,
# prev_hash, entry_hash (the `ChainVerifier.feed` arguments).
_Row = tuple[int, str, str, str, str | None, str, str, str]


@dataclass
class _Tables:
    """Everything but the evidence rows: copied for each transaction, kept only if it commits."""

    pins: dict[tuple[str, str], PinRecord] = field(default_factory=dict)
    requests: dict[str, tuple[int, ApprovalRequest, str]] = field(default_factory=dict)  # rowid, args text
    votes: dict[str, dict[str, tuple[int, Vote]]] = field(default_factory=dict)
    grants: dict[str, tuple[int, Grant]] = field(default_factory=dict)
    inflight: dict[str, tuple[int, str, str | None, str, str]] = field(default_factory=dict)
    nonces: dict[str, tuple[str, str]] = field(default_factory=dict)
    slack_messages: dict[str, SlackMessage] = field(default_factory=dict)  # in rowid order
    slack_seen: dict[str, str] = field(default_factory=dict)
    teams_messages: dict[str, SlackMessage] = field(default_factory=dict)  # in rowid order
    claims: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (holder, until)
    checkpoints: list[tuple[int, str, str, str]] = field(default_factory=list)  # size, kind, at, note
    rowid: int = 0

    def copy(self) -> _Tables:
        return replace(
            self,
            pins=dict(self.pins),
            requests=dict(self.requests),
            votes={request: dict(votes) for request, votes in self.votes.items()},
            grants=dict(self.grants),
            inflight=dict(self.inflight),
            nonces=dict(self.nonces),
            slack_messages=dict(self.slack_messages),
            slack_seen=dict(self.slack_seen),
            teams_messages=dict(self.teams_messages),
            claims=dict(self.claims),
            checkpoints=list(self.checkpoints),
        )

    def next_rowid(self) -> int:
        self.rowid += 1
        return self.rowid


@dataclass
class _Data:
    """What one "file" holds, shared by every handle `reopen` gives."""

    name: str
    rows: list[_Row] = field(default_factory=list)
    event_ids: set[str] = field(default_factory=set)
    tables: _Tables = field(default_factory=_Tables)
    signal: CommitSignal = field(default_factory=CommitSignal)


def _moment(moment: datetime) -> datetime:
    """A time as the SQLite store gives it back: through its ISO-8601 text."""
    return datetime.fromisoformat(utc_iso(moment))


def _json(value: Any) -> str:
    return canonical_json(value).decode("utf-8")


def _body(row: _Row) -> Any:
    try:
        return json.loads(row[5])
    except ValueError:  # not written by this store; kept like SQLite keeps a tampered row
        return None


def _record(row: _Row) -> Record:
    seq, event_id, ts, event_type, correlation_id, _, prev_hash, entry_hash = row
    body = _body(row)
    if not isinstance(body, dict):
        raise StoreError(f"evidence seq {seq} is not readable JSON; run `mcp-gate audit verify`")
    return Record(seq, event_id, ts, event_type, correlation_id, body, prev_hash, entry_hash)


class MemoryTx:
    """The `Tx` of the memory store: typed reads and writes over one transaction's copy."""

    def __init__(self, data: _Data, tables: _Tables) -> None:
        self._data = data
        self._t = tables

    def append(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        if not events:
            return []
        chained = chain_events(events, *self._head())
        ids = [record.event_id for record, _ in chained]
        if len(set(ids)) != len(ids) or self._data.event_ids.intersection(ids):
            raise EvidenceWriteError(f"cannot write to {self._data.name}: an event_id is already stored")
        for record, text in chained:
            r = record
            self._data.rows.append(
                (r.seq, r.event_id, r.ts, r.event_type, r.correlation_id, text, r.prev_hash, r.entry_hash)
            )
        self._data.event_ids.update(ids)
        return [record for record, _ in chained]

    def _head(self) -> tuple[int, str]:
        rows = self._data.rows
        return (0, GENESIS_HASH) if not rows else (rows[-1][0], rows[-1][7])

    # approval requests

    def get_request(self, request_id: str) -> ApprovalRequest | None:
        stored = self._t.requests.get(request_id)
        return None if stored is None else self._request(stored)

    def _request(self, stored: tuple[int, ApprovalRequest, str]) -> ApprovalRequest:
        _, request, args = stored
        votes = sorted(self._t.votes.get(request.id, {}).values(), key=lambda v: (utc_iso(v[1].at), v[0]))
        return replace(request, args=json.loads(args), votes=tuple(vote for _, vote in votes))

    def _newest(self, binding: Binding, states: Sequence[RequestState] = ()) -> ApprovalRequest | None:
        found = [
            stored
            for stored in self._t.requests.values()
            if stored[1].binding.same_call(binding) and (not states or stored[1].state in states)
        ]
        newest = max(found, key=lambda s: (utc_iso(s[1].created_at), s[0]), default=None)
        return None if newest is None else self._request(newest)

    def find_open_request(self, binding: Binding) -> ApprovalRequest | None:
        return self._newest(binding, OPEN_STATES)

    def find_latest_request(self, binding: Binding) -> ApprovalRequest | None:
        return self._newest(binding)

    def bodies_for(self, correlation_id: str, event_types: Sequence[EventType]) -> list[dict[str, Any]]:
        bodies = (_body(row) for row in self._data.rows if row[4] == correlation_id and row[3] in event_types)
        return [body for body in bodies if isinstance(body, dict)]

    def recent_calls(self, agent: str, limit: int) -> list[Record]:
        found: list[Record] = []
        for row in reversed(self._data.rows):  # from the newest: stops after `limit`
            if len(found) >= limit:
                break
            if row[3] != "call.requested":
                continue
            body = _body(row)
            requester = body.get("requester") if isinstance(body, dict) else None
            if isinstance(requester, dict) and requester.get("agent") == agent:
                found.append(_record(row))
        return found[::-1]

    def mark_reported(self, request_id: str) -> None:
        stored = self._t.requests.get(request_id)
        if stored is not None:
            self._t.requests[request_id] = (stored[0], replace(stored[1], reported=True), stored[2])

    def requests(self, *, states: Sequence[RequestState] = (), limit: int = 200) -> list[ApprovalRequest]:
        def order(stored: tuple[int, ApprovalRequest, str]) -> tuple[str, int]:
            return utc_iso(stored[1].created_at), stored[0]

        if states:
            chosen = sorted((s for s in self._t.requests.values() if s[1].state in states), key=order)
        else:
            chosen = sorted(self._t.requests.values(), key=order, reverse=True)
        return [self._request(stored) for stored in chosen[: max(limit, 0)]]

    def count_pending(self, agent: str) -> int:
        return sum(
            1 for _, r, _ in self._t.requests.values() if r.binding.agent == agent and r.state == "pending"
        )

    def due_for_expiry(self, now: str) -> list[ApprovalRequest]:
        return [
            self._request(stored)
            for stored in self._t.requests.values()
            if stored[1].state in OPEN_STATES and utc_iso(stored[1].expires_at) <= now
        ]

    def insert_request(self, request: ApprovalRequest) -> None:
        if request.id in self._t.requests:
            raise EvidenceWriteError(f"cannot write to {self._data.name}: request {request.id} exists")
        stored = replace(
            request,
            required=int(request.required),
            groups=tuple(request.groups),
            args=None,
            created_at=_moment(request.created_at),
            expires_at=_moment(request.expires_at),
            votes=(),
        )
        self._t.requests[request.id] = (self._t.next_rowid(), stored, _json(request.args))

    def save_request(self, request: ApprovalRequest) -> None:
        stored = self._t.requests.get(request.id)
        if stored is not None:
            changed = replace(
                stored[1], state=request.state, closed_by=request.closed_by, reported=request.reported
            )
            self._t.requests[request.id] = (stored[0], changed, stored[2])
        if request.votes and stored is None:  # the votes' foreign key
            raise EvidenceWriteError(f"cannot write to {self._data.name}: no request {request.id}")
        votes = self._t.votes.setdefault(request.id, {})
        for vote in request.votes:
            if vote.approver not in votes:  # a vote is never changed
                votes[vote.approver] = (self._t.next_rowid(), replace(vote, at=_moment(vote.at)))

    def start_executing(self, request_id: str) -> bool:
        stored = self._t.requests.get(request_id)
        if stored is None or stored[1].state != "approved":
            return False
        self.set_request_state(request_id, "executing")
        return True

    def set_request_state(self, request_id: str, state: RequestState) -> None:
        stored = self._t.requests.get(request_id)
        if stored is not None:
            self._t.requests[request_id] = (stored[0], replace(stored[1], state=state), stored[2])

    # grants

    def insert_grant(self, grant: Grant) -> None:
        if grant.id in self._t.grants:
            raise EvidenceWriteError(f"cannot write to {self._data.name}: grant {grant.id} exists")
        stored = replace(
            grant,
            created_at=_moment(grant.created_at),
            expires_at=_moment(grant.expires_at),
            revoked_at=None if grant.revoked_at is None else _moment(grant.revoked_at),
        )
        self._t.grants[grant.id] = (self._t.next_rowid(), stored)

    def revoke_grant(self, grant: Grant) -> None:
        assert grant.revoked_at is not None
        stored = self._t.grants.get(grant.id)
        if stored is not None:
            revoked = replace(stored[1], revoked_at=_moment(grant.revoked_at), revoked_by=grant.revoked_by)
            self._t.grants[grant.id] = (stored[0], revoked)

    def get_grant(self, grant_id: str) -> Grant | None:
        stored = self._t.grants.get(grant_id)
        return None if stored is None else stored[1]

    def grants_for(self, agent: str, owner: str, server: str, tool: str) -> list[Grant]:
        found = [
            (rowid, g)
            for rowid, g in self._t.grants.values()
            if (g.agent, g.owner, g.server, g.tool) == (agent, owner, server, tool) and g.revoked_at is None
        ]
        found.sort(key=lambda s: (utc_iso(s[1].expires_at), s[0]), reverse=True)
        return [g for _, g in found]

    def grants(self, *, live_at: str | None = None) -> list[Grant]:
        found = [
            (rowid, g)
            for rowid, g in self._t.grants.values()
            if live_at is None or (g.revoked_at is None and utc_iso(g.expires_at) > live_at)
        ]
        found.sort(key=lambda s: (utc_iso(s[1].created_at), s[0]), reverse=True)
        return [g for _, g in found]

    # calls in flight

    def begin_inflight(
        self, correlation_id: str, request_id: str | None, started_at: str, fields: Mapping[str, Any]
    ) -> None:
        if correlation_id in self._t.inflight:
            raise EvidenceWriteError(f"cannot write to {self._data.name}: {correlation_id} is in flight")
        self._t.inflight[correlation_id] = (
            self._t.next_rowid(),
            correlation_id,
            request_id,
            started_at,
            _json(dict(fields)),
        )

    def end_inflight(self, correlation_id: str) -> None:
        self._t.inflight.pop(correlation_id, None)

    def inflight(self) -> list[Inflight]:
        rows = sorted(self._t.inflight.values(), key=lambda row: (row[3], row[0]))
        return [Inflight(c, r, s, json.loads(f)) for _, c, r, s, f in rows]

    # elicitation request_state nonces

    def use_nonce(self, nonce: str, correlation_id: str, used_at: str) -> bool:
        if nonce in self._t.nonces:
            return False
        self._t.nonces[nonce] = (correlation_id, used_at)
        return True

    # Slack messages of approval requests, and the Slack deliveries already seen

    def slack_message(self, request_id: str) -> SlackMessage | None:
        return stored.get_message(self._t.slack_messages, request_id)

    def slack_messages(self, *, done: bool = False) -> list[SlackMessage]:
        return stored.list_messages(self._t.slack_messages, done)

    def save_slack_message(self, message: SlackMessage) -> None:
        stored.save_message(self._t.slack_messages, message)

    def teams_message(self, request_id: str) -> SlackMessage | None:
        return stored.get_message(self._t.teams_messages, request_id)

    def teams_messages(self, *, done: bool = False) -> list[SlackMessage]:
        return stored.list_messages(self._t.teams_messages, done)

    def save_teams_message(self, message: SlackMessage) -> None:
        stored.save_message(self._t.teams_messages, message)

    def slack_first_sight(self, key: str, now: str, forget_before: str) -> bool:
        seen = self._t.slack_seen
        for old in [k for k, at in seen.items() if at < forget_before]:
            del seen[old]
        if key in seen:
            return False
        seen[key] = now
        return True

    def claim(self, key: str, holder: str, now: str, until: str) -> bool:
        claims = self._t.claims = {k: (h, end) for k, (h, end) in self._t.claims.items() if end > now}
        if claims.get(key, (holder,))[0] != holder:
            return False
        claims[key] = (holder, until)
        return True


class MemoryStore:
    """A `Store` held in this process: the same contracts as `SQLiteStore`, nothing on disk."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        notary: Notary | None = None,
        name: str = "memory",
        _data: _Data | None = None,
    ) -> None:
        self._data = _data or _Data(name)
        self._clock = clock or SystemClock()
        self._notary = notary
        self._closed = False
        self.commit_observer: CommitObserver | None = None

    def reopen(self, *, clock: Clock | None = None, notary: Notary | None = None) -> MemoryStore:
        """Another handle on the same data, as another process (or the gate restarted after a
        crash) opens the same file: it sees what was committed, and its commits wake this one's
        subscriptions."""
        return MemoryStore(clock=clock or self._clock, notary=notary, _data=self._data)

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True

    # evidence

    async def append(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        return await self._write(lambda tx: tx.append(events))

    async def records(
        self,
        *,
        correlation_id: str | None = None,
        event_type: EventType | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[Record]:
        await self._reading()
        found = [
            row
            for row in self._data.rows
            if row[0] > after_seq
            and (correlation_id is None or row[4] == correlation_id)
            and (event_type is None or row[3] == event_type)
        ]
        return [_record(row) for row in (found if limit is None else found[: max(limit, 0)])]

    async def head(self) -> tuple[int, str]:
        await self._reading()
        return MemoryTx(self._data, self._data.tables)._head()

    async def verify(self) -> AuditReport:
        await self._reading()
        verifiers = None if self._notary is None else [self._notary.key.verifier]
        notes = [
            (f"{self._data.name} checkpoint {n}", note)
            for n, (_, _, _, note) in enumerate(self._data.tables.checkpoints, start=1)
        ]
        checks = check_notes(notes if verifiers is not None else [], verifiers or ())
        verifier = LogVerifier(checks, keys_checked=verifiers is not None)
        for row in list(self._data.rows):
            verifier.feed(*row)
        return verifier.report()

    # pins

    async def get_pin(self, server: str, tool: str) -> PinRecord | None:
        await self._reading()
        pin = self._data.tables.pins.get((server, tool))
        return None if pin is None else _fresh(pin)

    async def list_pins(self) -> list[PinRecord]:
        await self._reading()
        pins = self._data.tables.pins
        return [_fresh(pins[key]) for key in sorted(pins)]

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

        def write(tx: MemoryTx) -> list[Record]:
            tx._t.pins[server, tool] = PinRecord(
                server, tool, pin, _plain(definition), None, None, updated_at
            )
            return tx.append(events)

        return await self._write(write)

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

        def write(tx: MemoryTx) -> list[Record]:
            held = tx._t.pins.get((server, tool))
            if held is None:
                raise StoreError(f"cannot record drift for {server}__{tool}: it has no accepted pin")
            drifted = replace(
                held, drifted_pin=pin, drifted_definition=_plain(definition), updated_at=updated_at
            )
            tx._t.pins[server, tool] = drifted
            return tx.append(events)

        return await self._write(write)

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

        def write(tx: MemoryTx) -> list[Record]:
            if (server, tool) in tx._t.pins:
                return []
            tx._t.pins[server, tool] = PinRecord(server, tool, "", {}, pin, _plain(definition), updated_at)
            return tx.append(events)

        return await self._write(write)

    async def accept_drift(self, server: str, tool: str, *, events: Sequence[Mapping[str, Any]]) -> PinRecord:
        updated_at = utc_iso(self._clock.now())

        def write(tx: MemoryTx) -> PinRecord:
            held = tx._t.pins.get((server, tool))
            if held is None or held.drifted_pin is None or held.drifted_definition is None:
                raise StoreError(
                    f"cannot accept drift for {server}__{tool}: no changed definition is waiting"
                )
            accepted = PinRecord(
                server, tool, held.drifted_pin, held.drifted_definition, None, None, updated_at
            )
            tx._t.pins[server, tool] = accepted
            tx.append(events)
            return _fresh(accepted)

        return await self._write(write)

    # transactions

    async def transact(self, fn: Callable[[Tx], T]) -> T:
        return await self._write(fn)

    async def read(self, fn: Callable[[Tx], T]) -> T:
        await self._reading()
        return fn(MemoryTx(self._data, self._data.tables))

    def changes(self) -> AbstractAsyncContextManager[Changes]:
        """Every commit through any handle on this data wakes subscriptions at once: no polling."""
        return self._data.signal.subscribe()

    # plumbing

    async def _reading(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self._closed:
            raise StoreError(f"the store at {self._data.name} is closed")

    async def _writable(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self._closed:
            raise EvidenceWriteError(f"cannot write to {self._data.name}: the store is closed")

    async def _write(self, fn: Callable[[MemoryTx], T], *, quiet: bool = False) -> T:
        """Run `fn` over a copy of the tables and keep it only if `fn` returns: it commits whole or
        not at all. Nothing awaits in between, so no other writer interleaves. Then, unless
        `quiet`, a signed checkpoint if one is due."""
        await self._writable()
        data = self._data
        tables, mark = data.tables.copy(), len(data.rows)
        started = time.perf_counter()
        try:
            result = fn(MemoryTx(data, tables))
        except BaseException as exc:
            if self.commit_observer is not None and isinstance(exc, Exception):
                self.commit_observer(1, time.perf_counter() - started, 1)
            # Rows are only ever added by a transaction (pruning removes a prefix last of all).
            data.event_ids.difference_update(row[1] for row in data.rows[mark:])
            del data.rows[mark:]
            if isinstance(exc, ValueError | TypeError):
                raise EvidenceWriteError(f"cannot write to {data.name}: {exc}") from exc
            raise
        data.tables = tables
        if self.commit_observer is not None:
            self.commit_observer(1, time.perf_counter() - started, 0)
        note = None
        if not quiet and self._notary is not None:
            try:
                note = self._sign(force=False)
            except GateError as exc:  # the writes above are committed; retried on the next commit
                log.error("cannot write a checkpoint: %s", exc)
        data.signal.committed()
        if note is not None:
            await self._copy_note(note)
        return result

    def _sign(self, *, force: bool) -> str | None:
        """Sign a checkpoint of the log as it stands if one is due (always if `force` and it grew)."""
        notary, data = self._notary, self._data
        assert notary is not None
        checkpoints = data.tables.checkpoints
        size, root = MemoryTx(data, data.tables)._head()
        last_size, last_at = (checkpoints[-1][0], checkpoints[-1][2]) if checkpoints else (0, None)
        now = self._clock.now()
        if force:
            due = size > last_size or last_at is None
        else:
            decided = any(row[0] > last_size and row[3] == "approval.decided" for row in data.rows)
            last_time = None if last_at is None else datetime.fromisoformat(last_at)
            due = notary.due(last_size=last_size, last_time=last_time, size=size, decided=decided, now=now)
        if not due:
            return None
        note = notary.sign(size, root, now)
        checkpoints.append((size, "checkpoint", utc_iso(now), note))
        return note

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
                await self._write(lambda tx: tx.append([event]), quiet=True)
            except StoreError as exc:
                log.error("cannot record a missed checkpoint copy: %s", exc)

    # checkpoints and retention

    async def checkpoint(self) -> str | None:
        if self._notary is None:
            return None
        await self._writable()
        note = self._sign(force=True)
        if note is not None:
            self._data.signal.committed()
            await self._copy_note(note)
        return note

    async def checkpoint_notes(self) -> list[str]:
        await self._reading()
        return [note for _, _, _, note in self._data.tables.checkpoints]

    async def prune(
        self, before: str, *, events: Callable[[Pruned], Sequence[Mapping[str, Any]]]
    ) -> Pruned | None:
        notary = self._notary
        if notary is None:
            raise StoreError(
                "pruning needs a signing key: records may only go under a signed retention checkpoint"
            )
        now = self._clock.now()

        def write(tx: MemoryTx) -> Pruned | None:
            rows = tx._data.rows
            if not rows:
                return None
            young = next((row[0] for row in rows if row[2] >= before), None)
            # Only a prefix of old records goes, and the newest record always stays (it holds the head).
            last = (rows[-1][0] if young is None else young) - 1
            if last < rows[0][0]:
                return None
            first, root = rows[0][0], next((row[7] for row in rows if row[0] == last), None)
            if root is None:
                raise StoreError(f"pruning found no record {last}; run `mcp-gate audit verify`")
            pruned = Pruned(first, last, last - first + 1, root)
            note = notary.sign(last, root, now, pruned=pruned)
            tx._t.checkpoints.append((last, "retention", utc_iso(now), note))
            tx.append(events(pruned))
            # The only way records leave, and the last step, so a failure above removes nothing.
            gone = [row for row in rows if row[0] <= last]
            del rows[: len(gone)]
            tx._data.event_ids.difference_update(row[1] for row in gone)
            return pruned

        return await self._write(write)


def _plain(definition: Mapping[str, Any]) -> dict[str, Any]:
    """A definition as stored: canonical JSON, read back."""
    plain: dict[str, Any] = json.loads(_json(dict(definition)))
    return plain


def _fresh(pin: PinRecord) -> PinRecord:
    """A copy the caller may change without changing what is stored."""
    return replace(
        pin,
        definition=json.loads(_json(dict(pin.definition))),
        drifted_definition=None
        if pin.drifted_definition is None
        else json.loads(_json(dict(pin.drifted_definition))),
    )
