"""The approvers' HTTP API over the `Desk`: list, show, approve, deny, revoke and grant, by approver token."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import anyio
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_gate.approvals import Approver, Refusal, parse_duration
from mcp_gate.config import GateConfig
from mcp_gate.desk import Desk
from mcp_gate.errors import GateError, NoSuchRequest
from mcp_gate.gateway import Gateway
from mcp_gate.http import bearer_token, serve_asgi
from mcp_gate.idp import TokenRefused, TokenVerifier
from mcp_gate.metrics import GateMetrics
from mcp_gate.oauth import Refused, approver_from

__all__ = ["APPROVER_SCOPE_KEY", "build_api", "serve_api"]

log = logging.getLogger("mcp_gate.api")

APPROVER_SCOPE_KEY = "mcp_gate.approver"
MAX_TEXT = 2000


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
