"""The webhook channel against a local receiver that checks every signature: request events, retries."""

from __future__ import annotations

import hashlib
import hmac
import json
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jsonschema
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_gate.channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookChannel
from mcp_gate.config import HttpSettings, load_config
from mcp_gate.errors import ConfigError
from mcp_gate.http import serve_asgi
from mcp_gate.testing import eventually
from tests.console_helpers import Browserless, gate_with_console, make_config

pytestmark = pytest.mark.anyio

SECRET = "webhook-secret-for-tests"
SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "webhook.schema.json").read_text())


class Receiver:
    """Checks each POST's signature over timestamp and body; answers 503 to the first `fail` POSTs."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.payloads: list[dict[str, Any]] = []
        self.refused = 0
        self.posts = 0

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        mac = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), f"v1={mac}"):
            self.refused += 1
            return Response(status_code=401)
        self.posts += 1
        if self.posts <= self.fail:
            return Response(status_code=503)
        self.payloads.append(json.loads(body))
        return Response(status_code=204)


async def receiver_at(tg: anyio.abc.TaskGroup, receiver: Receiver) -> str:
    app = Starlette(routes=[Route("/hook", receiver.receive, methods=["POST"])])
    port = await tg.start(
        partial(
            serve_asgi, app, "127.0.0.1", 0, what="receiver", limits=HttpSettings(), max_body_bytes=1 << 20
        )
    )
    return f"http://127.0.0.1:{port}/hook"


def hook_config(tmp_path: Path, url: str) -> Path:
    (tmp_path / "hook.secret").write_text(SECRET)
    config = make_config(tmp_path)
    with config.open("a") as f:
        f.write(f'\n[webhook]\nurl = "{url}"\nsecret_file = "../hook.secret"\nbackoff = 0.05\n')
    return config


async def test_every_request_and_its_outcome_is_posted_signed_and_matches_the_schema(tmp_path: Path) -> None:
    receiver = Receiver(fail=1)  # the first POST fails: it is retried
    async with anyio.create_task_group() as outer:
        url = await receiver_at(outer, receiver)
        async with gate_with_console(hook_config(tmp_path, url)) as gate, Browserless(gate.base) as bob:
            gateway = gate.front.gateway
            assert gateway.config.webhook is not None
            await gate.tg.start(WebhookChannel(gateway, gateway.config.webhook, SECRET).run)
            held = await gate.hold("notes__write_note", {"name": "todo", "text": "x"})
            await bob.login("tok-bob")
            await bob.post(f"/console/requests/{held.request.id}/approve", {})
            await held.outcome()
            await eventually(
                lambda: any(p["type"] == "call.executed" for p in receiver.payloads),
                what="the outcome posted",
            )
        outer.cancel_scope.cancel()
    types = [p["type"] for p in receiver.payloads]
    assert types[:3] == ["approval.requested", "approval.decided", "call.released"]
    assert receiver.posts == len(receiver.payloads) + 1 and receiver.refused == 0
    for payload in receiver.payloads:
        jsonschema.validate(payload, SCHEMA)
    decided = receiver.payloads[1]
    assert decided["approver"] == "bob" and decided["request"]["id"] == held.request.id
    records = await gate.evidence()
    assert any(r["event_type"] == "webhook.delivered" for r in records)


async def test_an_undeliverable_event_is_recorded_after_its_retries(tmp_path: Path) -> None:
    receiver = Receiver(fail=1000)
    async with anyio.create_task_group() as outer:
        url = await receiver_at(outer, receiver)
        async with gate_with_console(hook_config(tmp_path, url)) as gate:
            gateway = gate.front.gateway
            assert gateway.config.webhook is not None
            channel = WebhookChannel(gateway, gateway.config.webhook, SECRET)
            channel.after = (await gateway.store.head())[0]
            await gate.hold("notes__write_note", {"name": "todo", "text": "x"})
            async with httpx2.AsyncClient() as http:
                assert await channel.deliver_due(http) == 0
        outer.cancel_scope.cancel()
    assert receiver.posts == 6  # [webhook] attempts, with backoff between them
    failed = [r for r in await gate.evidence() if r["event_type"] == "webhook.failed"]
    assert [(f["why"], f["attempts"]) for f in failed] == [("HTTP 503", 6)]


def test_a_webhook_needs_https_off_loopback_and_a_secret(tmp_path: Path) -> None:
    config = hook_config(tmp_path, "http://hooks.example.com/x")
    with pytest.raises(ConfigError, match="webhook.url"):
        load_config(config, {})
    config = make_config(tmp_path)
    with config.open("a") as f:
        f.write('\n[webhook]\nurl = "https://hooks.example.com/x"\n')
    with pytest.raises(ConfigError, match="webhook.secret_env"):
        load_config(config, {})
