"""A generic outgoing webhook: every approval request and outcome POSTed as signed JSON, with retries.

Each event about a request (docs/webhook.schema.json) is one POST with
`X-MCP-Gate-Timestamp: <unix seconds>` and `X-MCP-Gate-Signature: v1=<hex>`, the HMAC-SHA256 of
`<timestamp>.<body>` under the configured secret, so a receiver checks who sent it and how fresh it
is. A failed POST is retried with backoff; how far delivery got is recorded (`webhook.delivered`),
so a restarted gate goes on from there rather than from the start. Of several gates sharing a
store, one delivers at a time, under a lease; a gate that stops mid-batch leaves the events after
the last record to the next, which may deliver some of them again (receivers dedupe by event_id).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import anyio
import httpx2

from mcp_gate.channels.leases import claim
from mcp_gate.config import WebhookSettings
from mcp_gate.desk import request_view
from mcp_gate.errors import GateError
from mcp_gate.events import EventType
from mcp_gate.evidence import Record
from mcp_gate.gateway import Gateway

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "WEBHOOK_EVENTS", "WebhookChannel", "sign"]

log = logging.getLogger("mcp_gate.webhook")

TIMESTAMP_HEADER = "X-MCP-Gate-Timestamp"
SIGNATURE_HEADER = "X-MCP-Gate-Signature"
POST_TIMEOUT = 10.0
BATCH = 200
WEBHOOK_EVENTS: tuple[EventType, ...] = (
    "approval.requested",
    "approval.decided",
    "approval.expired",
    "approval.revoked",
    "approval.voided",
    "approval.escalated",
    "breakglass.used",
    "call.released",
    "call.executed",
    "call.failed",
    "call.refused",
)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for one POST."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


class WebhookChannel:
    """Delivers request events in log order, once each as far as the receiver says 2xx."""

    def __init__(self, gate: Gateway, settings: WebhookSettings, secret: str) -> None:
        self.gate = gate
        self.settings = settings
        self.secret = secret
        self.after: int | None = None  # the last sequence number delivered

    async def _start(self) -> int:
        done = await self.gate.store.records(event_type="webhook.delivered")
        if done:
            return int(done[-1].body.get("upto_seq", 0))
        seq, _ = await self.gate.store.head()  # a new webhook starts with what happens from now on
        return seq

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self.gate.store.changes() as changes, httpx2.AsyncClient(timeout=POST_TIMEOUT) as http:
            self.after = await self._start()
            task_status.started()
            while True:
                try:
                    await self.deliver_due(http)
                except GateError as exc:
                    log.error("webhook: cannot read the evidence: %s", exc)
                with anyio.move_on_after(5.0):
                    await changes.wait()

    async def deliver_due(self, http: httpx2.AsyncClient) -> int:
        """POST every request event after the last delivered one; how many were delivered.

        Of several gates sharing the store, the one holding the webhook's lease delivers, renewing
        it before each POST, from where the last `webhook.delivered` (by whichever gate) got to."""
        if not await self._lease():
            self.after = None  # another gate delivers; from its record on, if this one takes over
            return 0
        if self.after is None:
            self.after = await self._start()
        records = await self.gate.store.records(after_seq=self.after, limit=BATCH)
        wanted = [r for r in records if r.event_type in WEBHOOK_EVENTS]
        delivered = 0
        for n, record in enumerate(wanted):
            if n and not await self._lease():
                self.after = None
                return delivered
            if await self._post(http, record):
                delivered += 1
        if records:
            self.after = records[-1].seq
            if wanted:
                await self.gate.record("webhook.delivered", None, upto_seq=self.after, delivered=delivered)
        return delivered

    async def _lease(self) -> bool:
        # Long enough for one event's every attempt, so a lease never lapses under a POST.
        settings = self.settings
        seconds = settings.attempts * POST_TIMEOUT + settings.backoff * 2**settings.attempts + 30
        return await claim(self.gate, "webhook", seconds)

    async def payload(self, record: Record) -> dict[str, Any]:
        body = record.body
        request_id = body.get("request_id")
        view = None
        if isinstance(request_id, str):
            request = await self.gate.store.read(lambda tx: tx.get_request(request_id))
            if request is not None:
                view = request_view(request, self.gate.clock.now(), self.gate.config.redaction)
                console = self.gate.config.console
                url = None if console is None else console.request_url(request_id)
                if url is not None:
                    view["console_url"] = url
        return {
            "type": record.event_type,
            "seq": record.seq,
            "event_id": record.event_id,
            "ts": record.ts,
            "gate": self.gate.config.name,
            "correlation_id": record.correlation_id,
            "request_id": request_id if isinstance(request_id, str) else None,
            "approver": body.get("approver") if isinstance(body.get("approver"), str) else None,
            "verdict": body.get("verdict") if isinstance(body.get("verdict"), str) else None,
            "request": view,
        }

    async def _post(self, http: httpx2.AsyncClient, record: Record) -> bool:
        body = json.dumps(await self.payload(record), sort_keys=True, separators=(",", ":")).encode()
        delay = self.settings.backoff
        why = ""
        for attempt in range(1, self.settings.attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "content-type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(self.secret, timestamp, body),
            }
            try:
                response = await http.post(self.settings.url, content=body, headers=headers)
                if 200 <= response.status_code < 300:
                    return True
                why = f"HTTP {response.status_code}"
            except httpx2.HTTPError as exc:
                why = " ".join(str(exc).split())[:200] or type(exc).__name__
            if attempt < self.settings.attempts:
                await anyio.sleep(delay)
                delay *= 2
        log.warning("webhook: %s (seq %d) not delivered: %s", record.event_type, record.seq, why)
        await self.gate.record(
            "webhook.failed", record.correlation_id, seq=record.seq, why=why, attempts=self.settings.attempts
        )
        return False
