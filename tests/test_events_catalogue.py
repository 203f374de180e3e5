"""The event catalogue (mcp_gate/events.py) names every event type the code writes or reads, no more,
and docs/events.md lists the same types."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

from mcp_gate import events
from mcp_gate.events import EVENT_TYPES, REQUEST_STATES, EventType, RequestState

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mcp_gate"
DOCS = ROOT / "docs" / "events.md"

_SHAPE = re.compile(r"^[a-z]+\.[a-z_]+$")
FAMILIES = {kind.split(".")[0] for kind in EVENT_TYPES}
# Text shaped like an event type, of a family that has event types, that names something else:
# gate.toml keys in error messages, and file names.
NOT_EVENT_TYPES = {
    "breakglass.groups",
    "console.css",
    "console.js",
    "console.key",
    "console.listen",
    "console.public_url",
    "console.session",
    "elicitation.key",
    "gate.db",
    "gate.lock",
    "gate.toml",
    "email.link_expires",
    "email.password_file",
    "email.username",
    "email.starttls",
    "email.ca_file",
    "evidence.checkpoint_every",
    "webhook.secret_env",
    "webhook.url",
    "evidence.html",
    "evidence.key",
    "evidence.key_name",
    "evidence.origin",
    "evidence.retention",
    "evidence.signer",
    "evidence.signer_pubkey",
    "evidence.webhook_secret_env",
    "evidence.webhook_url_env",
    "gate.log",
    "slack.api_url",
    "slack.listen",
    "slack.team_id",
}
# What builds an event body, and which of its arguments is the event type.
_WRITERS = {
    "event": 0,
    "events": 0,
    "_ev": 0,
    "ev": 0,
    "record": 0,
    "new_event": 0,
    "_event": 1,
    "_finish": 1,
}


def _called(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != PACKAGE / "events.py":
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def _in_fstrings(tree: ast.Module) -> set[int]:
    return {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}


def _event_shaped(tree: ast.Module) -> Iterator[ast.Constant]:
    inside_fstrings = _in_fstrings(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in inside_fstrings
            and _SHAPE.match(node.value)
            and node.value.split(".")[0] in FAMILIES
        ):
            yield node


def _written(tree: ast.Module) -> Iterator[tuple[str, ast.AST]]:
    """The event types at the places the code builds an event body."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            position = _WRITERS.get(_called(node.func))
            if position is not None and len(node.args) > position:
                argument = node.args[position]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    yield argument.value, node
            for keyword in node.keywords:
                if keyword.arg == "event" and isinstance(keyword.value, ast.Constant):
                    yield str(keyword.value.value), node
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and any(isinstance(t, ast.Name) and t.id == "event" for t in node.targets)
        ):
            yield str(node.value.value), node
        elif (
            isinstance(node, ast.AnnAssign)
            and node.value is not None
            and "EventType" in ast.unparse(node.annotation)
        ):
            # A name typed as event types (`ESCALATED: EventType = ...`, a dict of them) names what
            # the code writes through it.
            for part in ast.walk(node.value):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    yield part.value, node


def _documented() -> list[str]:
    """The event types in docs/events.md's tables: the first cell of each row, in backticks."""
    return re.findall(r"^\| `([a-z]+\.[a-z_]+)` \|", DOCS.read_text(encoding="utf-8"), flags=re.MULTILINE)


def test_every_event_type_the_code_spells_is_in_the_catalogue() -> None:
    unknown = [
        f"{_where(path, node)}: {node.value!r}"
        for path, tree in _sources()
        for node in _event_shaped(tree)
        if node.value not in EVENT_TYPES and node.value not in NOT_EVENT_TYPES
    ]
    assert not unknown, (
        "event types not in the catalogue: add each to EventType in mcp_gate/events.py (with a comment "
        "saying what it records) and to docs/events.md, or to NOT_EVENT_TYPES here if it is not one:\n"
        + "\n".join(unknown)
    )


def test_every_place_that_builds_an_event_names_a_catalogued_type() -> None:
    written = [(kind, _where(path, node)) for path, tree in _sources() for kind, node in _written(tree)]
    assert len(written) > 40  # the scan finds the writers: an empty scan would pass anything
    unknown = [f"{where}: {kind!r}" for kind, where in written if kind not in EVENT_TYPES]
    assert not unknown, "events built with a type the catalogue lacks:\n" + "\n".join(unknown)


def test_the_catalogue_names_no_type_the_code_never_writes() -> None:
    written = {kind for _, tree in _sources() for kind, _ in _written(tree)}
    unwritten = sorted(EVENT_TYPES - written)
    assert not unwritten, f"catalogued event types nothing writes (remove them from events.py): {unwritten}"


def test_not_event_types_are_still_spelled_in_the_code() -> None:
    spelled = {node.value for _, tree in _sources() for node in _event_shaped(tree)}
    stale = sorted(NOT_EVENT_TYPES - spelled)
    assert not stale, f"NOT_EVENT_TYPES names text the code no longer has: {stale}"


def test_docs_list_every_catalogued_event_type_once() -> None:
    documented = _documented()
    repeated = sorted({kind for kind in documented if documented.count(kind) > 1})
    assert not repeated, f"docs/events.md lists these more than once: {repeated}"
    assert set(documented) - EVENT_TYPES == set(), "docs/events.md lists types the catalogue lacks"
    missing = sorted(EVENT_TYPES - set(documented))
    assert not missing, f"docs/events.md does not list: {missing}"


def test_every_catalogued_type_has_a_comment_saying_what_it_records() -> None:
    lines = (PACKAGE / "events.py").read_text(encoding="utf-8").splitlines()
    uncommented = [
        kind
        for kind in get_args(EventType)
        if not any(line.strip().startswith(f'"{kind}",  # ') for line in lines)
    ]
    assert not uncommented, f"event types without a comment in events.py: {uncommented}"


def test_the_request_states_fall_into_open_final_and_released_once_each() -> None:
    groups = [events.OPEN_STATES, events.FINAL_STATES, events.RELEASED_STATES]
    every = [state for group in groups for state in group]
    assert sorted(every) == sorted(get_args(RequestState))
    assert set(events.TERMINAL_STATES) == REQUEST_STATES - set(events.OPEN_STATES) - {"executing"}


def test_the_groupings_name_only_catalogued_types() -> None:
    for group in (events.REACHED_DOWNSTREAM, events.SEALED_EVENTS, events.SLACK_DELIVERY):
        assert set(group) <= EVENT_TYPES
    assert (*events.REQUEST_DECISIONS, *events.GRANT_DECISIONS) == events.SEALED_EVENTS


def test_is_event_type_accepts_only_catalogued_text() -> None:
    assert events.is_event_type("call.executed")
    assert not events.is_event_type("call.executd")
    assert not events.is_event_type(["call.executed"])
    assert events.event_type_of({"event_type": "grant.created"}) == "grant.created"
    assert events.event_type_of({"event_type": "grant.made"}) is None
    assert events.event_type_of({}) is None
