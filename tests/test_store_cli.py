"""`mcp-gate store migrate` and `store copy` against a real PostgreSQL: versions reported (also as
JSON), an installation's whole SQLite store copied and verified, a second copy refused, and an
unreachable database one line with exit 2."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_gate.approvals import ApprovalRequest, Binding, Grant, Vote
from mcp_gate.checkpoints import SigningKey
from mcp_gate.evidence import new_event
from mcp_gate.notary import Notary
from mcp_gate.storage.base import SlackMessage
from mcp_gate.storage.postgres import PostgresStore
from mcp_gate.storage.postgres.schema import SCHEMA_VERSION
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import FakeClock, write_config
from tests import pg_helpers

pytestmark = pytest.mark.anyio

postgres_database = pg_helpers.postgres_database
postgres_url = pg_helpers.postgres_url

START = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
TS = "2026-11-24T12:00:00.000000Z"
KEY = SigningKey.generate("mcp-gate-test")


async def mcp_gate(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MCP_GATE_CONFIG"}
    done = await anyio.run_process([sys.executable, "-m", "mcp_gate", *args], env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def config_for(tmp_path: Path, url: str) -> Path:
    return write_config(tmp_path / "gate", servers={}, extra=f"[store]\nurl = {json.dumps(url)}\n")


def one_line(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


async def test_migrate_applies_the_schema_once_and_reports_the_version(
    tmp_path: Path, postgres_url: str
) -> None:
    config = config_for(tmp_path, postgres_url)
    code, out, err = await mcp_gate("store", "migrate", "--check", "--json", "--config", str(config))
    assert code == 0, err
    assert json.loads(out)["version"] == 0
    code, out, err = await mcp_gate("store", "migrate", "--json", "--config", str(config))
    assert code == 0, err
    report = json.loads(out)
    assert (report["before"], report["version"], report["known"]) == (0, SCHEMA_VERSION, SCHEMA_VERSION)
    assert "@127.0.0.1" in report["store"]
    code, out, err = await mcp_gate("store", "migrate", "--config", str(config))
    assert code == 0, err
    assert "nothing to do" in out
    async with await PostgresStore.open(postgres_url, create=False) as store:
        assert (await store.head())[0] == 0  # the schema only: no records


async def test_migrate_and_copy_to_an_unreachable_database_are_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path / "gate",
        servers={},
        extra='[store]\nurl = "postgresql://gate@127.0.0.1:1/gate"\npassword_env = "PGPW"\n',
    )
    env_secret = "pw-never-shown"
    os.environ["PGPW"] = env_secret
    try:
        code, out, err = await mcp_gate("store", "migrate", "--config", str(config))
        assert code == 2 and out == ""
        one_line(err, "127.0.0.1:1")
        assert env_secret not in err
        (tmp_path / "data").mkdir()
        await (await SQLiteStore.open(tmp_path / "data" / "gate.db")).close()
        code, out, err = await mcp_gate(
            "store", "copy", "--from", str(tmp_path / "data"), "--config", str(config)
        )
        assert code == 2 and out == ""
        one_line(err, "127.0.0.1:1")
        assert env_secret not in err
    finally:
        del os.environ["PGPW"]


async def installation(data_dir: Path) -> dict[str, Any]:
    """A SQLite store with something in every table, as a gate that ran a while leaves it."""
    clock = FakeClock(START)
    notary = Notary(KEY, "mcp-gate/test", every_records=1000)
    binding = Binding("bot", "alice@example.com", "notes", "write_note", "pin1", "a1", "pol1")
    request = ApprovalRequest(
        id="R1",
        binding=binding,
        correlation_id="call-R1",
        tier="high",
        required=1,
        groups=("sre",),
        rule="write",
        reason="writes",
        args={"name": "plan"},
        created_at=START,
        expires_at=START + timedelta(minutes=15),
        votes=(Vote("bob", "approve", "cli", START, "ok"),),
        state="approved",
    )
    grant = Grant(
        "G1", "bot", "alice@example.com", "notes", "write_note", "bob", START, START + timedelta(hours=1)
    )
    message = SlackMessage("R1", "C1", ts="1.2", voters={"bob": "U1"})
    card = SlackMessage("R1", "19:conversation@thread.tacv2", ts="activity-1", voters={"bob": "aad-1"})
    async with await SQLiteStore.open(data_dir / "gate.db", clock=clock, notary=notary) as store:
        await store.append(
            [
                new_event("call.requested", ts=TS, correlation_id=f"c{n}", requester={"agent": "bot"})
                for n in range(30)
            ]
        )
        await store.set_pin("notes", "write_note", pin="p1", definition={"name": "write_note"}, events=[])
        await store.transact(
            lambda tx: (
                tx.insert_request(replace(request, votes=())),
                tx.save_request(request),
                tx.insert_grant(grant),
                tx.save_slack_message(message),
                tx.save_teams_message(card),
                tx.slack_first_sight("env-1", TS, TS),
                tx.use_nonce("n1", "c1", TS),
                tx.begin_inflight("c2", None, TS, {"tool": "write_note"}),
            )
        )
        await store.checkpoint()
        return {
            "head": await store.head(),
            "records": await store.records(),
            "notes": await store.checkpoint_notes(),
            "request": request,
            "grant": grant,
            "message": message,
            "card": card,
            "pins": await store.list_pins(),
        }


async def test_copy_moves_the_whole_store_verifies_it_and_refuses_a_second_run(
    tmp_path: Path, postgres_url: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    source = await installation(data_dir)
    code, out, err = await mcp_gate("store", "copy", "--from", str(data_dir), "--to", postgres_url, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True and report["records"] == len(source["records"])
    async with await PostgresStore.open(postgres_url, create=False) as store:
        assert await store.head() == source["head"]
        assert await store.records() == source["records"]
        assert await store.checkpoint_notes() == source["notes"]
        assert await store.list_pins() == source["pins"]
        assert await store.read(lambda tx: tx.get_request("R1")) == source["request"]
        assert await store.read(lambda tx: tx.get_grant("G1")) == source["grant"]
        assert await store.read(lambda tx: tx.slack_messages()) == [source["message"]]
        assert await store.read(lambda tx: tx.teams_messages()) == [source["card"]]
        assert await store.transact(lambda tx: tx.slack_first_sight("env-1", TS, TS)) is False
        assert await store.transact(lambda tx: tx.use_nonce("n1", "c9", TS)) is False
        assert [i.correlation_id for i in await store.read(lambda tx: tx.inflight())] == ["c2"]
        # The chain goes on where the file's ended.
        (record,) = await store.append([new_event("call.requested", ts=TS, correlation_id="after")])
        assert record.seq == source["head"][0] + 1
        assert (await store.verify()).ok
    code, out, err = await mcp_gate("store", "copy", "--from", str(data_dir), "--to", postgres_url)
    assert code == 1 and out == ""
    one_line(err, "already holds gate data", "nothing was written")
    code, out, err = await mcp_gate("audit", "verify", "--config", str(config_for(tmp_path, postgres_url)))
    assert code == 0, out + err
