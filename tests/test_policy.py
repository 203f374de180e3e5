from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from mcp_gate import policy
from mcp_gate.policy import (
    DEFAULT_REQUIREMENTS,
    TIERS,
    UNSET,
    Approvals,
    Block,
    Condition,
    Confirm,
    Decision,
    Manifest,
    Rule,
    Run,
    Tier,
    classify,
    compile_glob,
    condition_holds,
    describe_requirement,
    json_equal,
    policy_sha256,
    resolve_pointer,
)


def rule(
    index: int, tools: list[str], tier: Tier, *, when: dict[str, Condition] | None = None, reason: str = ""
) -> Rule:
    return Rule(
        index=index,
        tools=tuple(tools),
        when=tuple((when or {}).items()),
        tier=tier,
        reason=reason or f"reason {index}",
    )


def manifest(
    *rules: Rule, default: Tier = "high", trust_annotations: bool = False, sha256: str = "0" * 64
) -> Manifest:
    return Manifest(
        server="notes",
        default=default,
        trust_annotations=trust_annotations,
        rules=rules,
        path=Path("/m/notes.toml"),
        sha256=sha256,
    )


def holds(condition: Condition, value: Any, pointer: str = "/v") -> bool:
    return condition_holds(condition, pointer, {"v": value})


# --- the module's surface ---------------------------------------------------------------------------


def test_every_public_name_of_the_module_is_exported_and_every_export_exists() -> None:
    defined = {
        name
        for name, value in vars(policy).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and getattr(value, "__module__", None) == policy.__name__
    }
    assert defined <= set(policy.__all__)
    assert all(hasattr(policy, name) for name in policy.__all__)


# --- rules ------------------------------------------------------------------------------------------


def test_the_first_matching_rule_wins() -> None:
    m = manifest(rule(1, ["delete_*"], "critical"), rule(2, ["delete_note"], "low"), rule(3, ["*"], "medium"))
    decision = classify("delete_note", None, {}, m)
    assert decision == Decision(tier="critical", rule="notes.toml rule 1", reason="reason 1", source="rule")


def test_a_rule_matches_when_any_of_its_tool_globs_matches() -> None:
    m = manifest(rule(1, ["read_*", "list_?otes"], "low"))
    assert classify("list_notes", None, {}, m).tier == "low"
    assert classify("read_note", None, {}, m).tier == "low"
    assert classify("list_all_notes", None, {}, m).tier == "high"


def test_tool_globs_are_case_sensitive() -> None:
    m = manifest(rule(1, ["read_*"], "low"))
    assert classify("READ_note", None, {}, m).tier == "high"


def test_an_unmatched_tool_gets_the_manifest_default_with_a_generated_reason() -> None:
    m = manifest(rule(1, ["read_*"], "low"), default="medium")
    decision = classify("write_note", None, {}, m)
    assert decision == Decision(
        tier="medium", rule="notes.toml default", reason="no rule matched; manifest default", source="default"
    )


def test_a_server_without_a_manifest_gets_high_for_every_tool() -> None:
    decision = classify("anything", {"readOnlyHint": True}, {}, None, server="weather")
    assert decision.tier == "high"
    assert decision.source == "no-manifest"
    assert decision.rule == "no manifest for server 'weather'"
    assert decision.reason == "every tool of a server without a manifest is high (fail closed)"
    assert classify("anything", None, None, None).rule == "no manifest"


# --- conditions ---------------------------------------------------------------------------------------


def test_a_conditional_rule_applies_only_when_every_pointer_holds() -> None:
    m = manifest(
        rule(
            1,
            ["delete_note"],
            "critical",
            when={"/name": Condition(glob="archive/**"), "/force": Condition(equals=True)},
        ),
        rule(2, ["delete_note"], "high"),
    )
    assert classify("delete_note", None, {"name": "archive/2025/x", "force": True}, m).tier == "critical"
    assert classify("delete_note", None, {"name": "archive/2025/x", "force": False}, m).tier == "high"
    assert classify("delete_note", None, {"name": "inbox/x", "force": True}, m).tier == "high"
    assert classify("delete_note", None, {"name": "archive/x"}, m).tier == "high"


def test_a_single_star_does_not_cross_a_slash_but_a_double_star_does() -> None:
    assert holds(Condition(glob="archive/*"), "archive/x")
    assert not holds(Condition(glob="archive/*"), "archive/2025/x")
    assert holds(Condition(glob="archive/**"), "archive/2025/x")
    assert not holds(Condition(glob="archive/**"), "archived/x")
    assert holds(Condition(glob="**/.ssh/**"), ".ssh/id_rsa")
    assert holds(Condition(glob="**/.ssh/**"), "/home/a/.ssh/id_rsa")
    assert not holds(Condition(glob="*.txt"), "dir/a.txt")
    assert holds(Condition(glob="**.txt"), "dir/a.txt")


def test_glob_question_marks_and_classes_match_one_character_other_than_a_slash() -> None:
    assert holds(Condition(glob="a?c"), "abc")
    assert not holds(Condition(glob="a?c"), "a/c")
    assert holds(Condition(glob="v[0-9]"), "v7")
    assert not holds(Condition(glob="v[0-9]"), "vx")
    assert holds(Condition(glob="v[!0-9]"), "vx")
    assert not holds(Condition(glob="v[!0-9]"), "v/")
    assert holds(Condition(glob="a.b"), "a.b") and not holds(Condition(glob="a.b"), "axb")


@pytest.mark.parametrize("pattern", ["", "v[0-9", "[", "a[!"])
def test_an_empty_glob_or_an_unbalanced_bracket_is_rejected(pattern: str) -> None:
    with pytest.raises(ValueError):
        compile_glob(pattern)


def test_a_regex_condition_must_match_the_whole_string() -> None:
    condition = Condition(regex=re.compile(r"prod-\d+"))
    assert holds(condition, "prod-12")
    assert not holds(condition, "prod-12-old")
    assert not holds(condition, "my-prod-12")


def test_equals_compares_json_values_and_true_is_not_one() -> None:
    assert holds(Condition(equals=True), True)
    assert not holds(Condition(equals=True), 1)
    assert not holds(Condition(equals=1), True)
    assert holds(Condition(equals=1), 1.0)
    assert not holds(Condition(equals="1"), 1)
    assert holds(Condition(equals=["a", {"b": 1}]), ["a", {"b": 1}])
    assert not holds(Condition(equals=["a", {"b": 1}]), ["a", {"b": True}])
    assert not holds(Condition(equals={"a": 1}), {"a": 1, "b": 2})
    assert json_equal(None, None) and not json_equal(None, 0)


def test_a_condition_without_equals_does_not_check_equality() -> None:
    condition = Condition(glob="*")
    assert condition.equals is UNSET and not condition.checks_equals
    assert holds(condition, "anything")


def test_min_and_max_are_inclusive_bounds_on_numbers_only() -> None:
    condition = Condition(min=10, max=20)
    assert holds(condition, 10) and holds(condition, 20) and holds(condition, 15.5)
    assert not holds(condition, 9.99) and not holds(condition, 21)
    assert not holds(Condition(min=0), True)
    assert not holds(Condition(max=100), "5")
    assert holds(Condition(min=1000), 10**6)


def test_a_pointer_that_does_not_resolve_or_a_value_of_the_wrong_type_does_not_hold() -> None:
    assert not condition_holds(Condition(glob="**"), "/missing", {"v": "x"})
    assert not condition_holds(Condition(glob="**"), "/v/deeper", {"v": "x"})
    assert not holds(Condition(glob="**"), 5)
    assert not holds(Condition(regex=re.compile(".*")), ["x"])
    assert not holds(Condition(min=0), None)


def test_pointers_unescape_tilde_one_to_slash_and_tilde_zero_to_tilde() -> None:
    arguments = {"a/b": 1, "m~n": 2, "~1": 3}
    assert resolve_pointer(arguments, "/a~1b") == 1
    assert resolve_pointer(arguments, "/m~0n") == 2
    assert resolve_pointer(arguments, "/~01") == 3  # ~0 then 1, not ~01 -> "/"
    assert condition_holds(Condition(equals=1), "/a~1b", arguments)


def test_pointers_index_arrays_by_decimal_position_and_the_empty_pointer_is_the_whole_document() -> None:
    arguments = {"files": ["a.txt", "b.txt"], "": "empty key"}
    assert resolve_pointer(arguments, "/files/1") == "b.txt"
    assert resolve_pointer(arguments, "") == arguments
    assert resolve_pointer(arguments, "/") == "empty key"
    for missing in ("/files/2", "/files/01", "/files/-", "/files/x"):
        with pytest.raises(LookupError):
            resolve_pointer(arguments, missing)
    assert condition_holds(Condition(glob="*.txt"), "/files/0", arguments)


def test_several_checks_in_one_condition_must_all_hold() -> None:
    condition = Condition(glob="prod/**", regex=re.compile(r".*\.sql"))
    assert holds(condition, "prod/db/drop.sql")
    assert not holds(condition, "prod/db/readme.md")
    assert not holds(condition, "dev/drop.sql")


# --- listing (no arguments) ---------------------------------------------------------------------------


def test_listing_skips_conditional_rules_and_marks_the_decision_conditional() -> None:
    m = manifest(
        rule(1, ["delete_note"], "critical", when={"/name": Condition(glob="archive/**")}),
        rule(2, ["delete_note"], "high"),
    )
    assert classify("delete_note", None, None, m) == Decision(
        tier="high", rule="notes.toml rule 2", reason="reason 2", source="rule", conditional=True
    )


def test_a_listed_tool_is_not_conditional_when_no_conditional_rule_before_its_rule_names_it() -> None:
    m = manifest(
        rule(1, ["delete_note"], "critical", when={"/name": Condition(glob="archive/**")}),
        rule(2, ["read_note"], "low"),
        rule(3, ["read_note"], "high", when={"/name": Condition(glob="secret/**")}),
    )
    assert classify("read_note", None, None, m).conditional is False


def test_a_listed_tool_matched_only_by_conditional_rules_gets_the_default_marked_conditional() -> None:
    m = manifest(
        rule(1, ["delete_note"], "critical", when={"/name": Condition(glob="archive/**")}), default="medium"
    )
    decision = classify("delete_note", None, None, m)
    assert (decision.tier, decision.source, decision.conditional) == ("medium", "default", True)


def test_a_call_is_never_marked_conditional() -> None:
    m = manifest(
        rule(1, ["delete_note"], "critical", when={"/name": Condition(glob="archive/**")}),
        rule(2, ["delete_note"], "high"),
    )
    assert classify("delete_note", None, {"name": "inbox"}, m).conditional is False


# --- annotations ----------------------------------------------------------------------------------------

READ_ONLY = {"readOnlyHint": True, "destructiveHint": False}


def test_read_only_annotations_lower_an_unmatched_tool_when_the_manifest_trusts_them() -> None:
    decision = classify("peek", READ_ONLY, {}, manifest(trust_annotations=True))
    assert decision.tier == "low"
    assert decision.source == "annotation"
    assert decision.rule == "notes.toml default lowered by readOnlyHint"


def test_annotations_change_nothing_when_the_manifest_does_not_trust_them() -> None:
    assert classify("peek", READ_ONLY, {}, manifest()).tier == "high"


def test_annotations_never_change_a_rule_match() -> None:
    m = manifest(rule(1, ["peek"], "critical"), trust_annotations=True)
    assert classify("peek", READ_ONLY, {}, m).tier == "critical"
    assert classify("peek", READ_ONLY, None, m).tier == "critical"


@pytest.mark.parametrize(
    "annotations",
    [
        {"readOnlyHint": True, "destructiveHint": True},
        {"readOnlyHint": "true"},
        {"readOnlyHint": 1},
        {"readOnlyHint": False},
        {"destructiveHint": False},
        {"read_only_hint": True},
        {},
        None,
    ],
)
def test_only_a_true_read_only_hint_without_a_destructive_hint_lowers_a_tier(
    annotations: dict[str, Any] | None,
) -> None:
    assert classify("peek", annotations, {}, manifest(trust_annotations=True)).tier == "high"


def test_annotations_never_raise_a_low_default() -> None:
    decision = classify("peek", {"readOnlyHint": False, "destructiveHint": True}, {}, manifest(default="low"))
    assert (decision.tier, decision.source) == ("low", "default")


def test_a_low_default_stays_a_default_even_when_annotations_are_trusted() -> None:
    decision = classify("peek", READ_ONLY, {}, manifest(default="low", trust_annotations=True))
    assert (decision.tier, decision.source) == ("low", "default")


# --- requirements and the policy version ------------------------------------------------------------------


def test_the_default_requirements_follow_the_tiers() -> None:
    assert tuple(DEFAULT_REQUIREMENTS) == TIERS
    assert dict(DEFAULT_REQUIREMENTS) == {
        "low": Run(),
        "medium": Confirm(),
        "high": Approvals(1),
        "critical": Approvals(2),
        "blocked": Block(),
    }


def test_each_requirement_is_described_in_words() -> None:
    assert [describe_requirement(DEFAULT_REQUIREMENTS[t]) for t in TIERS] == [
        "run",
        "a confirmation by the requester",
        "1 approval",
        "2 approvals",
        "never runs",
    ]
    assert describe_requirement(Approvals(3)) == "3 approvals"


def test_an_approval_requirement_needs_at_least_one_approver() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Approvals(0)


def test_the_policy_hash_depends_on_the_config_and_every_manifest_but_not_on_order() -> None:
    a, b = manifest(sha256="a" * 64), manifest(sha256="b" * 64)
    base = policy_sha256("c" * 64, {"notes": a, "git": b})
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert policy_sha256("c" * 64, {"git": b, "notes": a}) == base
    assert policy_sha256("d" * 64, {"notes": a, "git": b}) != base
    assert policy_sha256("c" * 64, {"notes": b, "git": b}) != base
    assert policy_sha256("c" * 64, {"notes": a}) != base


def test_a_server_without_a_manifest_is_explained_once_where_rule_and_reason_are_printed_together() -> None:
    for server in ("weather", None):
        decision = classify("anything", None, None, None, server=server)
        printed = f"{decision.rule}: {decision.reason}"  # how `check` and `tools` print them
        assert printed.lower().count("manifest") == 2, printed  # "no manifest for ...", "without a manifest"
        assert "no manifest: no manifest" not in printed
        assert printed.lower().count("no manifest") == 1, printed
