"""Every storage backend keeps the same contracts: each is stated once here and run against each
backend (a SQLite file in tmp_path, the in-memory store, a schema of its own in a real PostgreSQL
database: tests/pg_helpers.py).

A backend's `open()` gives a handle on that backend's data; each further call gives another
handle on the same data, as another process (or the gate restarted after a crash) would open the
same file, or another replica the same database. What only one backend has (a file's modes,
pragmas, group commit, tampering with the file) stays in that backend's own tests."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_gate.approvals import ApprovalRequest, Approver, Binding, Grant, Vote
from mcp_gate.checkpoints import SigningKey
from mcp_gate.clock import Clock, utc_iso
from mcp_gate.config import ApprovalSettings
from mcp_gate.errors import EvidenceWriteError, StoreError
from mcp_gate.evidence import GENESIS_HASH, EventFactory, canonical_json, chain_hash, new_event
from mcp_gate.holds import ApprovalEngine
from mcp_gate.notary import Notary
from mcp_gate.storage.base import PinRecord, SlackMessage, Store, Tx
from mcp_gate.storage.memory import MemoryStore
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import FakeClock, within
from tests import pg_helpers

postgres_database = pg_helpers.postgres_database

pytestmark = pytest.mark.anyio

TS = "2026-11-24T16:48:32.123456Z"
START = datetime(2026, 11, 24, 12, 0, 0, 250000, tzinfo=UTC)
KEY = SigningKey.generate("mcp-gate-test")
# The entry hashes of three fixed events: every backend stores and hashes records alike.
SAME_HASHES = [
    "bfba769b5169e38897d9415bd08d45290ca7e2c75e36c2d53e19c232abb36678",
    "c5165c8746509d12e5004f7769219c8a96f26dea1311047000667419fbaf60fd",
    "a115ceedffb13c0bc8cfc215e29c3340cca381d9a83302043176d69023e1fb8d",
]


def event(
    event_type: str = "call.requested", correlation_id: str | None = "c1", **fields: Any
) -> dict[str, Any]:
    return new_event(event_type, ts=TS, correlation_id=correlation_id, **fields)


class Backend:
    """One backend's data, and handles on it."""

    def __init__(self, name: str, tmp_path: Path, stack: AsyncExitStack, url: str = "") -> None:
        self.name = name
        self.path = tmp_path / "data" / "gate.db"
        self.url = url  # the PostgreSQL backend's data: a schema of its own
        self._stack = stack
        self._first: MemoryStore | None = None

    @property
    def label(self) -> str:
        """How the backend names its data in errors."""
        return {"sqlite": self.path.name, "postgres": "127.0.0.1"}.get(self.name, "memory")

    @property
    def where(self) -> str:
        """What another process opens to reach the same data."""
        return self.url if self.name == "postgres" else str(self.path)

    async def open(self, *, clock: Clock | None = None, notary: Notary | None = None) -> Store:
        """A handle on this backend's data (created by the first call), closed after the test."""
        store: Store
        if self.name == "sqlite":
            store = await SQLiteStore.open(self.path, clock=clock, notary=notary)
        elif self.name == "postgres":
            from mcp_gate.storage.postgres import PostgresStore

            store = await PostgresStore.open(self.url, clock=clock, notary=notary)
        elif self._first is None:
            store = self._first = MemoryStore(clock=clock, notary=notary)
        else:
            store = self._first.reopen(clock=clock, notary=notary)
        await self._stack.enter_async_context(store)
        return store


@pytest.fixture(params=["sqlite", "memory", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with AsyncExitStack() as stack:
        url = ""
        if request.param == "postgres":
            # An empty schema of its own in the module's database, made only when this backend runs.
            url = stack.enter_context(pg_helpers.empty_schema(request.getfixturevalue("postgres_database")))
        yield Backend(request.param, tmp_path, stack, url)


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open(clock=FakeClock(START))


def request_for(
    request_id: str = "R1", *, agent: str = "bot", args_sha256: str = "a1", at: datetime = START, **kw: Any
) -> ApprovalRequest:
    binding = Binding(agent, "alice@example.com", "notes", "write_note", "pin1", args_sha256, "pol1")
    fields: dict[str, Any] = {
        "correlation_id": f"call-{request_id}",
        "tier": "high",
        "required": 1,
        "groups": ("sre",),
        "rule": "write",
        "reason": "writes a note",
        "args": {"name": "plan", "text": "ship", "tags": ["a", "b"]},
        "created_at": at,
        "expires_at": at + timedelta(minutes=15),
        **kw,
    }
    return ApprovalRequest(id=request_id, binding=binding, **fields)


def grant_for(grant_id: str, *, created: datetime = START, lasts: timedelta = timedelta(hours=1)) -> Grant:
    return Grant(grant_id, "bot", "alice@example.com", "notes", "write_note", "bob", created, created + lasts)


# -- the evidence chain: append-only, gapless, hashed the same way by every backend -------------


async def test_every_backend_satisfies_the_store_protocol(backend: Backend) -> None:
    store: Store = await backend.open()  # the Protocol, as the gate types it
    assert await store.head() == (0, GENESIS_HASH)
    assert await store.read(lambda tx: tx.count_pending("nobody")) == 0


async def test_append_assigns_gapless_seq_across_calls_and_chains_the_hashes(store: Store) -> None:
    assert await store.head() == (0, GENESIS_HASH)
    first = await store.append([event(), event(correlation_id=None)])
    second = await store.append([event("call.executed", result={"ok": True})])
    assert await store.append([]) == []
    records = [*first, *second]
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS_HASH
    for before, after in zip(records, records[1:], strict=False):
        assert after.prev_hash == before.entry_hash
    for record in records:
        assert record.body["seq"] == record.seq
        assert record.entry_hash == chain_hash(record.prev_hash, canonical_json(dict(record.body)))
    assert await store.head() == (3, records[-1].entry_hash)
    assert await store.records() == records
    report = await store.verify()
    assert (report.ok, report.records, report.head_hash) == (True, 3, records[-1].entry_hash)


async def test_the_same_events_chain_to_the_same_hashes_in_every_backend(store: Store) -> None:
    # One record format for every backend: `audit`, exports and reports read them all alike.
    fixed = [{**event(n=n), "event_id": f"e{n}"} for n in range(3)]
    records = await store.append(fixed)
    assert [r.entry_hash for r in records] == SAME_HASHES


async def test_the_chain_continues_in_another_handle_on_the_same_data(backend: Backend) -> None:
    first = await backend.open()
    for n in range(3):
        await first.append([event(correlation_id=f"c{n + 1}", n=n + 1)])
    await first.close()
    again = await backend.open()
    (record,) = await again.append([event()])
    assert record.seq == 4
    assert (await again.verify()).ok


async def test_records_filter_by_correlation_event_type_seq_and_limit(store: Store) -> None:
    await store.append(
        [event("call.requested", "a"), event("policy.decided", "a"), event("call.requested", "b")]
    )
    await store.append([event("call.executed", "a")])
    assert [r.seq for r in await store.records(correlation_id="a")] == [1, 2, 4]
    assert [r.seq for r in await store.records(event_type="call.requested")] == [1, 3]
    assert [r.seq for r in await store.records(after_seq=2)] == [3, 4]
    assert [r.seq for r in await store.records(correlation_id="a", after_seq=1, limit=1)] == [2]


async def test_recent_calls_are_one_agents_last_requests_oldest_first(store: Store) -> None:
    def call(agent: str, n: int) -> dict[str, Any]:
        return event("call.requested", f"{agent}-{n}", requester={"agent": agent}, n=n)

    await store.append([call("ada" if n % 3 else "bob", n) for n in range(30)])
    await store.append([event("call.executed", "ada-1", requester={"agent": "ada"})])
    await store.append([event("call.requested", "odd", requester="ada", n=99)])  # not a requester object
    recent = await store.read(lambda tx: tx.recent_calls("ada", 4))
    assert [r.body["n"] for r in recent] == [25, 26, 28, 29]
    assert await store.read(lambda tx: tx.recent_calls("nobody", 4)) == []


async def test_bodies_for_gives_one_calls_bodies_of_the_asked_types_in_order(store: Store) -> None:
    await store.append([event("approval.decided", "a", n=1), event("approval.decided", "b", n=2)])
    await store.append([event("call.executed", "a", n=3), event("grant.created", "a", n=4)])
    bodies = await store.read(lambda tx: tx.bodies_for("a", ["approval.decided", "grant.created"]))
    assert [b["n"] for b in bodies] == [1, 4]


async def test_an_append_that_fails_writes_nothing_and_says_why(backend: Backend, store: Store) -> None:
    await store.append([event()])
    head = await store.head()
    with pytest.raises(EvidenceWriteError) as caught:
        await store.append([event(), event(args=b"not json")])
    assert caught.value.__cause__ is not None
    assert backend.label in str(caught.value) and "\n" not in str(caught.value)
    assert await store.head() == head
    assert len(await store.records()) == 1
    assert [r.seq for r in await store.append([event()])] == [2]
    assert (await store.verify()).ok


@pytest.mark.parametrize(
    "bad",
    [
        {"ts": TS, "event_type": "x", "correlation_id": None},
        {**event(), "correlation_id": 5},
        {**event(), "n": 2**60},
    ],
)
async def test_events_that_cannot_be_chained_are_refused(store: Store, bad: dict[str, Any]) -> None:
    with pytest.raises(EvidenceWriteError):
        await store.append([bad])
    assert await store.head() == (0, GENESIS_HASH)


async def test_an_event_id_is_stored_once(store: Store) -> None:
    once = event()
    await store.append([once])
    with pytest.raises(EvidenceWriteError):
        await store.append([event(), once])
    assert [r.seq for r in await store.records()] == [1]


async def test_using_a_closed_store_is_an_error_naming_it(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    await store.close()
    with pytest.raises(EvidenceWriteError, match="closed"):
        await store.append([event()])
    with pytest.raises(StoreError, match="closed"):
        await store.head()


async def test_two_handles_appending_at_once_keep_one_gapless_chain(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    written: list[str] = []

    async def writer(store: Store, name: str) -> None:
        for n in range(50):
            records = await store.append([event(correlation_id=name, n=n), event(correlation_id=name, n=n)])
            written.extend(r.event_id for r in records)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer, one, "one")
        tg.start_soon(writer, two, "two")
        tg.start_soon(writer, one, "one-again")

    records = await two.records()
    assert [r.seq for r in records] == list(range(1, 301))
    assert sorted(r.event_id for r in records) == sorted(written)
    report = await one.verify()
    assert (report.ok, report.records) == (True, 300)


# -- transactions: whole or not at all, and one winner ------------------------------------------


async def test_a_transaction_that_raises_leaves_no_trace(store: Store) -> None:
    def write(tx: Tx) -> None:
        tx.insert_request(request_for("R1"))
        tx.append([event("approval.requested")])
        tx.begin_inflight("c1", "R1", TS, {"server": "notes"})
        tx.use_nonce("n1", "c1", TS)
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await store.transact(write)
    assert await store.head() == (0, GENESIS_HASH)
    assert await store.read(lambda tx: (tx.get_request("R1"), tx.inflight())) == (None, [])
    assert await store.transact(lambda tx: tx.use_nonce("n1", "c1", TS)) is True


async def test_a_conditional_release_has_exactly_one_winner_among_concurrent_tasks_and_handles(
    backend: Backend,
) -> None:
    one, two = await backend.open(), await backend.open()
    await one.transact(lambda tx: tx.insert_request(request_for("R1", state="approved")))
    winners: list[int] = []

    def release(n: int) -> Callable[[Tx], bool]:
        def write(tx: Tx) -> bool:
            current = tx.get_request("R1")
            if current is None or current.state != "approved":
                return False
            tx.set_request_state("R1", "executing")
            tx.begin_inflight(f"call-{n}", "R1", TS, {"n": n})
            tx.append([event("call.released", f"call-{n}")])
            return True

        return write

    async def racer(store: Store, n: int) -> None:
        if await store.transact(release(n)):
            winners.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(racer, one if n % 2 else two, n)
    assert len(winners) == 1
    inflight = await two.read(lambda tx: tx.inflight())
    assert [(i.correlation_id, i.request_id) for i in inflight] == [(f"call-{winners[0]}", "R1")]
    assert len(await one.records(event_type="call.released")) == 1


async def test_starting_execution_is_one_conditional_update_only_one_handle_wins(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    await one.transact(lambda tx: tx.insert_request(request_for("R1", state="approved")))
    await one.transact(lambda tx: tx.insert_request(request_for("R2", args_sha256="a2")))  # pending
    won: list[int] = []

    async def racer(store: Store, n: int) -> None:
        if await store.transact(lambda tx: tx.start_executing("R1")):
            won.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(racer, one if n % 2 else two, n)
    assert len(won) == 1
    got = await two.read(lambda tx: tx.get_request("R1"))
    assert got is not None and got.state == "executing"
    assert await two.transact(lambda tx: tx.start_executing("R2")) is False  # not approved: unchanged
    pending = await one.read(lambda tx: tx.get_request("R2"))
    assert pending is not None and pending.state == "pending"
    assert await one.transact(lambda tx: tx.start_executing("R9")) is False


async def test_a_held_call_released_by_decisions_from_two_engines_runs_once(backend: Backend) -> None:
    clock = FakeClock(START)
    events = EventFactory("gate", "0", "pol1", clock)
    approvers = [Approver(name, f"{name}@example.com", frozenset({"sre"})) for name in ("bob", "carol")]
    key = b"k" * 32
    engines = [
        ApprovalEngine(await backend.open(clock=clock), clock, ApprovalSettings(hold_seconds=30), events, key)
        for _ in range(2)
    ]
    binding = request_for().binding
    outcomes: list[Any] = []

    async def hold(engine: ApprovalEngine, correlation_id: str) -> None:
        outcomes.append(
            await engine.hold(
                binding,
                correlation_id=correlation_id,
                tier="high",
                required=1,
                groups=("sre",),
                expires_after=None,
                rule="write",
                reason="writes",
                args={},
                progress=None,
            )
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, engines[0], "first")
        tg.start_soon(hold, engines[1], "second")  # joins the same request
        pending = await within(_pending(engines[1]), what="the request")
        for approver, engine in zip(approvers, engines, strict=True):
            await engine.decide(pending.id, approver, "approve", channel="test")
    kinds = sorted(type(o).__name__ for o in outcomes)
    assert kinds == ["Released", "UsedElsewhere"]


async def _pending(engine: ApprovalEngine) -> ApprovalRequest:
    async with engine.store.changes() as changes:
        while True:
            found = await engine.pending()
            joined = await engine.store.records(event_type="approval.joined")
            if found and joined:
                return found[0]
            await changes.wait()


# -- approval requests and their votes ----------------------------------------------------------


async def test_a_request_reads_back_as_it_was_stored(store: Store) -> None:
    stored = request_for("R1", justification="needed for the release")
    await store.transact(lambda tx: tx.insert_request(stored))
    assert await store.read(lambda tx: tx.get_request("R1")) == stored
    assert await store.read(lambda tx: tx.get_request("R2")) is None
    with pytest.raises(EvidenceWriteError):
        await store.transact(lambda tx: tx.insert_request(stored))  # one row per id


async def test_saving_a_request_stores_its_state_and_new_votes_and_never_changes_a_vote(store: Store) -> None:
    await store.transact(lambda tx: tx.insert_request(request_for("R1", required=2)))
    bob = Vote("bob", "approve", "api", START + timedelta(seconds=1), "fine")
    carol = Vote("carol", "approve", "slack", START + timedelta(seconds=2))
    once = replace(request_for("R1", required=2), votes=(bob,))
    await store.transact(lambda tx: tx.save_request(once))
    changed_vote = replace(bob, verdict="deny", note="no")
    twice = replace(once, state="approved", closed_by=None, reported=True, votes=(changed_vote, carol))
    await store.transact(lambda tx: tx.save_request(twice))
    got = await store.read(lambda tx: tx.get_request("R1"))
    assert got is not None
    assert (got.state, got.reported, got.votes) == ("approved", True, (bob, carol))
    assert got.tier == "high" and got.args == request_for().args  # the rest is never rewritten


async def test_open_and_latest_requests_are_found_for_the_same_call(store: Store) -> None:
    older = request_for("R1", state="denied", at=START)
    newer = request_for("R2", at=START + timedelta(seconds=1))
    other_args = request_for("R3", args_sha256="a2", at=START + timedelta(seconds=2))
    for request in (older, newer, other_args):
        await store.transact(lambda tx, r=request: tx.insert_request(r))
    binding = older.binding
    open_request = await store.read(lambda tx: tx.find_open_request(binding))
    assert open_request is not None and open_request.id == "R2"
    await store.transact(lambda tx: tx.set_request_state("R2", "executed"))
    assert await store.read(lambda tx: tx.find_open_request(binding)) is None
    latest = await store.read(lambda tx: tx.find_latest_request(binding))
    assert latest is not None and (latest.id, latest.state) == ("R2", "executed")


async def test_requests_are_listed_by_state_counted_and_found_due_for_expiry(store: Store) -> None:
    for n, state in enumerate(["pending", "approved", "denied", "pending"]):
        request = request_for(
            f"R{n}", state=state, at=START + timedelta(minutes=n), agent="bot" if n else "other"
        )
        await store.transact(lambda tx, r=request: tx.insert_request(r))
    listed = await store.read(lambda tx: tx.requests(states=("pending", "approved")))
    assert [r.id for r in listed] == ["R0", "R1", "R3"]  # oldest first
    assert [r.id for r in await store.read(lambda tx: tx.requests(limit=2))] == ["R3", "R2"]  # newest
    assert await store.read(lambda tx: tx.count_pending("bot")) == 1
    due = await store.read(lambda tx: tx.due_for_expiry(utc_iso(START + timedelta(minutes=16))))
    assert sorted(r.id for r in due) == ["R0", "R1"]
    await store.transact(lambda tx: tx.mark_reported("R2"))
    reported = await store.read(lambda tx: tx.get_request("R2"))
    assert reported is not None and reported.reported


# -- grants -------------------------------------------------------------------------------------


async def test_grants_are_stored_listed_by_tool_and_by_liveness_and_revoked(store: Store) -> None:
    short = grant_for("G1", lasts=timedelta(minutes=5))
    long = grant_for("G2", created=START + timedelta(seconds=1), lasts=timedelta(hours=2))
    other = replace(grant_for("G3", created=START + timedelta(seconds=2)), tool="read_note")
    for grant in (short, long, other):
        await store.transact(lambda tx, g=grant: tx.insert_grant(g))
    assert await store.read(lambda tx: tx.get_grant("G1")) == short
    mine = await store.read(lambda tx: tx.grants_for("bot", "alice@example.com", "notes", "write_note"))
    assert [g.id for g in mine] == ["G2", "G1"]  # latest expiry first
    later = utc_iso(START + timedelta(minutes=10))
    assert [g.id for g in await store.read(lambda tx: tx.grants(live_at=later))] == ["G3", "G2"]
    revoked = replace(long, revoked_at=START + timedelta(minutes=1), revoked_by="carol")
    await store.transact(lambda tx: tx.revoke_grant(revoked))
    assert await store.read(lambda tx: tx.get_grant("G2")) == revoked
    mine = await store.read(lambda tx: tx.grants_for("bot", "alice@example.com", "notes", "write_note"))
    assert [g.id for g in mine] == ["G1"]
    assert [g.id for g in await store.read(lambda tx: tx.grants())] == ["G3", "G2", "G1"]
    assert [g.id for g in await store.read(lambda tx: tx.grants(live_at=later))] == ["G3"]


# -- pins ---------------------------------------------------------------------------------------


async def test_pins_are_set_drifted_and_accepted_with_their_events(backend: Backend) -> None:
    store = await backend.open(clock=FakeClock(START))
    v1, v2 = {"name": "write_file", "description": "v1"}, {"name": "write_file", "description": "v2"}
    assert await store.get_pin("fs", "write_file") is None
    pinned = await store.set_pin("fs", "write_file", pin="p1", definition=v1, events=[event("tool.pinned")])
    assert [r.event_type for r in pinned] == ["tool.pinned"]
    expected = PinRecord("fs", "write_file", "p1", v1, None, None, utc_iso(START))
    assert await store.get_pin("fs", "write_file") == expected

    drifted = await store.mark_drift(
        "fs", "write_file", pin="p2", definition=v2, events=[event("tool.drifted")]
    )
    assert [r.seq for r in drifted] == [2]
    pin = await store.get_pin("fs", "write_file")
    assert pin is not None and (pin.pin, pin.drifted_pin, pin.drifted_definition) == ("p1", "p2", v2)

    accepted = await store.accept_drift("fs", "write_file", events=[event("tool.accepted")])
    assert (accepted.pin, accepted.definition, accepted.drifted_pin, accepted.drifted_definition) == (
        "p2",
        v2,
        None,
        None,
    )
    assert await store.list_pins() == [accepted]
    assert [r.event_type for r in await store.records()] == ["tool.pinned", "tool.drifted", "tool.accepted"]


async def test_setting_a_pin_again_clears_a_pending_drift(store: Store) -> None:
    await store.set_pin("fs", "read", pin="p1", definition={"v": 1}, events=[])
    await store.mark_drift("fs", "read", pin="p2", definition={"v": 2}, events=[])
    await store.set_pin("fs", "read", pin="p3", definition={"v": 3}, events=[])
    pin = await store.get_pin("fs", "read")
    assert pin is not None and (pin.pin, pin.drifted_pin) == ("p3", None)
    await store.set_pin("git", "log", pin="g", definition={}, events=[])
    assert [(p.server, p.tool) for p in await store.list_pins()] == [("fs", "read"), ("git", "log")]


async def test_drift_without_a_pin_and_accepting_without_drift_fail_and_write_no_events(store: Store) -> None:
    with pytest.raises(StoreError, match="no accepted pin"):
        await store.mark_drift("fs", "x", pin="p", definition={}, events=[event("tool.drifted")])
    await store.set_pin("fs", "x", pin="p", definition={}, events=[])
    with pytest.raises(StoreError, match="no changed definition"):
        await store.accept_drift("fs", "x", events=[event("tool.accepted")])
    assert await store.head() == (0, GENESIS_HASH)


async def test_a_new_tool_is_held_once_and_accepted_like_a_drift(store: Store) -> None:
    held = await store.hold_new("fs", "new", pin="p1", definition={"v": 1}, events=[event("tool.new")])
    assert [r.event_type for r in held] == ["tool.new"]
    again = await store.hold_new("fs", "new", pin="p2", definition={"v": 2}, events=[event("tool.new")])
    assert again == []  # it has a row by now: nothing is written
    pin = await store.get_pin("fs", "new")
    assert pin is not None and pin.new and (pin.drifted_pin, pin.drifted_definition) == ("p1", {"v": 1})
    accepted = await store.accept_drift("fs", "new", events=[])
    assert (accepted.new, accepted.pin, accepted.definition) == (False, "p1", {"v": 1})
    assert len(await store.records()) == 1


async def test_a_definition_read_back_can_be_changed_without_changing_the_store(store: Store) -> None:
    await store.set_pin("fs", "x", pin="p", definition={"schema": {"a": 1}}, events=[])
    pin = await store.get_pin("fs", "x")
    assert pin is not None
    pin.definition["schema"]["a"] = 2  # type: ignore[index]
    again = await store.get_pin("fs", "x")
    assert again is not None and again.definition == {"schema": {"a": 1}}


# -- outboxes and replay memory -----------------------------------------------------------------


async def test_slack_messages_are_an_outbox_in_the_order_last_saved(store: Store) -> None:
    first = SlackMessage("R1", "C1")
    second = SlackMessage("R2", "C1", ts="1.2", attempts=2, voters={"bob": "U1"})
    await store.transact(lambda tx: (tx.save_slack_message(first), tx.save_slack_message(second)))
    assert await store.read(lambda tx: tx.slack_message("R2")) == second
    posted = replace(first, ts="1.3", rendered_sha256="h", lease_until=TS, last_error="rate limited")
    await store.transact(lambda tx: tx.save_slack_message(posted))  # replaced: now the last one
    assert await store.read(lambda tx: tx.slack_messages()) == [second, posted]
    await store.transact(lambda tx: tx.save_slack_message(replace(second, done=True)))
    assert [m.request_id for m in await store.read(lambda tx: tx.slack_messages())] == ["R1"]
    assert [m.request_id for m in await store.read(lambda tx: tx.slack_messages(done=True))] == ["R2"]
    assert await store.read(lambda tx: tx.slack_message("R9")) is None


async def test_teams_cards_are_an_outbox_of_their_own_beside_slacks(store: Store) -> None:
    slack = SlackMessage("R1", "C1", ts="1.2")
    card = SlackMessage(
        "R1", "19:approvals@thread.tacv2", ts="1700000000001", attempts=1, voters={"bob": "b0b"}
    )
    other = SlackMessage("R2", "19:approvals@thread.tacv2")
    await store.transact(lambda tx: (tx.save_slack_message(slack), tx.save_teams_message(card)))
    await store.transact(lambda tx: tx.save_teams_message(other))
    assert await store.read(lambda tx: tx.teams_message("R1")) == card
    assert await store.read(lambda tx: tx.slack_message("R1")) == slack
    assert await store.read(lambda tx: tx.teams_messages()) == [card, other]
    await store.transact(lambda tx: tx.save_teams_message(replace(card, done=True)))
    assert [m.request_id for m in await store.read(lambda tx: tx.teams_messages())] == ["R2"]
    assert [m.request_id for m in await store.read(lambda tx: tx.teams_messages(done=True))] == ["R1"]
    assert await store.read(lambda tx: tx.slack_messages()) == [slack]
    assert await store.read(lambda tx: tx.teams_message("R9")) is None


async def test_a_slack_delivery_is_seen_once_until_it_is_forgotten(store: Store) -> None:
    t = [utc_iso(START + timedelta(minutes=n)) for n in range(10)]
    assert await store.transact(lambda tx: tx.slack_first_sight("sig", t[0], t[0])) is True
    assert await store.transact(lambda tx: tx.slack_first_sight("sig", t[1], t[0])) is False
    assert await store.transact(lambda tx: tx.slack_first_sight("other", t[2], t[1])) is True
    # Forgetting what was seen before t[5] lets the key be taken as new again.
    assert await store.transact(lambda tx: tx.slack_first_sight("sig", t[6], t[5])) is True


async def test_a_lease_is_held_by_one_holder_until_it_runs_out_and_its_holder_renews_it(store: Store) -> None:
    t = [utc_iso(START + timedelta(seconds=n)) for n in range(100)]

    def claim(key: str, holder: str, now: int, until: int) -> Callable[[Tx], bool]:
        return lambda tx: tx.claim(key, holder, t[now], t[until])

    assert await store.transact(claim("mail:R1", "a", 0, 30)) is True
    assert await store.transact(claim("mail:R1", "b", 1, 31)) is False  # a's lease runs
    assert await store.transact(claim("mail:R2", "b", 1, 31)) is True  # another key is free
    assert await store.transact(claim("mail:R1", "a", 20, 50)) is True  # a renews
    assert await store.transact(claim("mail:R1", "b", 40, 70)) is False  # to t[50] now
    assert await store.transact(claim("mail:R1", "b", 50, 80)) is True  # a's lease ran out
    assert await store.transact(claim("mail:R1", "a", 51, 81)) is False


async def test_of_many_holders_racing_for_one_lease_exactly_one_wins(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    now, until = utc_iso(START), utc_iso(START + timedelta(seconds=30))
    try:
        won = []

        async def race(store: Store, holder: str) -> None:
            if await store.transact(lambda tx: tx.claim("webhook", holder, now, until)):
                won.append(holder)

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(race, (one, two)[n % 2], f"holder-{n}")
        assert len(won) == 1, won
    finally:
        await one.close()
        await two.close()


async def test_a_sealed_request_state_nonce_is_used_once(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    assert await one.transact(lambda tx: tx.use_nonce("n1", "c1", TS)) is True
    assert await two.transact(lambda tx: tx.use_nonce("n1", "c2", TS)) is False
    assert await two.transact(lambda tx: tx.use_nonce("n2", "c2", TS)) is True


# -- calls in flight, and recovering them after a crash -----------------------------------------


async def test_in_flight_markers_are_listed_oldest_first_and_cleared(store: Store) -> None:
    await store.transact(lambda tx: tx.begin_inflight("c2", None, "2026-11-24T12:00:02.000000Z", {"n": 2}))
    await store.transact(lambda tx: tx.begin_inflight("c1", "R1", "2026-11-24T12:00:01.000000Z", {"n": 1}))
    with pytest.raises(EvidenceWriteError):
        await store.transact(lambda tx: tx.begin_inflight("c1", None, TS, {}))
    inflight = await store.read(lambda tx: tx.inflight())
    assert [(i.correlation_id, i.request_id, dict(i.fields)) for i in inflight] == [
        ("c1", "R1", {"n": 1}),
        ("c2", None, {"n": 2}),
    ]
    await store.transact(lambda tx: tx.end_inflight("c1"))
    assert [i.correlation_id for i in await store.read(lambda tx: tx.inflight())] == ["c2"]


async def test_a_call_in_flight_when_the_gate_died_is_recovered_as_outcome_unknown(backend: Backend) -> None:
    clock = FakeClock(START)
    crashed = await backend.open(clock=clock)
    await crashed.transact(lambda tx: tx.insert_request(request_for("R1", state="approved")))
    await crashed.transact(
        lambda tx: (
            tx.set_request_state("R1", "executing"),
            tx.begin_inflight("call-R1", "R1", utc_iso(START), {"server": "notes", "tool": "write_note"}),
        )
    )
    # The gate dies here: no outcome is recorded. The next one opens the same data and recovers.
    restarted = await backend.open(clock=clock)
    engine = ApprovalEngine(
        restarted, clock, ApprovalSettings(), EventFactory("gate", "0", "pol1", clock), b"k" * 32
    )
    assert await engine.recover() == 1
    assert await engine.recover() == 0  # once
    assert (await engine.get("R1")).state == "outcome_unknown"
    (unknown,) = await restarted.records(event_type="call.outcome_unknown")
    assert (unknown.correlation_id, unknown.body["tool"]) == ("call-R1", "write_note")
    assert await restarted.read(lambda tx: tx.inflight()) == []


# -- change notification ------------------------------------------------------------------------


async def test_a_commit_wakes_a_waiter(store: Store) -> None:
    async with store.changes() as changes, anyio.create_task_group() as tg:
        woke = anyio.Event()

        async def waiter() -> None:
            await changes.wait()
            woke.set()

        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not woke.is_set()
        await store.append([event()])
        await within(woke.wait(), what="the waiter to wake")


async def test_a_commit_before_wait_is_not_lost(store: Store) -> None:
    async with store.changes() as changes:
        await store.transact(lambda tx: tx.use_nonce("n1", "c1", TS))
        await within(changes.wait(), what="the commit made before waiting")


async def test_a_commit_through_another_handle_wakes_every_waiter(backend: Backend) -> None:
    watching, writing = await backend.open(), await backend.open()
    woke: list[int] = []
    all_woke = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def waiter(n: int, subscribed: anyio.Event) -> None:
            async with watching.changes() as changes:
                subscribed.set()  # listening from here on (on PostgreSQL: LISTEN is open)
                await changes.wait()
                woke.append(n)
                if len(woke) == 5:
                    all_woke.set()

        for n in range(5):
            subscribed = anyio.Event()
            tg.start_soon(waiter, n, subscribed)
            await within(subscribed.wait(), what=f"waiter {n} to subscribe")
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        await writing.transact(lambda tx: tx.insert_request(request_for("R1")))
        await within(all_woke.wait(), what="every waiter to wake")
    assert sorted(woke) == [0, 1, 2, 3, 4]


OTHER_PROCESS = """
import sys, anyio
from mcp_gate.evidence import new_event

async def open_store(where):
    if where.startswith("postgresql:"):
        from mcp_gate.storage.postgres import PostgresStore
        return await PostgresStore.open(where)
    from pathlib import Path
    from mcp_gate.storage.sqlite import SQLiteStore
    return await SQLiteStore.open(Path(where))

async def main(where):
    async with await open_store(where) as store:
        ts = "2026-11-24T00:00:00.000000Z"
        await store.append([new_event("call.requested", ts=ts, correlation_id="x")])

anyio.run(main, sys.argv[1])
"""


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        "postgres",
        pytest.param(
            "memory",
            marks=pytest.mark.skip(
                reason="a memory store lives in one process: no other process can commit to it"
            ),
        ),
    ],
    indirect=True,
)
async def test_a_commit_from_another_process_wakes_a_waiter(backend: Backend) -> None:
    store = await backend.open()
    async with store.changes() as changes:  # subscribed (LISTEN open) before the other process starts
        done = await anyio.run_process([sys.executable, "-c", OTHER_PROCESS, backend.where], check=False)
        assert done.returncode == 0, done.stderr.decode()
        await within(changes.wait(), what="the other process's commit")
    assert [r.correlation_id for r in await store.records()] == ["x"]


# -- signed checkpoints and retention -----------------------------------------------------------


async def test_checkpoints_are_signed_stored_and_checked_by_verify(backend: Backend) -> None:
    notary = Notary(KEY, "mcp-gate/test", every_records=1000)
    store = await backend.open(clock=FakeClock(START), notary=notary)
    assert await store.checkpoint() is not None  # the empty log's first
    await store.append([event() for _ in range(3)])
    await store.append([event("approval.decided")])  # a decision is signed at once
    notes = await store.checkpoint_notes()
    assert len(notes) == 2
    assert await store.checkpoint() is None  # nothing new since
    report = await store.verify()
    assert (report.ok, report.records) == (True, 4)
    assert getattr(report, "checkpoints", None) == 2 and getattr(report, "covered", None) == 4


async def test_pruning_removes_only_old_records_under_a_signed_retention_checkpoint(backend: Backend) -> None:
    unsigned = await backend.open()
    with pytest.raises(StoreError, match="signing key"):
        await unsigned.prune(TS, events=lambda pruned: [])
    store = await backend.open(clock=FakeClock(START), notary=Notary(KEY, "mcp-gate/test"))
    old = [
        new_event("call.requested", ts="2026-01-01T00:00:00.000000Z", correlation_id="o") for _ in range(3)
    ]
    await store.append(old)
    await store.append([event()])
    pruned = await store.prune(
        "2026-06-01T00:00:00.000000Z",
        events=lambda p: [event("evidence.pruned", None, first=p.first, last=p.last)],
    )
    assert pruned is not None and (pruned.first, pruned.last, pruned.count) == (1, 3, 3)
    assert [r.seq for r in await store.records()] == [4, 5]
    report = await store.verify()
    assert report.ok and getattr(report, "pruned_through", None) == 3
    assert await store.prune("2026-06-01T00:00:00.000000Z", events=lambda p: []) is None
