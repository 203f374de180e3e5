"""Several `mcp-gate serve --http` replicas on one PostgreSQL database: a replica killed with
SIGKILL mid-call or mid-hold, its lease lapsing, another replica taking over what it left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_gate.storage.postgres import PostgresStore
from mcp_gate.testing import eventually
from tests import pg_helpers
from tests.replica_helpers import (
    agent,
    api,
    deploy,
    executions,
    pending,
    replica,
    replica_config,
    text_of,
)

pytestmark = pytest.mark.anyio

postgres_database = pg_helpers.postgres_database
postgres_url = pg_helpers.postgres_url


async def records(url: str) -> list[dict[str, Any]]:
    async with await PostgresStore.open(url, create=False) as store:
        return [dict(r.body) for r in await store.records()]


async def replica_ids(url: str) -> dict[int, str]:
    """pid -> replica id, from the lease rows."""
    async with await PostgresStore.open(url, create=False) as store:
        rows = await store.read(lambda tx: tx.conn.execute("SELECT pid, id FROM replicas").fetchall())  # type: ignore[attr-defined]
    return {int(pid): str(rid) for pid, rid in rows}


async def audit_verifies(config: Path) -> None:
    command = [sys.executable, "-m", "mcp_gate", "audit", "verify", "--json", "--config", str(config)]
    # In a worker thread: after aiosmtpd has served on this loop, asyncio's own wait for a child
    # process was seen never to return (Python 3.11), though the child had exited.
    done = await anyio.to_thread.run_sync(lambda: subprocess.run(command, capture_output=True, timeout=60))
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["ok"] is True


async def call_until_killed(client: Any, name: str, arguments: dict[str, Any]) -> None:
    try:
        await client.call_tool(name, arguments)
    except Exception:  # the replica is killed under this call: the SDK reports the broken connection
        return
    raise AssertionError("the call finished although its replica was killed")


# Two gate processes with a downstream each start, then a lease (2 s) has to lapse: a slow
# machine shared with other work needs more than the default minute.
@pytest.mark.timeout(180)
async def test_a_replica_killed_mid_call_leaves_it_to_another_replica_as_outcome_unknown_once(
    tmp_path: Path, postgres_url: str
) -> None:
    config = replica_config(tmp_path, postgres_url)
    async with replica(config, "a") as a, replica(config, "b") as b:
        ids = await replica_ids(postgres_url)
        a_id, b_id = ids[a.process.pid], ids[b.process.pid]
        async with agent(a) as client, anyio.create_task_group() as tg:
            tg.start_soon(call_until_killed, client, "ops__deploy", {"name": "web", "seconds": 120})
            [request] = await eventually(lambda: pending(b), what="the held call at B's API")
            decided = await api(b, "POST", f"/requests/{request['id']}/approve", {})
            assert decided["request"]["state"] in ("approved", "executing"), decided
            await eventually(lambda: executions(config) or None, what="the call to reach the downstream")
            a.kill()  # mid-execution: its outcome is never recorded by A

        async def unknown() -> list[dict[str, Any]] | None:
            found = [r for r in await records(postgres_url) if r["event_type"] == "call.outcome_unknown"]
            return found or None

        [marked] = await eventually(unknown, what="B to record A's call as outcome_unknown", timeout=60)
        assert marked["request_id"] == request["id"] and marked["tool"] == "deploy"
        assert (marked["replica"], marked["recovered_by"]) == (a_id, b_id)
        assert marked["replica_seen"]["pid"] == a.process.pid
        assert "lease" in marked["why"]
        # Several more heartbeats of B: it is recorded once, and never re-run.
        await anyio.sleep(2)
        shown = await api(b, "GET", f"/requests/{request['id']}")
        assert shown["state"] == "outcome_unknown", shown
        # The agent sending the call again through B gets a new request, held, not a re-run.
        async with agent(b) as client, anyio.create_task_group() as tg:
            tg.start_soon(call_until_killed, client, "ops__deploy", {"name": "web", "seconds": 120})
            [again] = await eventually(lambda: pending(b), what="the resent call's new request")
            assert again["id"] != request["id"]
            tg.cancel_scope.cancel()
    assert executions(config) == ["web"]
    kinds = [r["event_type"] for r in await records(postgres_url)]
    assert kinds.count("call.outcome_unknown") == 1 and kinds.count("call.released") == 1
    assert "call.executed" not in kinds and "call.late_result" not in kinds
    await audit_verifies(config)


@pytest.mark.timeout(180)  # as above: two replicas, then a third process after the kill
async def test_a_call_held_at_a_killed_replica_is_decided_at_another_and_runs_once_when_resent(
    tmp_path: Path, postgres_url: str
) -> None:
    config = replica_config(tmp_path, postgres_url)
    args = {"name": "db", "seconds": 0}
    async with replica(config, "a") as a, replica(config, "b") as b:
        async with agent(a) as client, anyio.create_task_group() as tg:
            tg.start_soon(call_until_killed, client, "ops__deploy", args)
            [request] = await eventually(lambda: pending(b), what="the held call at B's API")
            a.kill()  # while the call is held: nothing was sent
        decided = await api(b, "POST", f"/requests/{request['id']}/approve", {})
        assert decided["request"]["state"] == "approved", decided
        assert executions(config) == []  # approved, but nobody is holding the call: it waits
        async with agent(b) as client:
            result = await client.call_tool("ops__deploy", args)
        assert not result.is_error and text_of(result) == "deployed db"
        # Sent again: the request was used once; this one is held afresh, not run.
        async with agent(b) as client, anyio.create_task_group() as tg:
            tg.start_soon(call_until_killed, client, "ops__deploy", args)
            await eventually(lambda: pending(b), what="a new request for the third send")
            tg.cancel_scope.cancel()
    assert executions(config) == ["db"]
    kinds = [r["event_type"] for r in await records(postgres_url)]
    assert kinds.count("call.executed") == 1 and "call.outcome_unknown" not in kinds
    await audit_verifies(config)


# Two gate processes with a downstream each, and two Slack Socket Mode sessions.
@pytest.mark.timeout(180)
async def test_two_replicas_post_one_slack_message_per_request_and_a_click_both_receive_decides_once(
    tmp_path: Path, postgres_url: str
) -> None:
    from mcp_gate.channels.slack_blocks import ACTION_APPROVE
    from tests.slack_helpers import ENV, fake_slack, slack_table

    fake = fake_slack()
    with fake.running():
        config = replica_config(tmp_path, postgres_url, tail=slack_table(fake))
        async with replica(config, "a", **ENV) as a, replica(config, "b", **ENV):
            await fake.wait_for(lambda: fake.connected >= 2)
            async with agent(a) as client, anyio.create_task_group() as tg:
                call = deploy(client, tg)
                [request] = await eventually(lambda: pending(a), what="the held call")
                await fake.wait_for(lambda: fake.message_for(request["id"]))
                # Both outboxes look at the request many times meanwhile (they poll every second).
                await anyio.sleep(3)
                posts = [c for c in fake.calls_to("chat.postMessage", ok_only=False)]
                assert len(posts) == 1, posts
                # Socket Mode hands the click to every connected session: both replicas get it.
                envelope = fake.send_envelope(fake.block_actions("U0BOB", ACTION_APPROVE, request["id"]))
                await fake.wait_for(lambda: fake.acked(envelope))
                result = await call.result()
                await fake.wait_for(
                    lambda: "the call ran" in json.dumps(fake.message_for(request["id"])) or None
                )
                await anyio.sleep(3)  # both outboxes look again meanwhile
    assert text_of(result) == "deployed api"
    kinds = [r["event_type"] for r in await records(postgres_url)]
    assert kinds.count("approval.decided") == 1 and "approval.refused" not in kinds
    assert kinds.count("call.executed") == 1 and executions(config) == ["api"]
    assert len(fake.calls_to("chat.postMessage", ok_only=False)) == 1
    # Each change of the message (approved, then executed) applied by one replica, once.
    updates = [
        (c.params.get("ts"), json.dumps(c.params.get("blocks"), sort_keys=True))
        for c in fake.calls_to("chat.update", ok_only=False)
    ]
    assert updates and len(updates) == len(set(updates)), updates
    await audit_verifies(config)


# Two gate processes with a downstream each, each with its own Teams messaging endpoint.
@pytest.mark.timeout(180)
async def test_two_replicas_post_one_teams_card_per_request_and_a_click_replayed_at_the_other_decides_once(
    tmp_path: Path, postgres_url: str
) -> None:
    import re

    import httpx2

    from mcp_gate.fake_teams import FakeTeams
    from tests.teams_helpers import BOB, card_text, env, teams_table

    fake = FakeTeams()

    def endpoint(rep: Any) -> str:
        found = re.search(r"messaging endpoint on (\S+)\)", rep.log())
        assert found, rep.log()
        return found.group(1)

    async def send(url: str, activity: dict[str, Any]) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {fake.token()}"}
        async with httpx2.AsyncClient(timeout=20) as http:
            response = await http.post(url, json=activity, headers=headers)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    with fake.running():
        config = replica_config(tmp_path, postgres_url, tail=teams_table(fake), bob={"teams_user": BOB})
        async with (
            replica(config, "a", **env(fake)) as a,
            replica(config, "b", **env(fake)) as b,
            agent(a) as client,
            anyio.create_task_group() as tg,
        ):
            call = deploy(client, tg)
            [request] = await eventually(lambda: pending(a), what="the held call")
            await fake.wait_for(lambda: fake.card_for(request["id"]), timeout=30)
            # Both outboxes look at the request many times meanwhile (they poll every second).
            await anyio.sleep(3)
            assert len(fake.calls_to("POST", ok_only=False)) == 1
            click = fake.invoke(BOB, "approve", {"request_id": request["id"]}, activity_id="f:once")
            answered = await send(endpoint(b), click)
            assert answered["type"] == "application/vnd.microsoft.card.adaptive", answered
            # The Bot Connector retries an invoke it saw no answer to; this one reaches replica a.
            replayed = await send(endpoint(a), click)
            assert "already received" in json.dumps(replayed), replayed
            result = await call.result()

            def ran() -> bool | None:
                found = fake.card_for(request["id"])
                return (found is not None and "the call ran" in card_text(found[2])) or None

            await fake.wait_for(ran, timeout=30)
            await anyio.sleep(3)  # both outboxes look again meanwhile
    assert text_of(result) == "deployed api"
    kinds = [r["event_type"] for r in await records(postgres_url)]
    assert kinds.count("approval.decided") == 1 and kinds.count("call.executed") == 1
    assert executions(config) == ["api"] and kinds.count("teams.posted") == 1
    assert len(fake.calls_to("POST", ok_only=False)) == 1
    # Each change of the card (approved, then executed) applied by one replica, once.
    updates = [json.dumps(c.body, sort_keys=True) for c in fake.calls_to("PUT", ok_only=False)]
    assert updates and len(updates) == len(set(updates)), updates
    assert kinds.count("teams.updated") == 1
    await audit_verifies(config)


# Two gate processes with a downstream each, a real SMTP server and a webhook receiver.
@pytest.mark.timeout(180)
async def test_two_replicas_mail_each_approver_once_and_deliver_each_webhook_event_once(
    tmp_path: Path, postgres_url: str
) -> None:
    from tests.email_helpers import smtp_server
    from tests.test_webhook import SECRET, Receiver, receiver_at

    receiver = Receiver()
    (tmp_path / "hook.secret").write_text(SECRET)
    async with smtp_server() as inbox, anyio.create_task_group() as hooks:
        hook = await receiver_at(hooks, receiver)
        tail = (
            '[console]\npublic_url = "https://gate.example.com/console"\n'
            f'[email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {inbox.port}\nstarttls = false\n'
            'from = "gate@example.com"\nnotify = ["audit@example.com"]\n'
            f'[webhook]\nurl = "{hook}"\nsecret_file = {json.dumps(str(tmp_path / "hook.secret"))}\n'
        )
        config = replica_config(tmp_path, postgres_url, tail=tail)
        async with (
            replica(config, "a") as a,
            replica(config, "b") as b,
            agent(a) as client,
            anyio.create_task_group() as tg,
        ):
            call = deploy(client, tg)
            [request] = await eventually(lambda: pending(a), what="the held call")
            await eventually(lambda: [m for m in inbox.mails if m["To"] == "bob@example.com"], what="a mail")
            await anyio.sleep(3)  # both mailers look at the request meanwhile
            await api(b, "POST", f"/requests/{request['id']}/approve", {"note": "ok"})
            result = await call.result()

            def delivered() -> bool | None:
                kinds = {p["type"] for p in receiver.payloads if p["request_id"] == request["id"]}
                return {"approval.requested", "approval.decided", "call.executed"} <= kinds or None

            await eventually(delivered, what="the request's events at the webhook", timeout=30)
            await anyio.sleep(3)  # both webhooks look again meanwhile
        hooks.cancel_scope.cancel()
    assert text_of(result) == "deployed api" and executions(config) == ["api"]
    assert inbox.to("bob@example.com") and inbox.to("audit@example.com") and len(inbox.mails) == 2
    kinds = [r["event_type"] for r in await records(postgres_url)]
    assert kinds.count("email.sent") == 1
    ids = [p["event_id"] for p in receiver.payloads]
    assert ids and len(ids) == len(set(ids)), ids
    await audit_verifies(config)
