"""The SQLite backend's own behaviour: its file (modes, WAL, schema), the recent-calls index, and
tampering with the file found by verification. The contracts every backend keeps are stated once
in test_store_conformance.py."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_gate.errors import StoreError
from mcp_gate.evidence import canonical_json, chain_hash, new_event
from mcp_gate.storage.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

TS = "2026-11-24T16:48:32.123456Z"
COLUMNS = "seq, event_id, ts, event_type, correlation_id, body, prev_hash, entry_hash"


def event(
    event_type: str = "call.requested", correlation_id: str | None = "c1", **fields: Any
) -> dict[str, Any]:
    return new_event(event_type, ts=TS, correlation_id=correlation_id, **fields)


@contextmanager
def attacker(path: Path, *, drop_triggers: bool = True) -> Iterator[sqlite3.Connection]:
    """Open the file directly, as someone with write access to it would, and commit on exit."""
    with closing(sqlite3.connect(path)) as conn:
        if drop_triggers:
            conn.execute("DROP TRIGGER evidence_no_update")
            conn.execute("DROP TRIGGER evidence_no_delete")
        with conn:
            yield conn


async def filled(path: Path, count: int) -> None:
    async with await SQLiteStore.open(path) as store:
        for n in range(count):
            await store.append([event(correlation_id=f"c{n + 1}", n=n + 1)])


async def verify(path: Path) -> Any:
    async with await SQLiteStore.open(path) as store:
        return await store.verify()


def test_the_storage_modules_export_their_names() -> None:
    import mcp_gate.datadir as datadir
    import mcp_gate.storage as storage
    import mcp_gate.storage.base as base
    import mcp_gate.storage.changes as changes
    import mcp_gate.storage.memory as memory
    import mcp_gate.storage.sqlite as sqlite

    assert set(base.__all__) == {
        "Changes",
        "CommitObserver",
        "Inflight",
        "LogReader",
        "PinRecord",
        "SlackMessage",
        "Store",
        "Tx",
    }
    assert set(storage.__all__) == {
        "open_reader",
        "open_store",
        "verify_file",
        "open_database",
        "open_database_reader",
        "verify_database",
        "replica_lock",
        "lapsed_replica_calls",
        "replica_seen",
        "database_schema",
        "copy_into_database",
        "file_head",
    }
    assert set(sqlite.__all__) == {"SQLiteStore"}
    assert set(memory.__all__) == {"MemoryStore", "MemoryTx"}
    assert set(changes.__all__) == {"CommitSignal"}
    assert set(datadir.__all__) == {
        "ARGS_KEY_FILE",
        "DECISION_KEY_FILE",
        "ELICITATION_KEY_FILE",
        "GATE_DB",
        "LOCK_FILE",
        "RUNS_DIR",
        "DataDirLock",
        "RunMarker",
        "gate_db",
    }


async def test_recent_calls_are_found_through_an_index_not_a_scan_of_the_log(tmp_path: Path) -> None:
    def call(agent: str, n: int) -> dict[str, Any]:
        return event("call.requested", f"{agent}-{n}", requester={"agent": agent}, n=n)

    async with await SQLiteStore.open(tmp_path / "gate.db") as store:
        await store.append([call("ada" if n % 3 else "bob", n) for n in range(30)])
        await store.append([event("call.executed", "ada-1", requester={"agent": "ada"})])
        recent = await store.read(lambda tx: tx.recent_calls("ada", 4))
        assert [r.body["n"] for r in recent] == [25, 26, 28, 29]  # (the contract: test_store_conformance)
    # Showing a request (and rendering its Slack message) must not read the whole log: the
    # query is answered from the partial index, not by scanning the evidence table.
    with closing(sqlite3.connect(tmp_path / "gate.db")) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM evidence WHERE event_type = 'call.requested' "
            "AND json_valid(body) AND json_extract(body, '$.requester.agent') = ? "
            "ORDER BY seq DESC LIMIT 10",
            ("ada",),
        ).fetchall()
    assert any("evidence_calls_by_agent" in str(step) for step in plan), plan
    assert not any("TEMP B-TREE" in str(step) for step in plan), plan  # no sort of all matches


async def test_stored_bodies_are_canonical_json_with_the_seq(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    async with await SQLiteStore.open(path) as store:
        (record,) = await store.append([event(args={"b": 1, "a": 2})])
    with closing(sqlite3.connect(path)) as conn:
        (body,) = conn.execute("SELECT body FROM evidence WHERE seq = 1").fetchone()
    assert body.encode() == canonical_json(json.loads(body))
    assert json.loads(body) == {**record.body, "seq": 1}


# tampering, detected by verify


async def test_editing_a_body_byte_is_found(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    await filled(path, 8)
    with attacker(path) as conn:
        conn.execute("UPDATE evidence SET body = replace(body, '\"n\":5', '\"n\":7') WHERE seq = 5")
    report = await verify(path)
    assert (report.ok, report.first_bad_seq) == (False, 5)
    assert report.problem == "seq 5: entry_hash does not match its contents (edited?)"


async def test_editing_a_column_is_found(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    await filled(path, 8)
    with attacker(path) as conn:
        conn.execute("UPDATE evidence SET event_type = 'call.executed' WHERE seq = 6")
    report = await verify(path)
    assert (report.ok, report.first_bad_seq) == (False, 6)
    assert report.problem == "seq 6: column event_type does not match the body (edited?)"


async def test_deleting_a_row_is_found(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    await filled(path, 8)
    with attacker(path) as conn:
        conn.execute("DELETE FROM evidence WHERE seq = 4")
    report = await verify(path)
    assert (report.ok, report.first_bad_seq, report.records) == (False, 4, 7)
    assert report.problem == "seq 4 missing after seq 3 (deleted?)"


async def test_deleting_the_newest_rows_is_not_found_by_the_chain_alone(tmp_path: Path) -> None:
    # Truncation leaves a valid shorter chain; signed checkpoints (not this module) catch it.
    path = tmp_path / "gate.db"
    await filled(path, 8)
    with attacker(path) as conn:
        conn.execute("DELETE FROM evidence WHERE seq > 6")
    report = await verify(path)
    assert (report.ok, report.records) == (True, 6)


async def test_inserting_a_forged_row_with_its_own_correct_hash_is_found_at_the_next_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gate.db"
    await filled(path, 8)
    with attacker(path) as conn:
        (prev,) = conn.execute("SELECT entry_hash FROM evidence WHERE seq = 3").fetchone()
        # Make room at seq 4 (via negative numbers, so the primary key never collides).
        conn.execute("UPDATE evidence SET seq = -seq WHERE seq > 3")
        conn.execute("UPDATE evidence SET seq = 1 - seq WHERE seq < 0")
        body = {**event("approval.decided", "c3", decision="approve"), "seq": 4}
        text = canonical_json(body)
        conn.execute(
            f"INSERT INTO evidence ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (4, body["event_id"], TS, "approval.decided", "c3", text.decode(), prev, chain_hash(prev, text)),
        )
    report = await verify(path)
    # The forged row links correctly; the chain breaks where the original seq 4 now sits.
    assert (report.ok, report.first_bad_seq, report.records) == (False, 5, 9)
    assert report.problem == "seq 5: the body says seq 4 (moved or reordered?)"


async def test_swapping_two_rows_contents_is_found_at_the_earlier_one(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    await filled(path, 8)
    with attacker(path) as conn:
        rest = "event_id, ts, event_type, correlation_id, body, prev_hash, entry_hash"
        row3 = conn.execute(f"SELECT {rest} FROM evidence WHERE seq = 3").fetchone()
        row6 = conn.execute(f"SELECT {rest} FROM evidence WHERE seq = 6").fetchone()
        assignments = ", ".join(f"{name} = ?" for name in rest.split(", "))
        conn.execute("UPDATE evidence SET event_id = 'tmp' WHERE seq = 3")  # event_id is UNIQUE
        conn.execute(f"UPDATE evidence SET {assignments} WHERE seq = 6", row3)
        conn.execute(f"UPDATE evidence SET {assignments} WHERE seq = 3", row6)
    report = await verify(path)
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert report.problem == "seq 3: the body says seq 6 (moved or reordered?)"


async def test_reformatting_a_body_without_changing_its_meaning_is_found(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    await filled(path, 8)
    with attacker(path) as conn:
        (body,) = conn.execute("SELECT body FROM evidence WHERE seq = 2").fetchone()
        conn.execute("UPDATE evidence SET body = ? WHERE seq = 2", (json.dumps(json.loads(body), indent=2),))
    report = await verify(path)
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert report.problem == "seq 2: body is not in canonical form (re-formatted or edited?)"


@pytest.mark.parametrize(
    "statement", ["UPDATE evidence SET event_type = 'x' WHERE seq = 1", "DELETE FROM evidence WHERE seq = 2"]
)
async def test_triggers_block_updates_and_deletes_while_they_are_in_place(
    tmp_path: Path, statement: str
) -> None:
    path = tmp_path / "gate.db"
    await filled(path, 2)
    with (
        pytest.raises(sqlite3.DatabaseError, match="evidence is append-only"),
        attacker(path, drop_triggers=False) as conn,
    ):
        conn.execute(statement)
    assert (await verify(path)).ok


# opening


async def test_opening_a_directory_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        await SQLiteStore.open(tmp_path)
    assert str(tmp_path) in str(caught.value) and "\n" not in str(caught.value)


async def test_opening_a_file_that_is_not_a_database_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the tables you are looking for\n" * 100)
    with pytest.raises(StoreError, match="not a database") as caught:
        await SQLiteStore.open(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


async def test_opening_under_a_file_fails_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot open the store at"):
        await SQLiteStore.open(tmp_path / "file" / "gate.db")


async def test_the_file_uses_wal_and_records_its_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    async with await SQLiteStore.open(path):
        pass
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)


# property: any single mutation is found at the earliest affected seq


def _rewrite(path: Path, rows: Sequence[tuple[Any, ...]]) -> None:
    """Replace the evidence table with a plain one holding `rows` in this stored order."""
    with attacker(path, drop_triggers=False) as conn:
        conn.execute("DROP TABLE evidence")
        conn.execute(f"CREATE TABLE evidence ({COLUMNS})")
        conn.executemany("INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _flip(text: str, position: int) -> str:
    position %= len(text)
    replacement = "x" if text[position] != "x" else "y"
    return text[:position] + replacement + text[position + 1 :]


@st.composite
def _mutations(draw: st.DrawFn) -> tuple[int, list[int], str, int, int]:
    count = draw(st.integers(2, 60))
    batches = draw(st.lists(st.integers(1, 5), min_size=1, max_size=count))
    kind = draw(st.sampled_from(["flip", "delete", "duplicate", "swap"]))
    first = draw(st.integers(1, count - 1 if kind in ("delete", "swap") else count))
    second = draw(st.integers(first + 1, count)) if kind == "swap" else draw(st.integers(0, 10_000))
    return count, batches, kind, first, second


@settings(max_examples=100, deadline=None)
@given(_mutations())
def test_any_single_mutation_is_found_at_the_earliest_affected_seq(
    case: tuple[int, list[int], str, int, int],
) -> None:
    count, batches, kind, first, second = case

    async def scenario(path: Path) -> None:
        async with await SQLiteStore.open(path) as store:
            written = 0
            for size in batches * count:
                size = min(size, count - written)
                if size <= 0:
                    break
                await store.append([event(correlation_id=f"c{written + i}", i=i) for i in range(size)])
                written += size
        with closing(sqlite3.connect(path)) as conn:
            rows = [list(row) for row in conn.execute(f"SELECT {COLUMNS} FROM evidence ORDER BY seq")]
        assert len(rows) == count
        index = first - 1
        if kind == "flip":
            rows[index][5] = _flip(rows[index][5], second)
            expected = first
        elif kind == "delete":
            del rows[index]
            expected = first
        elif kind == "duplicate":
            rows.insert(index + 1, list(rows[index]))
            expected = first + 1
        else:
            rows[index], rows[second - 1] = rows[second - 1], rows[index]
            expected = first
        _rewrite(path, [tuple(row) for row in rows])
        report = await verify(path)
        assert not report.ok, kind
        assert report.first_bad_seq == expected, report.problem

    with tempfile.TemporaryDirectory() as directory:
        anyio.run(scenario, Path(directory) / "gate.db", backend="asyncio")


@pytest.mark.anyio
async def test_verifying_a_file_never_writes_to_it_so_dropped_triggers_stay_dropped(tmp_path: Path) -> None:
    from mcp_gate.evidence import new_event
    from mcp_gate.storage import verify_file

    db = tmp_path / "gate.db"
    async with await SQLiteStore.open(db) as store:
        await store.append([new_event("gate.started", ts="2026-11-24T00:00:00.000000Z", correlation_id=None)])
    raw = sqlite3.connect(db)
    raw.execute("DROP TRIGGER evidence_no_update")
    raw.commit()
    raw.close()
    before = db.read_bytes()
    report = await verify_file(db)
    assert report.ok and report.records == 1
    assert db.read_bytes() == before
    raw = sqlite3.connect(db)
    triggers = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    raw.close()
    assert "evidence_no_update" not in triggers


@pytest.mark.anyio
async def test_a_file_from_before_the_migrations_were_numbered_gets_the_columns_added_since(
    tmp_path: Path,
) -> None:
    db = tmp_path / "gate.db"
    async with await SQLiteStore.open(db):
        pass
    raw = sqlite3.connect(db)
    raw.execute("ALTER TABLE grants DROP COLUMN pin")
    raw.execute("ALTER TABLE grants DROP COLUMN policy_sha256")
    raw.execute("DELETE FROM meta WHERE key = 'schema_migration'")  # kept up to date column by column
    raw.commit()
    raw.close()
    async with await SQLiteStore.open(db) as store:
        assert await store.read(lambda tx: tx.grants()) == []
    raw = sqlite3.connect(db)
    columns = {row[1] for row in raw.execute("PRAGMA table_info(grants)")}
    raw.close()
    assert {"rule", "policy_sha256", "pin"} <= columns


async def test_the_schema_is_the_numbered_migrations_applied_in_order_and_recorded(tmp_path: Path) -> None:
    from mcp_gate.storage.sqlite.schema import migrations

    shipped = migrations()
    assert [number for number, _, _ in shipped] == list(range(1, len(shipped) + 1))
    assert [name for _, name, _ in shipped][:3] == [
        "0001_initial.sql",
        "0002_grant_binding.sql",
        "0003_request_justification.sql",
    ]
    db = tmp_path / "gate.db"
    for _ in range(2):  # the second open applies nothing
        async with await SQLiteStore.open(db):
            pass
        with closing(sqlite3.connect(db)) as raw:
            (recorded,) = raw.execute("SELECT value FROM meta WHERE key = 'schema_migration'").fetchone()
            columns = {row[1] for row in raw.execute("PRAGMA table_info(approvals)")}
        assert int(recorded) == len(shipped) and "justification" in columns


async def test_a_file_part_way_through_the_migrations_gets_the_rest_on_opening(tmp_path: Path) -> None:
    db = tmp_path / "gate.db"
    async with await SQLiteStore.open(db) as store:
        await store.append([event()])
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("ALTER TABLE approvals DROP COLUMN justification")  # as migration 2 left it
        raw.execute("UPDATE meta SET value = '2' WHERE key = 'schema_migration'")
    async with await SQLiteStore.open(db) as store:
        assert await store.read(lambda tx: tx.requests()) == []
        assert (await store.verify()).ok
    with closing(sqlite3.connect(db)) as raw:
        assert "justification" in {row[1] for row in raw.execute("PRAGMA table_info(approvals)")}
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema_migration'").fetchone()[0] != "2"


async def test_a_file_migrated_by_a_newer_gate_is_refused_with_one_line_and_left_alone(
    tmp_path: Path,
) -> None:
    db = tmp_path / "gate.db"
    async with await SQLiteStore.open(db):
        pass
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("UPDATE meta SET value = '999' WHERE key = 'schema_migration'")
    with pytest.raises(StoreError, match="migration 999") as caught:
        await SQLiteStore.open(db)
    assert str(db) in str(caught.value) and "\n" not in str(caught.value)
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema_migration'").fetchone() == ("999",)
