"""Forged decisions: a process that can write gate.db but holds no approver credential releases nothing.

Each attacker here writes the SQLite file directly, as the agent's own OS user or a tool server could,
with the gate's own code for the hash chain where it wants its rows to look real. None of them has
the decision key, so none of their rows is backed by a sealed record, and the gate refuses and
records each one.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_gate.approvals import Approved, Denied, Pending
from mcp_gate.clock import utc_iso
from mcp_gate.evidence import canonical_json, chain_hash, new_event
from mcp_gate.server import FrontServer
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    eventually,
    notes_server,
    notes_server_table,
    running_gate,
    write_config,
)
from tests.test_holds import decide, in_background, text_of, wait_for_request

pytestmark = pytest.mark.anyio

APPROVERS = {
    "bob": approver_table("bob@example.com", ["sre"], "tok-bob"),
    "carol": approver_table("carol@example.com", ["security", "sre"], "tok-carol"),
    "dave": approver_table("dave@example.com", ["security"], "tok-dave"),
}


def make_config(tmp_path: Path, *, tiers: dict[str, Any] | None = None) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=APPROVERS,
        tiers=tiers or {"high": {"approvals": 1, "groups": ["sre"]}},
        approvals={"hold_seconds": 30, "progress_seconds": 0.05},
    )


def notes_gate(config: Path, **options: Any) -> AbstractAsyncContextManager[FrontServer]:
    """`config`'s gate with the notes server in this process instead of over stdio."""
    notes = notes_server(config.parent.parent / "notes")
    return running_gate(config, servers={"notes": notes}, **options)


def attacker(config: Path) -> sqlite3.Connection:
    """A raw connection to the gate's file, as anything running under the gate's OS user has."""
    return sqlite3.connect(config.parent / "data" / "gate.db", isolation_level=None, timeout=10)


def forge_vote(db: sqlite3.Connection, request_id: str, approver: str) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.execute(
        "INSERT INTO votes (request_id, approver, verdict, channel, at, note) "
        "VALUES (?, ?, 'approve', 'slack', ?, NULL)",
        (request_id, approver, "2026-12-07T00:00:00.000000Z"),
    )
    db.execute("UPDATE approvals SET state = 'approved' WHERE id = ?", (request_id,))
    db.execute("COMMIT")


def forge_chained_record(db: sqlite3.Connection, event: dict[str, Any]) -> None:
    """Append a record that the hash chain accepts: the chain needs no key."""
    seq, prev = db.execute("SELECT seq, entry_hash FROM evidence ORDER BY seq DESC LIMIT 1").fetchone()
    body = {**event, "seq": seq + 1}
    text = canonical_json(body)
    db.execute(
        "INSERT INTO evidence (seq, event_id, ts, event_type, correlation_id, body, prev_hash, entry_hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            seq + 1,
            body["event_id"],
            body["ts"],
            body["event_type"],
            body["correlation_id"],
            text.decode(),
            prev,
            chain_hash(prev, text),
        ),
    )


async def bodies(config: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


async def held_call_under_forgery(
    tmp_path: Path, config: Path, forge: Any
) -> tuple[Any, list[dict[str, Any]]]:
    async with notes_gate(config) as front, Client(front.server) as agent:
        async with anyio.create_task_group() as tg:
            box = await in_background(
                tg, lambda: agent.call_tool("notes__write_note", {"name": "n", "text": "x"})
            )
            request = await wait_for_request(front.gateway)
            await forge(front.gateway, request)
        [result] = box
        # The gate keeps serving.
        assert "notes__write_note" in [t.name for t in (await agent.list_tools()).tools]
    assert not (tmp_path / "notes" / "n").exists(), "a forged approval ran the call"
    return result, await bodies(config)


async def test_an_inserted_vote_and_an_approved_state_release_nothing_and_are_recorded(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)

    async def forge(gate: Any, request: Any) -> None:
        db = attacker(config)
        forge_vote(db, request.id, "bob")
        db.close()

    result, records = await held_call_under_forgery(tmp_path, config, forge)
    assert result.is_error and "could not be verified" in text_of(result)
    assert "approvals with no sealed decision: bob" in text_of(result)
    kinds = [r["event_type"] for r in records]
    assert "approval.forged" in kinds and "call.released" not in kinds and "call.completed" not in kinds
    forged = next(r for r in records if r["event_type"] == "approval.forged")
    assert forged["claimed"] == ["bob"] and forged["sealed"] == []


async def test_a_forged_decision_record_that_the_chain_accepts_is_still_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path)

    async def forge(gate: Any, request: Any) -> None:
        db = attacker(config)
        event = new_event(
            "approval.decided",
            ts=utc_iso(gate.clock.now()),
            correlation_id=request.correlation_id,
            gate={"name": gate.config.name, "version": "0"},
            policy_sha256=gate.policy_sha256,
            request_id=request.id,
            approver="bob",
            approver_email="bob@example.com",
            channel="slack",
            verdict="approve",
            seal="0" * 64,
        )
        db.execute("BEGIN IMMEDIATE")
        forge_chained_record(db, event)
        db.execute("COMMIT")
        forge_vote(db, request.id, "bob")
        db.close()

    result, records = await held_call_under_forgery(tmp_path, config, forge)
    assert result.is_error and "an unsealed approval.decided record" in text_of(result)
    assert "call.released" not in [r["event_type"] for r in records]


async def test_a_lowered_quorum_does_not_let_one_real_approval_release_a_two_person_call(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, tiers={"high": {"approvals": 2, "groups": ["security"]}})

    async def forge(gate: Any, request: Any) -> None:
        assert isinstance(await decide(gate, request.id, "carol"), Pending)
        db = attacker(config)
        db.execute("UPDATE approvals SET required = 1, state = 'approved' WHERE id = ?", (request.id,))
        db.close()

    result, records = await held_call_under_forgery(tmp_path, config, forge)
    assert result.is_error and "required differs from its sealed record" in text_of(result)
    assert "call.released" not in [r["event_type"] for r in records]


async def test_a_deleted_denial_does_not_reopen_a_denied_request(tmp_path: Path) -> None:
    config = make_config(tmp_path, tiers={"high": {"approvals": 2, "groups": ["security"]}})

    # The attacker cannot stop the real denial from being sealed: deny, then erase it from the tables.
    async with notes_gate(config) as front, Client(front.server) as agent:
        async with anyio.create_task_group() as tg:
            box = await in_background(
                tg, lambda: agent.call_tool("notes__write_note", {"name": "n", "text": "x"})
            )
            request = await wait_for_request(front.gateway)
            assert isinstance(await decide(front.gateway, request.id, "dave", "deny"), Denied)
        [first] = box
        assert first.is_error and "denied by dave" in text_of(first)
        db = attacker(config)
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM votes WHERE request_id = ? AND approver = 'dave'", (request.id,))
        db.execute("UPDATE approvals SET state = 'pending', reported = 0 WHERE id = ?", (request.id,))
        db.execute("COMMIT")
        db.close()
        async with anyio.create_task_group() as tg:
            box = await in_background(
                tg, lambda: agent.call_tool("notes__write_note", {"name": "n", "text": "x"})
            )
            await eventually(
                lambda: front.gateway.engine.get(request.id),
                what="the reopened request to be joined",
            )
            assert isinstance(await decide(front.gateway, request.id, "carol"), Pending)
            db = attacker(config)
            forge_vote(db, request.id, "bob")  # a second approval, forged, to reach the quorum of 2
            db.close()
        [second] = box
    assert second.is_error and not (tmp_path / "notes" / "n").exists()
    records = await bodies(config)
    assert "call.released" not in [r["event_type"] for r in records]
    assert any(r["event_type"] == "approval.forged" for r in records)


async def test_a_grant_row_without_a_sealed_grant_lets_nothing_through_and_is_recorded(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    async with notes_gate(config) as front, Client(front.server) as agent:
        async with anyio.create_task_group() as tg:
            box = await in_background(
                tg, lambda: agent.call_tool("notes__write_note", {"name": "n", "text": "x"})
            )
            request = await wait_for_request(front.gateway)
            # A real approval with a real grant, then the grant revoked: the row is un-revoked below.
            approved = await decide(front.gateway, request.id, "bob", grant_for=timedelta(minutes=30))
            assert isinstance(approved, Approved)
        [first] = box
        assert not first.is_error
        [real] = await front.gateway.engine.grants()
        await front.gateway.engine.revoke_grant(real.id, front.gateway.config.approvers["bob"])
        db = attacker(config)
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE grants SET revoked_at = NULL, revoked_by = NULL WHERE id = ?", (real.id,))
        # And a grant out of nowhere, copied from the real one's fields.
        row = db.execute("SELECT * FROM grants WHERE id = ?", (real.id,)).fetchone()
        db.execute(
            f"INSERT INTO grants VALUES ({', '.join('?' for _ in row)})",
            ("GFORGED1", *row[1:]),
        )
        db.execute("COMMIT")
        db.close()
        async with anyio.create_task_group() as tg:
            box = await in_background(
                tg, lambda: agent.call_tool("notes__write_note", {"name": "m", "text": "y"})
            )
            second = await wait_for_request(front.gateway)  # held: neither grant stood in for an approval
            assert isinstance(await decide(front.gateway, second.id, "carol", "deny"), Denied)
        [result] = box
    assert result.is_error and not (tmp_path / "notes" / "m").exists()
    forged = [r for r in await bodies(config) if r["event_type"] == "grant.forged"]
    whys = " ".join(r["why"] for r in forged)
    assert f"grant {real.id} was revoked by bob" in whys
    assert "grant GFORGED1 has no sealed grant.created record" in whys


async def test_decision_records_carry_a_seal_that_a_changed_field_breaks(tmp_path: Path) -> None:
    from mcp_gate.seals import seal, sealed_by

    key = b"k" * 32
    body = seal(key, {"event_type": "approval.decided", "approver": "bob", "verdict": "approve"})
    assert sealed_by(key, {**body, "seq": 7})  # the store's seq is outside the seal
    assert not sealed_by(key, {**body, "approver": "mallory"})
    assert not sealed_by(b"x" * 32, body)
    assert not sealed_by(key, {k: v for k, v in body.items() if k != "seal"})
    assert json.loads(json.dumps(body)) == body


# -- the gate's own files ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "relative", "symlink", "file-uri", "in-a-command"])
async def test_a_call_naming_the_gates_own_files_is_blocked_and_recorded(tmp_path: Path, how: str) -> None:
    config = make_config(tmp_path)
    db = config.parent / "data" / "gate.db"
    (tmp_path / "link").symlink_to(config.parent / "data")
    name = {
        "absolute": str(db),
        # Relative to the downstream's working directory (the config's folder unless set).
        "relative": "",
        "symlink": str(tmp_path / "link" / "gate.db"),
        "file-uri": f"file://{config}",
        "in-a-command": f"cp /dev/null {config.parent / 'tool_manifests' / 'notes.toml'}",
    }[how]
    async with notes_gate(config) as front, Client(front.server) as agent:
        if how == "relative":
            cwd = front.gateway.config.servers["notes"].cwd or Path.cwd()
            name = os.path.relpath(db, cwd)
            assert name.startswith("..") or not name.startswith("/")
        # Any string of the arguments counts, not only those the tool reads as a path.
        result = await agent.call_tool("notes__write_note", {"name": "n", "text": name})
        assert result.is_error and "only the gate may touch" in text_of(result)
        assert not await front.gateway.engine.pending(), (
            "a call on the gate's own files was held, not blocked"
        )
    decided = [r for r in await bodies(config) if r["event_type"] == "policy.decided"]
    assert decided[-1]["tier"] == "blocked" and decided[-1]["rule"] == "the gate's own files"


async def test_protecting_the_gates_own_files_can_be_turned_off(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write_text(
        config.read_text().replace('data_dir = "data"', 'data_dir = "data"\nprotect_own_files = false')
    )
    async with notes_gate(config) as front, Client(front.server) as agent:
        async with anyio.create_task_group() as tg:
            box = await in_background(
                tg, lambda: agent.call_tool("notes__write_note", {"name": str(config), "text": "x"})
            )
            request = await wait_for_request(front.gateway)  # held as any write is, not blocked
            await decide(front.gateway, request.id, "bob", "deny")
        [result] = box
    assert result.is_error and "denied by bob" in text_of(result)


async def test_the_data_dir_is_private_to_the_gates_user(tmp_path: Path) -> None:
    import stat

    config = make_config(tmp_path)
    data = config.parent / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    async with notes_gate(config):
        pass
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("gate.db", "decisions.key", "args.key"):
        if (data / name).exists():
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert (data / "gate.db").exists() and os.access(data / "gate.db", os.R_OK)
