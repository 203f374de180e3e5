"""The request_state a 2026-07-28 client echoes back is hostile: sealed, bound, expiring, single use."""

from __future__ import annotations

import os
import stat
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from mcp_gate.approvals import Binding
from mcp_gate.errors import StoreError
from mcp_gate.questions import CONFIRM_SCHEMA, JUSTIFY_SCHEMA, check_flat_schema
from mcp_gate.request_state import BadState, Claims, mismatch, new_claims, seal, unseal
from mcp_gate.seals import load_key
from mcp_gate.server import FrontServer
from mcp_gate.testing import (
    NOTES_MANIFEST,
    FakeClock,
    MemoryStore,
    ScriptedAsker,
    notes_server,
    running_gate,
    write_config,
)

pytestmark = pytest.mark.anyio

APPEND = {"name": "todo", "text": "buy milk"}
YES = types.ElicitResult(action="accept", content={"confirm": True})
BINDING = Binding("agent", "alice@example.com", "notes", "append_note", "pin1", "args1", "policy1")
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "gate", servers={}, manifests={"notes": NOTES_MANIFEST.read_text()})


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def gate(config: Path, store: MemoryStore, **options: Any) -> AbstractAsyncContextManager[FrontServer]:
    """The gate with the notes server in this process and its records in `store`."""
    notes = notes_server(config.parent.parent / "notes")
    return running_gate(config, store=store, servers={"notes": notes}, **options)


def agent_of(front: FrontServer) -> AbstractAsyncContextManager[Client]:
    """A 2026-07-28 agent that can be asked, whose person is never asked: these tests answer
    through request_state themselves (a question would fail the test)."""
    return ScriptedAsker().client(front.server)


async def records(store: MemoryStore) -> list[dict[str, Any]]:
    return [dict(r.body) for r in await store.records()]


async def ask(agent: Client, arguments: dict[str, Any]) -> types.InputRequiredResult:
    first = await agent.session.call_tool("notes__append_note", arguments, allow_input_required=True)
    assert isinstance(first, types.InputRequiredResult) and first.request_state is not None
    assert first.input_requests is not None and set(first.input_requests) == {"confirm"}
    return first


async def retry(
    agent: Client, arguments: dict[str, Any], state: str, answer: types.ElicitResult = YES
) -> Any:
    return await agent.session.call_tool(
        "notes__append_note",
        arguments,
        input_responses={"confirm": answer},
        request_state=state,
        allow_input_required=True,
    )


async def refused_codes(store: MemoryStore) -> list[str]:
    return [r["code"] for r in await records(store) if r["event_type"] == "confirm.refused"]


async def test_a_tampered_request_state_is_refused_recorded_and_runs_nothing(
    config: Path, store: MemoryStore, tmp_path: Path
) -> None:
    async with gate(config, store) as front, agent_of(front) as agent:
        state = (await ask(agent, APPEND)).request_state
        assert state is not None
        version, payload, mac = state.split(".")
        flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
        forged = seal(os.urandom(32), new_claims("confirm", "c0ffee", BINDING, front.gateway.clock.now()))
        for bad in (f"{version}.{flipped}.{mac}", forged, "v1..", "not a state", "v1." + "x" * 5000):
            result = await retry(agent, APPEND, bad)
            assert result.is_error and "not one this gate issued" in text_of(result)
        # The real state still works once: a forgery spends nothing.
        assert text_of(await retry(agent, APPEND, state)) == "appended to todo"
    assert (tmp_path / "notes" / "todo").read_text() == "buy milk\n"
    assert await refused_codes(store) == ["tampered"] * 5


async def test_a_replayed_request_state_is_refused_and_the_call_runs_only_once(
    config: Path, store: MemoryStore, tmp_path: Path
) -> None:
    async with gate(config, store) as front, agent_of(front) as agent:
        state = (await ask(agent, APPEND)).request_state
        assert state is not None
        assert text_of(await retry(agent, APPEND, state)) == "appended to todo"
        again = await retry(agent, APPEND, state)
        no_then_yes = await retry(agent, APPEND, state, types.ElicitResult(action="decline"))
    assert again.is_error and "already used once" in text_of(again)
    assert no_then_yes.is_error and "already used once" in text_of(no_then_yes)
    assert (tmp_path / "notes" / "todo").read_text() == "buy milk\n"
    rows = await records(store)
    assert [r["event_type"] for r in rows].count("call.executed") == 1
    assert await refused_codes(store) == ["replayed", "replayed"]


async def test_an_expired_request_state_is_refused(config: Path, store: MemoryStore, tmp_path: Path) -> None:
    clock = FakeClock()
    async with gate(config, store, clock=clock) as front, agent_of(front) as agent:
        state = (await ask(agent, APPEND)).request_state
        assert state is not None
        clock.advance(minutes=10)
        result = await retry(agent, APPEND, state)
    assert result.is_error and "expired" in text_of(result) and "call the tool again" in text_of(result)
    assert not (tmp_path / "notes" / "todo").exists()
    assert await refused_codes(store) == ["expired"]


async def test_a_request_state_for_other_arguments_is_refused_as_mismatched(
    config: Path, store: MemoryStore, tmp_path: Path
) -> None:
    async with gate(config, store) as front, agent_of(front) as agent:
        state = (await ask(agent, APPEND)).request_state
        assert state is not None
        other = {"name": "todo", "text": "rm -rf /"}
        result = await retry(agent, other, state)
        assert result.is_error and "does not fit this call: it was issued for other arguments" in text_of(
            result
        )
        # Unspent by the mismatch, it still answers the call it was issued for.
        assert text_of(await retry(agent, APPEND, state)) == "appended to todo"
    assert (tmp_path / "notes" / "todo").read_text() == "buy milk\n"
    assert await refused_codes(store) == ["mismatched"]


def test_authentic_claims_must_match_every_field_of_the_call() -> None:
    claims = new_claims("confirm", "c1", BINDING, NOW)
    assert mismatch(claims, BINDING, "confirm") is None
    assert (
        mismatch(claims, BINDING, "justification")
        == "it answers a confirm question, not a justification question"
    )
    changes = {
        "agent": "it was issued to another requester",
        "owner": "it was issued to another requester",
        "tool": "it was issued for notes__append_note",
        "args_sha256": "it was issued for other arguments",
        "pin": "the tool's definition changed since it was issued",
        "policy_sha256": "the gate's policy changed since it was issued",
    }
    for field, why in changes.items():
        other = Binding(**{**BINDING.__dict__, field: "changed"})
        assert mismatch(claims, other, "confirm") == why


def test_a_sealed_state_opens_with_its_key_until_it_expires() -> None:
    key = os.urandom(32)
    claims = new_claims("justification", "c1", BINDING, NOW)
    token = seal(key, claims)
    assert unseal(key, token, now=NOW) == claims
    assert (
        isinstance(late := unseal(key, token, now=NOW + timedelta(minutes=10)), BadState)
        and late.code == "expired"
    )
    assert isinstance(other := unseal(os.urandom(32), token, now=NOW), BadState) and other.code == "tampered"
    assert new_claims("confirm", "c1", BINDING, NOW).nonce != claims.nonce
    assert isinstance(Claims(**{**claims.__dict__}), Claims)


def test_the_key_file_is_created_once_with_mode_0600_and_refused_if_others_can_read_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "elicitation.key"
    key = load_key(path)
    assert len(key) == 32 and load_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(StoreError, match="readable by others"):
        load_key(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(StoreError, match="5 bytes, not 32"):
        load_key(path)


def test_only_flat_forms_of_primitive_fields_pass_the_schema_check() -> None:
    assert check_flat_schema(CONFIRM_SCHEMA) is None and check_flat_schema(JUSTIFY_SCHEMA) is None
    enum_list = {"type": "array", "items": {"enum": ["a", "b"]}}
    assert check_flat_schema({"type": "object", "properties": {"pick": enum_list}}) is None
    nested = {"type": "object", "properties": {"who": {"type": "object", "properties": {}}}}
    assert "is not a string" in (check_flat_schema(nested) or "")
    assert "not an enum list" in (
        check_flat_schema({"type": "object", "properties": {"xs": {"type": "array"}}}) or ""
    )
    assert "keys a flat form" in (
        check_flat_schema({"type": "object", "properties": {"a": {"type": "string", "anyOf": []}}}) or ""
    )
    assert check_flat_schema({"type": "object", "properties": {}}) == "the form has no properties"
    assert check_flat_schema([]) == "the form is not an object schema"
    assert "required" in (
        check_flat_schema({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]})
        or ""
    )
