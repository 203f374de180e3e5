"""Pure Adaptive Card (1.5) rendering of approval requests for Teams: the card, its outcome, the answers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from mcp_gate.channels.slack_blocks import GRANT_FOR, escalation_line, scrub_secrets, untrusted
from mcp_gate.channels.teams_api import (
    CARD_TYPE,
    Action,
    Element,
    action_execute,
    action_open_url,
    adaptive_card,
    card_response,
    column_set,
    container,
    message_response,
    text_block,
    text_input,
    text_run,
)

__all__ = [
    "breakglass_card",
    "CARD_TYPE",
    "VERB_APPROVE",
    "VERB_APPROVE_FOR",
    "VERB_DENY",
    "VERB_REFRESH",
    "card_answer",
    "card_attachment",
    "error_answer",
    "message_answer",
    "render_card",
]

VERB_APPROVE = "approve"
VERB_DENY = "deny"
VERB_APPROVE_FOR = "approve_for"
VERB_REFRESH = "refresh"
MAX_ARGS_CHARS = 2500
MAX_LINE_CHARS = 200


def _hhmm(iso: str) -> str:
    return iso[:19].replace("T", " ") + " UTC"


def _literal(
    text: str, *, weight: Literal["Bolder"] | None = None, mono: bool = False, limit: int = 1000
) -> Element:
    """Untrusted text as a RichTextBlock of one TextRun: a TextRun takes no Markdown, so agent or
    server text can never become a link, a mention (<at> needs an entity the gate never adds) or an
    action; invisible controls are shown as `?`."""
    return text_run(untrusted(text, limit) or " ", weight=weight, mono=mono)


def _fact(title: str, value: str) -> Element:
    # FactSet values render Markdown: everything written by an agent or server goes in TextRuns.
    title_column = ("90px", [_literal(title, weight="Bolder")])
    return column_set([title_column, ("stretch", [_literal(value, limit=300)])])


def status_line(view: Mapping[str, Any]) -> str:
    """Where the request stands, who decided, when, and their note, in one line of plain text."""
    votes = view["votes"]
    approvals = [v for v in votes if v["verdict"] == "approve"]
    names = ", ".join(f"{v['approver']} via {v['channel']}" for v in approvals)
    progress = f"{len(approvals)} of {view['required']} approvals" + (f": {names}" if names else "")
    state = view["state"]
    match state:
        case "pending":
            return f"Waiting for approval ({progress})"
        case "approved" | "executing" | "executed" | "failed" | "outcome_unknown":
            after = {
                "approved": "",
                "executing": "; the call is running",
                "executed": "; the call ran",
                "failed": "; the call failed",
                "outcome_unknown": "; the gate stopped before the call's outcome was recorded",
            }[state]
            return f"Approved ({progress}){after}"
        case "denied":
            denial = next(v for v in votes if v["verdict"] == "deny")
            note = f": “{denial['note']}”" if denial.get("note") else ""
            return f"Denied by {denial['approver']} via {denial['channel']} at {_hhmm(denial['at'])}{note}"
        case "expired":
            return f"Expired at {_hhmm(view['expires_at'])} with {progress}; the call did not run"
        case "revoked":
            return f"Revoked by {view.get('closed_by') or 'an approver'}; the call did not run"
        case "void":
            return f"Void: {view.get('closed_by') or 'the call changed'}; the call did not run"
        case _:
            return str(state)


def render_card(
    view: Mapping[str, Any],
    *,
    gate: str,
    justification: str | None = None,
    tool_description: str | None = None,
    grant_allowed: bool = False,
    buttons: bool = True,
    refresh_users: Sequence[str] = (),
    console_url: str | None = None,
) -> dict[str, Any]:
    """The Adaptive Card for a request view (desk.request_view). Buttons (Action.Execute)
    only while it is pending and `buttons`; they carry only the request id. `refresh_users` (Entra
    object ids) get a card of their own on opening it, with the buttons they may use."""
    rid = view["id"]
    requester = view["requester"]
    groups = ", ".join(view["groups"]) or "any approver"
    needs = f"{view['required']} approval{'s' if view['required'] != 1 else ''} from {groups}"
    body: list[Element] = [
        text_block("Approval needed", weight="Bolder", size="Medium"),
        _literal(view["name"], weight="Bolder", limit=140),
        _fact("Gate", gate),
        _fact("Requester", f"{requester['agent']} for {requester['owner']}"),
        _fact("Server / tool", f"{view['server']} / {view['tool']}"),
        _fact("Tier", f"{view['tier']}: needs {needs}"),
        _fact("Rule", f"{view['rule']}: {view['reason']}"),
        _fact("Request", f"{rid}, expires {_hhmm(view['expires_at'])}"),
        _literal(f"Arguments (as sent by the agent; secrets redacted; sha256 {view['args_sha256'][:12]})"),
        _literal(
            json.dumps(scrub_secrets(view["args"]), indent=2, ensure_ascii=False, sort_keys=True),
            mono=True,
            limit=MAX_ARGS_CHARS,
        ),
    ]
    if justification:
        body += [_literal("The requester's reason (unverified)", weight="Bolder"), _literal(justification)]
    if tool_description:
        body += [_literal("Tool description (written by the server, unverified)", weight="Bolder")]
        body.append(_literal(tool_description))
    body.append(container(f"status-{rid}", [_literal(status_line(view), weight="Bolder")]))
    body += [_literal(escalation_line(step)) for step in view.get("escalations") or []]
    pending = view["state"] == "pending"
    data = {"request_id": rid}
    actions: list[Action] = []
    if pending and buttons:
        label = "Reason (needed to deny; the agent is told it)"
        body.append(text_input("reason", label=label, max_length=2000))
        actions.append(action_execute("Approve", VERB_APPROVE, data, style="positive"))
        actions.append(action_execute("Deny", VERB_DENY, data, style="destructive"))
        if grant_allowed:
            minutes = int(GRANT_FOR.total_seconds() // 60)
            actions.append(action_execute(f"Approve for {minutes} min", VERB_APPROVE_FOR, data))
    if console_url:
        actions.append(action_open_url("Open in console", console_url))
    # Teams refreshes automatically for at most 60 users.
    refresh = (VERB_REFRESH, data, list(refresh_users)[:60]) if pending and refresh_users else None
    return adaptive_card(body, actions=actions, refresh=refresh)


def breakglass_card(body: Mapping[str, Any], *, gate: str) -> dict[str, Any]:
    """The notice of a break-glass use (a `breakglass.used` body): who released what, why, and every
    approver of the tier it tells. Text only, in TextRuns: nothing in it is a mention or a link."""
    what = f"{body.get('server')}__{body.get('tool')} (tier {body.get('tier')})"
    released = (
        f"{body.get('operator')} released request {body.get('request_id')}, {what}, "
        f"on gate {gate} without its approvals."
    )
    return adaptive_card(
        [
            text_run("Break-glass", weight="Bolder", color="Attention"),
            _literal(released),
            _fact("Reason", str(body.get("reason"))),
            _fact("Approvers of this tier", ", ".join(str(n) for n in body.get("notify") or []) or "none"),
        ]
    )


def card_attachment(card: Mapping[str, Any]) -> dict[str, Any]:
    return {"contentType": CARD_TYPE, "content": dict(card)}


def card_answer(card: Mapping[str, Any]) -> dict[str, Any]:
    """The invoke response that replaces the clicked card with `card`."""
    return card_response(card)


def message_answer(text: str) -> dict[str, Any]:
    """The invoke response that shows the clicker a short message (and leaves the card as it is)."""
    return message_response(untrusted(text, 500))


def error_answer(status: int, message: str) -> dict[str, Any]:
    # Not the SDK's model: its HttpError requires an inner HTTP error that a refused invoke has not.
    return {
        "statusCode": status,
        "type": "application/vnd.microsoft.error",
        "value": {"code": "BadRequest" if status < 500 else "ServiceError", "message": message},
    }
