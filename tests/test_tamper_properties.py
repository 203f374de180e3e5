"""Property tests: one mutation of a checkpointed log (2,000 records, and logs of varied size and
checkpoint spacing) is always caught, at the right seq."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mcp_gate.checkpoints import SigningKey, parse_checkpoint, sign_note, split_notes
from mcp_gate.evidence import GENESIS_HASH, canonical_json, chain_hash, new_event
from mcp_gate.notary import FileSink, Notary
from mcp_gate.storage import verify_file
from mcp_gate.storage.sqlite import SQLiteStore

N = 2000
EVERY = 100
KEY = SigningKey.generate("mcp-gate-props")
OTHER = SigningKey.generate("mcp-gate-props")
COLUMNS = ("event_id", "ts", "event_type", "correlation_id", "body", "prev_hash", "entry_hash")
ROW = "seq, event_id, ts, event_type, correlation_id, body, prev_hash, entry_hash"


@dataclass(frozen=True)
class Log:
    path: Path
    copies: list[str] = field(repr=False)  # the notes a file sink on other storage received


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    directory = tmp_path_factory.mktemp("props")
    sink = directory / "copies.log"

    async def build() -> None:
        notary = Notary(KEY, "mcp-gate/props", every_records=EVERY, sinks=(FileSink(sink),))
        async with await SQLiteStore.open(directory / "gate.db", notary=notary) as store:
            for chunk in range(N // EVERY):
                events = [
                    new_event(
                        "call.requested",
                        ts=f"2026-11-24T12:{chunk:02d}:{i % 60:02d}.000000Z",
                        correlation_id=f"c{chunk}-{i}",
                        args={"text": "héllo" if i % 7 == 0 else f"note {i}", "n": i, "x": 1.5 * i},
                    )
                    for i in range(EVERY)
                ]
                await store.append(events)

    anyio.run(build)
    return Log(directory / "gate.db", list(split_notes(sink.read_text())))


@contextmanager
def copy_of(log: Log) -> Iterator[tuple[Path, sqlite3.Connection]]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gate.db"
        shutil.copy(log.path, path)
        with closing(sqlite3.connect(path)) as conn:
            for trigger in ("evidence_no_update", "evidence_no_delete", "checkpoints_no_delete"):
                conn.execute(f"DROP TRIGGER {trigger}")
            yield path, conn


def verify(path: Path, log: Log) -> Any:
    copies = [("copy elsewhere", note) for note in log.copies]
    return anyio.run(lambda: verify_file(path, verifiers=[KEY.verifier], extra_notes=copies))


def row(conn: sqlite3.Connection, seq: int) -> list[Any]:
    return list(conn.execute(f"SELECT {ROW} FROM evidence WHERE seq = ?", (seq,)).fetchone())


def shift_up(conn: sqlite3.Connection, from_seq: int) -> None:
    conn.execute("UPDATE evidence SET seq = -(seq + 1) WHERE seq >= ?", (from_seq,))
    conn.execute("UPDATE evidence SET seq = -seq WHERE seq < 0")


PROPS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_caught(path: Path, log: Log, first_bad: int) -> None:
    report = verify(path, log)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.problem
    assert report.problem


def test_the_untouched_log_verifies_with_every_checkpoint(log: Log) -> None:
    with copy_of(log) as (path, conn):
        conn.commit()
        report = verify(path, log)
    assert report.ok and report.records == N and report.covered == N and report.checkpoints == 2 * N // EVERY


@PROPS
@given(seq=st.integers(1, N), column=st.sampled_from(COLUMNS), data=st.data())
def test_a_byte_flipped_in_any_column_is_caught_at_its_seq(
    log: Log, seq: int, column: str, data: Any
) -> None:
    with copy_of(log) as (path, conn):
        (value,) = conn.execute(f"SELECT {column} FROM evidence WHERE seq = ?", (seq,)).fetchone()
        at = data.draw(st.integers(0, len(value) - 1))
        flipped = value[:at] + chr(ord(value[at]) ^ 0x01) + value[at + 1 :]
        conn.execute(f"UPDATE evidence SET {column} = ? WHERE seq = ?", (flipped, seq))
        conn.commit()
        assert_caught(path, log, seq)


@PROPS
@given(seq=st.integers(1, N))
@example(seq=1)
@example(seq=EVERY - 1)
@example(seq=EVERY)
@example(seq=N)
def test_a_deleted_record_is_caught_at_its_seq(log: Log, seq: int) -> None:
    with copy_of(log) as (path, conn):
        conn.execute("DELETE FROM evidence WHERE seq = ?", (seq,))
        conn.commit()
        assert_caught(path, log, seq)


@PROPS
@given(seq=st.integers(1, N))
@example(seq=1)
@example(seq=EVERY - 1)
@example(seq=EVERY)
@example(seq=N)
def test_an_inserted_well_hashed_record_is_caught_at_the_record_it_displaced(log: Log, seq: int) -> None:
    with copy_of(log) as (path, conn):
        original = row(conn, seq)
        shift_up(conn, seq)
        body = json.loads(original[5])
        body["event_id"] = "forged"
        text = canonical_json(body)
        forged = [seq, "forged", *original[2:5], text.decode(), original[6], chain_hash(original[6], text)]
        conn.execute("INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?)", forged)
        conn.commit()
        # The forgery links well, so the chain breaks at the record after it; if it sits at a
        # checkpoint's size, that checkpoint disowns it and nothing since the one before is proven.
        assert_caught(path, log, seq - EVERY + 1 if seq % EVERY == 0 else seq + 1)


@PROPS
@given(seq=st.integers(1, N))
@example(seq=1)
@example(seq=EVERY - 1)
@example(seq=EVERY)
@example(seq=N)
def test_a_duplicated_record_is_caught_where_the_copy_sits(log: Log, seq: int) -> None:
    with copy_of(log) as (path, conn):
        original = row(conn, seq)
        shift_up(conn, seq + 1)
        # The event_id column is UNIQUE, so the copy's column differs; its body is the same bytes.
        copy = [seq + 1, original[1] + "-again", *original[2:]]
        conn.execute("INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?)", copy)
        conn.commit()
        assert_caught(path, log, seq + 1)


@PROPS
@given(seq=st.integers(1, N - 1))
@example(seq=EVERY)
@example(seq=N - 1)
def test_two_swapped_records_are_caught_at_the_first(log: Log, seq: int) -> None:
    with copy_of(log) as (path, conn):
        a, b = row(conn, seq), row(conn, seq + 1)
        conn.execute("DELETE FROM evidence WHERE seq IN (?, ?)", (seq, seq + 1))
        conn.execute("INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [seq, *b[1:]])
        conn.execute("INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [seq + 1, *a[1:]])
        conn.commit()
        assert_caught(path, log, seq)


@PROPS
@given(keep=st.integers(0, N - 1))
@example(keep=0)
@example(keep=EVERY)
@example(keep=N - 1)
def test_a_truncated_tail_is_caught_at_the_first_missing_seq_even_with_its_checkpoints_gone(
    log: Log, keep: int
) -> None:
    with copy_of(log) as (path, conn):
        conn.execute("DELETE FROM evidence WHERE seq > ?", (keep,))
        conn.execute("DELETE FROM checkpoints WHERE size > ?", (keep,))
        conn.commit()
        assert_caught(path, log, keep + 1)


def rewrite_from(conn: sqlite3.Connection, seq: int, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit record `seq` and recompute every hash after it, as someone with the file but no key would."""
    prev = GENESIS_HASH if seq == 1 else row(conn, seq - 1)[7]
    rows = list(conn.execute(f"SELECT {ROW} FROM evidence WHERE seq >= ? ORDER BY seq", (seq,)))
    for current in rows:
        body = json.loads(current[5])
        if current[0] == seq:
            edit(body)
        text = canonical_json(body)
        entry = chain_hash(prev, text)
        conn.execute(
            "UPDATE evidence SET body = ?, prev_hash = ?, entry_hash = ? WHERE seq = ?",
            (text.decode(), prev, entry, current[0]),
        )
        prev = entry


@PROPS
@given(seq=st.integers(1, N))
@example(seq=1)
@example(seq=EVERY - 1)
@example(seq=EVERY)
@example(seq=N)
def test_a_full_rewrite_with_recomputed_hashes_is_caught_after_the_last_checkpoint_it_left_intact(
    log: Log, seq: int
) -> None:
    with copy_of(log) as (path, conn):

        def edit(body: dict[str, Any]) -> None:
            body["args"] = {"text": "nothing to see"}

        rewrite_from(conn, seq, edit)
        conn.execute("DELETE FROM checkpoints WHERE size >= ?", (seq,))
        conn.commit()
        # The chain is self-consistent again; only the signed checkpoints know better.
        proven = (seq - 1) // EVERY * EVERY
        assert_caught(path, log, proven + 1)


@PROPS
@given(index=st.integers(0, 2 * N // EVERY - 1), how=st.sampled_from(["root", "size", "other key"]))
def test_a_forged_checkpoint_is_caught_and_names_the_seq_it_claims(log: Log, index: int, how: str) -> None:
    with copy_of(log) as (path, conn):
        ((note,),) = conn.execute("SELECT note FROM checkpoints ORDER BY id LIMIT 1 OFFSET ?", (index % 20,))
        body, _, signature = note.partition("\n\n")
        lines = body.split("\n")
        if how == "root":
            lines[2] = base64.b64encode(bytes(32)).decode()
            forged = "\n".join(lines) + "\n\n" + signature
        elif how == "size":
            lines[1] = str(int(lines[1]) - 1)
            forged = "\n".join(lines) + "\n\n" + signature
        else:
            forged = sign_note(body + "\n", OTHER)
        claimed = parse_checkpoint("\n".join(lines) + "\n").size
        conn.execute(
            "INSERT INTO checkpoints (size, kind, created_at, note) VALUES (?, 'checkpoint', '', ?)",
            (claimed, forged),
        )
        conn.commit()
        assert_caught(path, log, claimed)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.text(alphabet=st.characters(max_codepoint=127)),
    lambda inner: st.lists(inner) | st.tuples(inner) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=25,
)


def _outcome(fn: Callable[[], bytes]) -> bytes | str:
    try:
        return fn()
    except Exception as exc:  # which error does not matter, only that both refuse
        return f"refused ({type(exc).__name__})"[:9]


@settings(max_examples=200, deadline=None)
@given(value=JSON)
def test_the_fast_canonical_json_writes_exactly_what_rfc8785_writes_or_refuses_alike(value: Any) -> None:
    import rfc8785

    assert _outcome(lambda: canonical_json(value)) == _outcome(lambda: rfc8785.dumps(value))


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(st.text(max_size=5), JSON))
def test_verification_accepts_exactly_the_bodies_rfc8785_calls_canonical(value: dict[str, Any]) -> None:
    import rfc8785

    from mcp_gate.evidence import ChainVerifier

    body = {**value, "seq": 1, "event_id": "e", "ts": "t", "event_type": "x", "correlation_id": None}
    try:
        text = rfc8785.dumps(body)
    except Exception:
        return
    verifier = ChainVerifier()
    verifier.feed(1, "e", "t", "x", None, text.decode(), GENESIS_HASH, chain_hash(GENESIS_HASH, text))
    assert verifier.ok


@settings(max_examples=15, deadline=None)
@given(
    size=st.integers(1, 300),
    every=st.integers(1, 60),
    chunk=st.integers(1, 25),
    mutation=st.sampled_from(("flip", "delete", "truncate")),
    data=st.data(),
)
def test_any_log_size_and_checkpoint_spacing_catch_a_mutation_the_checkpoints_cover(
    size: int, every: int, chunk: int, mutation: str, data: Any
) -> None:
    """Logs of varied size, written in varied commits, checkpointed at varied spacing."""
    with tempfile.TemporaryDirectory() as directory:
        path, sink = Path(directory) / "gate.db", Path(directory) / "copies.log"

        async def build() -> None:
            notary = Notary(KEY, "mcp-gate/props", every_records=every, sinks=(FileSink(sink),))
            async with await SQLiteStore.open(path, notary=notary) as store:
                for start in range(0, size, chunk):
                    await store.append(
                        [
                            new_event(
                                "call.requested",
                                ts="2026-11-24T12:00:00.000000Z",
                                correlation_id=f"c{i}",
                                n=i,
                            )
                            for i in range(start, min(size, start + chunk))
                        ]
                    )

        anyio.run(build)
        copies = list(split_notes(sink.read_text()))
        covered = max(parse_checkpoint(n.partition("\n\n")[0] + "\n").size for n in copies)
        seq = data.draw(st.integers(1, size))
        with closing(sqlite3.connect(path)) as conn, conn:
            for trigger in ("evidence_no_update", "evidence_no_delete", "checkpoints_no_delete"):
                conn.execute(f"DROP TRIGGER {trigger}")
            if mutation == "flip":
                conn.execute(
                    "UPDATE evidence SET body = replace(body, '\"n\":', '\"m\":') WHERE seq = ?", (seq,)
                )
            elif mutation == "delete":
                conn.execute("DELETE FROM evidence WHERE seq = ?", (seq,))
            else:
                conn.execute("DELETE FROM evidence WHERE seq >= ?", (seq,))
                conn.execute("DELETE FROM checkpoints")  # the copies elsewhere remain
        report = anyio.run(
            lambda: verify_file(path, verifiers=[KEY.verifier], extra_notes=[("copy", n) for n in copies])
        )
        cuts_the_tail = mutation == "truncate" or (mutation == "delete" and seq == size)
        if cuts_the_tail and seq > covered:
            assert report.ok  # a tail no checkpoint covered: nothing can tell it was there
        else:
            assert not report.ok and report.first_bad_seq == seq, (report.problem, covered)
