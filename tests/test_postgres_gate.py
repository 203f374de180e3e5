"""The gate on PostgreSQL end to end: `[store]` in gate.toml, a real gate on the database, the
approver CLI and the audit commands as subprocesses pointed at the same database, and the config's
rules for the store's url and password (never a password in gate.toml, never one in a message)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client

from mcp_gate.config import load_config
from mcp_gate.errors import ConfigError
from mcp_gate.storage.postgres import PostgresStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    eventually,
    notes_server_table,
    running_gate,
    within,
    write_config,
)
from tests import pg_helpers

pytestmark = pytest.mark.anyio

postgres_database = pg_helpers.postgres_database
postgres_url = pg_helpers.postgres_url

APPROVERS = {"bob": approver_table("bob@example.com", ["sre"], "tok-bob")}
TIERS = {"high": {"approvals": 1, "groups": ["sre"]}}


def make_config(tmp_path: Path, store: str) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=APPROVERS,
        tiers=TIERS,
        extra=f"[store]\n{store}\n",
    )


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MCP_GATE_CONFIG", "MCP_GATE_TOKEN")}
    return {**env, **extra}


async def mcp_gate(*args: str, **env: str) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "mcp_gate", *args], env=environment(**env), check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.timeout(180)  # a gate with a downstream, then a dozen CLI processes one after another
async def test_a_gate_on_postgresql_runs_low_calls_and_releases_a_call_approved_from_the_cli_once(
    tmp_path: Path, postgres_url: str
) -> None:
    config = make_config(tmp_path, f"url = {json.dumps(postgres_url)}")
    args = ("--config", str(config))
    code, _, err = await mcp_gate("keys", "init", *args)
    assert code == 0, err
    async with (
        running_gate(config) as front,
        Client(front.server, mode="legacy") as client,
        anyio.create_task_group() as tg,
    ):
        listed = await client.call_tool("notes__list_notes", {})
        assert not listed.is_error, text_of(listed)
        box: list[types.CallToolResult] = []
        done = anyio.Event()

        async def write() -> None:
            box.append(await client.call_tool("notes__write_note", {"name": "todo", "text": "on pg"}))
            done.set()

        tg.start_soon(write)
        [request] = await eventually(front.gateway.engine.pending, what="the held call's request")
        code, out, err = await mcp_gate("pending", "--json", *args, MCP_GATE_TOKEN="tok-bob")
        assert code == 0, err
        assert [r["id"] for r in json.loads(out)] == [request.id]
        code, out, err = await mcp_gate("approve", request.id, *args, MCP_GATE_TOKEN="tok-bob")
        assert code == 0, err
        assert out.startswith(f"approved {request.id}")
        await within(done.wait(), what="the approved call to return")
        # A second decision changes nothing: the request was released once.
        code, _, err = await mcp_gate("approve", request.id, *args, MCP_GATE_TOKEN="tok-bob")
        assert code == 1 and "Traceback" not in err
        tg.cancel_scope.cancel()
    assert not box[0].is_error, text_of(box[0])
    assert (tmp_path / "notes" / "todo").read_text() == "on pg"

    async with await PostgresStore.open(postgres_url, create=False) as store:
        executed = await store.records(event_type="call.executed")
        assert [r.body["tool"] for r in executed].count("write_note") == 1
        released = [r for r in await store.records(correlation_id=request.correlation_id)]
        assert [r.event_type for r in released].count("call.executed") == 1
        assert (await store.read(lambda tx: tx.get_request(request.id))).state == "executed"  # type: ignore[union-attr]
        assert (await store.verify()).ok
    code, out, err = await mcp_gate("audit", "verify", "--json", *args)
    assert code == 0, err
    assert json.loads(out)["ok"] is True
    code, out, err = await mcp_gate("audit", "show", request.correlation_id, *args)
    assert code == 0, err
    assert "approval.decided" in out and "call.executed" in out
    bundle = tmp_path / "bundle.tar.gz"
    code, _, err = await mcp_gate("audit", "export", "--since", "2020-01-01", "--out", str(bundle), *args)
    assert code == 0, err
    code, pubkey, err = await mcp_gate("keys", "show", *args)
    assert code == 0, err
    # Offline, with the same command as a bundle from SQLite.
    code, out, err = await mcp_gate("audit", "verify", "--bundle", str(bundle), "--pubkey", pubkey.strip())
    assert code == 0, out + err
    code, out, err = await mcp_gate("audit", "report", "--format", "json", *args)
    assert code == 0, err
    assert json.loads(out)
    code, out, err = await mcp_gate("check", *args)
    assert code == 0, out + err
    assert "Traceback" not in err


@pytest.mark.timeout(90)  # three CLI processes
async def test_the_url_and_password_may_come_from_the_environment_and_are_never_shown(
    tmp_path: Path, postgres_url: str
) -> None:
    config = make_config(tmp_path, 'url_env = "MCP_GATE_TEST_STORE_URL"')
    loaded = load_config(config, {"MCP_GATE_TEST_STORE_URL": postgres_url})
    assert loaded.store is not None and loaded.store.url == postgres_url
    # A wrong password for a server that is not there: one line, exit 2, naming the host, not the password.
    bad = make_config(tmp_path / "bad", 'url = "postgresql://gate@127.0.0.1:1/gate"\npassword_env = "PGPW"')
    secret = "s3cret-pa55"
    loaded = load_config(bad, {"PGPW": secret})
    assert loaded.store is not None and secret in loaded.store.url and secret not in repr(loaded)
    for command in (("pending",), ("audit", "verify"), ("check",)):
        code, out, err = await mcp_gate(*command, "--config", str(bad), PGPW=secret, MCP_GATE_TOKEN="tok-bob")
        assert code == 2, (command, out, err)
        assert secret not in out + err and "Traceback" not in err, (command, err)
        assert "127.0.0.1:1" in err, (command, err)


@pytest.mark.parametrize(
    ("store", "env", "key", "problem"),
    [
        ('url = "postgresql://gate:hunter2@db/gate"', {}, "store.url", "has a password"),
        ('url = "postgresql://db/gate?password=hunter2"', {}, "store.url", "has a password"),
        ('url = "mysql://db/gate"', {}, "store.url", "expected postgresql://"),
        ('url = "postgresql://db/gate"\nurl_env = "X"', {}, "store.url", "give url, or url_env"),
        ('url_env = "STORE_URL"', {}, "store.url_env", "STORE_URL is not set"),
        ('url = "postgresql://db/gate"\npassword_env = "PW"', {}, "store.password_env", "PW is not set"),
        ('url = "postgresql://db/gate"\npool = 3', {}, "store.pool", ""),
        (
            'url = "postgresql://db/gate"\nlease_seconds = 0.5',
            {},
            "store.lease_seconds",
            "greater than or equal to 1",
        ),
        # A password with an unencoded "/" or "#" is misread as the port: never quoted back.
        (
            'url_env = "STORE_URL"',
            {"STORE_URL": "postgresql://gate:hunter2/x@db/gate"},
            "store.url",
            "not a URL",
        ),
        (
            'url_env = "STORE_URL"',
            {"STORE_URL": "postgresql://gate:hunter2#x@db/gate"},
            "store.url",
            "not a URL",
        ),
    ],
)
def test_a_bad_store_section_is_one_config_error_that_never_shows_a_password(
    tmp_path: Path, store: str, env: dict[str, str], key: str, problem: str
) -> None:
    config = make_config(tmp_path, store)
    with pytest.raises(ConfigError) as caught:
        load_config(config, env)
    message = str(caught.value)
    assert key in message and problem in message and "hunter2" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url", ["postgresql://gate:hunter2/rest@db:5432/gate", "postgresql://gate:hunter2@db/gate"]
)
def test_the_shown_url_never_carries_the_password(url: str) -> None:
    from mcp_gate.storage.postgres.schema import redacted

    assert "hunter2" not in redacted(url)


def test_without_a_store_section_the_gate_keeps_its_sqlite_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gate", servers={"notes": notes_server_table(tmp_path / "notes")})
    assert load_config(config, {}).store is None
