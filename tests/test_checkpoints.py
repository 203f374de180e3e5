from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from mcp_gate.checkpoints import (
    SigningKey,
    VerifierKey,
    open_note,
    parse_checkpoint,
    sign_note,
    split_notes,
)
from mcp_gate.errors import CheckpointError, EvidenceWriteError, GateError, StoreError
from mcp_gate.evidence import new_event
from mcp_gate.notary import FileSink, Notary, WebhookSink, create_key_file, load_key_file
from mcp_gate.storage import verify_file
from mcp_gate.storage.base import Tx
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import FakeClock

pytestmark = pytest.mark.anyio

KEY = SigningKey.generate("mcp-gate-test")
OTHER = SigningKey.generate("mcp-gate-test")


def event(event_type: str = "call.requested", **fields: Any) -> dict[str, Any]:
    return new_event(event_type, ts="2026-11-24T12:00:00.000000Z", correlation_id="c1", **fields)


def notary(**kwargs: Any) -> Notary:
    return Notary(KEY, "mcp-gate/test", **kwargs)


# -- the signed-note format -------------------------------------------------------------------


def test_a_signed_note_opens_with_its_key_and_names_the_body() -> None:
    body = "mcp-gate/test\n3\n" + base64.b64encode(bytes(32)).decode() + "\n"
    note = sign_note(body, KEY)
    assert note.startswith(body + "\n\u2014 mcp-gate-test ")
    opened, signers = open_note(note, [KEY.verifier])
    assert opened == body and signers == (KEY.verifier,)


def test_the_key_hash_is_the_c2sp_one_over_name_newline_algorithm_and_key() -> None:
    verifier = KEY.verifier
    expected = hashlib.sha256(b"mcp-gate-test\n\x01" + verifier.public).digest()[:4]
    assert verifier.key_id == expected.hex()
    name, key_hash, encoded = verifier.to_text().split("+", 2)
    assert (name, key_hash) == ("mcp-gate-test", expected.hex())
    assert base64.b64decode(encoded) == b"\x01" + verifier.public
    assert VerifierKey.from_text(verifier.to_text()) == verifier
    assert SigningKey.from_text(KEY.to_text()) == KEY


def test_a_changed_body_or_another_key_does_not_open() -> None:
    note = sign_note("origin\n1\n" + base64.b64encode(bytes(32)).decode() + "\n", KEY)
    with pytest.raises(CheckpointError, match="does not verify"):
        open_note(note.replace("\n1\n", "\n2\n"), [KEY.verifier])
    with pytest.raises(CheckpointError, match="another key"):
        open_note(
            sign_note("origin\n1\n" + base64.b64encode(bytes(32)).decode() + "\n", OTHER), [KEY.verifier]
        )


def test_a_signing_key_never_shows_its_seed() -> None:
    assert base64.b64encode(KEY.seed).decode() not in repr(KEY)


def test_a_checkpoint_body_is_origin_size_and_base64_root_with_extension_lines() -> None:
    root = hashlib.sha256(b"x").hexdigest()
    body = notary().sign(7, root, FakeClock().now()).partition("\n\n")[0] + "\n"
    lines = body.splitlines()
    assert lines[:3] == ["mcp-gate/test", "7", base64.b64encode(bytes.fromhex(root)).decode()]
    assert lines[3].startswith("time 2026-11-24T12:00:00")
    assert parse_checkpoint(body).root == root and parse_checkpoint(body).size == 7


def test_notes_in_a_checkpoint_file_split_one_by_one() -> None:
    notes = [notary().sign(n, "ab" * 32, FakeClock().now()) for n in (1, 2, 3)]
    assert list(split_notes("\n".join(notes))) == notes


# -- the key file -----------------------------------------------------------------------------


def test_keys_are_created_0600_never_overwritten_and_refused_when_others_can_read_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "signing.key"
    key = create_key_file(path, "mcp-gate-x")
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_key_file(path) == key
    with pytest.raises(GateError, match="never overwritten"):
        create_key_file(path, "mcp-gate-x")
    os.chmod(path, 0o640)
    with pytest.raises(GateError, match=r"readable by others \(mode 0640\); run chmod 600"):
        load_key_file(path)


# -- when the store signs -----------------------------------------------------------------------


async def checkpoints_of(store: SQLiteStore) -> list[int]:
    return [parse_checkpoint(open_note(n, [KEY.verifier])[0]).size for n in await store.checkpoint_notes()]


async def test_a_checkpoint_is_signed_every_n_records(tmp_path: Path) -> None:
    async with await SQLiteStore.open(tmp_path / "gate.db", notary=notary(every_records=5)) as store:
        for _ in range(12):
            await store.append([event()])
        assert await checkpoints_of(store) == [1, 6, 11]  # the first record, then every 5


async def test_a_checkpoint_follows_every_approval_decision_at_once(tmp_path: Path) -> None:
    async with await SQLiteStore.open(tmp_path / "gate.db", notary=notary(every_records=1000)) as store:
        await store.append([event()])
        await store.append([event(), event()])
        await store.transact(lambda tx: tx.append([event("approval.decided", verdict="approve")]))
        assert await checkpoints_of(store) == [1, 4]


async def test_a_decision_written_by_another_process_is_checkpointed_by_the_next_commit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gate.db"
    async with await SQLiteStore.open(path, notary=notary(every_records=1000)) as gate:
        await gate.append([event()])
        async with await SQLiteStore.open(path) as cli:  # an older CLI without the key
            await cli.append([event("approval.decided")])
        await gate.append([event()])
        assert await checkpoints_of(gate) == [1, 3]


async def test_checkpoint_now_signs_only_when_the_log_grew(tmp_path: Path) -> None:
    async with await SQLiteStore.open(tmp_path / "gate.db", notary=notary(every_records=1000)) as store:
        await store.append([event(), event()])
        await store.append([event()])
        assert await store.checkpoint() is not None
        assert await store.checkpoint() is None
        assert await checkpoints_of(store) == [2, 3]


async def test_every_checkpoint_is_copied_to_the_file_sink(tmp_path: Path) -> None:
    sink = tmp_path / "elsewhere" / "checkpoints.log"
    sink.parent.mkdir()
    async with await SQLiteStore.open(
        tmp_path / "gate.db", notary=notary(every_records=2, sinks=(FileSink(sink),))
    ) as store:
        for _ in range(5):
            await store.append([event()])
        stored = await store.checkpoint_notes()
    assert list(split_notes(sink.read_text())) == stored and len(stored) == 3


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, Any], str | None, bytes]]
    status = 204

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((json.loads(raw), self.headers.get("X-MCP-Gate-Signature"), raw))
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def webhook(status: int = 204) -> Iterator[tuple[str, list[tuple[dict[str, Any], str | None, bytes]]]]:
    received: list[tuple[dict[str, Any], str | None, bytes]] = []
    handler = type("Hook", (_Hook,), {"received": received, "status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook/secret-path", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_each_checkpoint_is_posted_to_the_webhook_with_an_hmac_of_the_body(tmp_path: Path) -> None:
    with webhook() as (url, received):
        sink = WebhookSink(url, "hook-secret")
        async with await SQLiteStore.open(
            tmp_path / "gate.db", notary=notary(every_records=1, sinks=(sink,))
        ) as store:
            await store.append([event()])
            stored = await store.checkpoint_notes()
    assert len(received) == 1
    payload, signature, raw = received[0]
    assert payload["checkpoint"] == stored[0] and stored[0] in payload["text"]
    assert signature == "sha256=" + hmac.new(b"hook-secret", raw, hashlib.sha256).hexdigest()


async def test_a_missed_copy_is_recorded_as_evidence_without_the_webhook_url(tmp_path: Path) -> None:
    with webhook(status=500) as (url, _):
        sink = WebhookSink(url, "hook-secret")
        async with await SQLiteStore.open(
            tmp_path / "gate.db", notary=notary(every_records=1, sinks=(sink,))
        ) as store:
            await store.append([event()])
            missed = await store.records(event_type="checkpoint.copy_failed")
            all_text = json.dumps([dict(r.body) for r in await store.records()])
    assert len(missed) == 1
    assert missed[0].body["size"] == 1 and missed[0].body["failed"] == [
        "webhook 127.0.0.1: answered HTTP 500"
    ]
    assert "secret-path" not in all_text and "hook-secret" not in all_text


# -- verifying against checkpoints ----------------------------------------------------------


@contextmanager
def attacker(path: Path) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TRIGGER evidence_no_update")
        conn.execute("DROP TRIGGER evidence_no_delete")
        with conn:
            yield conn


async def test_a_truncated_tail_with_its_checkpoints_removed_is_caught_by_the_copy_elsewhere(
    tmp_path: Path,
) -> None:
    sink = tmp_path / "copies.log"
    path = tmp_path / "gate.db"
    async with await SQLiteStore.open(path, notary=notary(every_records=4, sinks=(FileSink(sink),))) as store:
        for _ in range(10):
            await store.append([event()])
    with attacker(path) as conn:
        conn.execute("DROP TRIGGER checkpoints_no_delete")
        conn.execute("DELETE FROM evidence WHERE seq > 6")
        conn.execute("DELETE FROM checkpoints WHERE size > 6")
    alone = await verify_file(path, verifiers=[KEY.verifier])
    assert alone.ok  # the file alone cannot tell: that is what the copy is for
    copies = [("sink", n) for n in split_notes(sink.read_text())]
    report = await verify_file(path, verifiers=[KEY.verifier], extra_notes=copies)
    assert not report.ok and report.first_bad_seq == 7
    assert "seq 7 missing" in (report.problem or "") and "truncated" in (report.problem or "")


async def test_verification_with_checkpoints_needs_only_the_public_key(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    async with await SQLiteStore.open(path, notary=notary(every_records=3)) as store:
        for _ in range(7):
            await store.append([event()])
    report = await verify_file(path, verifiers=[VerifierKey.from_text(KEY.verifier.to_text())])
    assert report.ok and report.checkpoints == 3 and report.covered == 7 and report.keys_checked


# -- group commit -----------------------------------------------------------------------------


async def test_concurrent_writers_share_commits_and_each_gets_its_own_records(tmp_path: Path) -> None:
    results: dict[int, int] = {}
    async with await SQLiteStore.open(tmp_path / "gate.db") as store:

        async def write(i: int) -> None:
            (record,) = await store.append([event(writer=i)])
            results[i] = record.seq
            assert record.body["writer"] == i

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(write, i)
        assert sorted(results.values()) == list(range(1, 61))
        assert (await store.verify()).ok


async def test_a_failing_writer_in_a_batch_commits_nothing_and_spoils_no_one_else(tmp_path: Path) -> None:
    outcomes: dict[int, Any] = {}
    async with await SQLiteStore.open(tmp_path / "gate.db") as store:

        def fn(i: int) -> Any:
            def run(tx: Tx) -> int:
                tx.append([event(writer=i)])
                if i % 3 == 0:
                    tx.conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', 'x')")
                return i

            return run

        async def write(i: int) -> None:
            try:
                outcomes[i] = await store.transact(fn(i))
            except EvidenceWriteError as exc:
                outcomes[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(write, i)
        written = [r.body["writer"] for r in await store.records()]
    failed = sorted(i for i, o in outcomes.items() if isinstance(o, EvidenceWriteError))
    assert failed == list(range(0, 30, 3))
    assert all(outcomes[i] == i for i in range(30) if i % 3)
    assert sorted(written) == [i for i in range(30) if i % 3]
    assert all("UNIQUE" in str(outcomes[i]) for i in failed)


async def test_a_store_error_raised_by_one_writer_reaches_only_that_writer(tmp_path: Path) -> None:
    async with await SQLiteStore.open(tmp_path / "gate.db") as store:

        def refuse(tx: Tx) -> None:
            tx.append([event()])
            raise StoreError("no such pin")

        async def ok() -> None:
            await store.append([event()])

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(ok)
            with pytest.raises(StoreError, match="no such pin"):
                await store.transact(refuse)
        assert len(await store.records()) == 5


async def test_a_writer_cancelled_while_queued_writes_nothing_and_the_queue_moves_on(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()
    async with await SQLiteStore.open(tmp_path / "gate.db") as store:

        def slow(tx: Tx) -> None:
            tx.append([event(writer="slow")])
            started.set()
            release.wait(10)

        async with anyio.create_task_group() as tg:
            tg.start_soon(store.transact, slow)
            await anyio.to_thread.run_sync(started.wait, 10)
            with anyio.CancelScope() as scope:
                scope.cancel()  # cancelled while queued behind the batch in progress
                await store.append([event(writer="cancelled")])
            tg.start_soon(store.append, [event(writer="after")])
            await anyio.lowlevel.checkpoint()
            release.set()
        writers = [r.body["writer"] for r in await store.records()]
    assert writers == ["slow", "after"]


async def test_a_checkpoint_is_signed_once_the_interval_passed_and_new_records_came(tmp_path: Path) -> None:
    clock = FakeClock()
    policy = notary(every_records=1000, every_seconds=60)
    async with await SQLiteStore.open(tmp_path / "gate.db", clock=clock, notary=policy) as store:
        await store.append([event()])  # the first record is always covered
        await store.append([event()])
        clock.advance(seconds=59)
        await store.append([event()])
        clock.advance(seconds=1)
        await store.append([event()])
        assert await checkpoints_of(store) == [1, 4]


# The example key and note of the reference implementation (golang.org/x/mod/sumdb/note).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_SIGNATURE = (
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_notes_match_the_reference_implementations_example_byte_for_byte() -> None:
    key = SigningKey.from_text(GO_SKEY)
    assert key.verifier.to_text() == GO_VKEY and key.to_text() == GO_SKEY
    assert sign_note(GO_TEXT, key) == GO_TEXT + "\n" + GO_SIGNATURE
    body, signers = open_note(GO_TEXT + "\n" + GO_SIGNATURE, [VerifierKey.from_text(GO_VKEY)])
    assert body == GO_TEXT and [s.to_text() for s in signers] == [GO_VKEY]
