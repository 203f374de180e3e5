"""The approvers' HTTP API: list, show, approve, deny, revoke and grant, authenticated by approver token."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar, assert_never

import anyio
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_gate.approvals import (
    ApprovalRequest,
    Approved,
    Approver,
    Denied,
    Grant,
    Pending,
    Refusal,
    parse_duration,
    quorum_progress,
)
from mcp_gate.availability import mark_away, mark_back, read_availability
from mcp_gate.breakglass import break_glass
from mcp_gate.clock import utc_iso
from mcp_gate.config import BreakGlassSettings, ConsoleSettings, GateConfig
from mcp_gate.errors import GateError, NoSuchRequest
from mcp_gate.escalation import ESCALATED, escalated_groups
from mcp_gate.evidence import Record
from mcp_gate.gateway import Gateway
from mcp_gate.holds import ApprovalEngine
from mcp_gate.http import bearer_token, serve_asgi
from mcp_gate.idp import TokenRefused, TokenVerifier
from mcp_gate.metrics import GateMetrics
from mcp_gate.oauth import Refused, approver_from
from mcp_gate.offering import SEPARATOR
from mcp_gate.redaction import DEFAULT_RULES, RedactionRules, scrub

__all__ = ["APPROVER_SCOPE_KEY", "Desk", "build_api", "serve_api", "summarize"]

log = logging.getLogger("mcp_gate.api")

APPROVER_SCOPE_KEY = "mcp_gate.approver"
MAX_TEXT = 2000
RECENT_CALLS = 10


# -- views: what an approver is shown, as JSON values ------------------------------------------


def request_view(
    request: ApprovalRequest, now: datetime, rules: RedactionRules = DEFAULT_RULES
) -> dict[str, Any]:
    b = request.binding
    return {
        "id": request.id,
        "state": request.state,
        "name": f"{b.server}{SEPARATOR}{b.tool}",
        "server": b.server,
        "tool": b.tool,
        "requester": {"agent": b.agent, "owner": b.owner},
        "tier": request.tier,
        "rule": request.rule,
        "reason": request.reason,
        "args": scrub(request.args, rules),
        "args_sha256": b.args_sha256,
        "pin": b.pin,
        "policy_sha256": b.policy_sha256,
        "required": request.required,
        "groups": list(request.groups),
        "approvals": len(request.approvals),
        "quorum": quorum_progress(request),
        "votes": [
            {
                "approver": v.approver,
                "verdict": v.verdict,
                "channel": v.channel,
                "at": utc_iso(v.at),
                "note": v.note,
            }
            for v in request.votes
        ],
        "created_at": utc_iso(request.created_at),
        "expires_at": utc_iso(request.expires_at),
        "expires_in_seconds": max(0, int((request.expires_at - now).total_seconds())),
        "correlation_id": request.correlation_id,
        "closed_by": request.closed_by,
        "justification": request.justification,
    }


def grant_view(grant: Grant, now: datetime) -> dict[str, Any]:
    return {
        "id": grant.id,
        "name": f"{grant.server}{SEPARATOR}{grant.tool}",
        "server": grant.server,
        "tool": grant.tool,
        "requester": {"agent": grant.agent, "owner": grant.owner},
        "created_by": grant.created_by,
        "created_at": utc_iso(grant.created_at),
        "expires_at": utc_iso(grant.expires_at),
        "expires_in_seconds": max(0, int((grant.expires_at - now).total_seconds())),
        "live": grant.live(now),
        "request_id": grant.request_id,
        "note": grant.note,
        "revoked_at": None if grant.revoked_at is None else utc_iso(grant.revoked_at),
        "revoked_by": grant.revoked_by,
    }


def _call_view(record: Record, rules: RedactionRules) -> dict[str, Any]:
    body = record.body
    server, tool = body.get("server"), body.get("tool")
    return {
        "name": f"{server}{SEPARATOR}{tool}" if server else tool,
        "args": scrub(body.get("args"), rules),
        "ts": record.ts,
        "correlation_id": record.correlation_id,
    }


def _who(requester: dict[str, Any]) -> str:
    return f"{requester['agent']} for {requester['owner']}"


def summarize(outcome: dict[str, Any]) -> str:
    """One line saying what a decision did, for the person who made it."""
    if "grant" in outcome and "request" not in outcome:
        g = outcome["grant"]
        return f"revoked grant {g['id']}: {g['name']} by {_who(g['requester'])} needs approval again"
    r = outcome["request"]
    what = f"{r['name']} by {_who(r['requester'])}"
    match outcome["outcome"]:
        case "approved":
            line = f"approved {r['id']} ({r['approvals']} of {r['required']}): {what}"
        case "pending":
            missing = r["required"] - r["approvals"]
            line = f"recorded your approval of {r['id']}: {r['quorum']}; {what} waits for {missing} more"
        case "denied":
            vote = next((v for v in r["votes"] if v["verdict"] == "deny"), None)
            because = f": {vote['note']}" if vote and vote["note"] else ""
            line = f"denied {r['id']}: {what} will not run{because}"
        case "revoked":
            line = f"revoked {r['id']}: {what} will not run"
        case other:
            line = f"{other} {r['id']}: {what}"
    grant = outcome.get("grant")
    if grant is not None:
        line += (
            f"; grant {grant['id']} lets {grant['requester']['agent']} run {grant['name']} "
            f"without approval until {grant['expires_at']}"
        )
    return line


# -- the desk: what an approver can do, for the API and the CLI alike ------------------------------


@dataclass
class Desk:
    """An approver's operations over an ApprovalEngine, returning JSON-ready values (or a Refusal).

    The HTTP API serves it from the gate's own process; the CLI uses it over the shared SQLite
    file when it does not go through the API. `channel` is recorded with every decision."""

    engine: ApprovalEngine
    channel: str
    rules: RedactionRules = DEFAULT_RULES  # shown arguments are scrubbed once more with these
    # The configured approvers: who may decide each request, and which of them are away.
    approvers: Mapping[str, Approver] = field(default_factory=dict)
    links: ConsoleSettings | None = None  # with a public URL, each view names its console page

    def _view(self, request: ApprovalRequest, now: datetime) -> dict[str, Any]:
        view = request_view(request, now, self.rules)
        url = None if self.links is None else self.links.request_url(request.id)
        if url is not None:
            view["console_url"] = url
        return view

    def _now(self) -> datetime:
        return self.engine.clock.now()

    async def open_requests(self) -> list[dict[str, Any]]:
        now = self._now()
        requests = await self.engine.pending()
        present = await read_availability(self.engine.store, self.engine.key, now) if self.approvers else None
        views = []
        for r in requests:
            view = self._view(r, now)
            if present is not None:
                added = await self._escalated_to(r)
                view["availability"] = present.request_view(r, self.approvers.values(), added)
            views.append(view)
        return views

    async def _escalated_to(self, request: ApprovalRequest) -> tuple[str, ...]:
        bodies = await self.engine.store.read(lambda tx: tx.bodies_for(request.correlation_id, (ESCALATED,)))
        return escalated_groups(self.engine.key, request, bodies)

    async def show(self, request_id: str) -> dict[str, Any]:
        request = await self.engine.get(_normal(request_id))
        now = self._now()
        view = self._view(request, now)
        agent = request.binding.agent
        mine = await self.engine.store.read(lambda tx: tx.recent_calls(agent, RECENT_CALLS))
        view["recent_calls"] = [_call_view(r, self.rules) for r in mine]
        steps = await self.engine.store.read(lambda tx: tx.bodies_for(request.correlation_id, (ESCALATED,)))
        view["escalations"] = [
            {
                "step": b.get("step", 1),
                "after": b.get("after"),
                "to_groups": b.get("to_groups"),
                "at": b.get("ts"),
            }
            for b in steps
            if b.get("request_id") == request.id
        ]
        if self.approvers:
            present = await read_availability(self.engine.store, self.engine.key, now)
            added = escalated_groups(self.engine.key, request, steps)
            view["availability"] = present.request_view(request, self.approvers.values(), added)
        return view

    async def approvers_view(self) -> list[dict[str, Any]]:
        """Every configured approver, their groups, and whether they are away now."""
        present = await read_availability(self.engine.store, self.engine.key, self._now())
        return [
            {
                "name": a.name,
                "groups": sorted(a.groups),
                "away": present.away[a.name].view() if present.is_away(a.name) else None,
            }
            for a in sorted(self.approvers.values(), key=lambda a: a.name)
        ]

    async def away(self, approver: Approver, *, until: datetime | None, note: str | None) -> dict[str, Any]:
        """Mark `approver` away; ValueError when `until` is not in the future."""
        mark = await mark_away(self.engine, approver, until=until, note=note, channel=self.channel)
        return {"outcome": "away", "away": mark.view()}

    async def back(self, approver: Approver) -> dict[str, Any]:
        was_away = await mark_back(self.engine, approver, channel=self.channel)
        return {"outcome": "back" if was_away else "not away", "approver": approver.name}

    async def approve(
        self,
        request_id: str,
        approver: Approver,
        *,
        note: str | None = None,
        grant_for: timedelta | None = None,
    ) -> dict[str, Any] | Refusal:
        request_id = _normal(request_id)
        outcome = await self.engine.decide(
            request_id, approver, "approve", channel=self.channel, note=note, grant_for=grant_for
        )
        result = self._decided(outcome)
        if isinstance(result, Refusal) or grant_for is None:
            return result
        request = result["request"]
        grants = await self.engine.store.read(
            lambda tx: tx.grants_for(
                request["requester"]["agent"],
                request["requester"]["owner"],
                request["server"],
                request["tool"],
            )
        )
        made = [g for g in grants if g.request_id == request_id and g.created_by == approver.name]
        if made:
            result["grant"] = grant_view(max(made, key=lambda g: g.created_at), self._now())
        return result

    async def deny(self, request_id: str, approver: Approver, *, reason: str) -> dict[str, Any] | Refusal:
        outcome = await self.engine.decide(
            _normal(request_id), approver, "deny", channel=self.channel, note=reason
        )
        return self._decided(outcome)

    async def revoke(self, request_id: str, approver: Approver) -> dict[str, Any] | Refusal:
        outcome = await self.engine.revoke(_normal(request_id), approver)
        if isinstance(outcome, Refusal):
            return outcome
        return {"outcome": "revoked", "request": self._view(outcome.request, self._now())}

    async def grants(self, *, live_only: bool = True) -> list[dict[str, Any]]:
        now = self._now()
        return [grant_view(g, now) for g in await self.engine.grants(live_only=live_only)]

    async def revoke_grant(self, grant_id: str, approver: Approver) -> dict[str, Any] | Refusal:
        outcome = await self.engine.revoke_grant(_normal(grant_id), approver)
        if isinstance(outcome, Refusal):
            return outcome
        return {"outcome": "revoked", "grant": grant_view(outcome, self._now())}

    async def break_glass(
        self,
        request_id: str,
        operator: Approver,
        *,
        reason: str,
        settings: BreakGlassSettings,
        approvers: Mapping[str, Approver],
    ) -> dict[str, Any] | Refusal:
        outcome = await break_glass(
            self.engine,
            _normal(request_id),
            operator,
            reason,
            settings=settings,
            approvers=approvers,
            channel=self.channel,
        )
        if isinstance(outcome, Refusal):
            return outcome
        return {
            "outcome": "released by break-glass",
            "notified": list(outcome.notified),
            "request": self._view(outcome.request, self._now()),
        }

    def _decided(self, outcome: Pending | Approved | Denied | Refusal) -> dict[str, Any] | Refusal:
        now = self._now()
        match outcome:
            case Refusal():
                return outcome
            case Pending(request=request):
                return {"outcome": "pending", "request": self._view(request, now)}
            case Approved(request=request):
                return {"outcome": "approved", "request": self._view(request, now)}
            case Denied(request=request):
                return {"outcome": "denied", "request": self._view(request, now)}
            case _:
                assert_never(outcome)


def _normal(identifier: str) -> str:
    return identifier.strip().upper()


# -- request bodies ----------------------------------------------------------------------------


def _text(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _duration(value: str) -> str:
    parse_duration(value)
    return value


Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_text)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApproveBody(_Body):
    note: Text | None = None
    for_: Annotated[str, AfterValidator(_duration)] | None = Field(default=None, alias="for")


class DenyBody(_Body):
    reason: Text


class BreakGlassBody(_Body):
    reason: Text


class EmptyBody(_Body):
    pass


class AwayBody(_Body):
    until: datetime | None = None  # ISO 8601 with a zone; or
    for_: Annotated[str, AfterValidator(_duration)] | None = Field(default=None, alias="for")
    note: Text | None = None


class BadRequest(Exception):
    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


B = TypeVar("B", bound=_Body)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are distinct: with `"note"` twice, which one was meant is unclear."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key[:80]!r} appears twice")
        seen[key] = value
    return seen


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


async def _body(request: Request, model: type[B]) -> B:
    # serve_asgi's BodyLimit has already refused a body over [http] admin_max_body_bytes while
    # it was arriving; what is here is at most that.
    raw = await request.body()
    try:
        data = (
            json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
            if raw.strip()
            else {}
        )
    except RecursionError as exc:
        raise BadRequest("the body is nested too deeply") from exc
    except ValueError as exc:  # also UnicodeDecodeError, JSONDecodeError and a 5000-digit number
        raise BadRequest(f"the body is not JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise BadRequest(f"{where}: {message}" if where else message) from exc


# -- the app -----------------------------------------------------------------------------------


Handler = Callable[[Request, Approver], Awaitable[Any]]


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split()), **extra}, status_code=status)


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Translate a handler's results and errors into responses: never a 500 for bad input."""

    async def endpoint(request: Request) -> Response:
        approver: Approver = request.scope[APPROVER_SCOPE_KEY]
        try:
            result = await handler(request, approver)
        except BadRequest as exc:
            return _error(400, exc.message)
        except NoSuchRequest as exc:
            return _error(404, str(exc))
        except GateError as exc:  # the store is unavailable or busy: nothing was decided
            return _error(503, str(exc))
        if isinstance(result, Refusal):
            return _error(409, result.why, code=result.code)
        return JSONResponse(result)

    return endpoint


def build_api(gate: Gateway) -> ASGIApp:
    """The approvers' API over a running gate, under /v1, behind approver bearer tokens."""
    desk = Desk(
        gate.engine,
        channel="api",
        rules=gate.config.redaction,
        approvers=gate.config.approvers,
        links=gate.config.console,
    )

    async def list_requests(request: Request, approver: Approver) -> Any:
        return {"requests": await desk.open_requests()}

    async def show_request(request: Request, approver: Approver) -> Any:
        return await desk.show(request.path_params["request_id"])

    async def approve(request: Request, approver: Approver) -> Any:
        body = await _body(request, ApproveBody)
        grant_for = parse_duration(body.for_) if body.for_ is not None else None
        return await desk.approve(
            request.path_params["request_id"], approver, note=body.note, grant_for=grant_for
        )

    async def deny(request: Request, approver: Approver) -> Any:
        body = await _body(request, DenyBody)
        return await desk.deny(request.path_params["request_id"], approver, reason=body.reason)

    async def revoke(request: Request, approver: Approver) -> Any:
        await _body(request, EmptyBody)
        return await desk.revoke(request.path_params["request_id"], approver)

    async def breakglass(request: Request, approver: Approver) -> Any:
        body = await _body(request, BreakGlassBody)
        config = gate.config
        return await desk.break_glass(
            request.path_params["request_id"],
            approver,
            reason=body.reason,
            settings=config.breakglass,
            approvers=config.approvers,
        )

    async def list_grants(request: Request, approver: Approver) -> Any:
        everything = request.query_params.get("all", "false").lower()
        if everything not in ("true", "1", "false", "0", ""):
            raise BadRequest(f"all: expected true or false, got {everything!r}")
        return {"grants": await desk.grants(live_only=everything in ("false", "0", ""))}

    async def revoke_grant(request: Request, approver: Approver) -> Any:
        await _body(request, EmptyBody)
        return await desk.revoke_grant(request.path_params["grant_id"], approver)

    async def list_approvers(request: Request, approver: Approver) -> Any:
        return {"approvers": await desk.approvers_view()}

    async def away(request: Request, approver: Approver) -> Any:
        body = await _body(request, AwayBody)
        if body.until is not None and body.for_ is not None:
            raise BadRequest("give until or for, not both")
        until = body.until
        if until is not None and until.tzinfo is None:
            raise BadRequest("until: give a time zone (2026-12-08T09:00:00Z)")
        if body.for_ is not None:
            until = gate.clock.now() + parse_duration(body.for_)
        try:
            return await desk.away(approver, until=until, note=body.note)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc

    async def back(request: Request, approver: Approver) -> Any:
        await _body(request, EmptyBody)
        return await desk.back(approver)

    routes = [
        Route("/v1/approvers", _endpoint(list_approvers), methods=["GET"]),
        Route("/v1/approvers/me/away", _endpoint(away), methods=["POST"]),
        Route("/v1/approvers/me/back", _endpoint(back), methods=["POST"]),
        Route("/v1/requests", _endpoint(list_requests), methods=["GET"]),
        Route("/v1/requests/{request_id}", _endpoint(show_request), methods=["GET"]),
        Route("/v1/requests/{request_id}/approve", _endpoint(approve), methods=["POST"]),
        Route("/v1/requests/{request_id}/deny", _endpoint(deny), methods=["POST"]),
        Route("/v1/requests/{request_id}/revoke", _endpoint(revoke), methods=["POST"]),
        Route("/v1/requests/{request_id}/breakglass", _endpoint(breakglass), methods=["POST"]),
        Route("/v1/grants", _endpoint(list_grants), methods=["GET"]),
        Route("/v1/grants/{grant_id}/revoke", _endpoint(revoke_grant), methods=["POST"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = _error(exc.status_code, exc.detail)
        response.headers.update(exc.headers or {})
        return response

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return ApproverAuth(app, gate.config, gate.metrics)


class ApproverAuth:
    """ASGI guard: every request must carry `Authorization: Bearer <token>` of a configured approver,
    or with [identity] an access token of the identity provider (the approver is then the token's
    subject, in the groups its claims map to now). A gate-issued token is compared by SHA-256 in
    constant time; no token is ever logged or stored, only the reason one was refused."""

    def __init__(self, app: ASGIApp, config: GateConfig, metrics: GateMetrics | None = None) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics
        identity = config.identity
        self.verifier = None if identity is None else TokenVerifier(identity, config_file=str(config.path))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        approver, reason = await self._authenticate(scope)
        if approver is None:
            if self.metrics is not None:
                self.metrics.refused_tokens.labels("approver", reason).inc()
            response = _error(401, "a valid approver token is required: Authorization: Bearer <token>")
            response.headers["www-authenticate"] = 'Bearer realm="mcp-gate approvers"'
            await response(scope, receive, send)
            return
        scope[APPROVER_SCOPE_KEY] = approver
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> tuple[Approver | None, str]:
        token = bearer_token(scope)
        if token is None:
            return None, "missing"
        found = self.config.approver_by_token(token)
        if found is not None or self.verifier is None or self.config.identity is None:
            return found, "unknown"
        try:
            verified = await self.verifier.check(token)
            return approver_from(verified, self.config.identity, self.config.approvers), "ok"
        except TokenRefused as refused:
            log.warning("refused an approver's access token (%s): %s", refused.code, refused.why)
            return None, refused.code
        except Refused as refused:
            log.warning("refused an approver's access token: %s", refused.description)
            return None, "no_subject"


async def serve_api(
    gate: Gateway, host: str, port: int, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve the approvers' API on host:port (port 0 picks a free one; the bound port is reported)."""
    limits = gate.config.http
    await serve_asgi(
        build_api(gate),
        host,
        port,
        what="approver API",
        limits=limits,
        max_body_bytes=limits.admin_max_body_bytes,
        task_status=task_status,
    )
