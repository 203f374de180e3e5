"""The pure approval rules: who may decide, quorum, expiry, release of exactly one call, grants."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mcp_gate.approvals import (
    ID_ALPHABET,
    ApprovalRequest,
    Approved,
    Approver,
    Binding,
    Denied,
    Expired,
    Grant,
    Pending,
    Refusal,
    Released,
    Revoked,
    Void,
    decide,
    describe_wait,
    format_duration,
    grant_covers,
    new_id,
    parse_duration,
    release,
    revoke,
)

NOW = datetime(2026, 11, 24, 14, 17, 0, tzinfo=UTC)
BINDING = Binding("claude@laptop", "alice@example.com", "notes", "write_note", "pin1", "args1", "policy1")


def request(**changes: object) -> ApprovalRequest:
    base = ApprovalRequest(
        id="K7Q2M9XA",
        binding=BINDING,
        correlation_id="c1",
        tier="high",
        required=1,
        groups=("sre",),
        rule="notes.toml rule 5",
        reason="replaces a note",
        args={"name": "x"},
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=15),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def approver(
    name: str, groups: tuple[str, ...] = ("sre",), email: str | None = None, *aliases: str
) -> Approver:
    return Approver(name, email or f"{name}@example.com", frozenset(groups), aliases=frozenset(aliases))


BOB, CAROL, DAVE = approver("bob"), approver("carol", ("sre", "security")), approver("dave", ("sre",))


def test_one_eligible_approval_approves_a_request_that_needs_one() -> None:
    outcome = decide(request(), BOB, "approve", channel="cli", now=NOW, note="ok")
    assert isinstance(outcome, Approved)
    assert outcome.request.state == "approved" and outcome.request.votes[0].note == "ok"


def test_a_quorum_of_two_needs_two_distinct_approvers_and_the_same_one_twice_is_refused() -> None:
    first = decide(request(required=2), BOB, "approve", channel="cli", now=NOW)
    assert isinstance(first, Pending)
    again = decide(first.request, BOB, "approve", channel="api", now=NOW)
    assert isinstance(again, Refusal) and again.code == "duplicate"
    second = decide(first.request, DAVE, "approve", channel="api", now=NOW)
    assert isinstance(second, Approved) and [v.approver for v in second.request.approvals] == ["bob", "dave"]


def test_a_single_denial_ends_a_request_even_after_an_approval() -> None:
    first = decide(request(required=2), BOB, "approve", channel="cli", now=NOW)
    assert isinstance(first, Pending)
    denied = decide(first.request, CAROL, "deny", channel="cli", now=NOW, note="no")
    assert isinstance(denied, Denied) and denied.request.state == "denied" and denied.vote.note == "no"
    late = decide(denied.request, DAVE, "approve", channel="cli", now=NOW)
    assert isinstance(late, Refusal) and late.code == "not-pending"


@pytest.mark.parametrize(
    "who",
    [
        approver("alice", ("sre",), "alice@example.com"),
        approver("alice2", ("sre",), "ALICE@example.com"),
        approver("al", ("sre",), "al@other.example", " Alice@Example.com "),
        approver("alice@example.com", ("sre",), "someone@example.com"),
    ],
)
def test_the_requesters_owner_never_approves_through_email_name_or_alias(who: Approver) -> None:
    outcome = decide(request(), who, "approve", channel="cli", now=NOW)
    assert isinstance(outcome, Refusal) and outcome.code == "self-approval"


def test_an_approver_outside_the_eligible_groups_cannot_decide_and_no_groups_means_any_approver() -> None:
    outsider = approver("frank", ("finance",))
    refused = decide(request(), outsider, "approve", channel="cli", now=NOW)
    assert isinstance(refused, Refusal) and refused.code == "not-eligible" and "sre" in refused.why
    assert isinstance(decide(request(groups=()), outsider, "approve", channel="cli", now=NOW), Approved)


def test_a_decision_at_or_after_the_expiry_instant_is_refused() -> None:
    r = request()
    assert isinstance(
        decide(r, BOB, "approve", channel="cli", now=r.expires_at - timedelta(microseconds=1)), Approved
    )
    at = decide(r, BOB, "approve", channel="cli", now=r.expires_at)
    assert isinstance(at, Refusal) and at.code == "expired"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"agent": "other-agent"}, "another call"),
        ({"owner": "bob@example.com"}, "another call"),
        ({"args_sha256": "args2"}, "another call"),
        ({"tool": "delete_note"}, "another call"),
        ({"pin": "pin2"}, "definition changed"),
        ({"policy_sha256": "policy2"}, "policy changed"),
    ],
)
def test_an_approval_releases_only_the_exact_call_it_was_given_for(change: dict[str, str], why: str) -> None:
    approved = replace(request(), state="approved")
    outcome = release(approved, replace(BINDING, **change), now=NOW)
    assert isinstance(outcome, Void) and why in outcome.why and outcome.request.state == "void"


def test_release_happens_once_and_not_after_expiry() -> None:
    approved = replace(request(), state="approved")
    released = release(approved, BINDING, now=NOW)
    assert isinstance(released, Released) and released.request.state == "executing"
    assert isinstance(release(released.request, BINDING, now=NOW), Refusal)
    assert isinstance(release(approved, BINDING, now=approved.expires_at), Expired)
    assert isinstance(release(request(), BINDING, now=NOW), Refusal)  # still pending


def test_an_unexecuted_approval_can_be_revoked_by_an_eligible_approver_but_not_after_it_ran() -> None:
    approved = replace(request(), state="approved")
    revoked = revoke(approved, CAROL, now=NOW)
    assert isinstance(revoked, Revoked) and revoked.request.closed_by == "carol"
    assert isinstance(revoke(approved, approver("frank", ("finance",)), now=NOW), Refusal)
    assert isinstance(revoke(replace(approved, state="executed"), CAROL, now=NOW), Refusal)


def test_a_grant_covers_only_its_requester_tool_and_rule_while_live_and_never_a_critical_call() -> None:
    rule = "notes.toml rule 5"
    grant = Grant(
        "GABCDEFGH",
        BINDING.agent,
        BINDING.owner,
        "notes",
        "write_note",
        "bob",
        NOW,
        NOW + timedelta(minutes=30),
        rule=rule,
        policy_sha256=BINDING.policy_sha256,
        pin=BINDING.pin,
    )
    other_args = replace(BINDING, args_sha256="different")
    assert grant_covers(grant, other_args, "high", rule, NOW)
    assert not grant_covers(grant, other_args, "critical", rule, NOW)
    assert not grant_covers(grant, other_args, "high", "notes.toml rule 4", NOW)  # e.g. a rule for dba
    assert not grant_covers(grant, replace(other_args, policy_sha256="edited"), "high", rule, NOW)
    assert not grant_covers(grant, replace(other_args, pin="changed tool"), "high", rule, NOW)
    assert not grant_covers(grant, replace(BINDING, agent="other"), "high", rule, NOW)
    assert not grant_covers(grant, replace(BINDING, tool="delete_note"), "high", rule, NOW)
    assert not grant_covers(grant, BINDING, "high", rule, grant.expires_at)
    assert not grant_covers(replace(grant, revoked_at=NOW), BINDING, "high", rule, NOW)


def test_request_ids_are_short_typeable_and_unique() -> None:
    ids = {new_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    assert all(len(i) == 8 and set(i) <= set(ID_ALPHABET) for i in ids)
    assert not set("01ILOU") & set(ID_ALPHABET)
    assert new_id("G").startswith("G") and len(new_id("G")) == 9


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), (" 5 m ", 300)]
)
def test_durations_read_like_people_write_them(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(parse_duration(text))) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "0m", "-5m", "5 minutes", "1.5h", "m", "367d", "99999999999999d"])
def test_a_bad_duration_is_refused_with_a_readable_message(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration like|is longer than"):
        parse_duration(text)


def test_the_wait_message_says_how_many_approvals_from_whom_which_request_and_when_it_expires() -> None:
    r = request(required=2, groups=("sre", "security"))
    assert (
        describe_wait(r)
        == "waiting for 2 approvals from sre or security; request K7Q2M9XA; expires 14:32:00 UTC"
    )
