"""Regex cost: an agent's argument cannot make a manifest's regex or a redaction pattern run for
long. Manifest regexes are compiled by RE2 (linear by construction) and what RE2 cannot do is
refused when the manifest loads; the redaction patterns are written to be linear."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_gate.errors import ConfigError
from mcp_gate.manifests import load_manifest
from mcp_gate.policy import Regex, condition_holds
from mcp_gate.redaction import _ASSIGNMENT, _detectors, scrub_text

RULE = '[[rule]]\ntools = ["write_note"]\ntier = "critical"\nreason = "r"\n'
SUBJECT = 256 * 1024  # the largest argument string an agent can send


def manifest_with(tmp_path: Path, pattern: str) -> Path:
    path = tmp_path / "notes.toml"
    path.write_text('server = "notes"\n' + RULE + f"when = {{ \"/p\" = {{ regex = '{pattern}' }} }}\n")
    return path


# Patterns that take exponential or polynomial time in a backtracking engine on `a...a!`.
PATHOLOGICAL = ["(a+)+$", "(a|a)*b", "(a*)*b", "(a|aa)+$", "(.*a){12}", "(a+)+(b+)+c", "(\\w+\\s?)+$"]


@pytest.mark.parametrize("pattern", PATHOLOGICAL)
def test_a_pathological_manifest_regex_is_compiled_by_re2_and_a_long_argument_does_not_stall_a_call(
    tmp_path: Path, pattern: str
) -> None:
    manifest = load_manifest(manifest_with(tmp_path, pattern))
    [(pointer, condition)] = manifest.rules[0].when
    assert condition.regex is not None
    # RE2 by construction: the backtracking engine is not what runs the check.
    assert type(condition.regex._compiled).__module__.startswith("re2")
    for subject in ("a" * SUBJECT + "!", "a " * (SUBJECT // 2) + "!"):
        assert condition_holds(condition, pointer, {"p": subject}) is False


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("(a)\\1", "invalid escape sequence"),
        ("(?=a)a", "invalid perl operator"),
        ("(?<!x)a", "invalid perl operator"),
        ("a{1001}", "invalid repetition size"),
        ("((a{100}){100}){100}", "invalid repetition size"),
    ],
)
def test_a_regex_re2_cannot_run_in_linear_time_is_refused_at_load_with_one_line(
    tmp_path: Path, pattern: str, why: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_manifest(manifest_with(tmp_path, pattern))
    problem = str(caught.value)
    assert "\n" not in problem
    assert "invalid regex: " in problem and why in problem and "RE2 syntax" in problem


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab(|)*+?.$^[]{}\\-0123456789,", max_size=24), st.text(max_size=200))
def test_any_pattern_either_loads_as_re2_or_is_refused_and_matching_never_raises(
    pattern: str, subject: str
) -> None:
    try:
        regex = Regex.compile(pattern)
    except ValueError as exc:
        assert str(exc).startswith("invalid regex: ")
        return
    assert isinstance(regex.fullmatch(subject), bool)


def test_a_lone_surrogate_in_an_argument_is_matched_not_raised() -> None:
    assert Regex.compile(".*").fullmatch("a\ud800b")
    assert not Regex.compile("[a-z]*").fullmatch("a\udfffb")


@pytest.mark.parametrize("run", ["-", "_", ".", "password_", "token-x", "a_"])
def test_the_assignment_pattern_is_linear_on_long_runs_of_what_it_repeats(run: str) -> None:
    """The key part of `password=...` is bounded: a 60 KiB run that used to take minutes (quadratic
    backtracking of an unbounded lazy prefix) ends within the 60 s test timeout by far."""
    text = run * (60_000 // len(run))
    assert _ASSIGNMENT.search(text) is None
    assert scrub_text(text) == text


def test_the_assignment_pattern_bounds_are_written_in_it() -> None:
    # The bound that makes it linear: no unbounded repetition of the key's characters.
    assert re.search(r"\[\\w\.-\]\*|\[\\w-\]\*", _ASSIGNMENT.pattern) is None
    assert scrub_text("x.db_password = 'hunter22'") == "x.db_password = '[redacted]'"


@pytest.mark.parametrize("run", ["/", "sk-"])
def test_the_detectors_are_linear_on_long_runs_of_what_they_repeat(run: str) -> None:
    """detect-secrets' npm and OpenAI patterns are quadratic in Python's engine on a run of `/` or
    `sk-` (a 200 KiB run took minutes); the detectors RE2 can run are compiled by it."""
    text = run * (200_000 // len(run))
    assert scrub_text(text).startswith(("/", "[redacted]"))  # a run of `sk-` looks like a key
    npm = next(p for p in _detectors(()) if "_authToken" in p.pattern)
    assert type(npm).__module__.startswith("re2")


def test_a_lone_surrogate_in_text_is_scanned_by_the_backtracking_detectors_not_raised() -> None:
    assert scrub_text("key \ud800 AKIAIOSFODNN7EXAMPLE") == "key \ud800 [redacted]"
