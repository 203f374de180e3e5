"""`mcp-gate policy test` and `policy explain`, run as real subprocesses against a real config and
the example notes manifest: passing and failing cases, each exit code, JSON, bad files in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_gate.config import load_config
from mcp_gate.manifests import load_manifests
from mcp_gate.policy_tests import case_files, evaluate, load_cases
from mcp_gate.testing import NOTES_MANIFEST, approver_table, notes_server_table, write_config

AGENT = '[agents.ci-bot]\ntoken_sha256 = "' + "0" * 64 + '"\nowner = "bob@example.com"\n'


def mcp_gate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "MCP_GATE_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "mcp_gate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environ,
        timeout=60,
        check=False,
    )


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    config = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers={
            "bob": approver_table("bob@example.com", ["sre"], "tok-bob"),
            "carol": approver_table("carol@example.com", ["sre"], "tok-carol"),
            "dave": approver_table("dave@example.com", ["legal"], "tok-dave"),
        },
        tiers={"high": {"approvals": 1, "groups": ["sre"]}},
        extra=AGENT,
    )
    return config.parent


def write_cases(gate: Path, name: str, text: str) -> Path:
    folder = gate / "tool_manifests" / "tests"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


PASSING = """
[[case]]
name = "reading a note runs at once"
server = "notes"
tool = "read_note"
arguments = { name = "todo" }
expect = { tier = "low", requirement = "run", rule = "notes.toml rule 1" }

[[case]]
name = "deleting an archived note needs two approvers"
server = "notes"
tool = "delete_note"
arguments = { name = "archive/2020" }
expect = { tier = "critical", requirement = "approvals", approvals = 2, approvers = ["bob", "carol", "dave"] }

[[case]]
name = "a write for alice goes to sre"
server = "notes"
tool = "write_note"
arguments = { name = "todo", text = "x" }
expect = { tier = "high", approvals = 1, groups = ["sre"], approvers = ["bob", "carol"] }

[[case]]
name = "bob's agent cannot be approved by bob"
server = "notes"
tool = "write_note"
requester = "ci-bot"
expect = { approvers = ["carol"] }

[[case]]
server = "notes"
tool = "purge_notes"
expect = { tier = "blocked", requirement = "block" }
"""


def test_passing_cases_exit_0_and_say_each(gate: Path) -> None:
    write_cases(gate, "notes.toml", PASSING)
    done = mcp_gate("policy", "test", cwd=gate)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert "  ok    reading a note runs at once" in done.stdout
    assert "  ok    notes__purge_notes (case 5)" in done.stdout
    assert done.stdout.splitlines()[-1] == "5 case(s): 5 passed, 0 failed"


def test_a_failing_case_exits_1_with_what_was_expected_and_what_came(gate: Path) -> None:
    write_cases(gate, "notes.toml", PASSING)
    write_cases(
        gate,
        "wrong.toml",
        """
[[case]]
name = "someone thinks deleting an archive is only high"
server = "notes"
tool = "delete_note"
arguments = { name = "archive/2020" }
expect = { tier = "high", approvals = 1 }
""",
    )
    done = mcp_gate("policy", "test", cwd=gate)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    at = lines.index("  FAIL  someone thinks deleting an archive is only high")
    assert lines[at + 1 : at + 4] == [
        "          tier: expected high, got critical",
        "          approvals: expected 1, got 2",
        "          (notes.toml rule 6: deletes an archived record, which is kept for retention; "
        "two approvers must agree)",
    ]
    assert lines[-1] == "6 case(s): 5 passed, 1 failed"

    as_json = mcp_gate("policy", "test", "--json", cwd=gate)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert (report["passed"], report["failed"]) == (5, 1)
    failing = [c for c in report["cases"] if not c["passed"]]
    assert failing[0]["mismatches"] == [
        {"key": "tier", "expected": "high", "got": "critical"},
        {"key": "approvals", "expected": 1, "got": 2},
    ]
    assert failing[0]["got"]["rule"] == "notes.toml rule 6"


def test_named_files_only_are_read(gate: Path) -> None:
    write_cases(gate, "notes.toml", PASSING)
    other = gate / "one.toml"
    other.write_text('[[case]]\nserver = "notes"\ntool = "echo"\nexpect = { tier = "low" }\n')
    done = mcp_gate("policy", "test", str(other), cwd=gate)
    assert done.returncode == 0
    assert done.stdout.splitlines()[-1] == "1 case(s): 1 passed, 0 failed"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[[case]]\nserver = 'notes'\ntool = 'echo'\nexpect = {}\n", "case[1].expect: sets nothing to check"),
        (
            "[[case]]\nserver = 'nope'\ntool = 'echo'\nexpect = { tier = 'low' }\n",
            "case[1].server: 'nope' is not a server",
        ),
        (
            "[[case]]\nserver = 'notes'\ntool = 'echo'\nexpect = { tier = 'lowish' }\n",
            "case[1].expect.tier: unknown tier",
        ),
        (
            "[[case]]\nserver = 'notes'\ntool = 'echo'\nexpect = { tier = 'low' }\nextra = 1\n",
            "case[1].extra: unknown key",
        ),
        (
            "[[case]]\nserver = 'notes'\ntool = 'echo'\nrequester = 'x'\nexpect = { tier = 'low' }\n",
            "case[1].requester: 'x' is not an [agents.NAME]",
        ),
        ("case = 3\n", "case: expected a list"),
        ("[[case\n", "invalid TOML"),
    ],
    ids=[
        "empty expect",
        "unknown server",
        "unknown tier",
        "unknown key",
        "unknown agent",
        "not a list",
        "bad toml",
    ],
)
def test_a_bad_case_file_is_one_line_and_exit_2(gate: Path, text: str, fragment: str) -> None:
    path = write_cases(gate, "bad.toml", text)
    done = mcp_gate("policy", "test", cwd=gate)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert str(path) in done.stderr
    assert fragment in done.stderr, done.stderr


def test_no_cases_is_a_clear_error(gate: Path) -> None:
    done = mcp_gate("policy", "test", cwd=gate)
    assert done.returncode == 2
    assert "no policy test cases here" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_case_files_do_not_pass_for_manifests(gate: Path) -> None:
    """The cases live in tests/ under the manifest directory: the manifest loader never reads them."""
    write_cases(gate, "notes.toml", PASSING)
    config = load_config(gate / "gate.toml", {})
    assert set(load_manifests(config.manifests_dir, config.servers.keys(), required=True)) == {"notes"}
    assert case_files(config.manifests_dir) == [gate / "tool_manifests" / "tests" / "notes.toml"]


def test_a_case_decides_as_the_running_gate_does(gate: Path) -> None:
    """evaluate() classifies with the same function and requirements the call path uses."""
    path = write_cases(gate, "notes.toml", PASSING)
    config = load_config(gate / "gate.toml", {})
    manifests = load_manifests(config.manifests_dir, config.servers.keys(), required=True)
    verdicts = [evaluate(case, config, manifests) for case in load_cases(path, config)]
    assert all(v.passed for v in verdicts)
    assert verdicts[2].outcome.requirement == config.requirements["high"]


def test_explain_names_each_rule_and_condition(gate: Path) -> None:
    done = mcp_gate("policy", "explain", "notes", "delete_note", "--args", '{"name": "todo"}', cwd=gate)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "notes__delete_note",
        "  rule 6 (delete_note, tier critical): skipped, a condition fails",
        "    /name glob 'archive/**': \"todo\" -> fails",
        "  rule 7 (delete_note, tier high): matches",
        "  tier high, by notes.toml rule 7: deletes a note; it cannot be recovered",
        "  requires 1 approval from sre",
        "  may decide a call made for alice@example.com: bob, carol",
    ]
    archived = mcp_gate(
        "policy", "explain", "notes", "delete_note", "--args", '{"name": "archive/1"}', "--json", cwd=gate
    )
    report = json.loads(archived.stdout)
    assert (report["tier"], report["approvals"], report["rule"]) == ("critical", 2, "notes.toml rule 6")
    assert [r["result"] for r in report["rules"]] == ["matches", "not reached"]
    assert report["rules"][0]["conditions"][0]["holds"] is True


def test_explain_for_an_agent_leaves_out_its_owner(gate: Path) -> None:
    done = mcp_gate("policy", "explain", "notes", "write_note", "--requester", "ci-bot", cwd=gate)
    assert done.stdout.splitlines()[-1] == "  may decide a call made for bob@example.com: carol"


def test_explain_an_unknown_tool_gets_the_manifest_default(gate: Path) -> None:
    done = mcp_gate("policy", "explain", "notes", "mystery", cwd=gate)
    assert done.stdout.splitlines()[:3] == [
        "notes__mystery",
        "  no rule names this tool",
        "  tier high, by notes.toml default: no rule matched; manifest default",
    ]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["nope", "echo"], "'nope' is not a server"),
        (["notes", "echo", "--args", "{not json"], "--args: not JSON"),
        (["notes", "echo", "--args", "[1]"], "--args: expected a JSON object"),
        (["notes", "echo", "--requester", "x"], "--requester: 'x' is not an [agents.NAME]"),
    ],
)
def test_explain_refuses_bad_input_in_one_line(gate: Path, argv: list[str], fragment: str) -> None:
    done = mcp_gate("policy", "explain", *argv, cwd=gate)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert fragment in done.stderr


def test_check_runs_the_policy_tests_it_finds_and_fails_on_one(gate: Path) -> None:
    write_cases(gate, "notes.toml", PASSING)
    passing = mcp_gate("check", cwd=gate)
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "policy tests: 5 case(s), all hold" in passing.stdout.splitlines()
    write_cases(
        gate,
        "wrong.toml",
        '[[case]]\nname = "echo is high"\nserver = "notes"\ntool = "echo"\nexpect = { tier = "high" }\n',
    )
    failing = mcp_gate("check", "--json", cwd=gate)
    assert failing.returncode == 1
    tests = json.loads(failing.stdout)["policy_tests"]
    assert (tests["cases"], tests["passed"]) == (6, 5)
    assert tests["failed"][0]["name"] == "echo is high"
    assert tests["failed"][0]["mismatches"] == [["tier", "high", "low"]]
    text = mcp_gate("check", cwd=gate)
    assert (
        "policy tests: FAIL echo is high (wrong.toml): tier: expected high, got low"
        in text.stdout.splitlines()
    )
