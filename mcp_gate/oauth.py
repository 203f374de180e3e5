"""The agent front as an OAuth 2.1 resource server: RFC 9728 metadata, bearer challenges, the
required scope and the scope of each tier, agents and the people they act for from access tokens.

The MCP SDK gives the metadata document and its path-inserted URL (`mcp.server.auth.routes`) and
the authenticated user its session manager binds a session to (`AuthenticatedUser`); this module
adds what it lacks: the reason a token was refused (logged and recorded, never the token), the
`scope` a 401 or 403 names, a scope per tier, and the static agent tokens gate.toml still lists."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from mcp.server.auth.handlers.metadata import ProtectedResourceMetadataHandler
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import AnyHttpUrl
from starlette.authentication import AuthCredentials
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_gate.approvals import Approver, principal
from mcp_gate.config import Agent, IdentitySettings, Requester
from mcp_gate.http import bearer_token
from mcp_gate.idp import TokenRefused, TokenVerifier, VerifiedToken
from mcp_gate.metrics import GateMetrics

__all__ = [
    "METADATA_PATH",
    "REQUESTER_SCOPE_KEY",
    "Refused",
    "ResourceServer",
    "approver_from",
    "requester_from",
]

log = logging.getLogger("mcp_gate.oauth")

REQUESTER_SCOPE_KEY = "mcp_gate.requester"
METADATA_PATH = "/.well-known/oauth-protected-resource"
RECORDS_PER_MINUTE = 60  # refused tokens recorded as evidence; past this only logged and counted

Record = Callable[[dict[str, Any]], Awaitable[None]]  # writes one token.refused record
TierOf = Callable[[str, Any], str | None]


class Refused(Exception):
    """A request the front answers itself: a 401 or 403 with its challenge."""

    def __init__(self, status: int, error: str, description: str, scopes: tuple[str, ...] = ()) -> None:
        self.status = status
        self.error = error
        self.description = description
        self.scopes = scopes
        super().__init__(description)


def requester_from(verified: VerifiedToken, settings: IdentitySettings) -> Requester:
    """The agent (`azp`/`client_id`) and the person it acts for (the subject). A client acting as
    itself (client credentials: no subject, or the client's own id as subject) gets its owner from
    [identity.agents.CLIENT] or from `owner_claim`; with neither it is refused."""
    claims = verified.claims
    email = claims.get(settings.email_claim)
    name = claims.get(settings.name_claim)
    acting_as_itself = verified.subject is None or verified.subject == verified.client_id
    if acting_as_itself:
        owner = settings.agent_owners.get(verified.client_id)
        if owner is None and settings.owner_claim is not None:
            claimed = claims.get(settings.owner_claim)
            owner = claimed if isinstance(claimed, str) and claimed.strip() else None
        if owner is None:
            raise Refused(
                403,
                "access_denied",
                f"client {verified.client_id!r} acts for nobody: set [identity.agents.{verified.client_id}] "
                "owner in gate.toml, or identity.owner_claim",
            )
    else:
        assert verified.subject is not None
        owner = principal(verified.issuer, verified.subject)
    return Requester(
        agent=verified.client_id,
        owner=owner,
        issuer=verified.issuer,
        subject=None if acting_as_itself else verified.subject,
        email=email if isinstance(email, str) and not acting_as_itself else None,
        name=name if isinstance(name, str) and not acting_as_itself else None,
        jti_sha256=verified.jti_sha256,
        scopes=verified.scopes,
    )


def approver_from(
    verified: VerifiedToken, settings: IdentitySettings, configured: Mapping[str, Approver]
) -> Approver:
    """The person a token names, as an approver at the moment of a decision: their groups are the
    approver groups `[identity.groups]` maps the token's own group claims to (a group the provider
    no longer gives them is gone at once); `granted_by` names the claims that made them members.
    A configured approver with the same subject lends their name and every identity of theirs
    (aliases, chat users), so separation of duties sees one person however they sign in."""
    if verified.subject is None:
        raise Refused(403, "access_denied", "a token that names no person (no sub) cannot decide")
    claims = verified.claims
    raw = claims.get(settings.groups_claim)
    held = (
        {raw}
        if isinstance(raw, str)
        else {g for g in raw if isinstance(g, str)}
        if isinstance(raw, list)
        else set()
    )
    groups: set[str] = set()
    granted: list[str] = []
    for group, members in sorted(settings.groups.items()):
        matched = sorted(held.intersection(members))
        if matched:
            groups.add(group)
            granted += [
                f"{settings.groups_claim}={m}"
                for m in matched
                if f"{settings.groups_claim}={m}" not in granted
            ]
    email = claims.get(settings.email_claim)
    name = claims.get(settings.name_claim)
    me = principal(verified.issuer, verified.subject)
    known = next(
        (a for a in configured.values() if a.subject is not None and a.issuer is not None
         and principal(a.issuer, a.subject) == me),
        None,
    )  # fmt: skip
    return Approver(
        name=known.name if known is not None else me,
        email=email if isinstance(email, str) else (known.email if known is not None else ""),
        groups=frozenset(groups),
        aliases=known.identities() if known is not None else frozenset(),
        issuer=verified.issuer,
        subject=verified.subject,
        jti_sha256=verified.jti_sha256,
        granted_by=tuple(granted),
        display_name=name if isinstance(name, str) else None,
    )


class _RecordLimit:
    """At most `per_minute` refusals recorded as evidence in any minute (a flood of bad tokens
    must not fill the log); the ones past it are counted in the next record that is written."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.times: deque[float] = deque()
        self.skipped = 0

    def admit(self) -> int | None:
        now = self.clock()
        while self.times and now - self.times[0] > 60:
            self.times.popleft()
        if len(self.times) >= self.per_minute:
            self.skipped += 1
            return None
        self.times.append(now)
        skipped, self.skipped = self.skipped, 0
        return skipped


class ResourceServer:
    """ASGI guard of the agent front with [identity]: serves the protected resource metadata
    (at the root and in the path form for the MCP endpoint), and admits a request only with a
    static agent token from gate.toml or a valid access token with the required scope and, for a
    tools/call, the scope of the call's tier. Each refusal is a 401 or 403 whose
    `WWW-Authenticate: Bearer` names the metadata URL (and the scopes, for a step-up)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: IdentitySettings,
        verifier: TokenVerifier,
        *,
        agents: Mapping[str, Agent],
        tier_of: TierOf,
        record: Record,
        metrics: GateMetrics | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.verifier = verifier
        self.by_digest = {agent.token_sha256: agent for agent in agents.values()}
        self.tier_of = tier_of
        self.record = record
        self.metrics = metrics
        self.metadata_url = str(build_resource_metadata_url(AnyHttpUrl(settings.audience)))
        self.metadata_paths = {METADATA_PATH, _path_of(self.metadata_url)}
        metadata = ProtectedResourceMetadata(
            resource=AnyHttpUrl(settings.audience),
            authorization_servers=[AnyHttpUrl(settings.issuer)],
            scopes_supported=settings.scopes_supported() or None,
            resource_name="mcp-gate",
        )
        self.metadata = ProtectedResourceMetadataHandler(metadata)
        self.limit = _RecordLimit(RECORDS_PER_MINUTE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path", "") in self.metadata_paths and scope.get("method") in ("GET", "HEAD"):
            response = await self.metadata.handle(Request(scope, receive))
            await response(scope, receive, send)
            return
        try:
            requester, access = await self._authenticate(scope)
            if requester.scopes is not None and self.settings.tier_scopes:
                receive = await self._check_tier_scopes(scope, receive, requester.scopes)
        except Refused as refused:
            await self._challenge(send, refused)
            return
        scope[REQUESTER_SCOPE_KEY] = requester
        if access is not None:
            # The SDK binds each session to the (client, issuer, subject) that created it.
            scope["user"] = AuthenticatedUser(access)
            scope["auth"] = AuthCredentials(access.scopes)
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> tuple[Requester, Any]:
        token = bearer_token(scope)
        if token is None:
            self._count("missing")
            raise Refused(401, "invalid_request", "an access token is required", self._base_scopes())
        static = self._static_agent(token)
        if static is not None:
            return static.requester(), None
        try:
            verified = await self.verifier.check(token)
        except TokenRefused as refused:
            await self._refused(refused.code, refused.why)
            raise Refused(401, "invalid_token", refused.why, self._base_scopes()) from refused
        required = self.settings.required_scope
        if required is not None and required not in verified.scopes:
            await self._refused("insufficient_scope", f"the token lacks scope {required}", verified)
            raise Refused(403, "insufficient_scope", f"scope {required} is required", (required,))
        try:
            requester = requester_from(verified, self.settings)
        except Refused as refused:
            await self._refused("no_owner", refused.description, verified)
            raise
        return requester, verified.access_token(token, self.settings.audience)

    def _static_agent(self, token: str) -> Agent | None:
        presented = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for known, agent in self.by_digest.items():
            if hmac.compare_digest(known, presented):
                found = agent
        return found

    def _base_scopes(self) -> tuple[str, ...]:
        return () if self.settings.required_scope is None else (self.settings.required_scope,)

    async def _check_tier_scopes(self, scope: Scope, receive: Receive, held: frozenset[str]) -> Receive:
        """Read the (already size-limited) body; a tools/call whose tier needs a scope the token
        lacks is answered 403 insufficient_scope naming every scope needed, so the client can step
        up. Where the tier cannot be known here (an unknown tool, bad arguments), the call goes on
        and the gate's own pipeline refuses or checks it again."""
        if scope.get("method") != "POST":
            return receive
        messages: list[Message] = []
        body = bytearray()
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        for item in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(item, dict) or item.get("method") != "tools/call":
                continue
            params = item.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            if not isinstance(name, str):
                continue
            tier = self.tier_of(name, params.get("arguments") if isinstance(params, dict) else None)
            needed = self.settings.tier_scopes.get(tier) if tier is not None else None
            if needed is not None and needed not in held:
                self._count("insufficient_scope")
                await self._record("insufficient_scope", f"{name} is {tier}, which needs scope {needed}")
                raise Refused(
                    403,
                    "insufficient_scope",
                    f"{name} is a {tier} tool; its calls need scope {needed}",
                    (*self._base_scopes(), needed),
                )
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        return replayed

    async def _refused(self, code: str, why: str, verified: VerifiedToken | None = None) -> None:
        self._count(code)
        log.warning("refused an agent's access token (%s): %s", code, why)
        fields: dict[str, Any] = {}
        if verified is not None:
            fields = {
                "client_id": verified.client_id,
                "sub": verified.subject,
                "jti_sha256": verified.jti_sha256,
            }
        await self._record(code, why, **fields)

    async def _record(self, code: str, why: str, **fields: Any) -> None:
        skipped = self.limit.admit()
        if skipped is None:
            return
        body = {"listener": "agent", "code": code, "why": why, **fields}
        if skipped:
            body["unrecorded_before"] = skipped
        try:
            await self.record(body)
        except Exception as exc:  # the refusal stands whether or not its record could be written
            log.error("could not record a refused token: %s", exc)

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.refused_tokens.labels("agent", reason).inc()

    async def _challenge(self, send: Send, refused: Refused) -> None:
        parts = [f'error="{refused.error}"', f'error_description="{_quoted(refused.description)}"']
        if refused.scopes:
            parts.append(f'scope="{" ".join(refused.scopes)}"')
        parts.append(f'resource_metadata="{self.metadata_url}"')
        if refused.error == "invalid_request":  # RFC 6750 §3.1: no error code without a token
            parts = parts[2:]
        body = json.dumps(
            {
                "error": refused.error,
                "error_description": refused.description,
                "resource_metadata": self.metadata_url,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": refused.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", f"Bearer {', '.join(parts)}".encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _quoted(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in '"\\')[:300]


def _path_of(url: str) -> str:
    return urlsplit(url).path
