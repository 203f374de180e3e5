"""The reviewer's part of `audit report`: time to decision per tier, decisions per approver,
requests that expired unanswered, requests per day and the control checks, checked against a log
built here, and drawn in the self-contained page."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from mcp_gate.report import render_html, review, summarize

VERIFIED = {"ok": True, "records": 0, "keys_checked": True, "checkpoints": 3, "problem": None}


def ts(day: int, seconds: int) -> str:
    return f"2026-11-{day:02d}T12:{seconds // 60:02d}:{seconds % 60:02d}.000000Z"


def request(
    i: int, tier: str, *, day: int = 24, owner: str = "alice@example.com", required: int = 1
) -> list[dict[str, Any]]:
    base = {"correlation_id": f"c{i}", "server": "db", "tool": "drop"}
    return [
        {"event_type": "policy.decided", "ts": ts(day, 0), **base, "tier": tier,
         "requirement": f"{required} approval", "requester": {"agent": "a", "owner": owner}},
        {"event_type": "approval.requested", "ts": ts(day, 0), **base, "request_id": f"R{i}",
         "requester": {"agent": "a", "owner": owner}, "required": required},
    ]  # fmt: skip


def decided(i: int, who: str, seconds: int, verdict: str = "approve", *, day: int = 24) -> dict[str, Any]:
    state = "approved" if verdict == "approve" else "denied"
    return {
        "event_type": "approval.decided", "ts": ts(day, seconds), "correlation_id": f"c{i}",
        "request_id": f"R{i}", "approver": who, "approver_email": f"{who}@example.com",
        "verdict": verdict, "state": state,
    }  # fmt: skip


def built_log() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    # high: ten requests decided after 10, 20, ... 100 seconds (bob approves, carol denies the last)
    for i in range(10):
        events += request(i, "high", day=24 + i % 2)
        who, verdict = ("carol", "deny") if i == 9 else ("bob", "approve")
        events.append(decided(i, who, 10 * (i + 1), verdict, day=24 + i % 2))
    # critical: two, each needing two approvers; 30 s and 300 s to the deciding vote
    for i, (first, last) in zip((20, 21), ((10, 30), (60, 300)), strict=True):
        events += request(i, "critical", required=2)
        events.append(decided(i, "bob", first) | {"state": "pending"})
        events.append(decided(i, "dave", last))
    # expired: one nobody answered, one with a vote short of its quorum
    events += request(30, "high", day=26)
    events.append({"event_type": "approval.expired", "ts": ts(26, 900), "correlation_id": "c30",
                   "request_id": "R30", "expires_at": ts(26, 900), "approvals": 0})  # fmt: skip
    events += request(31, "critical", day=26, required=2)
    events.append(decided(31, "bob", 5) | {"state": "pending"})
    events.append({"event_type": "approval.expired", "ts": ts(26, 900), "correlation_id": "c31",
                   "request_id": "R31", "expires_at": ts(26, 900), "approvals": 1})  # fmt: skip
    return events


def test_time_to_decision_decisions_and_unanswered_match_the_log() -> None:
    rv = review(summarize(built_log()), VERIFIED)
    assert rv["time_to_decision"] == [
        {"tier": "high", "decided": 10, "median_seconds": 55.0, "p90_seconds": 90.0},
        {"tier": "critical", "decided": 2, "median_seconds": 165.0, "p90_seconds": 300.0},
    ]
    assert rv["decisions_by_approver"] == [
        {"approver": "bob", "approved": 12, "denied": 0, "total": 12},
        {"approver": "carol", "approved": 0, "denied": 1, "total": 1},
        {"approver": "dave", "approved": 2, "denied": 0, "total": 2},
    ]
    assert [e["request_id"] for e in rv["expired_unanswered"]] == ["R30"]
    assert rv["requests_per_day"] == [
        {"day": "2026-11-24", "requests": 7},
        {"day": "2026-11-25", "requests": 5},
        {"day": "2026-11-26", "requests": 2},
    ]
    assert [c["result"] for c in rv["controls"]] == ["pass"] * 6


def test_a_self_approval_in_the_records_fails_its_check() -> None:
    """The engine refuses these; a log that holds one (an older gate, an edited store) says so."""
    events = request(1, "high", owner="bob@example.com") + [decided(1, "bob", 10)]
    checks = {c["control"]: c for c in review(summarize(events), VERIFIED)["controls"]}
    own = checks["Nobody approved a call made for themselves"]
    assert (own["result"], own["detail"]) == ("fail", "requests: R1")


def test_unverified_or_unapproved_logs_fail_their_checks() -> None:
    events = [
        {"event_type": "call.executed", "ts": ts(24, 1), "correlation_id": "x", "server": "db", "tool": "t"}
    ]
    broken = {
        "ok": False,
        "records": 1,
        "keys_checked": False,
        "checkpoints": 0,
        "problem": "seq 7 was changed",
    }
    results = {c["control"]: c for c in review(summarize(events), broken)["controls"]}
    assert results["The evidence chain is intact"]["result"] == "fail"
    assert results["The evidence chain is intact"]["detail"] == "seq 7 was changed"
    assert results["Signed checkpoints cover the log"]["result"] == "fail"
    assert results["No call that needed approval ran without it"]["result"] == "fail"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.svg_text: list[str] = []
        self._in_svg = 0
        self.scripts_with_src = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_svg += tag == "svg"
        if tag in ("script", "img", "link") and any(k in ("src", "href") for k, _ in attrs):
            self.scripts_with_src += 1

    def handle_endtag(self, tag: str) -> None:
        self._in_svg -= tag == "svg"

    def handle_data(self, data: str) -> None:
        if self._in_svg:
            self.svg_text.append(data)


def test_the_page_draws_the_charts_inline_and_escapes_labels() -> None:
    events = built_log()
    events += request(40, "<script>alert(1)</script>", day=27)
    events.append(decided(40, "bob", 3))
    report = summarize(events)
    page = render_html(
        {**report, "gate": "g", "gate_version": "x", "period": {"since": None, "until": None},
         "verification": VERIFIED, "review": review(report, VERIFIED)}
    )  # fmt: skip
    parsed = _Page()
    parsed.feed(page)
    assert parsed.tags.count("svg") == 2  # time to decision, requests per day
    assert parsed.scripts_with_src == 0  # self-contained: no external script, image or sheet
    assert "high p90" in parsed.svg_text and "2026-11-24" in parsed.svg_text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; median" in page
    assert "PASS: The evidence chain is intact" in page
