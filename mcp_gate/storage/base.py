"""The storage seam: the `Store`, `Tx` and `LogReader` Protocols every backend implements, and the
rows they return. Callers are typed against these, never against a backend's classes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from mcp_gate.approvals import ApprovalRequest, Binding, Grant
from mcp_gate.checkpoints import Pruned
from mcp_gate.events import EventType, RequestState
from mcp_gate.evidence import Record, VerifyReport

__all__ = ["Changes", "CommitObserver", "Inflight", "LogReader", "PinRecord", "SlackMessage", "Store", "Tx"]

T = TypeVar("T")

# Told of every commit batch a store runs: (writers in it, seconds it took, writers that failed).
CommitObserver = Callable[[int, float, int], None]


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


@dataclass(frozen=True)
class Inflight:
    """A call whose execution began: it has no recorded outcome yet."""

    correlation_id: str
    request_id: str | None
    started_at: str
    fields: Mapping[str, Any]
    replica: str | None = None  # the replica that sent it, where the backend keeps one (PostgreSQL)


@dataclass(frozen=True)
class SlackMessage:
    """The chat message of one approval request: where it is, what it last showed, retries. Slack's
    (channel, ts) and Teams' (conversation id, activity id) both fit it, in tables of their own."""

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


class Changes(Protocol):
    """A subscription to a store's commits (`Store.changes()`): how a held call learns that its
    request may have been decided, wherever the decision was taken.

    A backend learns of commits its own way (an `anyio.Event` in memory, `PRAGMA data_version`
    polled for other processes' commits to a SQLite file, LISTEN/NOTIFY on PostgreSQL). A wake-up
    says only "look again": it may be spurious, and a backend whose notices can be lost (a dropped
    LISTEN connection) may miss one, so a waiter that must not miss a commit also re-reads on a
    slow timer of its own."""

    async def wait(self) -> None:
        """Return once anything was committed since the subscription opened or `wait` last
        returned (at once if something already was). Bound it with `anyio.move_on_after`."""
        ...


class Store(Protocol):
    """Where the gate keeps evidence and pins. Every write that carries events commits them atomically."""

    # Set by the composition root to meter commits (metrics); None: nobody is told.
    commit_observer: CommitObserver | None

    async def append(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Chain event bodies (from `new_event`) in one transaction; EvidenceWriteError if not."""
        ...

    async def records(
        self,
        *,
        correlation_id: str | None = None,
        event_type: EventType | None = None,
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

    def changes(self) -> AbstractAsyncContextManager[Changes]:
        """A subscription to every commit to this store's data, from this handle, another handle or
        another process, open for the `async with` block."""
        ...

    async def checkpoint(self) -> str | None:
        """Sign a checkpoint of the log now if it grew since the last one (shutdown, before an
        export); the note, or None without a signing key or when nothing is new."""
        ...

    async def checkpoint_notes(self) -> list[str]:
        """Every signed note stored beside the log, oldest first."""
        ...

    async def prune(
        self, before: str, *, events: Callable[[Pruned], Sequence[Mapping[str, Any]]]
    ) -> Pruned | None:
        """Remove the oldest records with `ts` < `before`, only under a signed retention checkpoint
        stored in the same transaction, and append `events(pruned)`. None if nothing is old enough;
        StoreError without a signing key."""
        ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        ...


class Tx(Protocol):
    """Typed reads and writes inside one `Store.transact` (or `read`): synchronous, so a transaction
    stays short and commits whole or not at all. Times are ISO-8601 UTC text (`utc_iso`)."""

    def append(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Chain event bodies onto the log, in this transaction."""
        ...

    # approval requests

    def get_request(self, request_id: str) -> ApprovalRequest | None: ...

    def find_open_request(self, binding: Binding) -> ApprovalRequest | None:
        """The newest pending or approved request for the same requester, tool and arguments."""
        ...

    def find_latest_request(self, binding: Binding) -> ApprovalRequest | None:
        """The newest request, in any state, for the same requester, tool and arguments."""
        ...

    def bodies_for(self, correlation_id: str, event_types: Sequence[EventType]) -> list[dict[str, Any]]:
        """The evidence bodies of these types under one correlation id, in order."""
        ...

    def recent_calls(self, agent: str, limit: int) -> list[Record]:
        """The `call.requested` records of one agent, the last `limit` of them, oldest first; its
        cost does not grow with the log."""
        ...

    def mark_reported(self, request_id: str) -> None: ...

    def requests(self, *, states: Sequence[RequestState] = (), limit: int = 200) -> list[ApprovalRequest]:
        """Requests in `states`, oldest first; with no states, the newest `limit` of all."""
        ...

    def count_pending(self, agent: str) -> int: ...

    def due_for_expiry(self, now: str) -> list[ApprovalRequest]:
        """Pending or approved requests whose `expires_at` is at or before `now`."""
        ...

    def insert_request(self, request: ApprovalRequest) -> None: ...

    def save_request(self, request: ApprovalRequest) -> None:
        """Store the request's state and any votes not stored yet (a vote is never changed)."""
        ...

    def set_request_state(self, request_id: str, state: RequestState) -> None: ...

    def start_executing(self, request_id: str) -> bool:
        """Move the request from approved to executing in one conditional update; False (and
        nothing changed) unless it was approved: whoever gets True runs the call, once."""
        ...

    # grants

    def insert_grant(self, grant: Grant) -> None: ...

    def revoke_grant(self, grant: Grant) -> None: ...

    def get_grant(self, grant_id: str) -> Grant | None: ...

    def grants_for(self, agent: str, owner: str, server: str, tool: str) -> list[Grant]:
        """The unrevoked grants for one requester and tool, latest expiry first."""
        ...

    def grants(self, *, live_at: str | None = None) -> list[Grant]:
        """Every grant, newest first; with `live_at`, only those unrevoked and unexpired then."""
        ...

    # calls in flight

    def begin_inflight(
        self, correlation_id: str, request_id: str | None, started_at: str, fields: Mapping[str, Any]
    ) -> None: ...

    def end_inflight(self, correlation_id: str) -> None: ...

    def inflight(self) -> list[Inflight]:
        """The calls whose execution began and has no recorded outcome, oldest first."""
        ...

    # elicitation request_state nonces

    def use_nonce(self, nonce: str, correlation_id: str, used_at: str) -> bool:
        """Mark a sealed request_state's nonce used; False if it already was (a replay)."""
        ...

    # Slack messages of approval requests, and the Slack deliveries already seen

    def slack_message(self, request_id: str) -> SlackMessage | None: ...

    def slack_messages(self, *, done: bool = False) -> list[SlackMessage]: ...

    def save_slack_message(self, message: SlackMessage) -> None: ...

    def teams_message(self, request_id: str) -> SlackMessage | None: ...

    def teams_messages(self, *, done: bool = False) -> list[SlackMessage]: ...

    def save_teams_message(self, message: SlackMessage) -> None: ...

    def slack_first_sight(self, key: str, now: str, forget_before: str) -> bool:
        """Remember `key` (a delivery's signature or envelope id); False if it was seen already."""
        ...

    # leases on work that one gate of several sharing the store does (a mail, a notice, a webhook)

    def claim(self, key: str, holder: str, now: str, until: str) -> bool:
        """Take the lease `key` for `holder` until `until`, or renew it; False while another
        holder's lease runs (its end is after `now`). Leases that ran out are forgotten."""
        ...


class LogReader(Protocol):
    """Streaming reads of evidence rows and checkpoint notes over one consistent read-only snapshot
    (the auditor's view: exports, reports, `audit` checks). It never writes."""

    def seq_range(self, since: str | None, until: str | None) -> tuple[int, int] | None:
        """The first seq with ts >= since and the last with ts < until (None when none falls in)."""
        ...

    def rows(self, first: int = 0, last: int | None = None) -> Iterator[tuple[Any, ...]]:
        """Raw rows (the `ChainVerifier.feed` arguments) with first <= seq <= last, in seq order."""
        ...

    def notes(self) -> list[tuple[int, str, str]]:
        """(size, kind, note) of every stored checkpoint, oldest first."""
        ...

    def head(self) -> tuple[int, str]:
        """(last seq or 0, last entry hash or the genesis hash)."""
        ...

    def bodies_of(self, *event_types: EventType, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        """The parsed bodies of the records of these types, in seq order (all types if none given)."""
        ...

    def bodies_for(self, correlation_id: str, *, before_seq: int) -> Iterator[dict[str, Any]]:
        """The parsed bodies of one call's records before `before_seq`, in seq order."""
        ...

    def count(self) -> int: ...
