"""mcp_gate.testing's scripted asker and in-memory downstreams do what a user's tests rely on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client
from mcp.server.mcpserver import Context
from pydantic import BaseModel

from mcp_gate.config import load_config, serve_in_process
from mcp_gate.errors import ConfigError
from mcp_gate.testing import (
    NOTES_MANIFEST,
    MemoryStore,
    ScriptedAsker,
    ScriptError,
    ToolCall,
    accept,
    cancel,
    confirm,
    decline,
    in_memory_server,
    justify,
    notes_server,
    notes_server_table,
    refuse,
    running_gate,
    write_config,
)

pytestmark = pytest.mark.anyio

MODES = ["legacy", "auto"]

TICKETS_MANIFEST = """
server = "tickets"
default = "high"

[[rule]]
tools = ["look_up"]
tier = "low"
reason = "reads a ticket"

[[rule]]
tools = ["comment"]
tier = "medium"
reason = "adds a comment; the requester confirms"
"""


def leaf(exc: BaseException) -> BaseException:
    """The one error inside the task groups' wrapping (the gate runs in a task group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Colour(BaseModel):
    answer: str


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def look_up(ticket: int) -> str:
    """Look a ticket up."""
    return f"ticket {ticket}: open"


async def comment(ticket: int, text: str) -> str:
    """Comment on a ticket."""
    return f"commented on {ticket}"


def tickets_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "gate", servers={}, manifests={"tickets": TICKETS_MANIFEST})


def tickets() -> Any:
    return in_memory_server(
        {"look_up": look_up, "comment": comment},
        name="tickets",
        annotations={
            "look_up": {"readOnlyHint": True},
            "comment": types.ToolAnnotations(destructive_hint=False),
        },
    )


# -- the in-memory downstream ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_an_in_memory_server_is_served_through_the_gate_and_records_what_reached_it(
    tmp_path: Path, mode: str
) -> None:
    server = tickets()
    async with (
        running_gate(tickets_config(tmp_path), store=MemoryStore(), servers={"tickets": server}) as front,
        Client(front.server, mode=mode) as agent,
    ):
        listed = {t.name: t for t in (await agent.list_tools()).tools}
        result = await agent.call_tool("tickets__look_up", {"ticket": 7})
        ds = front.gateway.downstreams["tickets"]
        assert ds.state == "up" and ds.spec.transport == "in-process" and ds.spec.origin == "in-process"
    assert set(listed) == {"tickets__look_up", "tickets__comment"}
    assert listed["tickets__look_up"].annotations == types.ToolAnnotations(read_only_hint=True)
    assert listed["tickets__comment"].annotations == types.ToolAnnotations(destructive_hint=False)
    assert listed["tickets__look_up"].description == "Look a ticket up."
    assert listed["tickets__look_up"].input_schema["required"] == ["ticket"]
    assert not result.is_error and text_of(result) == "ticket 7: open"
    assert server.calls == [ToolCall("look_up", {"ticket": 7})]
    assert server.called("look_up") == [{"ticket": 7}] and server.called("comment") == []


async def test_a_call_the_gate_holds_back_never_reaches_the_in_memory_server(tmp_path: Path) -> None:
    server = tickets()
    async with (
        running_gate(tickets_config(tmp_path), store=MemoryStore(), servers={"tickets": server}) as front,
        ScriptedAsker(refuse("not now")).client(front.server, mode="legacy") as agent,
    ):
        result = await agent.call_tool("tickets__comment", {"ticket": 7, "text": "done"})
    assert result.is_error and "not now" in text_of(result)
    assert server.calls == []


async def test_an_in_memory_tool_can_ask_its_client_and_the_gate_relays_the_question(tmp_path: Path) -> None:
    async def ask(question: str, ctx: Context) -> str:
        """Ask the user."""
        answer = await ctx.elicit(question, Colour)
        return f"{answer.action}: {answer.data.answer if answer.action == 'accept' else None}"

    manifest = 'server = "asks"\ndefault = "low"\n'
    config = write_config(tmp_path / "gate", servers={}, manifests={"asks": manifest})
    asker = ScriptedAsker(accept(answer="blue"))
    server = in_memory_server({"ask": ask}, name="asks")
    async with (
        running_gate(config, store=MemoryStore(), servers={"asks": server}) as front,
        asker.client(front.server, mode="legacy") as agent,
    ):
        result = await agent.call_tool("asks__ask", {"question": "Which colour?"})
    assert not result.is_error and text_of(result) == "accept: blue"
    [question] = asker.messages
    assert question.endswith("\nWhich colour?") and "relayed by mcp-gate" in question


def test_annotations_for_a_tool_the_server_lacks_are_refused() -> None:
    with pytest.raises(ValueError, match=r"annotations name tools the server does not have: \['lookup'\]"):
        in_memory_server({"look_up": look_up}, annotations={"lookup": {"readOnlyHint": True}})


async def test_an_in_process_server_replaces_the_configured_one_and_keeps_its_settings(
    tmp_path: Path,
) -> None:
    table = notes_server_table(tmp_path / "notes") | {"timeout": 7, "protocol": "auto"}
    path = write_config(
        tmp_path / "gate", servers={"notes": table}, manifests={"notes": NOTES_MANIFEST.read_text()}
    )
    config = load_config(path, {})
    served = serve_in_process(config, ["notes", "extra"])
    notes, extra = served.servers["notes"], served.servers["extra"]
    assert config.servers["notes"].transport == "stdio"
    assert (notes.transport, notes.timeout, notes.protocol, notes.command) == ("in-process", 7, "auto", None)
    assert (extra.transport, extra.timeout, extra.protocol) == ("in-process", 120.0, "legacy")
    with pytest.raises(ConfigError, match="server name 'bad__name' must be"):
        serve_in_process(config, ["bad__name"])


async def test_the_example_notes_server_runs_in_process_and_its_crash_tool_cannot_end_the_test(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "gate", servers={}, manifests={"notes": NOTES_MANIFEST.read_text()})
    server = notes_server(tmp_path / "notes")
    async with (
        running_gate(config, store=MemoryStore(), servers={"notes": server}) as front,
        ScriptedAsker(confirm()).client(front.server) as agent,
    ):
        appended = await agent.call_tool("notes__append_note", {"name": "todo", "text": "milk"})
        crashed = await agent.call_tool("notes__crash", {})
    assert not appended.is_error and (tmp_path / "notes" / "todo").read_text() == "milk\n"
    assert crashed.is_error and "run this server over stdio" in text_of(crashed)


# -- the scripted asker --------------------------------------------------------------------------------


def test_the_answer_helpers_fill_the_gates_own_forms() -> None:
    assert confirm() == types.ElicitResult(action="accept", content={"confirm": True})
    assert confirm("ok") == types.ElicitResult(action="accept", content={"confirm": True, "reason": "ok"})
    assert refuse("no") == types.ElicitResult(action="accept", content={"confirm": False, "reason": "no"})
    assert justify("why") == types.ElicitResult(action="accept", content={"justification": "why"})
    assert decline() == types.ElicitResult(action="decline") and cancel() == types.ElicitResult(
        action="cancel"
    )


@pytest.mark.parametrize("mode", MODES)
async def test_the_asker_answers_in_order_and_keeps_every_question(tmp_path: Path, mode: str) -> None:
    server = tickets()
    asker = ScriptedAsker(confirm("first"), decline())
    async with (
        running_gate(tickets_config(tmp_path), store=MemoryStore(), servers={"tickets": server}) as front,
        asker.client(front.server, mode=mode) as agent,
    ):
        first = await agent.call_tool("tickets__comment", {"ticket": 1, "text": "a"})
        second = await agent.call_tool("tickets__comment", {"ticket": 2, "text": "b"})
    assert not first.is_error and second.is_error
    assert server.called("comment") == [{"ticket": 1, "text": "a"}]
    assert len(asker.asked) == 2 and all(isinstance(q, types.ElicitRequestFormParams) for q in asker.asked)
    assert '"ticket": 1' in asker.messages[0] and '"ticket": 2' in asker.messages[1]


@pytest.mark.parametrize("mode", MODES)
async def test_a_question_past_the_end_of_the_script_fails_the_test_with_the_question(
    tmp_path: Path, mode: str
) -> None:
    server = tickets()
    asker = ScriptedAsker(confirm())
    with pytest.raises(BaseException) as raised:
        async with (
            running_gate(tickets_config(tmp_path), store=MemoryStore(), servers={"tickets": server}) as front,
            asker.client(front.server, mode=mode) as agent,
        ):
            await agent.call_tool("tickets__comment", {"ticket": 1, "text": "a"})
            await agent.call_tool("tickets__comment", {"ticket": 2, "text": "b"})
    error = leaf(raised.value)
    assert isinstance(error, ScriptError)
    message = str(error)
    assert message.startswith("question 2 was not in the script, which answers 1: ")
    assert "tickets__comment" in message and '"ticket": 2' in message
    assert server.called("comment") == [{"ticket": 1, "text": "a"}]  # the unscripted one did not run


async def test_an_asker_that_expects_no_question_fails_on_the_first(tmp_path: Path) -> None:
    asker = ScriptedAsker()
    with pytest.raises(BaseException) as raised:
        async with (
            running_gate(
                tickets_config(tmp_path), store=MemoryStore(), servers={"tickets": tickets()}
            ) as front,
            asker.client(front.server, mode="legacy") as agent,
        ):
            await agent.call_tool("tickets__comment", {"ticket": 1, "text": "a"})
    error = leaf(raised.value)
    assert isinstance(error, ScriptError)
    assert str(error).startswith("question 1 was not in the script, which answers 0: 'test-gate: ")


async def test_scripted_answers_never_asked_for_fail_the_test_on_a_clean_exit(tmp_path: Path) -> None:
    asker = ScriptedAsker(confirm(), justify("for the release"))
    with pytest.raises(BaseException) as raised:
        async with (
            running_gate(
                tickets_config(tmp_path), store=MemoryStore(), servers={"tickets": tickets()}
            ) as front,
            asker.client(front.server, mode="legacy") as agent,
        ):
            await agent.call_tool("tickets__comment", {"ticket": 1, "text": "a"})
    error = leaf(raised.value)
    assert isinstance(error, ScriptError)
    assert str(error).startswith(
        "1 of 2 scripted answers were never asked for "
        "(accept {'justification': 'for the release'}); asked 1: "
    )


async def test_an_asker_used_as_a_plain_callback_reports_the_overrun_through_check(tmp_path: Path) -> None:
    asker = ScriptedAsker()
    async with (
        running_gate(tickets_config(tmp_path), store=MemoryStore(), servers={"tickets": tickets()}) as front,
        Client(front.server, mode="legacy", elicitation_callback=asker) as agent,
    ):
        result = await agent.call_tool("tickets__comment", {"ticket": 1, "text": "a"})
    assert result.is_error  # the gate failed closed on the error answer
    with pytest.raises(ScriptError, match="question 1 was not in the script"):
        asker.check()


async def test_always_answers_every_question_alike(tmp_path: Path) -> None:
    asker = ScriptedAsker.always(confirm())
    server = tickets()
    async with (
        running_gate(tickets_config(tmp_path), store=MemoryStore(), servers={"tickets": server}) as front,
        asker.client(front.server, mode="auto") as agent,
    ):
        for ticket in range(3):
            assert not (await agent.call_tool("tickets__comment", {"ticket": ticket, "text": "x"})).is_error
    assert len(asker.asked) == 3 and len(server.called("comment")) == 3
