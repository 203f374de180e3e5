"""Shadow mode: every call of every tier runs (but the blocked tier), its record says what enforcing
would have done, a server can opt out, the report's tallies match the calls made, and switching to
enforce is recorded as a policy change."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext  # type: ignore[attr-defined]

from mcp_gate import runtime
from mcp_gate.config import load_config
from mcp_gate.errors import ConfigError
from mcp_gate.evidence import VerifyReport
from mcp_gate.report import build_report, render_html
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import approver_table, notes_server_table, running_gate, write_config

pytestmark = pytest.mark.anyio

MANIFEST = """
server = "notes"
default = "high"
[[rule]]
tools = ["read_note", "list_notes", "echo"]
tier = "low"
reason = "reads"
[[rule]]
tools = ["append_note"]
tier = "medium"
reason = "adds a line"
[[rule]]
tools = ["delete_note"]
when = { "/name" = { glob = "keep/**" } }
tier = "blocked"
reason = "kept records never go"
[[rule]]
tools = ["delete_note"]
when = { "/name" = { glob = "archive/**" } }
tier = "critical"
reason = "archived"
[[rule]]
tools = ["write_note", "delete_note"]
tier = "high"
reason = "replaces or deletes a note"
"""


def shadow_config(tmp_path: Path, *, mode: str = "shadow") -> Path:
    notes = tmp_path / "notes"
    strict = tmp_path / "strict"
    for d in (notes, strict, notes / "archive", notes / "keep"):
        d.mkdir(parents=True, exist_ok=True)
    (notes / "archive" / "old").write_text("x")
    (notes / "keep" / "k").write_text("x")
    (notes / "gone").write_text("x")
    return write_config(
        tmp_path / "gate",
        servers={
            "notes": notes_server_table(notes),
            "strict": {**notes_server_table(strict), "mode": "enforce"},
        },
        manifests={"notes": MANIFEST, "strict": MANIFEST.replace('"notes"', '"strict"')},
        approvers={"bob": approver_table("bob@example.com", ["sre"], "bob-token")},
        tiers={"mode": mode, "high": {"approvals": 1, "groups": ["sre"]}, "critical": "block"},
        approvals={"hold_seconds": 0.2},
    )


async def confirm(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"confirm": True})


async def bodies(config: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


CALLS: list[tuple[str, dict[str, Any]]] = [
    ("notes__echo", {"text": "a"}),  # low
    ("notes__read_note", {"name": "gone"}),  # low
    ("notes__append_note", {"name": "todo", "text": "milk"}),  # medium: confirm
    ("notes__write_note", {"name": "w1", "text": "x"}),  # high: 1 from sre
    ("notes__write_note", {"name": "w2", "text": "x"}),  # high
    ("notes__delete_note", {"name": "gone"}),  # high
    ("notes__delete_note", {"name": "archive/old"}),  # critical = "block": would refuse
    ("notes__delete_note", {"name": "keep/k"}),  # blocked: enforced in every mode
    ("strict__write_note", {"name": "s", "text": "x"}),  # a server that opts out: held
]


async def test_shadow_mode_runs_every_tier_but_blocked_and_records_what_enforcing_would_have_done(
    tmp_path: Path,
) -> None:
    config = shadow_config(tmp_path)
    notes = tmp_path / "notes"
    async with running_gate(config) as front, Client(front.server, elicitation_callback=confirm) as agent:
        results = [await agent.call_tool(name, args) for name, args in CALLS]
        pending = await front.gateway.engine.pending()
    errors = [name for (name, _), r in zip(CALLS, results, strict=True) if r.is_error]
    assert errors == ["notes__delete_note", "strict__write_note"]  # keep/k, and the opted-out server
    assert (notes / "w1").read_text() == "x" and (notes / "w2").exists() and (notes / "todo").exists()
    assert not (notes / "gone").exists() and not (notes / "archive" / "old").exists()
    assert (notes / "keep" / "k").exists() and not (tmp_path / "strict" / "s").exists()
    assert [(r.binding.server, r.binding.tool) for r in pending] == [("strict", "write_note")]

    records = await bodies(config)
    decided = [r for r in records if r["event_type"] == "policy.decided"]
    shadow = [r for r in decided if r.get("enforced") is False]
    assert len(shadow) == 7
    assert {r["tool"]: r["would"] for r in shadow if r["tier"] == "high"} == {
        "write_note": "would have held for 1 approval from sre",
        "delete_note": "would have held for 1 approval from sre",
    }
    by_tier = {r["tier"]: r["would_need"]["action"] for r in shadow}
    assert by_tier == {"low": "run", "medium": "confirm", "high": "hold", "critical": "refuse"}
    enforced = [r for r in decided if "enforced" not in r]
    assert [(r["server"], r["tier"]) for r in enforced] == [("notes", "blocked"), ("strict", "high")]
    # nothing was asked or held in shadow mode: no confirmation, no request for the notes server
    kinds = {r["event_type"] for r in records if r.get("server") == "notes"}
    assert not kinds & {"confirm.asked", "confirm.decided", "approval.requested", "call.deferred"}
    started = next(r for r in records if r["event_type"] == "gate.started")
    assert started["mode"] == {"default": "shadow", "servers": {"strict": "enforce"}}

    cfg = load_config(config, os.environ)
    with runtime.open_log_reader(cfg) as reader:
        report = build_report(reader, since=None, until=None, gate="g", verified=_verified())
    tally = {(row["server"], row["tool"]): row for row in report["shadow"]["by_tool"]}
    assert report["shadow"]["calls"] == 7
    assert {k: (v["calls"], v["would_run"], v["would_confirm"], v["would_hold"], v["would_refuse"])
            for k, v in tally.items()} == {
        ("notes", "append_note"): (1, 0, 1, 0, 0),
        ("notes", "delete_note"): (2, 0, 0, 1, 1),
        ("notes", "echo"): (1, 1, 0, 0, 0),
        ("notes", "read_note"): (1, 1, 0, 0, 0),
        ("notes", "write_note"): (2, 0, 0, 2, 0),
    }  # fmt: skip
    assert report["shadow"]["approvals_needed"] == [{"from": "sre", "calls": 3}]
    [refused] = report["shadow"]["would_refuse"]
    assert (refused["tool"], refused["tier"]) == ("delete_note", "critical")
    # shadow calls are not "unapproved": they are their own section, and fail the enforce check
    assert report["unapproved_calls"]["count"] == 0
    checks = {c["control"]: c for c in report["review"]["controls"]}
    assert checks["Every call was decided in enforce mode"]["result"] == "fail"
    assert "7 call(s) ran in shadow mode" in checks["Every call was decided in enforce mode"]["detail"]
    page = render_html(report)
    assert "Shadow mode: what enforcing would have done" in page and "would have been refused" in page


async def test_switching_from_shadow_to_enforce_is_a_recorded_policy_change_and_then_calls_are_held(
    tmp_path: Path,
) -> None:
    config = shadow_config(tmp_path)
    async with running_gate(config) as front, Client(front.server) as agent:
        assert not (await agent.call_tool("notes__write_note", {"name": "w", "text": "1"})).is_error
    shadow_config(tmp_path, mode="enforce")
    async with running_gate(config) as front, Client(front.server) as agent:
        held = await agent.call_tool("notes__write_note", {"name": "w", "text": "2"})
        report = await front.gateway.store.verify()
    assert held.is_error and (tmp_path / "notes" / "w").read_text() == "1"
    assert report.ok
    records = await bodies(config)
    [change] = [r for r in records if r["event_type"] == "policy.changed"]
    starts = [r for r in records if r["event_type"] == "gate.started"]
    assert change["previous_policy_sha256"] == starts[0]["policy_sha256"]
    assert change["policy_sha256"] == starts[1]["policy_sha256"] != starts[0]["policy_sha256"]
    assert change["mode_change"] == "shadow -> enforce"
    cfg = load_config(config, os.environ)
    with runtime.open_log_reader(cfg) as reader:
        rep = build_report(reader, since=None, until=None, gate="g", verified=_verified())
    assert [c["mode_change"] for c in rep["policy_changes"]] == ["shadow -> enforce"]


def test_a_mode_other_than_enforce_or_shadow_is_a_config_error(tmp_path: Path) -> None:
    for tiers, servers, key in (
        ({"mode": "shadw"}, {}, "tiers.mode"),
        ({}, {"mode": "off"}, "servers.notes.mode"),
    ):
        config = write_config(
            tmp_path / key,
            servers={"notes": {**notes_server_table(tmp_path), **servers}},
            tiers=tiers or None,
        )
        with pytest.raises(ConfigError) as caught:
            load_config(config, os.environ)
        assert key in str(caught.value)


def test_the_default_is_enforce_and_saying_so_keeps_the_config_digest(tmp_path: Path) -> None:
    servers = {"notes": notes_server_table(tmp_path)}
    plain = load_config(write_config(tmp_path / "g", servers=servers), os.environ)
    explicit = load_config(
        write_config(tmp_path / "g", servers=servers, tiers={"mode": "enforce"}), os.environ
    )
    shadow = load_config(write_config(tmp_path / "g", servers=servers, tiers={"mode": "shadow"}), os.environ)
    assert plain.rollout.mode_for("notes") == "enforce" == explicit.rollout.mode_for("notes")
    assert plain.config_sha256 == explicit.config_sha256 != shadow.config_sha256
    assert shadow.rollout.mode_for("notes") == "shadow"


def _verified() -> VerifyReport:
    return VerifyReport(ok=True, records=0, head_hash="", first_bad_seq=None, problem=None)


async def test_check_says_which_servers_run_in_shadow_mode(tmp_path: Path) -> None:
    config = shadow_config(tmp_path)
    environ = {k: v for k, v in os.environ.items() if k != "MCP_GATE_CONFIG"}
    done = await anyio.run_process(
        [sys.executable, "-m", "mcp_gate", "check", "--config", str(config)], env=environ, check=False
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert (
        "mode: SHADOW for notes: their calls run unenforced" in out
        and "strict" not in out.split("mode:")[1].splitlines()[0]
    )
