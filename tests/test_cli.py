"""The `mcp-gate` command, run as a real subprocess: output, exit status, one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_gate.config import load_config, read_client_config
from mcp_gate.evidence import canonical_json, chain_hash
from mcp_gate.gateway import CORRELATION_META_KEY
from mcp_gate.testing import NOTES_MANIFEST, notes_server_table, running_gate, write_config


def mcp_gate(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "MCP_GATE_CONFIG"}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mcp_gate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environ,
        timeout=60,
        check=False,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert done.returncode == 2
    assert done.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0]


def notes_gate(directory: Path, *, variant: str = "1", **servers: dict[str, Any]) -> Path:
    return write_config(
        directory / "gate",
        servers={"notes": notes_server_table(directory / "notes", variant=variant), **servers},
        manifests={"notes": NOTES_MANIFEST.read_text()},
    )


def empty_gate(directory: Path, extra: str = "") -> Path:
    return write_config(directory, servers={}, extra=extra)


# -- bad input: one line naming file, key and problem; exit 2 -----------------------------------


def missing_file(tmp_path: Path) -> tuple[Path, list[str]]:
    return tmp_path / "nope.toml", ["nope.toml", "no such file"]


def toml_syntax_error(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "gate.toml"
    path.write_text('[gate\nname = "x"\n')
    return path, ["gate.toml", "invalid TOML", "line 1"]


def unknown_key(tmp_path: Path) -> tuple[Path, list[str]]:
    return empty_gate(tmp_path, "[tiers]\nlow = 'run'\n[gatee]\n"), ["gate.toml", "gatee", "unknown key"]


def wrong_type(tmp_path: Path) -> tuple[Path, list[str]]:
    path = write_config(tmp_path, servers={"s": {"command": "x", "timeout": "soon"}})
    return path, ["gate.toml", "servers.s.timeout", "expected a number, got a string"]


def manifest_for_unknown_server(tmp_path: Path) -> tuple[Path, list[str]]:
    manifest = 'server = "ghost"\n'
    path = write_config(tmp_path, servers={"s": {"command": "x"}}, manifests={"ghost": manifest})
    return path, ["ghost.toml", "server", "'ghost' is not a server"]


def manifest_with_bad_glob(tmp_path: Path) -> tuple[Path, list[str]]:
    manifest = 'server = "s"\n[[rule]]\ntools = ["read_[abc"]\ntier = "low"\nreason = "reads"\n'
    path = write_config(tmp_path, servers={"s": {"command": "x"}}, manifests={"s": manifest})
    return path, ["s.toml", "rule[1].tools[1]", "invalid glob"]


def manifest_with_bad_regex(tmp_path: Path) -> tuple[Path, list[str]]:
    manifest = (
        'server = "s"\n[[rule]]\ntools = ["read"]\nwhen = { "/path" = { regex = "(unclosed" } }\n'
        'tier = "low"\nreason = "reads"\n'
    )
    path = write_config(tmp_path, servers={"s": {"command": "x"}}, manifests={"s": manifest})
    return path, ["s.toml", "rule[1].when", "/path", "invalid regex"]


def vscode_input_variable(tmp_path: Path) -> tuple[Path, list[str]]:
    (tmp_path / "mcp.json").write_text(
        '{"servers": {"gh": {"command": "gh-mcp", "env": {"TOKEN": "${input:token}"}}}}'
    )
    path = empty_gate(tmp_path)
    path.write_text('servers_from = ["mcp.json"]\n' + path.read_text())
    return path, ["mcp.json", "servers.gh.env.TOKEN", "${input:token}", "${env:NAME}"]


@pytest.mark.parametrize(
    "make",
    [
        missing_file,
        toml_syntax_error,
        unknown_key,
        wrong_type,
        manifest_for_unknown_server,
        manifest_with_bad_glob,
        manifest_with_bad_regex,
        vscode_input_variable,
    ],
)
def test_a_bad_config_gets_one_line_naming_file_key_and_problem_and_exit_status_2(
    tmp_path: Path, make: Callable[[Path], tuple[Path, list[str]]]
) -> None:
    path, fragments = make(tmp_path)
    assert_one_line_error(mcp_gate("check", "--config", str(path)), *fragments)


def test_the_config_defaults_to_the_environment_variable_then_gate_toml_in_the_working_directory(
    tmp_path: Path,
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    assert_one_line_error(mcp_gate("check", cwd=here), str(here / "gate.toml"), "MCP_GATE_CONFIG")
    assert_one_line_error(
        mcp_gate("check", cwd=here, env={"MCP_GATE_CONFIG": "elsewhere.toml"}),
        str(here / "elsewhere.toml"),
        "no such file",
    )
    empty_gate(here)
    found = mcp_gate("check", cwd=here)
    assert found.returncode == 0, found.stderr
    assert f"config {here / 'gate.toml'}: ok" in found.stdout
    other = empty_gate(tmp_path / "other")
    chosen = mcp_gate("check", "--config", str(other), cwd=here, env={"MCP_GATE_CONFIG": "elsewhere.toml"})
    assert chosen.returncode == 0, chosen.stderr
    assert f"config {other}: ok" in chosen.stdout


# -- check and tools -----------------------------------------------------------------------------


def test_check_lists_every_tool_with_tier_pin_and_rule_and_reports_a_server_that_does_not_start(
    tmp_path: Path,
) -> None:
    config = notes_gate(tmp_path, broken={"command": str(tmp_path / "no-such-binary")})
    done = mcp_gate("check", "--config", str(config), "--timeout", "20")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    broken = [line for line in lines if line.startswith("server broken:")]
    assert len(broken) == 1
    assert "DOWN" in broken[0] and "command not found" in broken[0]
    assert any(line.startswith("server notes: up") for line in lines)
    write = next(line for line in lines if line.strip().startswith("notes__write_note"))
    assert re.search(r"notes__write_note\s+high\s+[0-9a-f]{12}\s+notes\.toml rule 5: replaces", write)
    purge = next(line for line in lines if line.strip().startswith("notes__purge_notes"))
    assert "blocked" in purge and "not listed" in purge
    assert {"notes__echo", "notes__read_note", "notes__delete_note"} <= {
        line.split()[0] for line in lines if line.startswith("  notes__")
    }
    # No approvers are configured: high and critical calls could never be approved; check says so.
    problems = [line for line in lines if line.startswith("approvals: ")]
    assert len(problems) == 2, problems
    assert "no approver may decide high calls made for alice@example.com" in problems[0]
    assert "no approver may decide critical calls made for alice@example.com" in problems[1]


def test_check_json_describes_servers_and_tools_with_server_tier_rule_and_pin(tmp_path: Path) -> None:
    done = mcp_gate("check", "--config", str(notes_gate(tmp_path)), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(s["name"], s["state"]) for s in report["servers"]] == [("notes", "up")]
    assert len(report["approval_problems"]) == 2
    tools = {t["name"]: t for t in report["tools"]}
    assert tools["notes__echo"]["server"] == "notes"
    assert tools["notes__echo"]["tier"] == "low"
    assert tools["notes__write_note"]["rule"] == "notes.toml rule 5"
    assert all(re.fullmatch(r"[0-9a-f]{64}", t["pin"]) for t in tools.values())


def test_tools_json_shows_blocked_tools_as_not_listed(tmp_path: Path) -> None:
    done = mcp_gate("tools", "--config", str(notes_gate(tmp_path)), "--json")
    assert done.returncode == 0, done.stderr
    tools = {t["name"]: t for t in json.loads(done.stdout)}
    assert tools["notes__purge_notes"]["tier"] == "blocked"
    assert tools["notes__purge_notes"]["listed"] is False
    assert tools["notes__read_note"]["listed"] is True
    assert tools["notes__read_note"]["rule"] == "notes.toml rule 1"
    assert len(tools["notes__read_note"]["pin"]) == 64


def test_tools_accept_trusts_a_drifted_definition_once_and_records_it(tmp_path: Path) -> None:
    first = mcp_gate("check", "--config", str(notes_gate(tmp_path, variant="1")), "--json")
    assert first.returncode == 0, first.stderr
    config = notes_gate(tmp_path, variant="2")
    drifted = json.loads(mcp_gate("check", "--config", str(config), "--json").stdout)
    quarantined = {t["name"] for t in drifted["tools"] if t["quarantined"]}
    assert quarantined == {"notes__read_note"}

    accepted = mcp_gate("tools", "accept", "notes__read_note", "--config", str(config))
    assert accepted.returncode == 0, accepted.stderr
    assert "accepted notes__read_note" in accepted.stdout
    again = mcp_gate("tools", "accept", "notes__read_note", "--config", str(config))
    assert_one_line_error(again, "notes__read_note", "no changed definition")

    db = sqlite3.connect(config.parent / "data" / "gate.db")
    try:
        rows = db.execute("SELECT body FROM evidence WHERE event_type = 'tool.accepted'").fetchall()
    finally:
        db.close()
    assert len(rows) == 1
    body = json.loads(rows[0][0])
    assert (body["server"], body["tool"]) == ("notes", "read_note")
    assert body["pin"] != body["previous_pin"]
    after = json.loads(mcp_gate("tools", "--config", str(config), "--json").stdout)
    read_note = next(t for t in after if t["name"] == "notes__read_note")
    assert read_note["quarantined"] is False and read_note["pin"] == body["pin"]


def test_tools_accept_of_a_tool_with_no_drift_or_an_unknown_server_is_a_one_line_error(
    tmp_path: Path,
) -> None:
    config = notes_gate(tmp_path)
    assert mcp_gate("check", "--config", str(config)).returncode == 0
    assert_one_line_error(
        mcp_gate("tools", "accept", "notes__echo", "--config", str(config)), "no changed definition"
    )
    assert_one_line_error(
        mcp_gate("tools", "accept", "ghost__echo", "--config", str(config)), "'ghost__echo'", "SERVER__TOOL"
    )


# -- import --------------------------------------------------------------------------------------


CLAUDE_DESKTOP = """{
  "mcpServers": {
    "files": {
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-filesystem", "/home/me/My Files"],
      "env": {"NOTE": "a \\"quoted\\" value with $${literal}"}
    },
    "remote": {"url": "https://mcp.example.com/mcp", "headers": {"X-Team": "blue"}}
  }
}
"""

VSCODE = """// .vscode/mcp.json
{
  "inputs": [],
  "servers": {
    /* the GitHub server */
    "github": {
      "type": "stdio",
      "command": "docker",
      "args": ["run", "-i", "--rm", "ghcr.io/github/github-mcp-server",],  // trailing comma
      "env": {"GITHUB_TOOLSETS": "repos,issues"},
    },
    "docs": {"type": "http", "url": "https://docs.example.com/mcp",},
  },
}
"""


@pytest.mark.parametrize(("filename", "text"), [("claude.json", CLAUDE_DESKTOP), ("mcp.json", VSCODE)])
def test_import_prints_server_tables_that_load_back_as_the_same_servers(
    tmp_path: Path, filename: str, text: str
) -> None:
    source = tmp_path / filename
    source.write_text(text)
    done = mcp_gate("import", str(source))
    assert done.returncode == 0, done.stderr
    gate = empty_gate(tmp_path / "gate")
    gate.write_text(gate.read_text() + "\n" + done.stdout)
    loaded = load_config(gate, {})
    expected = read_client_config(source, {})
    if "files" in expected:
        assert expected["files"].env["NOTE"] == 'a "quoted" value with ${literal}'
    assert list(loaded.servers) == list(expected)
    for name, spec in expected.items():
        got = loaded.servers[name]
        for field in ("command", "args", "env", "url", "headers", "timeout", "protocol", "disabled"):
            assert getattr(got, field) == getattr(spec, field), (name, field)
        # The client gave no folder; a [servers.*] table without cwd runs in the gate.toml folder.
        assert got.cwd == (gate.parent if spec.command else None)


def test_import_prints_variable_references_never_the_secrets_they_name(tmp_path: Path) -> None:
    source = tmp_path / "claude.json"
    source.write_text(
        '{"mcpServers": {"gh": {"command": "gh-mcp", "env": {"GITHUB_TOKEN": "${GITHUB_TOKEN}"}}}}'
    )
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gate", "import", str(source)],
        capture_output=True,
        text=True,
        env={**os.environ, "GITHUB_TOKEN": "ghp_secret123"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ghp_secret123" not in done.stdout + done.stderr
    assert '"GITHUB_TOKEN" = "${GITHUB_TOKEN}"' in done.stdout


def test_import_of_a_vscode_prompt_variable_is_a_one_line_error(tmp_path: Path) -> None:
    source = tmp_path / "mcp.json"
    source.write_text('{"servers": {"gh": {"command": "gh", "args": ["--token", "${input:pat}"]}}}')
    assert_one_line_error(mcp_gate("import", str(source)), "mcp.json", "servers.gh.args[2]", "${input:pat}")


# -- audit ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audited:
    config: Path
    refused_id: str
    records: int


async def _drive_calls(config: Path) -> str:
    async with running_gate(config) as front, Client(front.server, mode="legacy") as agent:
        assert not (await agent.call_tool("notes__echo", {"text": "hi"})).is_error
        refused = await agent.call_tool("notes__purge_notes", {})  # blocked: refused by policy
        assert not (await agent.call_tool("notes__list_notes", {})).is_error
    assert refused.is_error and refused.meta is not None
    return str(refused.meta[CORRELATION_META_KEY])


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Audited:
    config = notes_gate(tmp_path_factory.mktemp("audited"))
    refused_id = anyio.run(_drive_calls, config)
    db = sqlite3.connect(config.parent / "data" / "gate.db")
    try:
        (count,) = db.execute("SELECT count(*) FROM evidence").fetchone()
    finally:
        db.close()
    return Audited(config, refused_id, count)


def copy_gate(audited: Audited, tmp_path: Path) -> Path:
    shutil.copytree(audited.config.parent, tmp_path / "gate")
    return tmp_path / "gate" / audited.config.name


def test_audit_verify_passes_on_an_untouched_log(audited: Audited) -> None:
    done = mcp_gate("audit", "verify", "--config", str(audited.config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ok: {audited.records} records, chain intact")
    report = json.loads(mcp_gate("audit", "verify", "--config", str(audited.config), "--json").stdout)
    assert report["ok"] is True and report["records"] == audited.records and report["first_bad_seq"] is None


def edit_a_body(db: sqlite3.Connection, seq: int) -> int:
    (body,) = db.execute("SELECT body FROM evidence WHERE seq = ?", (seq,)).fetchone()
    edited = body.replace('"notes"', '"other"', 1)
    assert edited != body
    db.execute("UPDATE evidence SET body = ? WHERE seq = ?", (edited, seq))
    return seq


def delete_a_row(db: sqlite3.Connection, seq: int) -> int:
    db.execute("DELETE FROM evidence WHERE seq = ?", (seq,))
    return seq


def insert_a_row(db: sqlite3.Connection, seq: int) -> int:
    """A well-forged row (its own hash is right) pushed in at `seq`; the row after it no longer fits."""
    (body_text, prev_hash) = db.execute(
        "SELECT body, prev_hash FROM evidence WHERE seq = ?", (seq,)
    ).fetchone()
    db.execute("UPDATE evidence SET seq = -(seq + 1) WHERE seq >= ?", (seq,))
    db.execute("UPDATE evidence SET seq = -seq WHERE seq < 0")
    body = json.loads(body_text)
    body["event_id"] = "forged-" + body["event_id"]
    text = canonical_json(body)
    db.execute(
        "INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            seq,
            body["event_id"],
            body["ts"],
            body["event_type"],
            body["correlation_id"],
            text.decode(),
            prev_hash,
            chain_hash(prev_hash, text),
        ),
    )
    return seq + 1


def reorder_two_rows(db: sqlite3.Connection, seq: int) -> int:
    columns = "event_id, ts, event_type, correlation_id, body, prev_hash, entry_hash"
    rows = {
        s: rest
        for s, *rest in db.execute(f"SELECT seq, {columns} FROM evidence WHERE seq IN (?, ?)", (seq, seq + 1))
    }
    db.execute("DELETE FROM evidence WHERE seq IN (?, ?)", (seq, seq + 1))
    db.execute("INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (seq, *rows[seq + 1]))
    db.execute("INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (seq + 1, *rows[seq]))
    return seq


@pytest.mark.parametrize("tamper", [edit_a_body, delete_a_row, insert_a_row, reorder_two_rows])
def test_audit_verify_fails_on_tampering_and_names_the_first_bad_seq(
    audited: Audited, tmp_path: Path, tamper: Callable[[sqlite3.Connection, int], int]
) -> None:
    config = copy_gate(audited, tmp_path)
    db = sqlite3.connect(config.parent / "data" / "gate.db")
    try:
        db.execute("DROP TRIGGER evidence_no_update")
        db.execute("DROP TRIGGER evidence_no_delete")
        first_bad = tamper(db, 5)
        db.commit()
    finally:
        db.close()
    done = mcp_gate("audit", "verify", "--config", str(config))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stdout.startswith("TAMPERED")
    assert re.search(rf"\bseq {first_bad}\b", done.stdout), done.stdout
    as_json = mcp_gate("audit", "verify", "--config", str(config), "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["first_bad_seq"] == first_bad


def test_audit_show_tells_a_refused_calls_whole_story(audited: Audited) -> None:
    done = mcp_gate("audit", "show", audited.refused_id, "--config", str(audited.config))
    assert done.returncode == 0, done.stderr
    header, *events = done.stdout.strip().splitlines()
    assert audited.refused_id in header
    assert "requester test-agent (owner alice@example.com)" in header
    assert "tool notes__purge_notes" in header
    assert [line.split()[2] for line in events] == ["call.requested", "policy.decided", "call.refused"]
    assert "args={}" in events[0]
    assert "tier=blocked" in events[1] and "notes.toml rule 8" in events[1]
    assert "blocked by policy" in events[2]
    as_json = mcp_gate("audit", "show", audited.refused_id, "--config", str(audited.config), "--json")
    bodies = json.loads(as_json.stdout)
    assert [b["event_type"] for b in bodies] == ["call.requested", "policy.decided", "call.refused"]
    assert {b["correlation_id"] for b in bodies} == {audited.refused_id}


def test_audit_show_of_an_unknown_id_and_audit_without_a_log_are_one_line_errors(
    audited: Audited, tmp_path: Path
) -> None:
    assert_one_line_error(
        mcp_gate("audit", "show", "no-such-id", "--config", str(audited.config)), "'no-such-id'"
    )
    fresh = empty_gate(tmp_path)
    assert_one_line_error(mcp_gate("audit", "verify", "--config", str(fresh)), "gate.db", "no evidence log")


# -- help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["check"],
        ["tools"],
        ["tools", "accept"],
        ["import"],
        ["audit"],
        ["audit", "verify"],
        ["audit", "show"],
        ["demo"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    done = mcp_gate(*command, "--help")
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: {' '.join(['mcp-gate', *command])}")
    assert done.stderr == ""


def test_the_example_gate_toml_checks_out_with_its_server_up_and_its_approvers_enough(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    copy = tmp_path / "examples"
    shutil.copytree(examples, copy, ignore=shutil.ignore_patterns(".mcp-gate", "notes", "__pycache__"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gate", "check", "--config", str(copy / "gate.toml")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "server notes: up" in done.stdout and "approvals:" not in done.stdout


def test_check_says_when_the_only_approver_is_the_requesters_own_owner(tmp_path: Path) -> None:
    from mcp_gate.testing import approver_table

    config = write_config(
        tmp_path / "gate",
        servers={},
        approvers={"alice": approver_table("alice@example.com", ["sre"], "tok-alice")},
        tiers={"critical": "block"},
    )
    done = mcp_gate("check", "--config", str(config))
    problems = [line for line in done.stdout.splitlines() if line.startswith("approvals: ")]
    assert len(problems) == 1, done.stdout
    assert "no approver may decide high calls made for alice@example.com" in problems[0]
    assert "own owner (alice@example.com)" in problems[0]
    assert "add an [approvers.NAME] with a token_sha256" in problems[0]
    assert "only 0" not in problems[0]


def test_check_says_how_many_approvers_of_which_groups_a_tier_still_lacks(tmp_path: Path) -> None:
    from mcp_gate.testing import approver_table

    config = write_config(
        tmp_path / "gate",
        servers={},
        approvers={
            "bob": approver_table("bob@example.com", ["sre"], "tok-bob"),
            "carol": approver_table("carol@example.com", ["dev"], "tok-carol"),
        },
        tiers={"high": {"approvals": 1}, "critical": {"approvals": 2, "groups": ["sre"]}},
    )
    done = mcp_gate("check", "--config", str(config))
    problems = [line for line in done.stdout.splitlines() if line.startswith("approvals: ")]
    assert len(problems) == 1, done.stdout
    assert "critical calls need 2 distinct approvers but only 1 may decide" in problems[0]
    assert (
        'add 1 more, each an [approvers.NAME] with a token_sha256 (or a Slack user) and groups = ["sre"]'
        in (problems[0])
    )


# -- serve: a second gate on a taken port -------------------------------------------------------


def _first_gate_admin_port(first: subprocess.Popen[str]) -> int:
    assert first.stderr is not None
    for line in first.stderr:  # the first gate announces its approver API once it listens
        if found := re.search(r"approver API on http://127\.0\.0\.1:(\d+)/v1", line):
            return int(found.group(1))
    raise AssertionError(f"the first gate stopped before its approver API listened (exit {first.wait()})")


def test_a_second_gate_on_a_taken_admin_port_says_so_in_one_line_and_serves_nothing(tmp_path: Path) -> None:
    first_config = notes_gate(tmp_path / "first")
    environ = {k: v for k, v in os.environ.items() if k != "MCP_GATE_CONFIG"}
    command = [
        sys.executable,
        "-m",
        "mcp_gate",
        "serve",
        "--config",
        str(first_config),
        "--admin",
        "127.0.0.1:0",
    ]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ
    ) as first:
        try:
            port = _first_gate_admin_port(first)
            second = notes_gate(tmp_path / "second")
            second.write_text(second.read_text() + f'\n[admin]\nlisten = "127.0.0.1:{port}"\n')
            done = subprocess.run(
                [sys.executable, "-m", "mcp_gate", "serve", "--config", str(second)],
                input="",
                capture_output=True,
                text=True,
                env=environ,
                timeout=60,
                check=False,
            )
        finally:
            assert first.stdin is not None
            first.stdin.close()  # the first gate's agent hangs up: it stops
            first.wait(timeout=30)
    assert_one_line_error(done, f"127.0.0.1:{port}", "already in use", "[admin] listen", "free port")
    assert not (tmp_path / "second" / "gate" / "data" / "gate.db").exists()  # no gate opened, nothing held


def test_a_gate_on_a_taken_http_port_says_so_in_one_line(tmp_path: Path) -> None:
    import hashlib
    import socket

    config = notes_gate(tmp_path)
    config.write_text(
        config.read_text()
        + '\n[agents.bot]\nowner = "bot@example.com"\n'
        + f'token_sha256 = "{hashlib.sha256(b"tok").hexdigest()}"\n'
    )
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = mcp_gate("serve", "--config", str(config), "--http", f"127.0.0.1:{port}")
    assert_one_line_error(done, f"--http 127.0.0.1:{port} is already in use", "free port")


# -- manifests: what ships, and copying it ------------------------------------------------------


def test_manifests_list_names_what_ships_and_copy_refuses_to_overwrite(tmp_path: Path) -> None:
    listed = mcp_gate("manifests", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    by_name = {row["name"]: row for row in json.loads(listed.stdout)}
    assert by_name["time"]["packages"] == ["mcp-server-time"]
    assert "get_current_time" in by_name["time"]["tools"]
    copied = mcp_gate("manifests", "copy", "time", "--to", str(tmp_path), "--server", "clock")
    assert copied.returncode == 0 and copied.stdout.strip() == f"wrote {tmp_path / 'clock.toml'}"
    again = mcp_gate("manifests", "copy", "time", "--to", str(tmp_path), "--server", "clock")
    assert_one_line_error(again, "clock.toml", "already exists", "--force")
    assert_one_line_error(mcp_gate("manifests", "copy", "nope"), "no shipped manifest named 'nope'")


def test_check_names_the_shipped_manifest_that_fits_a_server_without_one_and_the_copy_command(
    tmp_path: Path,
) -> None:
    clock = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
    config = write_config(tmp_path / "gate", servers={"clock": clock})
    done = mcp_gate("check", "--config", str(config))
    [line] = [line for line in done.stdout.splitlines() if line.startswith("server clock:")]
    folder = tmp_path / "gate" / "tool_manifests"
    command = f"mcp-gate manifests copy time --to {folder} --server clock"
    assert line.endswith(f"no manifest: every tool is high; a shipped manifest fits, copy it with: {command}")
    copied = mcp_gate(*command.split()[1:])
    assert copied.returncode == 0, copied.stderr
    after = json.loads(mcp_gate("check", "--config", str(config), "--json").stdout)
    assert after["servers"][0]["manifest"] == str(folder / "clock.toml")
    assert {t["tier"] for t in after["tools"]} == {"low"}


# -- import: hints about what comes next --------------------------------------------------------


def test_import_hints_on_stderr_at_missing_commands_manifests_requester_and_approvers(tmp_path: Path) -> None:
    source = tmp_path / "claude.json"
    source.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "clock": {"command": sys.executable, "args": ["-m", "mcp_server_time"]},
                    "files": {"command": "no-such-launcher-xyz", "args": ["-y", "@acme/files-mcp"]},
                }
            }
        )
    )
    done = mcp_gate("import", str(source), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hint:" not in done.stdout  # stdout stays pasteable TOML
    hints = done.stderr.splitlines()
    assert all(line.startswith("hint: ") for line in hints), hints
    folder = tmp_path / "tool_manifests"
    assert (
        f"hint: server clock has no manifest, so every tool will be high; a shipped manifest fits: "
        f"mcp-gate manifests copy time --to {folder} --server clock"
    ) in hints
    assert any("'no-such-launcher-xyz' is not on PATH" in line for line in hints)
    assert not any(sys.executable in line and "PATH" in line for line in hints)
    assert any(
        line.startswith("hint: server files has no manifest") and "files.toml" in line for line in hints
    )
    assert any("[requester] agent and owner" in line for line in hints)
    assert any("[approvers.NAME] with a token_sha256" in line for line in hints)


def test_import_into_a_configured_gate_hints_only_at_what_is_still_missing(tmp_path: Path) -> None:
    from mcp_gate.testing import approver_table

    config = write_config(
        tmp_path / "gate",
        servers={},
        approvers={"bob": approver_table("bob@example.com", ["sre"], "tok-bob")},
        manifests={},
    )
    (config.parent / "tool_manifests" / "clock.toml").write_text('server = "clock"\n')
    source = tmp_path / "claude.json"
    source.write_text(json.dumps({"mcpServers": {"clock": {"command": sys.executable, "args": ["x.py"]}}}))
    done = mcp_gate("import", str(source), "--config", str(config))
    assert done.returncode == 0 and done.stderr == "", done.stderr
