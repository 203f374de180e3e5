"""The admin listener's health, readiness and metrics: what probes and scrapers ask of a running gate.

`/healthz` answers while the process and its event loop run. `/readyz` names each dependency and
its state, by one policy: a store that cannot be read makes the gate not ready (503); a dead
downstream or a disconnected channel leaves it ready but degraded, naming which. `/metrics` is the
gate's own Prometheus registry. On a loopback listener all three answer without a token; on a
remote one `/metrics` asks for the scrape token and the health endpoints say only up or ready.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import anyio
import anyio.abc
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_gate.availability import read_availability
from mcp_gate.channels.api import build_api
from mcp_gate.checkpoints import parse_checkpoint
from mcp_gate.console import PREFIX as CONSOLE_PREFIX
from mcp_gate.errors import CheckpointError, GateError
from mcp_gate.escalation import ESCALATED, escalated_groups
from mcp_gate.gateway import Gateway
from mcp_gate.http import bearer_token, serve_asgi
from mcp_gate.metrics import CONTENT_TYPE
from mcp_gate.storage.base import Tx

__all__ = ["HEALTH_PATHS", "AdminApp", "Probes", "readiness", "refresh_metrics", "serve_admin"]

log = logging.getLogger("mcp_gate.health")

HEALTH_PATHS = ("/healthz", "/readyz", "/metrics")
STORE_PROBE_SECONDS = 5.0

Status = Literal["ready", "degraded", "not_ready"]


@dataclass(frozen=True)
class Probes:
    """What readiness looks at besides the gate itself: whether the signing key is loaded
    ("loaded", or "off" when the gate signs no checkpoints) and, when Slack Socket Mode is
    configured, whether it is connected now."""

    gate: Gateway
    signing: Literal["loaded", "off"] = "off"
    slack_connected: Callable[[], bool] | None = None


async def readiness(probes: Probes) -> dict[str, Any]:
    """Each dependency and its state, and the verdict: `status` is ready, degraded or not_ready."""
    gate = probes.gate
    checks: dict[str, Any] = {}
    status: Status = "ready"
    try:
        with anyio.fail_after(STORE_PROBE_SECONDS):
            seq, _ = await gate.store.head()
        # A store whose schema is not this gate's does not open at all: reachable means current.
        checks["store"] = {"state": "up", "schema": "current", "records": seq}
    except (GateError, TimeoutError) as exc:
        why = str(exc) or f"no answer within {STORE_PROBE_SECONDS:g} s"
        checks["store"] = {"state": "down", "error": " ".join(why.split())}
        status = "not_ready"
    downstreams = {ds.name: ds.state for ds in gate.downstreams}
    checks["downstreams"] = downstreams
    checks["signing_key"] = probes.signing
    degraded = sorted(name for name, state in downstreams.items() if state not in ("up", "disabled"))
    if probes.slack_connected is not None:
        connected = probes.slack_connected()
        checks["slack"] = "connected" if connected else "disconnected"
        if not connected:
            degraded.append("slack")
    if degraded and status == "ready":
        status = "degraded"
    return {"status": status, "degraded": degraded, "checks": checks}


async def refresh_metrics(gate: Gateway) -> None:
    """Set the series that describe shared state, read now: open requests, the checkpoint, downstreams."""
    metrics = gate.metrics
    for ds in gate.downstreams:
        metrics.downstream(ds.name, ds.state == "up", ds.connects)
    now = gate.clock.now()
    pending = await gate.store.read(lambda tx: tx.requests(states=("pending",), limit=100_000))
    metrics.held_open.set(len(pending))
    metrics.oldest_held_age.set(max((now - r.created_at).total_seconds() for r in pending) if pending else 0)
    metrics.oldest_held_expires_in.set(
        min((r.expires_at - now).total_seconds() for r in pending) if pending else float("inf")
    )
    present = await read_availability(gate.store, gate.engine.key, now)
    approvers = list(gate.config.approvers.values())
    unattended = []
    for r in pending:
        if present.available(present.eligible(r, approvers)):
            continue
        bodies = await gate.store.read(functools.partial(_escalations, r.correlation_id))
        added = escalated_groups(gate.engine.key, r, bodies)
        if not added or not present.available(present.eligible(r, approvers, added)):
            unattended.append(r)
    metrics.unattended.set(len(unattended))
    metrics.unattended_expires_in.set(
        min((r.expires_at - now).total_seconds() for r in unattended) if unattended else float("inf")
    )
    notes = await gate.store.checkpoint_notes()
    signed_at = _signed_at(notes[-1]) if notes else None
    if signed_at is not None:
        metrics.checkpoint_age.set(max(0.0, (now - signed_at).total_seconds()))


def _escalations(correlation_id: str, tx: Tx) -> list[dict[str, Any]]:
    return tx.bodies_for(correlation_id, (ESCALATED,))


def _signed_at(note: str) -> datetime | None:
    body = note.partition("\n\n")[0] + "\n"
    try:
        moment = parse_checkpoint(body).time
        return None if moment is None else datetime.fromisoformat(moment)
    except (CheckpointError, ValueError):
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AdminApp:
    """The admin listener: the health paths here, /console to the console when it is served,
    everything else to the approvers' API."""

    def __init__(self, api: ASGIApp, probes: Probes, *, remote: bool, console: ASGIApp | None = None) -> None:
        self.api = api
        self.console = console
        self.probes = probes
        self.remote = remote
        admin = probes.gate.config.admin
        self.scrape_sha256 = None if admin is None else admin.scrape_token_sha256

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if self.console is not None and (path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")):
            await self.console(scope, receive, send)
            return
        if scope["type"] != "http" or path not in HEALTH_PATHS:
            await self.api(scope, receive, send)
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _answer(send, 405, {"error": "only GET is served here"}, extra=[(b"allow", b"GET, HEAD")])
            return
        path = scope["path"]
        trusted = not self.remote or self._scraper(scope)
        if path == "/healthz":
            await _answer(send, 200, {"status": "up"})
        elif path == "/readyz":
            report = await readiness(self.probes)
            code = 503 if report["status"] == "not_ready" else 200
            if not trusted:  # a remote prober learns ready or not, nothing about what is behind
                report = {"status": "not_ready" if code == 503 else "ready"}
            await _answer(send, code, report)
        elif not trusted:
            await self._refuse_scrape(scope, send)
        else:
            try:
                await refresh_metrics(self.probes.gate)
            except GateError as exc:  # the store's series keep their last values; the rest is current
                log.warning("metrics: cannot read the store: %s", exc)
            body = self.probes.gate.metrics.exposition()
            await _send(send, 200, body, CONTENT_TYPE.encode())

    def _scraper(self, scope: Scope) -> bool:
        token = bearer_token(scope)
        if token is None or self.scrape_sha256 is None:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), self.scrape_sha256)

    async def _refuse_scrape(self, scope: Scope, send: Send) -> None:
        if self.scrape_sha256 is None:
            why = "metrics on a remote admin listener need [admin] scrape_token_sha256 in gate.toml"
            await _answer(send, 403, {"error": why})
            return
        reason = "missing" if bearer_token(scope) is None else "unknown"
        self.probes.gate.metrics.refused_tokens.labels("metrics", reason).inc()
        await _answer(
            send,
            401,
            {"error": "a valid scrape token is required: Authorization: Bearer <token>"},
            extra=[(b"www-authenticate", b'Bearer realm="mcp-gate metrics"')],
        )


async def _answer(
    send: Send, status: int, body: dict[str, Any], *, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _send(send, status, json.dumps(body).encode(), b"application/json", extra)


async def _send(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve_admin(
    probes: Probes,
    host: str,
    port: int,
    *,
    console: ASGIApp | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin listener on host:port: the approvers' API, the health paths and, given one,
    the console at /console (port 0 picks a free port, reported via task_status)."""
    gate = probes.gate
    limits = gate.config.http
    await serve_asgi(
        AdminApp(build_api(gate), probes, remote=not is_loopback(host), console=console),
        host,
        port,
        what="approver API",
        limits=limits,
        max_body_bytes=limits.admin_max_body_bytes,
        task_status=task_status,
    )
