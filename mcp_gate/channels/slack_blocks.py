"""Pure Block Kit rendering of approval requests: the message, its outcome, the deny modal, escaping."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from mcp_gate.redaction import scrub

__all__ = [
    "ACTION_APPROVE",
    "ACTION_APPROVE_FOR",
    "ACTION_DENY",
    "DENY_CALLBACK",
    "GRANT_FOR",
    "METADATA_EVENT",
    "deny_modal",
    "escape_mrkdwn",
    "metadata_request_id",
    "refusal_text",
    "render_request",
    "request_metadata",
    "scrub_secrets",
    "untrusted",
]

ACTION_APPROVE = "mcp_gate.approve"
ACTION_DENY = "mcp_gate.deny"
ACTION_APPROVE_FOR = "mcp_gate.approve_for"
DENY_CALLBACK = "mcp_gate.deny_reason"
GRANT_FOR = timedelta(minutes=30)
METADATA_EVENT = "mcp_gate_request"

MAX_ARGS_CHARS = 2500  # a rich text block stays well under Slack's 4000-character limits
MAX_QUOTE_CHARS = 1000
MAX_LINE_CHARS = 160
MAX_HEADER_CHARS = 140

# Characters that reorder or hide text on screen: an argument could otherwise look like another.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\u0000-\u0008\u000b-\u001f\u007f]")


def request_metadata(request_id: str) -> dict[str, Any]:
    """The message metadata a request's message is posted with (chat.postMessage `metadata`): it lets
    a restarted gate find a message it posted but did not live to record (conversations.history)."""
    return {"event_type": METADATA_EVENT, "event_payload": {"request_id": request_id}}


def metadata_request_id(message: Mapping[str, Any]) -> str | None:
    """The request a message from conversations.history is about, by its metadata; None if none."""
    metadata = message.get("metadata")
    if not isinstance(metadata, Mapping) or metadata.get("event_type") != METADATA_EVENT:
        return None
    payload = metadata.get("event_payload")
    found = payload.get("request_id") if isinstance(payload, Mapping) else None
    return found if isinstance(found, str) else None


def escape_mrkdwn(text: str) -> str:
    """Text safe inside mrkdwn: no links, mentions (`<@U..>`, `<!channel>`) or entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def untrusted(text: str, limit: int = MAX_QUOTE_CHARS) -> str:
    """Agent- or server-written text for a literal rich-text element: invisible controls shown as
    `?`, cut to `limit` with a marker."""
    text = _INVISIBLE.sub("?", text)
    if len(text) > limit:
        return text[:limit] + f" [cut {len(text) - limit} characters]"
    return text


def scrub_secrets(value: Any) -> Any:
    """A copy with every secret hidden, by the gate's one redaction (`mcp_gate.redaction`)."""
    return scrub(value)


def _pretty(value: Any, limit: int) -> str:
    text = json.dumps(scrub_secrets(value), indent=2, ensure_ascii=False, sort_keys=True)
    return untrusted(text, limit)


def _plain(text: str, limit: int = MAX_HEADER_CHARS) -> dict[str, Any]:
    return {"type": "plain_text", "text": untrusted(text, limit) or " ", "emoji": False}


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _literal_block(block_id: str, label: str, text: str, *, style: str) -> list[dict[str, Any]]:
    """A label and untrusted text as literal rich text: Slack parses no markup inside it."""
    element = {"type": style, "elements": [{"type": "text", "text": text or " "}]}
    return [
        {"type": "context", "elements": [_mrkdwn(label)]},
        {"type": "rich_text", "block_id": block_id, "elements": [element]},
    ]


def _hhmm(iso: str) -> str:
    # "2026-11-24T12:15:00.000000Z" -> "2026-11-24 12:15:00 UTC"
    return iso[:19].replace("T", " ") + " UTC"


def _who(approver: str, voters: Mapping[str, str]) -> str:
    user = voters.get(approver)
    name = escape_mrkdwn(approver)
    return f"<@{user}> ({name})" if user else name


def _status(view: Mapping[str, Any], voters: Mapping[str, str]) -> str:
    """One mrkdwn line: where the request stands, who decided, when, and their note."""
    votes = view["votes"]
    approvals = [v for v in votes if v["verdict"] == "approve"]
    names = ", ".join(_who(v["approver"], voters) for v in approvals)
    progress = f"{len(approvals)} of {view['required']} approvals" + (f": {names}" if names else "")

    def vote_line(vote: Mapping[str, Any]) -> str:
        line = f"{_who(vote['approver'], voters)} via {escape_mrkdwn(vote['channel'])} at {_hhmm(vote['at'])}"
        if vote.get("note"):
            line += f": “{escape_mrkdwn(untrusted(vote['note'], 500))}”"
        return line

    state = view["state"]
    match state:
        case "pending":
            return f":hourglass_flowing_sand: *Waiting* for approval ({progress})"
        case "approved" | "executing" | "executed" | "failed" | "outcome_unknown":
            after = {
                "approved": "",
                "executing": "; the call is running",
                "executed": "; the call ran",
                "failed": "; the call failed",
                "outcome_unknown": "; the gate stopped before the call's outcome was recorded",
            }[state]
            lines = "\n".join(f"• {vote_line(v)}" for v in approvals)
            return f":white_check_mark: *Approved* ({progress}){after}\n{lines}"
        case "denied":
            denial = next(v for v in votes if v["verdict"] == "deny")
            return f":no_entry: *Denied* by {vote_line(denial)}"
        case "expired":
            return (
                f":hourglass: *Expired* at {_hhmm(view['expires_at'])} with {progress}; the call did not run"
            )
        case "revoked":
            by = escape_mrkdwn(view.get("closed_by") or "an approver")
            return f":leftwards_arrow_with_hook: *Revoked* by {by}; the call did not run"
        case "void":
            why = escape_mrkdwn(view.get("closed_by") or "the call changed")
            return f":no_entry_sign: *Void*: {why}; the call did not run"
        case _:
            return f"*{escape_mrkdwn(str(state))}*"


def render_request(
    view: Mapping[str, Any],
    *,
    gate: str,
    recent_calls: Sequence[Mapping[str, Any]] = (),
    tool_description: str | None = None,
    justification: str | None = None,
    grant_allowed: bool = False,
    voters: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The chat.postMessage / chat.update arguments (`text`, `blocks`) for a request view
    (desk.request_view). Buttons only while it is pending; they carry only the request id."""
    voters = voters or {}
    rid = view["id"]
    requester = view["requester"]
    groups = ", ".join(view["groups"]) or "any approver"
    who = f"{escape_mrkdwn(requester['agent'])} for {escape_mrkdwn(requester['owner'])}"
    needs = f"{view['required']} approval{'s' if view['required'] != 1 else ''} from {groups}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "block_id": f"head:{rid}", "text": _plain(f"Approval needed: {view['name']}")},
        {
            "type": "section",
            "block_id": f"facts:{rid}",
            "fields": [
                _mrkdwn(f"*Gate*\n{escape_mrkdwn(gate)}"),
                _mrkdwn(f"*Requester*\n{who}"),
                _mrkdwn(f"*Server / tool*\n{escape_mrkdwn(view['server'])} / {escape_mrkdwn(view['tool'])}"),
                _mrkdwn(f"*Tier*\n{escape_mrkdwn(view['tier'])}: needs {escape_mrkdwn(needs)}"),
                _mrkdwn(f"*Rule*\n{escape_mrkdwn(view['rule'])}: {escape_mrkdwn(view['reason'])}"),
                _mrkdwn(f"*Request*\n{escape_mrkdwn(rid)}, expires {_hhmm(view['expires_at'])}"),
            ],
        },
    ]
    blocks += _literal_block(
        f"args:{rid}",
        f"*Arguments* (as sent by the agent; secrets redacted; sha256 {view['args_sha256'][:12]})",
        _pretty(view["args"], MAX_ARGS_CHARS),
        style="rich_text_preformatted",
    )
    if justification:
        blocks += _literal_block(
            f"why:{rid}",
            "*The requester's reason* (given at the agent's client, unverified)",
            untrusted(justification),
            style="rich_text_quote",
        )
    if tool_description:
        blocks += _literal_block(
            f"desc:{rid}",
            "*Tool description* (written by the server, unverified)",
            untrusted(tool_description),
            style="rich_text_quote",
        )
    if recent_calls:
        lines = [
            untrusted(
                f"{str(c.get('ts', ''))[11:19]}  {c.get('name')}  "
                f"{json.dumps(scrub_secrets(c.get('args')), ensure_ascii=False, sort_keys=True)}",
                MAX_LINE_CHARS,
            )
            for c in recent_calls
        ]
        blocks += _literal_block(
            f"history:{rid}",
            f"*Recent calls by {escape_mrkdwn(requester['agent'])}* (oldest first)",
            "\n".join(lines),
            style="rich_text_preformatted",
        )
    if view.get("console_url"):  # from [console] public_url: the gate's own configuration
        link = f"<{view['console_url']}|Open {escape_mrkdwn(rid)} in the console>"
        blocks.append({"type": "context", "block_id": f"console:{rid}", "elements": [_mrkdwn(link)]})
    blocks.append(
        {"type": "context", "block_id": f"status:{rid}", "elements": [_mrkdwn(_status(view, voters))]}
    )
    steps = [escalation_line(step) for step in view.get("escalations") or []]
    if steps:
        blocks.append(
            {
                "type": "context",
                "block_id": f"escalated:{rid}",
                "elements": [_mrkdwn(escape_mrkdwn(line)) for line in steps],
            }
        )
    if view["state"] == "pending":
        buttons: list[dict[str, Any]] = [
            _button(ACTION_APPROVE, "Approve", rid, style="primary"),
            _button(ACTION_DENY, "Deny", rid, style="danger"),
        ]
        if grant_allowed:
            buttons.append(_button(ACTION_APPROVE_FOR, "Approve for 30 min", rid))
        blocks.append({"type": "actions", "block_id": f"decision:{rid}", "elements": buttons})
    state = str(view["state"]).replace("_", " ")
    name = escape_mrkdwn(view["name"])
    text = f"{escape_mrkdwn(gate)}: approval request {escape_mrkdwn(rid)} for {name} ({state})"
    return {"text": text, "blocks": blocks}


def escalation_line(step: Mapping[str, Any]) -> str:
    """One escalation step of a request view, as its messages show it (plain text: escape it)."""
    groups = ", ".join(str(g) for g in step.get("to_groups") or []) or "nobody new"
    return f"Escalated (step {step.get('step', 1)}) after {step.get('after')}: {groups} may decide it too"


def _button(action_id: str, label: str, request_id: str, *, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": label, "emoji": False},
        "value": request_id,
    }
    if style is not None:
        button["style"] = style
    return button


def deny_modal(request_id: str, name: str) -> dict[str, Any]:
    """The modal that asks a denier for their reason; it carries only the request id."""
    return {
        "type": "modal",
        "callback_id": DENY_CALLBACK,
        "private_metadata": request_id,
        "title": {"type": "plain_text", "text": "Deny the call"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": _plain(f"Deny request {request_id}: {name}", 300)},
            {
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": "Why? The agent is told this reason."},
                "element": {
                    "type": "plain_text_input",
                    "action_id": "reason",
                    "multiline": True,
                    "max_length": 2000,
                },
            },
        ],
    }


def refusal_text(why: str) -> str:
    """The ephemeral reply to someone whose click decides nothing."""
    return f"You cannot decide this: {escape_mrkdwn(why)}"
