"""The evidence report: what happened in a period, computed from the records, as JSON or one HTML page."""

from __future__ import annotations

import html
import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from mcp_gate import __version__
from mcp_gate.events import GRANT_DECISIONS, REACHED_DOWNSTREAM, event_type_of
from mcp_gate.evidence import VerifyReport
from mcp_gate.policy_report import COLLECTED, breakglass_html, collect, policy_html, policy_sections
from mcp_gate.storage.base import LogReader

__all__ = ["UNAPPROVED_METHOD", "build_report", "render_html", "review", "summarize"]

UNAPPROVED_METHOD = (
    "Every call.executed, call.failed and call.outcome_unknown record (a call that reached its server) "
    "was matched to the policy.decided record of the same correlation id. Where that decision required "
    "approvals, the same correlation id must carry a call.released record before the execution: "
    "either from a grant, from break-glass (each use is listed in its own section), or naming at least "
    "as many distinct approvers as were required. A call with no such release is listed here. Calls that "
    "shadow mode let run (policy.decided with enforced = false) are counted in the shadow-mode section "
    "instead, and fail the enforce-mode check."
)
_NEEDS = re.compile(r"^(\d+) approvals?$")


def _who(body: Mapping[str, Any]) -> tuple[Any, Any]:
    requester = body.get("requester")
    if isinstance(requester, Mapping):
        return requester.get("agent"), requester.get("owner")
    return None, None


def _person(name: Any, email: Any, subject: Any) -> str | None:
    """A person from the identity provider as the report shows them: by name, and by subject."""
    if not isinstance(subject, str):
        return None
    shown = name if isinstance(name, str) and name else email if isinstance(email, str) and email else None
    return f"{shown} (subject {subject})" if shown else f"subject {subject}"


def _seconds_between(start: Any, end: Any) -> float | None:
    try:
        a = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        b = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((b - a).total_seconds(), 3)


def _call_of(body: Mapping[str, Any]) -> dict[str, Any]:
    call: dict[str, Any] = {"server": body.get("server"), "tool": body.get("tool")}
    call["tier"] = body.get("tier")
    call["requirement"] = body.get("requirement")
    call["agent"], call["owner"] = _who(body)
    requester = body.get("requester")
    if isinstance(requester, Mapping):
        call["person"] = _person(requester.get("name"), requester.get("email"), requester.get("sub"))
    call["enforced"] = body.get("enforced") is not False  # shadow mode let it run unenforced
    return call


def summarize(
    bodies: Iterable[Mapping[str, Any]],
    earlier: Callable[[str], Iterable[Mapping[str, Any]]] = lambda cid: (),
) -> dict[str, Any]:
    """The report's sections from record bodies in seq order (pure; one pass).

    `earlier(cid)` gives the records of a call from before the period, for a call decided before
    it began and run inside it; a call that ran with no policy decision at all is a violation."""
    records = 0
    policies: dict[str, dict[str, Any]] = {}
    calls: dict[str, dict[str, Any]] = {}  # correlation id -> server, tool, tier, requirement
    by_server_tier: dict[tuple[str, str], dict[str, int]] = {}
    approvals: dict[str, dict[str, Any]] = {}
    released: dict[str, list[Mapping[str, Any]]] = {}
    grants: dict[str, dict[str, Any]] = {}
    lists: dict[str, list[dict[str, Any]]] = {
        "denials": [], "expiries": [], "revocations": [], "grants": [], "self_approval_refusals": [],
        "refused_decisions": [], "drift": [], "unapproved": [],
    }  # fmt: skip
    collected: dict[str, list[Mapping[str, Any]]] = {kind: [] for kind in COLLECTED}
    for body in bodies:
        records += 1
        collect(collected, body)
        kind, ts, cid = event_type_of(body), body.get("ts"), body.get("correlation_id")
        policy = body.get("policy_sha256")
        if isinstance(policy, str):
            seen = policies.setdefault(
                policy, {"policy_sha256": policy, "first": ts, "last": ts, "records": 0}
            )
            seen["last"] = ts
            seen["records"] += 1
        if kind in (*REACHED_DOWNSTREAM, "call.refused") and isinstance(cid, str) and cid not in calls:
            for prior in earlier(cid):  # decided before the period began
                if event_type_of(prior) == "policy.decided":
                    calls[cid] = _call_of(prior)
                elif event_type_of(prior) == "call.released":
                    released.setdefault(cid, []).append(prior)
        if kind == "policy.decided" and isinstance(cid, str):
            call = calls[cid] = _call_of(body)
            _row(by_server_tier, call)["requested"] += 1
        elif kind in REACHED_DOWNSTREAM and isinstance(cid, str) and cid in calls:
            reached = calls[cid]
            _row(by_server_tier, reached)["ran"] += 1
            _check_release(cid, reached, released.get(cid, []), ts, lists["unapproved"])
        elif kind in REACHED_DOWNSTREAM:
            lists["unapproved"].append(
                {"correlation_id": cid, "server": body.get("server"), "tool": body.get("tool"), "tier": None,
                 "requirement": "no policy.decided record for this call", "requester": None, "at": ts}
            )  # fmt: skip
        elif kind == "call.refused" and isinstance(cid, str) and cid in calls:
            _row(by_server_tier, calls[cid])["refused"] += 1
        elif kind == "call.released" and isinstance(cid, str):
            released.setdefault(cid, []).append(body)
        elif kind == "approval.requested":
            rid = str(body.get("request_id"))
            agent, owner = _who(body)
            approvals[rid] = {
                "request_id": rid, "correlation_id": cid, "server": body.get("server"),
                "tool": body.get("tool"), "tier": calls.get(str(cid), {}).get("tier"), "requester": agent,
                "owner": owner, "required": body.get("required"), "requested_at": ts, "approvers": [],
                "deniers": [], "outcome": "pending", "decided_at": None, "latency_seconds": None,
                "approver_emails": [], "person": calls.get(str(cid), {}).get("person"), "decided_by": [],
            }  # fmt: skip
        elif kind == "approval.decided":
            entry = approvals.get(str(body.get("request_id")))
            if entry is not None:
                who = body.get("approver")
                entry["approvers" if body.get("verdict") == "approve" else "deniers"].append(who)
                person = _person(
                    body.get("approver_name"), body.get("approver_email"), body.get("approver_sub")
                )
                entry["decided_by"].append(f"{body.get('verdict')}: {person or who}")
                if body.get("verdict") == "approve":
                    entry["approver_emails"].append(body.get("approver_email"))
                state = body.get("state")
                if state in ("approved", "denied"):
                    entry["outcome"], entry["decided_at"] = state, ts
                    entry["latency_seconds"] = _seconds_between(entry["requested_at"], ts)
                if state == "denied":
                    lists["denials"].append({"request_id": entry["request_id"], "by": who, "at": ts,
                                             "note": body.get("note")})  # fmt: skip
        elif kind == "approval.refused":
            which = "self_approval_refusals" if body.get("code") == "self-approval" else "refused_decisions"
            lists[which].append(_pick(body, request_id="request_id", by="approver", code="code", why="why"))
        elif kind == "approval.expired":
            entry = approvals.get(str(body.get("request_id")))
            lists["expiries"].append(
                _pick(body, request_id="request_id", expires_at="expires_at", approvals="approvals")
                | {k: (entry or {}).get(k) for k in ("server", "tool", "requester")}
            )
            if entry is not None:
                entry["outcome"] = "expired"
        elif kind == "approval.revoked":
            entry = approvals.get(str(body.get("request_id")))
            lists["revocations"].append(
                _pick(body, request_id="request_id", by="approver")
                | {k: (entry or {}).get(k) for k in ("server", "tool")}
            )
            if entry is not None:
                entry["outcome"] = "revoked"
        elif kind in GRANT_DECISIONS:
            row = {
                "event": kind,
                **_pick(body, grant_id="grant_id", by="approver", server="server", tool="tool"),
            } | {"for": body.get("duration")}
            if kind == "grant.created":
                grants[str(body.get("grant_id"))] = row
            elif (created := grants.get(str(body.get("grant_id")))) is not None:
                row["server"] = row["server"] or created["server"]
                row["tool"] = row["tool"] or created["tool"]
            lists["grants"].append(row)
        elif kind == "tool.drifted":
            lists["drift"].append(
                {"event": kind, **_pick(body, server="server", tool="tool", pin="pin", previous_pin="pinned")}
                | {"by": None}
            )
        elif kind == "tool.accepted":
            lists["drift"].append(
                {"event": kind, **_pick(body, server="server", tool="tool", pin="pin",
                                        previous_pin="previous_pin", by="accepted_by")}
            )  # fmt: skip
    return {
        "records": records,
        "policy_versions": list(policies.values()),
        "calls_by_server_tier": [
            {"server": s, "tier": t, **counts} for (s, t), counts in sorted(by_server_tier.items())
        ],
        "approvals": list(approvals.values()),
        **{k: v for k, v in lists.items() if k != "unapproved"},
        "unapproved_calls": {
            "count": len(lists["unapproved"]),
            "calls": lists["unapproved"],
            "method": UNAPPROVED_METHOD,
        },
        **policy_sections(collected),
    }


def _row(table: dict[tuple[str, str], dict[str, int]], call: Mapping[str, Any]) -> dict[str, int]:
    return table.setdefault(
        (str(call["server"]), str(call["tier"])), {"requested": 0, "ran": 0, "refused": 0}
    )


def _pick(body: Mapping[str, Any], **fields: str) -> dict[str, Any]:
    """A report row: the chosen body fields under their report names, and the record's time."""
    return {name: body.get(key) for name, key in fields.items()} | {"at": body.get("ts")}


def _check_release(
    cid: str, call: Mapping[str, Any], releases: list[Mapping[str, Any]], ts: Any, out: list[dict[str, Any]]
) -> None:
    needed = _NEEDS.match(str(call.get("requirement")))
    if needed is None or not call.get("enforced", True):  # shadow calls: their own section
        return
    count = int(needed.group(1))
    for release in releases:
        if isinstance(release.get("grant_id"), str) or isinstance(release.get("breakglass"), Mapping):
            return
        approvers = release.get("approvers")
        if isinstance(approvers, list) and len({str(a) for a in approvers}) >= count:
            return
    out.append({"correlation_id": cid, "server": call.get("server"), "tool": call.get("tool"),
                "tier": call.get("tier"), "requirement": call.get("requirement"),
                "requester": call.get("agent"), "at": ts})  # fmt: skip


def build_report(
    reader: LogReader, *, since: str | None, until: str | None, gate: str, verified: VerifyReport
) -> dict[str, Any]:
    """The report over the records with since <= ts < until (streamed from `reader`)."""
    span = reader.seq_range(since, until)
    if span is None:
        sections = summarize(())
    else:
        first, last = span
        bodies = (b for b in reader.bodies_of(after_seq=first - 1) if b.get("seq", 0) <= last)
        sections = summarize(bodies, lambda cid: reader.bodies_for(cid, before_seq=first))
    verification = asdict(verified)
    return {
        "gate": gate,
        "gate_version": __version__,
        "period": {"since": since, "until": until},
        "seq_range": None if span is None else {"first": span[0], "last": span[1]},
        **sections,
        "verification": verification,
        "review": review(sections, verification),
    }


# -- what a reviewer reads first -------------------------------------------------------------

P90_METHOD = "nearest rank: the smallest time at or above 90% of the decided requests' times"


def review(sections: Mapping[str, Any], verification: Mapping[str, Any]) -> dict[str, Any]:
    """Time to decision per tier, decisions per approver, requests left unanswered, requests per
    day and the control checks, from `summarize`'s sections and the verification (pure)."""
    approvals: list[Mapping[str, Any]] = sections["approvals"]
    times: dict[str, list[float]] = {}
    per_approver: dict[str, dict[str, int]] = {}
    for entry in approvals:
        if entry["latency_seconds"] is not None and entry["outcome"] in ("approved", "denied"):
            times.setdefault(str(entry["tier"] or "unknown"), []).append(float(entry["latency_seconds"]))
        for verdict, names in (("approved", entry["approvers"]), ("denied", entry["deniers"])):
            for name in names:
                counts = per_approver.setdefault(str(name), {"approved": 0, "denied": 0})
                counts[verdict] += 1
    unanswered = [
        {
            k: entry[k]
            for k in ("request_id", "server", "tool", "tier", "requester", "required", "requested_at")
        }
        for entry in approvals
        if entry["outcome"] == "expired" and not entry["approvers"] and not entry["deniers"]
    ]
    per_day = Counter(str(entry["requested_at"])[:10] for entry in approvals if entry["requested_at"])
    return {
        "time_to_decision": [
            {
                "tier": tier,
                "decided": len(values),
                "median_seconds": round(statistics.median(values), 3),
                "p90_seconds": _p90(values),
            }
            for tier, values in sorted(times.items(), key=lambda kv: _tier_order(kv[0]))
        ],
        "p90_method": P90_METHOD,
        "decisions_by_approver": [
            {"approver": name, **counts, "total": counts["approved"] + counts["denied"]}
            for name, counts in sorted(per_approver.items())
        ],
        "expired_unanswered": unanswered,
        "requests_per_day": [{"day": day, "requests": n} for day, n in sorted(per_day.items())],
        "controls": _controls(sections, verification),
    }


def _folded(identity: Any) -> str:
    return str(identity).strip().lower()


def _approved_by(entry: Mapping[str, Any]) -> list[Any]:
    """Every identity an approving vote named: the approver's name and their email."""
    return [*entry["approvers"], *entry.get("approver_emails", ())]


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)], 3)


def _tier_order(tier: str) -> tuple[int, str]:
    order = ("low", "medium", "high", "critical", "blocked")
    return (order.index(tier) if tier in order else len(order), tier)


def _controls(sections: Mapping[str, Any], verification: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One line each for the checks of docs/controls.md the records let the report compute."""
    unapproved = sections["unapproved_calls"]["count"]
    own = [
        entry["request_id"]
        for entry in sections["approvals"]
        if entry["owner"] and _folded(entry["owner"]) in {_folded(a) for a in _approved_by(entry)}
    ]
    unnamed = [row for row in sections["drift"] if row["event"] == "tool.accepted" and not row["by"]]
    checked = bool(verification.get("keys_checked"))
    checkpoints = int(verification.get("checkpoints") or 0)

    def line(control: str, ok: bool, detail: str, refs: str) -> dict[str, Any]:
        return {"control": control, "result": "pass" if ok else "fail", "detail": detail, "refs": refs}

    return [
        line(
            "The evidence chain is intact",
            bool(verification.get("ok")),
            f"{verification.get('records', 0)} records verified"
            if verification.get("ok")
            else str(verification.get("problem")),
            "CC7.2; AU-9, AU-10",
        ),
        line(
            "Signed checkpoints cover the log",
            checked and checkpoints > 0,
            f"{checkpoints} signed checkpoint(s) verified"
            if checked
            else "not checked: no signing key or public key was given",
            "CC7.2; AU-9(3)",
        ),
        line(
            "No call that needed approval ran without it",
            unapproved == 0,
            f"{unapproved} call(s) ran without a required approval",
            "CC6.1, CC8.1; AC-5",
        ),
        line(
            "Every call was decided in enforce mode",
            not sections["shadow"]["calls"],
            f"{sections['shadow']['calls']} call(s) ran in shadow mode, unenforced",
            "CC8.1; CM-3",
        ),
        line(
            "Nobody approved a call made for themselves",
            not own,
            "none" if not own else "requests: " + ", ".join(map(str, own)),
            "CC6.3; AC-5",
        ),
        line(
            "Every changed tool definition was accepted by a named person",
            not unnamed,
            f"{sum(1 for r in sections['drift'] if r['event'] == 'tool.accepted')} accepted"
            + (f", {len(unnamed)} without a name" if unnamed else ""),
            "CC8.1; AU-12",
        ),
    ]


# -- HTML -----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1b1b1b;max-width:80rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;vertical-align:top;word-break:break-word}th{background:#f3f3f3;cursor:pointer;user-select:none}
.ok{color:#075e07;font-weight:600}.bad{color:#a40000;font-weight:600}input.filter{margin:.25rem 0;width:20rem}
.muted{color:#666}code{font-size:12px}ul.controls{list-style:none;padding-left:0}
ul.controls .muted{font-weight:400}figure{margin:.75rem 0}figcaption{font-weight:600;margin-bottom:.25rem}
"""

_JS = """
document.querySelectorAll('table.data').forEach(function(t){
  var f=t.previousElementSibling;
  if(f&&f.classList.contains('filter')){f.addEventListener('input',function(){
    var q=f.value.toLowerCase();t.querySelectorAll('tbody tr').forEach(function(r){
      r.style.display=r.textContent.toLowerCase().indexOf(q)>=0?'':'none';});});}
  t.querySelectorAll('th').forEach(function(h,i){h.addEventListener('click',function(){
    var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),asc=h.dataset.asc!=='1';
    t.querySelectorAll('th').forEach(function(o){delete o.dataset.asc;});h.dataset.asc=asc?'1':'0';
    rows.sort(function(x,y){var a=x.cells[i].textContent,c=y.cells[i].textContent,
      na=parseFloat(a),nc=parseFloat(c),r=(!isNaN(na)&&!isNaN(nc))?na-nc:a.localeCompare(c);
      return asc?r:-r;});rows.forEach(function(r){b.appendChild(r);});});});
});
"""


def _e(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return html.escape(", ".join(str(v) for v in value), quote=True)
    return html.escape(str(value), quote=True)


def _table(title: str, rows: list[Mapping[str, Any]], columns: list[str], empty: str) -> str:
    head = f"<h2>{_e(title)} ({len(rows)})</h2>"
    if not rows:
        return f"{head}<p class='muted'>{_e(empty)}</p>"
    cells = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return (
        f"{head}<input class='filter' type='search' placeholder='filter {_e(title.lower())}'>"
        f"<table class='data'><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"
    )


def _bars(title: str, items: list[tuple[str, float]], unit: str) -> str:
    """A horizontal bar chart as inline SVG (no script, no external asset); labels escaped."""
    if not items:
        return ""
    top = max(value for _, value in items) or 1.0
    row, label_w, bar_w = 22, 170, 420
    height = row * len(items) + 8
    bars = []
    for i, (label, value) in enumerate(items):
        y = 4 + i * row
        width = max(1.0, bar_w * value / top)
        bars.append(
            f"<text x='{label_w - 6}' y='{y + 14}' text-anchor='end'>{_e(label)}</text>"
            f"<rect x='{label_w}' y='{y + 2}' width='{width:.1f}' height='{row - 6}' fill='#3b6ea5'>"
            f"<title>{_e(label)}: {_e(_number(value))} {_e(unit)}</title></rect>"
            f"<text x='{label_w + width + 6:.1f}' y='{y + 14}'>{_e(_number(value))} {_e(unit)}</text>"
        )
    return (
        f"<figure><figcaption>{_e(title)}</figcaption>"
        f"<svg role='img' aria-label='{_e(title)}' width='{label_w + bar_w + 120}' height='{height}' "
        f"font-size='12' xmlns='http://www.w3.org/2000/svg'>{''.join(bars)}</svg></figure>"
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _review_html(rv: Mapping[str, Any]) -> list[str]:
    controls = "".join(
        f"<li class='{'ok' if c['result'] == 'pass' else 'bad'}'>"
        f"{_e(c['result'].upper())}: {_e(c['control'])}"
        f" <span class='muted'>({_e(c['detail'])}; {_e(c['refs'])})</span></li>"
        for c in rv["controls"]
    )
    ttd = rv["time_to_decision"]
    chart = [(f"{t['tier']} {which}", t[f"{which}_seconds"]) for t in ttd for which in ("median", "p90")]
    days = [(d["day"], float(d["requests"])) for d in rv["requests_per_day"]]
    return [
        "<h2>Control checks</h2>",
        f"<ul class='controls'>{controls}</ul>",
        "<p class='muted'>What each check rests on: docs/controls.md.</p>",
        _table(
            "Time to decision by tier",
            ttd,
            ["tier", "decided", "median_seconds", "p90_seconds"],
            "No decided requests.",
        ),
        f"<p class='muted'>p90: {_e(rv['p90_method'])}.</p>",
        _bars("Time to decision (seconds)", chart, "s"),
        _table(
            "Decisions by approver",
            rv["decisions_by_approver"],
            ["approver", "approved", "denied", "total"],
            "No decisions.",
        ),
        _table(
            "Requests that expired unanswered",
            rv["expired_unanswered"],
            ["request_id", "server", "tool", "tier", "requester", "required", "requested_at"],
            "None.",
        ),
        _bars("Approval requests per day", days, "requests"),
    ]


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page (inline CSS and JS, no external assets); every value is escaped."""
    verification = report["verification"]
    rv = report.get("review") or review(report, verification)
    unapproved = report["unapproved_calls"]
    period = report["period"]
    if verification["ok"]:
        verdict = (
            f"<p class='ok'>Verified: {verification['records']} records, chain intact"
            + (
                f", {verification.get('checkpoints', 0)} signed checkpoint(s) verified"
                if verification.get("keys_checked")
                else ", signed checkpoints not checked (no key)"
            )
            + ".</p>"
        )
    else:
        verdict = f"<p class='bad'>Verification FAILED: {_e(verification['problem'])}</p>"
    if unapproved["count"] == 0:
        zero = "<p class='ok'>0 calls ran without a required approval.</p>"
    else:
        zero = f"<p class='bad'>{unapproved['count']} call(s) ran without a required approval.</p>"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Evidence report: {_e(report['gate'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Evidence report: gate {_e(report['gate'])}</h1>",
        f"<p>Period: {_e(period['since'] or 'start of the log')} to {_e(period['until'] or 'now')} "
        f"(records: {report['records']}; mcp-gate {_e(report['gate_version'])})</p>",
        *breakglass_html(report),
        "<h2>Verification</h2>",
        verdict,
        "<h2>Calls that ran without a required approval</h2>",
        zero,
        f"<p class='muted'>How this was checked: {_e(unapproved['method'])}</p>",
        *_review_html(rv),
        *policy_html(report),
        _table(
            "Unapproved calls",
            unapproved["calls"],
            ["correlation_id", "server", "tool", "tier", "requirement", "requester", "at"],
            "None.",
        ),
        _table(
            "Policy versions",
            report["policy_versions"],
            ["policy_sha256", "first", "last", "records"],
            "No records.",
        ),
        _table(
            "Calls by server and tier",
            report["calls_by_server_tier"],
            ["server", "tier", "requested", "ran", "refused"],
            "No calls.",
        ),
        _table(
            "Approvals",
            report["approvals"],
            [
                "request_id",
                "server",
                "tool",
                "tier",
                "requester",
                "owner",
                "person",
                "required",
                "approvers",
                "decided_by",
                "deniers",
                "outcome",
                "requested_at",
                "decided_at",
                "latency_seconds",
            ],
            "No approval requests.",
        ),  # fmt: skip
        _table("Denials", report["denials"], ["request_id", "by", "at", "note"], "None."),
        _table(
            "Expiries",
            report["expiries"],
            ["request_id", "server", "tool", "requester", "approvals", "expires_at", "at"],
            "None.",
        ),
        _table("Revocations", report["revocations"], ["request_id", "server", "tool", "by", "at"], "None."),
        _table(
            "Grants", report["grants"], ["event", "grant_id", "by", "server", "tool", "for", "at"], "None."
        ),
        _table(
            "Self-approval attempts refused",
            report["self_approval_refusals"],
            ["request_id", "by", "at", "why"],
            "None.",
        ),
        _table(
            "Other refused decisions",
            report["refused_decisions"],
            ["request_id", "by", "code", "at", "why"],
            "None.",
        ),
        _table(
            "Tool drift",
            report["drift"],
            ["event", "server", "tool", "previous_pin", "pin", "by", "at"],
            "None.",
        ),
        f"<script>{_JS}</script></body></html>",
    ]
    return "\n".join(parts)
