"""`args_sha256` is keyed per deployment: exact for approvals across restarts, not guessable from the log."""

from __future__ import annotations

import hashlib
import stat
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from mcp_gate.evidence import args_digest, args_key_id, canonical_json
from mcp_gate.server import FrontServer
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    notes_server,
    notes_server_table,
    running_gate,
    write_config,
)

pytestmark = pytest.mark.anyio


def make_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers={"bob": approver_table("bob@example.com", ["sre"], "tok-bob")},
        tiers={"high": {"approvals": 1}},
        approvals={"hold_seconds": 0.2},
    )


def notes_gate(config: Path, **options: Any) -> AbstractAsyncContextManager[FrontServer]:
    """`config`'s gate with the notes server in this process instead of over stdio."""
    notes = notes_server(config.parent.parent / "notes")
    return running_gate(config, servers={"notes": notes}, **options)


async def held_digest(config: Path, args: dict[str, str]) -> str:
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__write_note", args)
        [request] = await front.gateway.engine.pending()
        return request.binding.args_sha256


async def test_a_short_redacted_secret_cannot_be_recovered_from_the_stored_argument_hash(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    stored = await held_digest(config, {"name": "vault", "text": "4821"})
    # What an attacker with the log (and not the key) can try: every 4-digit value, unkeyed.
    guesses = {
        hashlib.sha256(canonical_json({"name": "vault", "text": f"{n:04d}"})).hexdigest(): n
        for n in range(10_000)
    }
    assert stored not in guesses
    key = (tmp_path / "gate" / "data" / "args.key").read_bytes()
    assert stored == args_digest(key, {"name": "vault", "text": "4821"})  # whoever holds the key can check
    assert stat.S_IMODE((tmp_path / "gate" / "data" / "args.key").stat().st_mode) == 0o600


async def test_the_same_call_gets_the_same_digest_after_a_restart_so_its_approval_still_binds(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    args = {"name": "todo", "text": "ship it"}
    first = await held_digest(config, args)
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        [request] = await front.gateway.engine.pending()
        assert request.binding.args_sha256 == first
        bob = front.gateway.config.approvers["bob"]
        await front.gateway.engine.decide(request.id, bob, "approve", channel="cli")
        result = await agent.call_tool("notes__write_note", args)
        other = await agent.call_tool("notes__write_note", {"name": "todo", "text": "ship it!"})
    assert not result.is_error
    assert (tmp_path / "notes" / "todo").read_text() == "ship it"
    assert other.is_error  # other arguments: another digest, not covered by the approval


async def test_gate_started_names_the_digest_and_the_key_without_revealing_it(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    await held_digest(config, {"name": "todo", "text": "x"})
    key = (tmp_path / "gate" / "data" / "args.key").read_bytes()
    async with await SQLiteStore.open(tmp_path / "gate" / "data" / "gate.db") as store:
        started = [r.body for r in await store.records(event_type="gate.started")]
    assert started[-1]["args_digest"] == {"alg": "hmac-sha256", "key_id": args_key_id(key)}
    assert key.hex() not in str(started)
