"""The report's policy sections: break-glass uses, shadow-mode tallies, policy changes, escalations."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["COLLECTED", "breakglass_html", "collect", "policy_html", "policy_sections"]

# The records `summarize` hands over whole, by event type; "shadow" holds the policy.decided
# records of calls that shadow mode let run.
COLLECTED = ("shadow", "policy.changed", "breakglass.used", "breakglass.refused", "approval.escalated")
_ACTIONS = ("run", "confirm", "hold", "refuse")


def collect(collected: dict[str, list[Mapping[str, Any]]], body: Mapping[str, Any]) -> None:
    """Keep the records these sections are computed from (called once per record, in seq order)."""
    kind = body.get("event_type")
    if kind == "policy.decided" and body.get("enforced") is False:
        collected["shadow"].append(body)
    elif isinstance(kind, str) and kind in collected:
        collected[kind].append(body)


def _requester(body: Mapping[str, Any]) -> Any:
    requester = body.get("requester")
    return requester.get("agent") if isinstance(requester, Mapping) else None


def _shadow(decided: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    by_tool: dict[tuple[str, str], dict[str, Any]] = {}
    needed: dict[str, int] = {}
    refused: list[dict[str, Any]] = []
    for body in decided:
        need = body.get("would_need")
        need = need if isinstance(need, Mapping) else {}
        action = str(need.get("action"))
        row = by_tool.setdefault(
            (str(body.get("server")), str(body.get("tool"))),
            {"server": body.get("server"), "tool": body.get("tool"), "calls": 0}
            | {f"would_{a}": 0 for a in _ACTIONS}
            | {"approvals_from": {}},
        )
        row["calls"] += 1
        if action in _ACTIONS:
            row[f"would_{action}"] += 1
        if action == "hold":
            groups = [str(g) for g in need.get("groups") or []] or ["any approver"]
            who = " or ".join(groups)
            row["approvals_from"][who] = row["approvals_from"].get(who, 0) + 1
            needed[who] = needed.get(who, 0) + 1
        elif action == "refuse":
            refused.append(
                {
                    "correlation_id": body.get("correlation_id"),
                    "server": body.get("server"),
                    "tool": body.get("tool"),
                    "tier": body.get("tier"),
                    "rule": body.get("rule"),
                    "reason": body.get("reason"),
                    "requester": _requester(body),
                    "would": body.get("would"),
                    "at": body.get("ts"),
                }
            )
    rows = []
    for _, row in sorted(by_tool.items()):
        shown = dict(row)
        shown["approvals_from"] = [{"from": k, "calls": v} for k, v in sorted(row["approvals_from"].items())]
        rows.append(shown)
    return {
        "calls": len(decided),
        "by_tool": rows,
        "approvals_needed": [{"from": k, "calls": v} for k, v in sorted(needed.items())],
        "would_refuse": refused,
    }


def policy_sections(collected: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """The sections from what `collect` kept (pure)."""
    return {
        "breakglass": [
            {
                "request_id": b.get("request_id"),
                "by": b.get("operator"),
                "reason": b.get("reason"),
                "server": b.get("server"),
                "tool": b.get("tool"),
                "tier": b.get("tier"),
                "requester": _requester(b),
                "notified": b.get("notify"),
                "at": b.get("ts"),
            }
            for b in collected["breakglass.used"]
        ],
        "breakglass_refused": [
            {k: b.get(k) for k in ("request_id", "operator", "code", "why")} | {"at": b.get("ts")}
            for b in collected["breakglass.refused"]
        ],
        "shadow": _shadow(collected["shadow"]),
        "policy_changes": [
            {
                "at": b.get("ts"),
                "previous_policy_sha256": b.get("previous_policy_sha256"),
                "policy_sha256": b.get("policy_sha256"),
                "mode_change": b.get("mode_change"),
            }
            for b in collected["policy.changed"]
        ],
        "escalations": [
            {k: b.get(k) for k in ("request_id", "step", "to_groups", "after")} | {"at": b.get("ts")}
            for b in collected["approval.escalated"]
        ],
    }


# -- HTML -------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return html.escape(
            "; ".join(f"{v['from']}: {v['calls']}" if isinstance(v, Mapping) else str(v) for v in value),
            quote=True,
        )
    return html.escape(str(value), quote=True)


def _table(title: str, rows: Sequence[Mapping[str, Any]], columns: list[str], empty: str) -> str:
    head = f"<h2>{_e(title)} ({len(rows)})</h2>"
    if not rows:
        return f"{head}<p class='muted'>{_e(empty)}</p>"
    cells = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"{head}<table class='data'><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def breakglass_html(report: Mapping[str, Any]) -> list[str]:
    """The break-glass section, shown first on the page: every held call released without its approvals."""
    uses = report.get("breakglass") or []
    if not uses:
        return [
            "<h2 id='breakglass'>Break-glass uses (0)</h2>",
            "<p class='ok'>No held call was released by break-glass.</p>",
        ]
    return [
        f"<p class='bad'>Break-glass was used {len(uses)} time(s): "
        "these calls ran without their approvals.</p>",
        _table(
            "Break-glass uses",
            uses,
            ["request_id", "by", "reason", "server", "tool", "tier", "requester", "notified", "at"],
            "None.",
        ).replace("<h2>", "<h2 id='breakglass'>", 1),
    ]


def policy_html(report: Mapping[str, Any]) -> list[str]:
    shadow = report.get("shadow") or {"calls": 0, "by_tool": [], "approvals_needed": [], "would_refuse": []}
    parts = [
        _table(
            "Shadow mode: what enforcing would have done, by server and tool",
            shadow["by_tool"],
            [
                "server",
                "tool",
                "calls",
                "would_run",
                "would_confirm",
                "would_hold",
                "would_refuse",
                "approvals_from",
            ],
            "No call ran in shadow mode.",
        ),  # fmt: skip
        _table(
            "Shadow mode: approvals the held calls would have needed",
            shadow["approvals_needed"],
            ["from", "calls"],
            "None.",
        ),
        _table(
            "Shadow mode: calls that would have been refused",
            shadow["would_refuse"],
            ["correlation_id", "server", "tool", "tier", "rule", "would", "requester", "at"],
            "None.",
        ),
        _table(
            "Policy changes",
            report.get("policy_changes") or [],
            ["at", "previous_policy_sha256", "policy_sha256", "mode_change"],
            "None.",
        ),
        _table(
            "Refused break-glass attempts",
            report.get("breakglass_refused") or [],
            ["request_id", "operator", "code", "why", "at"],
            "None.",
        ),
    ]
    if report.get("escalations"):
        parts.append(
            _table(
                "Escalations",
                report["escalations"],
                ["request_id", "step", "to_groups", "after", "at"],
                "None.",
            )
        )
    return parts
