"""The PostgreSQL store against a real server: one gapless chain whatever replica writes, hashes
the SQLite backend would give, append-only evidence, exactly one winner of a release across
replicas, and the same approvals, grants, pins, outboxes and replay memory as on SQLite.

Each test gets an empty schema in a database made for this module (tests/pg_helpers.py); two
`PostgresStore`s opened on one url are two replicas on one database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from mcp_gate.approvals import ApprovalRequest, Binding, Grant, Vote
from mcp_gate.checkpoints import SigningKey
from mcp_gate.clock import utc_iso
from mcp_gate.errors import EvidenceWriteError, StoreError
from mcp_gate.evidence import GENESIS_HASH, ChainVerifier, canonical_json, chain_hash, new_event
from mcp_gate.notary import Notary
from mcp_gate.storage.base import Inflight, LogReader, PinRecord, SlackMessage, Store, Tx
from mcp_gate.storage.postgres import PostgresStore
from mcp_gate.storage.postgres.reader import read_only, verify_database
from mcp_gate.storage.postgres.schema import SCHEMA_VERSION
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import FakeClock, eventually
from tests import pg_helpers

pytestmark = pytest.mark.anyio

postgres_database = pg_helpers.postgres_database
postgres_url = pg_helpers.postgres_url

TS = "2026-11-24T16:48:32.123456Z"
START = datetime(2026, 11, 24, 12, 0, 0, 250000, tzinfo=UTC)
KEY = SigningKey.generate("mcp-gate-test")


def event(
    event_type: str = "call.requested", correlation_id: str | None = "c1", **fields: Any
) -> dict[str, Any]:
    return new_event(event_type, ts=TS, correlation_id=correlation_id, **fields)


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two `mcp-gate serve` replicas would have."""
    async with (
        await PostgresStore.open(postgres_url, clock=FakeClock(START)) as one,
        await PostgresStore.open(postgres_url, clock=FakeClock(START)) as two,
    ):
        yield one, two


@pytest.fixture
async def store(replicas: tuple[PostgresStore, PostgresStore]) -> PostgresStore:
    return replicas[0]


def owner(url: str) -> psycopg.Connection:
    """A connection as the database's owner, as someone with the gate's credentials would have."""
    return psycopg.connect(url, autocommit=True)


def request_for(request_id: str = "R1", *, args_sha256: str = "a1", **kw: Any) -> ApprovalRequest:
    binding = Binding("bot", "alice@example.com", "notes", "write_note", "pin1", args_sha256, "pol1")
    fields: dict[str, Any] = {
        "correlation_id": f"call-{request_id}",
        "tier": "high",
        "required": 1,
        "groups": ("sre",),
        "rule": "write",
        "reason": "writes a note",
        "args": {"name": "plan", "tags": ["a", "b"]},
        "created_at": START,
        "expires_at": START + timedelta(minutes=15),
        **kw,
    }
    return ApprovalRequest(id=request_id, binding=binding, **fields)


# the chain


async def test_the_postgres_store_satisfies_the_store_tx_and_reader_protocols(postgres_url: str) -> None:
    store: Store = await PostgresStore.open(postgres_url)
    async with store:
        await store.transact(lambda tx: _typed(tx))
    with read_only(postgres_url) as reader:
        typed: LogReader = reader
        assert typed.count() == 0


def _typed(tx: Tx) -> None:
    assert tx.inflight() == []


async def test_appends_get_gapless_seqs_and_the_same_hashes_as_on_sqlite(
    store: PostgresStore, tmp_path: Path
) -> None:
    batches = [[event(n=1)], [event(n=2), event("call.decided", n=3)], [event(correlation_id=None)]]
    written = [await store.append(batch) for batch in batches]
    records = [r for batch in written for r in batch]
    assert [r.seq for r in records] == [1, 2, 3, 4]
    prev = GENESIS_HASH
    for r in records:
        assert r.prev_hash == prev and r.entry_hash == chain_hash(prev, canonical_json(dict(r.body)))
        prev = r.entry_hash
    assert await store.head() == (4, prev)
    assert await store.records() == records
    async with await SQLiteStore.open(tmp_path / "gate.db") as sqlite:
        for batch in batches:
            await sqlite.append(batch)
        assert await sqlite.head() == await store.head()
        assert await sqlite.records() == records
    report = await store.verify()
    assert (report.ok, report.records, report.head_hash) == (True, 4, prev)


async def test_records_filter_by_correlation_event_type_seq_and_limit(store: PostgresStore) -> None:
    await store.append([event(correlation_id="a"), event("call.decided", "a"), event(correlation_id="b")])
    assert [r.seq for r in await store.records(correlation_id="a")] == [1, 2]
    assert [r.seq for r in await store.records(event_type="call.requested")] == [1, 3]
    assert [r.seq for r in await store.records(after_seq=1, limit=1)] == [2]


async def test_two_replicas_appending_at_once_keep_one_gapless_chain(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = replicas
    written: list[str] = []

    async def writer(store: PostgresStore, name: str) -> None:
        for n in range(25):
            records = await store.append([event(correlation_id=name, n=n), event(correlation_id=name, n=n)])
            written.extend(r.event_id for r in records)

    async with anyio.create_task_group() as tg:
        for k in range(3):
            tg.start_soon(writer, one, f"one-{k}")
            tg.start_soon(writer, two, f"two-{k}")

    records = await two.records()
    assert [r.seq for r in records] == list(range(1, 301))
    assert sorted(r.event_id for r in records) == sorted(written)
    assert (await one.verify()).ok


async def test_a_failing_writer_in_a_group_commit_leaves_the_others_written(store: PostgresStore) -> None:
    outcomes: dict[int, str] = {}

    async def writer(n: int) -> None:
        bad = {"n": 2**60} if n == 7 else {}
        try:
            await store.append([event(correlation_id=f"w{n}", **bad)])
            outcomes[n] = "written"
        except EvidenceWriteError:
            outcomes[n] = "refused"

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(writer, n)

    assert [n for n, outcome in outcomes.items() if outcome == "refused"] == [7]
    records = await store.records()
    assert [r.seq for r in records] == list(range(1, 20))
    assert "w7" not in {r.correlation_id for r in records}
    assert (await store.verify()).ok


async def test_a_writer_the_database_refuses_in_a_batch_of_appends_fails_alone(store: PostgresStore) -> None:
    taken = await store.append([event(correlation_id="first")])
    outcomes: dict[int, str] = {}

    async def writer(n: int) -> None:
        # Writer 5 reuses a stored event id: only the database's unique index can refuse it.
        body = (
            {**event(correlation_id=f"w{n}"), "event_id": taken[0].event_id}
            if n == 5
            else event(correlation_id=f"w{n}")
        )
        try:
            await store.append([body])
            outcomes[n] = "written"
        except EvidenceWriteError as exc:
            outcomes[n] = "refused" if "duplicate key" in str(exc) else str(exc)

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(writer, n)

    assert {n: o for n, o in outcomes.items() if o != "written"} == {5: "refused"}
    assert [r.seq for r in await store.records()] == list(range(1, 21))
    assert (await store.verify()).ok


async def test_an_append_that_fails_writes_nothing_and_says_why_in_one_line(store: PostgresStore) -> None:
    await store.append([event()])
    head = await store.head()
    with pytest.raises(EvidenceWriteError) as caught:
        await store.append([event(), event(args=b"not json")])
    assert caught.value.__cause__ is not None and "\n" not in str(caught.value)
    with pytest.raises(EvidenceWriteError):
        await store.append([{"ts": TS, "event_type": "x", "correlation_id": None}])
    assert await store.head() == head
    assert [r.seq for r in await store.append([event()])] == [2]


async def test_writing_to_a_closed_store_is_an_evidence_write_error(postgres_url: str) -> None:
    store = await PostgresStore.open(postgres_url)
    await store.close()
    await store.close()
    with pytest.raises(EvidenceWriteError, match="closed"):
        await store.append([event()])
    with pytest.raises(StoreError, match="closed"):
        await store.head()


# append-only


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE evidence SET event_type = 'x' WHERE seq = 1",
        "DELETE FROM evidence WHERE seq = 2",
        "TRUNCATE evidence",
        "UPDATE checkpoints SET note = 'x'",
        "DELETE FROM checkpoints",
    ],
)
async def test_triggers_refuse_changes_to_evidence_and_checkpoints(
    store: PostgresStore, postgres_url: str, statement: str
) -> None:
    await store.append([event(), event()])
    with owner(postgres_url) as conn:
        conn.execute(
            "INSERT INTO checkpoints (size, kind, created_at, note) VALUES (2, 'checkpoint', '', 'n')"
        )
        with pytest.raises(psycopg.Error, match="append-only"):
            conn.execute(statement)
    assert (await store.verify()).records == 2


async def test_an_edit_made_with_the_triggers_disabled_is_found_at_its_seq(
    store: PostgresStore, postgres_url: str
) -> None:
    await store.append([event(n=1), event(n=2), event(n=3)])
    with owner(postgres_url) as conn:
        conn.execute("ALTER TABLE evidence DISABLE TRIGGER USER")
        conn.execute("UPDATE evidence SET body = replace(body, '\"n\":2', '\"n\":5') WHERE seq = 2")
    report = await store.verify()
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert report.problem == "seq 2: entry_hash does not match its contents (edited?)"


# releases across replicas


async def test_a_release_raced_from_two_replicas_has_exactly_one_winner(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = replicas
    await one.transact(lambda tx: tx.insert_request(request_for("R1", state="approved")))
    winners: list[str] = []

    def release(tx: Tx, who: str) -> bool:
        request = tx.get_request("R1")
        assert request is not None
        if request.state != "approved":
            return False
        tx.set_request_state("R1", "executing")
        tx.append([event("call.executing", "call-R1", by=who)])
        return True

    async def contender(store: PostgresStore, who: str) -> None:
        if await store.transact(lambda tx: release(tx, who)):
            winners.append(who)

    async with anyio.create_task_group() as tg:
        for k in range(20):
            tg.start_soon(contender, one, f"one-{k}")
            tg.start_soon(contender, two, f"two-{k}")

    assert len(winners) == 1
    assert [r.body["by"] for r in await two.records(event_type="call.executing")] == winners
    request = await two.read(lambda tx: tx.get_request("R1"))
    assert request is not None and request.state == "executing"


async def test_a_subscription_wakes_on_commits_here_and_at_another_replica(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = replicas
    async with one.changes() as changes:
        with anyio.move_on_after(0.2) as idle:
            await changes.wait()
        assert idle.cancelled_caught  # nothing committed yet
        await two.transact(lambda tx: tx.insert_request(request_for("R1")))
        with anyio.fail_after(10):
            await changes.wait()  # NOTIFY from the other replica
        await one.transact(lambda tx: tx.insert_request(request_for("R2")))
        with anyio.fail_after(10):
            await changes.wait()  # this handle's own commit


@pytest.mark.parametrize("at", ["another replica", "the same replica"])
async def test_every_waiter_on_a_replica_wakes_on_one_commit(
    replicas: tuple[PostgresStore, PostgresStore], at: str
) -> None:
    one, two = replicas
    committer = two if at == "another replica" else one
    woken: list[int] = []

    async def waiter(n: int, ready: anyio.Event) -> None:
        async with one.changes() as changes:
            ready.set()
            await changes.wait()
            woken.append(n)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for n in range(5):
                ready = anyio.Event()
                tg.start_soon(waiter, n, ready)
                await ready.wait()
            await committer.append([event()])
    assert sorted(woken) == [0, 1, 2, 3, 4]


# approvals, grants, calls in flight, nonces, channel outboxes


async def test_requests_and_votes_read_back_as_written(replicas: tuple[PostgresStore, PostgresStore]) -> None:
    one, two = replicas
    first = request_for("R1")
    later = request_for("R2", created_at=START + timedelta(seconds=1))
    other = request_for("R3", args_sha256="a2", state="denied")

    def insert(tx: Tx) -> None:
        for request in (first, later, other):
            tx.insert_request(request)

    await one.transact(insert)
    vote = Vote("carol@example.com", "approve", "api", START + timedelta(seconds=2), "ok")
    approved = ApprovalRequest(**{**first.__dict__, "state": "approved", "votes": (vote,)})
    await one.transact(lambda tx: tx.save_request(approved))
    await one.transact(lambda tx: tx.save_request(approved))  # a vote is stored once

    def look(tx: Tx) -> dict[str, Any]:
        return {
            "get": tx.get_request("R1"),
            "open": tx.find_open_request(first.binding),
            "latest": tx.find_latest_request(first.binding),
            "pending": [r.id for r in tx.requests(states=["pending"])],
            "all": [r.id for r in tx.requests()],
            "count": tx.count_pending("bot"),
            "due": [r.id for r in tx.due_for_expiry(utc_iso(START + timedelta(minutes=15)))],
        }

    seen = await two.read(look)
    assert seen["get"] == approved
    assert seen["open"] is not None and seen["open"].id == "R2"
    assert seen["latest"] is not None and seen["latest"].id == "R2"
    assert (seen["pending"], seen["all"], seen["count"]) == (["R2"], ["R2", "R3", "R1"], 1)
    assert sorted(seen["due"]) == ["R1", "R2"]
    await one.transact(lambda tx: tx.mark_reported("R3"))
    reported = await two.read(lambda tx: tx.get_request("R3"))
    assert reported is not None and reported.reported


async def test_grants_are_found_live_and_revoked(store: PostgresStore) -> None:
    grant = Grant("G1", "bot", "alice", "notes", "write_note", "carol", START, START + timedelta(hours=1))
    old = Grant("G0", "bot", "alice", "notes", "write_note", "carol", START - timedelta(hours=2), START)
    await store.transact(lambda tx: (tx.insert_grant(old), tx.insert_grant(grant)))
    live = await store.read(lambda tx: tx.grants(live_at=utc_iso(START + timedelta(minutes=1))))
    assert live == [grant]
    assert await store.read(lambda tx: tx.grants_for("bot", "alice", "notes", "write_note")) == [grant, old]
    revoked = Grant(**{**grant.__dict__, "revoked_at": START + timedelta(minutes=5), "revoked_by": "dave"})
    await store.transact(lambda tx: tx.revoke_grant(revoked))
    assert await store.read(lambda tx: tx.get_grant("G1")) == revoked
    assert await store.read(lambda tx: tx.grants_for("bot", "alice", "notes", "write_note")) == [old]
    assert [g.id for g in await store.read(lambda tx: tx.grants())] == ["G1", "G0"]


async def test_inflight_markers_and_nonces_behave_as_on_sqlite(store: PostgresStore) -> None:
    def begin(tx: Tx) -> None:
        tx.begin_inflight("c2", None, utc_iso(START + timedelta(seconds=1)), {"tool": "b"})
        tx.begin_inflight("c1", "R1", utc_iso(START), {"tool": "a"})

    await store.transact(begin)
    assert await store.read(lambda tx: tx.inflight()) == [
        Inflight("c1", "R1", utc_iso(START), {"tool": "a"}),
        Inflight("c2", None, utc_iso(START + timedelta(seconds=1)), {"tool": "b"}),
    ]
    await store.transact(lambda tx: tx.end_inflight("c1"))
    assert [i.correlation_id for i in await store.read(lambda tx: tx.inflight())] == ["c2"]
    assert await store.transact(lambda tx: tx.use_nonce("n1", "c1", TS))
    assert not await store.transact(lambda tx: tx.use_nonce("n1", "c9", TS))


async def test_the_slack_outbox_and_replay_memory_are_shared_by_replicas(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = replicas
    first = SlackMessage("R1", "C1")
    second = SlackMessage("R2", "C1")
    await one.transact(lambda tx: (tx.save_slack_message(first), tx.save_slack_message(second)))
    posted = SlackMessage("R1", "C1", ts="1.2", rendered_sha256="h", attempts=1, voters={"a@x": "U1"})
    await two.transact(lambda tx: tx.save_slack_message(posted))
    assert await one.read(lambda tx: tx.slack_message("R1")) == posted
    assert await one.read(lambda tx: tx.slack_messages()) == [second, posted]  # in the order last saved
    finished = SlackMessage("R2", "C1", ts="1.3", done=True)
    await one.transact(lambda tx: tx.save_slack_message(finished))
    assert await two.read(lambda tx: tx.slack_messages(done=True)) == [finished]
    card = SlackMessage("R1", "19:approvals@thread.tacv2", ts="1700000000001")
    await two.transact(lambda tx: tx.save_teams_message(card))
    assert await one.read(lambda tx: (tx.teams_message("R1"), tx.teams_messages())) == (card, [card])
    assert await one.read(lambda tx: tx.slack_message("R1")) == posted

    later, forget = "2026-11-24T17:00:00Z", "2026-11-24T16:00:00Z"
    assert await one.transact(lambda tx: tx.slack_first_sight("env-1", TS, forget))
    assert not await two.transact(lambda tx: tx.slack_first_sight("env-1", TS, forget))
    # remembered only until it is older than the window
    assert await two.transact(lambda tx: tx.slack_first_sight("env-1", later, "2026-11-24T16:50:00Z"))


async def test_recent_calls_and_bodies_for_read_the_log(store: PostgresStore) -> None:
    await store.append(
        [
            event(correlation_id="c1", requester={"agent": "bot"}),
            event(correlation_id="c2", requester={"agent": "other"}),
            event("call.decided", "c1", requester={"agent": "bot"}),
            event(correlation_id="c3", requester={"agent": "bot"}),
        ]
    )
    calls = await store.read(lambda tx: tx.recent_calls("bot", 5))
    assert [r.seq for r in calls] == [1, 4]
    assert [r.seq for r in await store.read(lambda tx: tx.recent_calls("bot", 1))] == [4]
    bodies = await store.read(lambda tx: tx.bodies_for("c1", ["call.requested", "call.decided"]))
    assert [b["seq"] for b in bodies] == [1, 3]


# pins


async def test_pins_are_set_drifted_and_accepted_with_their_events(store: PostgresStore) -> None:
    v1, v2 = {"name": "write_file", "description": "v1"}, {"name": "write_file", "description": "v2"}
    assert await store.get_pin("fs", "write_file") is None
    await store.set_pin("fs", "write_file", pin="p1", definition=v1, events=[event("tool.pinned")])
    expected = PinRecord("fs", "write_file", "p1", v1, None, None, utc_iso(START))
    assert await store.get_pin("fs", "write_file") == expected
    drifted = await store.mark_drift(
        "fs", "write_file", pin="p2", definition=v2, events=[event("tool.drifted")]
    )
    assert [r.seq for r in drifted] == [2]
    accepted = await store.accept_drift("fs", "write_file", events=[event("tool.accepted")])
    assert (accepted.pin, accepted.definition, accepted.drifted_pin) == ("p2", v2, None)
    assert await store.list_pins() == [accepted]
    held = await store.hold_new("fs", "new_tool", pin="n1", definition={"v": 1}, events=[event("tool.held")])
    assert [r.seq for r in held] == [4]
    assert await store.hold_new("fs", "new_tool", pin="n2", definition={}, events=[event("tool.held")]) == []
    pin = await store.get_pin("fs", "new_tool")
    assert pin is not None and pin.new and pin.drifted_pin == "n1"
    with pytest.raises(StoreError, match="no accepted pin"):
        await store.mark_drift("fs", "x", pin="p", definition={}, events=[event("tool.drifted")])
    with pytest.raises(StoreError, match="no changed definition"):
        await store.accept_drift("fs", "write_file", events=[event("tool.accepted")])
    assert (await store.head())[0] == 4


# checkpoints, pruning, the auditor's reader


async def test_signed_checkpoints_verify_and_pruning_keeps_the_chain_verifiable(postgres_url: str) -> None:
    clock = FakeClock(START)
    notary = Notary(KEY, "mcp-gate/test", every_records=2)
    async with await PostgresStore.open(postgres_url, clock=clock, notary=notary) as store:
        for n in range(5):
            at = utc_iso(START + timedelta(minutes=n))
            await store.append([new_event("call.requested", ts=at, correlation_id="c1", n=n)])
        await store.checkpoint()
        notes = await store.checkpoint_notes()
        assert len(notes) >= 3  # at 1, 3 and 5 records, every_records=2
        report = await verify_database(postgres_url, verifiers=[KEY.verifier])
        assert report.ok and report.checkpoints == len(notes)

        cut = utc_iso(START + timedelta(minutes=3))
        pruned = await store.prune(cut, events=lambda p: [event("log.pruned", None, through=p.last)])
        assert pruned is not None and (pruned.first, pruned.last) == (1, 3)
        assert [r.seq for r in await store.records()] == [4, 5, 6]
        assert (await store.verify()).ok
    with owner(postgres_url) as conn, pytest.raises(psycopg.Error, match="append-only"):
        conn.execute("DELETE FROM evidence WHERE seq = 4")


async def test_two_replicas_signing_at_once_never_sign_one_size_twice(postgres_url: str) -> None:
    clock = FakeClock(START)
    async with (
        await PostgresStore.open(postgres_url, clock=clock, notary=Notary(KEY, "o", every_records=1)) as one,
        await PostgresStore.open(postgres_url, clock=clock, notary=Notary(KEY, "o", every_records=1)) as two,
    ):

        async def writer(store: PostgresStore) -> None:
            for n in range(15):
                await store.append([event(n=n)])
            await store.checkpoint()

        async with anyio.create_task_group() as tg:
            for store in (one, two, one, two):
                tg.start_soon(writer, store)
        with owner(postgres_url) as conn:
            sizes = [int(r[0]) for r in conn.execute("SELECT size FROM checkpoints ORDER BY id")]
    assert len(sizes) == len(set(sizes)) and sizes == sorted(sizes) and sizes[-1] == 60
    report = await verify_database(postgres_url, verifiers=[KEY.verifier])
    assert report.ok and report.checkpoints == len(sizes) and report.covered == 60


async def test_the_log_reader_streams_one_snapshot(store: PostgresStore, postgres_url: str) -> None:
    await store.append([event(correlation_id="c1"), event("call.decided", "c1"), event(correlation_id="c2")])
    with read_only(postgres_url) as reader:
        await store.append([event(correlation_id="c3")])  # after the snapshot: not seen
        assert reader.count() == 3
        assert reader.head()[0] == 3
        assert reader.seq_range(None, None) == (1, 3)
        chain = ChainVerifier()
        for row in reader.rows():
            chain.feed(*row)
        assert chain.ok and chain.last_seq == 3
        assert [b["seq"] for b in reader.bodies_of("call.requested")] == [1, 3]
        assert [b["seq"] for b in reader.bodies_for("c1", before_seq=2)] == [1]
        assert reader.notes() == []


# opening: schema versions, an unreachable server, a dropped connection


async def test_a_database_gets_the_schema_once_and_records_its_version(postgres_url: str) -> None:
    async with await PostgresStore.open(postgres_url), await PostgresStore.open(postgres_url):
        pass
    with owner(postgres_url) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))


async def test_an_untouched_database_without_create_asks_for_a_migration(postgres_url: str) -> None:
    with pytest.raises(StoreError, match="run `mcp-gate store migrate`$") as caught:
        await PostgresStore.open(postgres_url, create=False)
    assert "\n" not in str(caught.value)


async def test_a_database_newer_than_the_gate_is_refused_in_one_line(postgres_url: str) -> None:
    async with await PostgresStore.open(postgres_url):
        pass
    with owner(postgres_url) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="this gate is older than its database$"):
        await PostgresStore.open(postgres_url)


async def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    with socket_nobody_listens_on() as port:
        url = f"postgresql://gate:s3cret@127.0.0.1:{port}/gate"
        with pytest.raises(StoreError) as caught:
            await PostgresStore.open(url, connect_timeout=2)
    message = str(caught.value)
    assert message.startswith(f"cannot reach the store at postgresql://gate@127.0.0.1:{port}/gate: ")
    assert "s3cret" not in message and "\n" not in message


async def test_after_the_server_drops_the_connections_writes_fail_closed_then_recover(
    store: PostgresStore, postgres_database: str
) -> None:
    await store.append([event()])
    await store.read(lambda tx: tx.inflight())
    with psycopg.connect(postgres_database, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(EvidenceWriteError, match="the evidence store at postgresql://.* is unreachable"):
        await store.append([event()])
    assert [r.seq for r in await store.append([event()])] == [2]
    assert (await store.head())[0] == 2
    assert (await store.verify()).ok


class socket_nobody_listens_on:
    """A local port that was just free: connecting to it is refused."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        return None


HOLD_LOCK = """
import sys, anyio
from mcp_gate.storage.postgres.replicas import ReplicaLock

async def main(url):
    async with ReplicaLock(url) as lock:
        lock.share()
        print("sharing", flush=True)
        await anyio.sleep_forever()  # held until killed

anyio.run(main, sys.argv[1])
"""


async def test_only_a_replica_alone_on_the_database_gets_the_lock_exclusively(postgres_url: str) -> None:
    from mcp_gate.storage.postgres.replicas import ReplicaLock

    async with ReplicaLock(postgres_url) as first:
        assert first.exclusive  # alone: may recover what a crash left in flight
        first.share()
        async with ReplicaLock(postgres_url) as second:
            assert not second.exclusive  # another replica is running: its calls in flight are its own
    async with ReplicaLock(postgres_url) as again:
        assert again.exclusive


async def test_a_killed_replica_loses_its_share_of_the_lock_with_its_connection(postgres_url: str) -> None:
    import sys

    from mcp_gate.storage.postgres.replicas import ReplicaLock

    async def alone() -> bool:
        async with ReplicaLock(postgres_url) as lock:
            return lock.exclusive

    async with await anyio.open_process([sys.executable, "-c", HOLD_LOCK, postgres_url]) as holder:
        assert holder.stdout is not None
        seen = b""
        with anyio.fail_after(30):
            while b"sharing\n" not in seen:
                seen += await holder.stdout.receive()
        assert not await alone()  # the holder is a live replica
        holder.kill()  # SIGKILL: no clean stop, no unlock
        await holder.wait()

    assert await eventually(alone, what="the killed replica's lock to go with its connection")


START_EXECUTING = """
import sys, anyio
from mcp_gate.storage.postgres import PostgresStore

async def main(url):
    async with await PostgresStore.open(url, create=False) as store:
        won = await store.transact(lambda tx: tx.start_executing("R1"))
        print("won" if won else "lost", flush=True)

anyio.run(main, sys.argv[1])
"""


async def test_replica_processes_racing_to_release_one_request_have_one_winner(postgres_url: str) -> None:
    import sys

    async with await PostgresStore.open(postgres_url) as store:
        await store.transact(lambda tx: tx.insert_request(request_for("R1", state="approved")))
    results: list[str] = []

    async def replica() -> None:
        done = await anyio.run_process([sys.executable, "-c", START_EXECUTING, postgres_url], check=False)
        assert done.returncode == 0, done.stderr.decode()
        results.append(done.stdout.decode().strip())

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(replica)
    assert sorted(results) == ["lost", "lost", "lost", "won"]
    async with await PostgresStore.open(postgres_url, create=False) as store:
        got = await store.read(lambda tx: tx.get_request("R1"))
        assert got is not None and got.state == "executing"
