"""A downstream's own elicitations reach the person at the agent where the eras allow; elsewhere the
downstream is told why not. Plus the whole flow over real stdio subprocesses of the gate."""

from __future__ import annotations

import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from mcp_gate.config import load_config
from mcp_gate.errors import ConfigError
from mcp_gate.server import FrontServer
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    ScriptedAsker,
    accept,
    eventually,
    notes_server,
    notes_server_table,
    running_gate,
    write_config,
)

pytestmark = pytest.mark.anyio

ASK_RULE = '\n[[rule]]\ntools = ["ask_user"]\ntier = "low"\nreason = "asks the user a question"\n'
QUESTION = {"question": "Which colour?"}


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def relay_config(tmp_path: Path, protocol: str = "legacy", **tables: Any) -> Path:
    server = notes_server_table(tmp_path / "notes")
    server["env"]["NOTES_ASK_TOOL"] = "1"
    server["protocol"] = protocol
    # The notes manifest's own rules first, then one for the test tool: first match wins.
    manifest = NOTES_MANIFEST.read_text().replace(
        '[[rule]]\ntools = ["purge_notes"]', ASK_RULE + '[[rule]]\ntools = ["purge_notes"]'
    )
    return write_config(tmp_path / "gate", servers={"notes": server}, manifests={"notes": manifest}, **tables)


async def records(config: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


def gate(config: Path) -> AbstractAsyncContextManager[FrontServer]:
    """`config`'s gate with the notes server (and its ask_user tool) in this process, speaking the
    protocol gate.toml gives it."""
    notes = notes_server(config.parent.parent / "notes", ask_tool=True)
    return running_gate(config, servers={"notes": notes})


BLUE = accept(answer="blue", password="hunter2")


@pytest.mark.parametrize("downstream", ["legacy", "auto"])
async def test_a_downstream_elicitation_is_relayed_to_a_2025_era_agent_and_the_answer_goes_back(
    tmp_path: Path, downstream: str
) -> None:
    config = relay_config(tmp_path, downstream)
    person = ScriptedAsker(BLUE)
    async with gate(config) as front, person.client(front.server, mode="legacy") as agent:
        assert front.gateway.downstreams["notes"].protocol_version == (
            "2025-11-25" if downstream == "legacy" else "2026-07-28"
        )
        result = await agent.call_tool("notes__ask_user", QUESTION)
    assert not result.is_error and text_of(result) == "the user answered: blue"
    [question] = person.asked
    assert isinstance(question, types.ElicitRequestFormParams)
    assert question.message.startswith(
        "[notes asks; relayed by mcp-gate, this is not the gate's own confirmation]"
    )
    assert question.message.endswith("Which colour?")
    [relayed] = [r for r in await records(config) if r["event_type"] == "elicitation.relayed"]
    assert relayed["message"] == "Which colour?" and relayed["action"] == "accept"
    assert relayed["content"] == {"answer": "blue", "password": "[redacted]"}


@pytest.mark.parametrize("tier", ["low", "medium"])
async def test_a_2026_era_downstream_question_passes_through_to_a_2026_era_agent_and_the_retry_runs_on(
    tmp_path: Path, tier: str
) -> None:
    config = relay_config(tmp_path, "auto")
    if tier == "medium":  # confirmed first, then the downstream's own question: asked once each
        manifest = config.parent / "tool_manifests" / "notes.toml"
        manifest.write_text(manifest.read_text().replace(ASK_RULE, ASK_RULE.replace("low", "medium")))
    both = accept(answer="blue", confirm=True, password="hunter2")
    person = ScriptedAsker(*[both] * (2 if tier == "medium" else 1))
    async with gate(config) as front, person.client(front.server, mode="auto") as agent:
        result = await agent.call_tool("notes__ask_user", QUESTION)
    assert not result.is_error and text_of(result) == "the user answered: blue"
    seen = person.asked
    relayed_question = seen[-1]
    assert isinstance(relayed_question, types.ElicitRequestFormParams)
    assert relayed_question.message.startswith("[notes asks; relayed by mcp-gate")
    assert len(seen) == (2 if tier == "medium" else 1)
    rows = await records(config)
    kinds = [r["event_type"] for r in rows]
    assert kinds.count("call.input_required") == 1 and kinds.count("call.executed") == 1
    [resumed] = [r for r in rows if r["event_type"] == "call.resumed" and r["kind"] == "relay"]
    assert resumed["answers"]["answer"]["content"]["password"] == "[redacted]"
    executed = next(r for r in rows if r["event_type"] == "call.executed")
    assert executed["correlation_id"] == resumed["correlation_id"]  # one story across the rounds


async def test_a_relayed_downstream_state_is_sealed_and_single_use(tmp_path: Path) -> None:
    config = relay_config(tmp_path, "auto")
    async with gate(config) as front, ScriptedAsker().client(front.server) as agent:
        first = await agent.session.call_tool("notes__ask_user", QUESTION, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult) and first.request_state is not None
        assert first.request_state != "asked"  # the downstream's own state never reaches the agent bare
        answer = {"answer": types.ElicitResult(action="accept", content={"answer": "red"})}

        async def retry(state: str) -> Any:
            return await agent.session.call_tool(
                "notes__ask_user",
                QUESTION,
                input_responses=answer,
                request_state=state,
                allow_input_required=True,
            )

        bare = await retry("asked")
        done = await retry(first.request_state)
        again = await retry(first.request_state)
    assert bare.is_error and "not one this gate issued" in text_of(bare)
    assert text_of(done) == "the user answered: red"
    assert again.is_error and "already used once" in text_of(again)


@pytest.mark.parametrize(
    ("mode", "callback", "why"),
    [
        ("auto", True, "speaks 2026-07-28, which cannot carry a question mid-call"),
        ("legacy", False, "the agent's client does not accept elicitations"),
    ],
)
async def test_where_the_agent_cannot_be_asked_the_downstream_gets_a_clear_refusal(
    tmp_path: Path, mode: str, callback: bool, why: str
) -> None:
    config = relay_config(tmp_path)
    person = ScriptedAsker()
    async with gate(config) as front:
        client = person.client(front.server, mode=mode) if callback else Client(front.server, mode=mode)
        async with client as agent:
            result = await agent.call_tool("notes__ask_user", QUESTION)
    # The notes server reports what its client (the gate) said.
    assert result.is_error and "mcp-gate declined to relay this elicitation" in text_of(result)
    assert why in text_of(result) and person.asked == []
    [relayed] = [r for r in await records(config) if r["event_type"] == "elicitation.relayed"]
    assert why in relayed["declined"]


async def test_a_relayed_question_with_a_nested_form_is_refused_before_the_agent_sees_it(
    tmp_path: Path,
) -> None:
    from mcp_gate.call import CallContext
    from mcp_gate.gateway import Gateway
    from mcp_gate.questions import Unsupported

    config = relay_config(tmp_path)
    asked: list[str] = []

    class Person:
        era = "legacy"
        can_elicit = True
        request_state = None

        async def ask(self, message: str, schema: Any) -> types.ElicitResult | Unsupported:
            asked.append(message)
            return types.ElicitResult(action="accept", content={})

        def answer(self, key: str) -> None:
            return None

        def responses(self) -> None:
            return None

    async with gate(config) as front:
        gateway: Gateway = front.gateway
        offered = gateway.offering.offered["notes__ask_user"]
        call = CallContext(
            "c1", gateway.config.requester, "stdio", offered, {}, "", offered.decision, gateway.policy_sha256
        )
        relay = gateway.asking.relay(call, Person())
        nested = types.ElicitRequestFormParams(
            message="who?", requested_schema={"type": "object", "properties": {"p": {"type": "object"}}}
        )
        refused = await relay(nested)
        url = await relay(
            types.ElicitRequestURLParams(message="log in", url="https://example.com", elicitation_id="1")
        )
    assert isinstance(refused, types.ErrorData) and "not a flat form" in refused.message
    assert isinstance(url, types.ErrorData) and "URL-mode elicitations are not relayed" in url.message
    assert asked == []


async def test_with_two_calls_in_flight_a_2025_era_downstream_question_is_refused_as_ambiguous(
    tmp_path: Path,
) -> None:
    # Over a pipe, as deployed: in this process the SDK carries the calling task's context to the
    # downstream and back, so the gate would know whose question it is even with two in flight.
    config = relay_config(tmp_path)
    person = ScriptedAsker()
    async with (
        running_gate(config) as front,
        person.client(front.server, mode="legacy") as agent,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(agent.call_tool, "notes__sleep", {"seconds": 3})
        await eventually(
            lambda: front.gateway.downstreams["notes"]._relays, what="the sleep call's relay to open"
        )
        result = await agent.call_tool("notes__ask_user", QUESTION)
        tg.cancel_scope.cancel()
    assert result.is_error and "2 calls to this server are in flight" in text_of(result)
    assert person.asked == []


def gate_process(config: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_gate", "serve", "--config", str(config)]
    )


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_over_real_stdio_the_person_confirms_a_medium_call_in_either_era(
    tmp_path: Path, mode: str
) -> None:
    config = relay_config(tmp_path)
    person = ScriptedAsker.always(accept(confirm=True))
    async with person.client(gate_process(config), mode=mode) as agent:
        assert agent.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        result = await agent.call_tool("notes__append_note", {"name": "todo", "text": "over stdio"})
        relayed = await agent.call_tool("notes__ask_user", QUESTION) if mode == "legacy" else None
    assert not result.is_error and (tmp_path / "notes" / "todo").read_text() == "over stdio\n"
    assert "notes__append_note" in person.messages[0]
    if relayed is not None:
        assert text_of(relayed) == "the user answered: None"  # the callback answered a confirm form
    rows = await records(config)
    kinds = [r["event_type"] for r in rows]
    assert kinds.count("confirm.decided") == 1 and kinds.count("call.executed") == 1 + (mode == "legacy")
    [decided] = [r for r in rows if r["event_type"] == "confirm.decided"]
    shown = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "mcp_gate",
            "audit",
            "show",
            decided["correlation_id"],
            "--config",
            str(config),
        ]
    )
    story = shown.stdout.decode()
    # One story, even when the answer came back on a second tools/call (2026-07-28).
    for event in ("call.requested", "policy.decided", "confirm.decided", "call.executed"):
        assert event in story
    assert "by=alice@example.com" in story and "outcome=confirmed" in story
    assert ("call.resumed" in story) == (mode == "auto")


def test_elicitation_settings_are_read_from_the_tiers_table_and_bad_ones_are_one_line_errors(
    tmp_path: Path,
) -> None:
    def load(tiers: dict[str, Any]) -> Any:
        return load_config(write_config(tmp_path, servers={}, tiers=tiers), {})

    default = load({}).elicitation
    assert default.medium_fallback == "approve" and default.ask_justification == frozenset()
    chosen = load({"medium_fallback": "deny", "critical": {"approvals": 2, "ask_justification": True}})
    assert chosen.elicitation.medium_fallback == "deny"
    assert chosen.elicitation.ask_justification == frozenset({"critical"})
    assert chosen.requirements["critical"].count == 2  # type: ignore[union-attr]
    assert chosen.config_sha256 != load({}).config_sha256
    with pytest.raises(
        ConfigError, match=r"tiers\.medium_fallback: expected \"approve\" or \"deny\", got 'ask'"
    ):
        load({"medium_fallback": "ask"})
    with pytest.raises(
        ConfigError, match=r"tiers\.high\.ask_justification: expected true or false, got 'yes'"
    ):
        load({"high": {"approvals": 1, "ask_justification": "yes"}})
    with pytest.raises(ConfigError, match=r"tiers\.high\.asks: unknown key"):
        load({"high": {"approvals": 1, "asks": True}})
