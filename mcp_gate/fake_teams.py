"""A local fake of the Bot Framework for tests: OpenID metadata and keys, a token service, the Connector.

It speaks the wire format Teams does: the Bot Connector's RS256 JWTs (issuer
https://api.botframework.com, audience the bot's app id, a `serviceurl` claim), `invoke` activities
named `adaptiveCard/action` for Action.Execute clicks, OAuth client-credentials tokens, and
`POST/PUT {serviceUrl}/v3/conversations/{id}/activities[/{activityId}]` for cards."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["ConnectorCall", "FakeTeams"]

ISSUER = "https://api.botframework.com"
SCOPE = "https://api.botframework.com/.default"


@dataclass(frozen=True)
class ConnectorCall:
    """One request to the fake's Connector: POST (a new activity) or PUT (an update)."""

    method: str
    conversation: str
    activity_id: str | None
    body: Mapping[str, Any]
    token: str | None
    status: int


@dataclass
class _Failure:
    status: int
    times: int | None  # None: until restored
    method: str | None  # None: POST and PUT alike
    retry_after: int | None = None


@dataclass
class FakeTeams:
    """The Bot Framework on 127.0.0.1: `url` serves the metadata, keys, tokens and the Connector
    (`service_url`); `invoke` and `token` make what Teams sends to a bot's messaging endpoint."""

    app_id: str = "0b7c5e3e-6d2a-4c51-9d1e-2f3a4b5c6d7e"
    app_password: str = "fake-teams-bot-password"
    tenant_id: str = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    conversations: set[str] = field(default_factory=lambda: {"19:approvals@thread.tacv2"})
    kid: str = "fake-kid-1"
    endorsements: list[str] | None = field(default_factory=lambda: ["msteams"])
    calls: list[ConnectorCall] = field(default_factory=list)
    activities: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tokens_issued: int = 0
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # Teams user id (29:...) -> member

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._ids = itertools.count(1)
        self._access_tokens: set[str] = set()
        self._server: ThreadingHTTPServer | None = None

    # -- running ------------------------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[FakeTeams]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's spelling)
                fake._serve(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake._serve(self, "POST")

            def do_PUT(self) -> None:  # noqa: N802
                fake._serve(self, "PUT")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def service_url(self) -> str:
        return self.url + "/teams/"

    @property
    def metadata_url(self) -> str:
        return self.url + "/v1/.well-known/openidconfiguration"

    @property
    def token_url(self) -> str:
        return self.url + "/{tenant}/oauth2/v2.0/token"

    def add_member(
        self, aad_object_id: str, email: str, *, tenant_id: str | None = None, role: str = "user"
    ) -> None:
        """A member of every conversation, as GET .../members/{userId} shows them."""
        user_id = f"29:{aad_object_id[:8]}"
        self.members[user_id] = {
            "id": user_id,
            "name": email.split("@")[0],
            "aadObjectId": aad_object_id,
            "email": email,
            "userPrincipalName": email,
            "tenantId": tenant_id or self.tenant_id,
            "userRole": role,
        }

    # -- faults -------------------------------------------------------------------------------

    def fail(
        self,
        status: int = 503,
        *,
        times: int | None = None,
        method: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The Connector answers `status` (to `method`, or to both) `times` times, or until restore()."""
        with self._lock:
            self._failures.append(_Failure(status, times, method, retry_after))

    def restore(self) -> None:
        with self._lock:
            self._failures.clear()

    # -- what the gate sent -------------------------------------------------------------------

    def calls_to(self, method: str, *, ok_only: bool = True) -> list[ConnectorCall]:
        with self._lock:
            return [c for c in self.calls if c.method == method and (c.status < 300 or not ok_only)]

    def card_for(self, request_id: str) -> tuple[str, str, dict[str, Any]] | None:
        """(conversation, activity id, Adaptive Card) of the activity about a request, as it stands."""
        with self._lock:
            for (conversation, activity_id), activity in self.activities.items():
                for attachment in activity.get("attachments") or []:
                    content = attachment.get("content") or {}
                    if request_id in json.dumps(content):
                        return conversation, activity_id, content
        return None

    async def wait_for(self, predicate: Callable[[], Any], *, timeout: float = 10.0) -> Any:
        with anyio.fail_after(timeout):
            while True:
                found = predicate()
                if found:
                    return found
                await anyio.sleep(0.01)

    # -- what Teams sends a bot ---------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        key = {**public, "kid": self.kid, "use": "sig"}
        if self.endorsements is not None:
            key["endorsements"] = list(self.endorsements)
        return {"keys": [key]}

    def token(
        self,
        *,
        audience: str | None = None,
        issuer: str = ISSUER,
        service_url: str | None = None,
        expires_in: int = 3600,
        issued_ago: int = 0,
        kid: str | None = None,
        key: Any = None,
        algorithm: str = "RS256",
        drop: tuple[str, ...] = (),
    ) -> str:
        """A Bot Connector JWT as Teams sends it; each argument can make it wrong in one way."""
        now = int(time.time()) - issued_ago
        claims: dict[str, Any] = {
            "serviceurl": service_url if service_url is not None else self.service_url,
            "nbf": now - 5,
            "exp": now + expires_in,
            "iss": issuer,
            "aud": audience if audience is not None else self.app_id,
        }
        for name in drop:
            claims.pop(name, None)
        headers = {"kid": kid if kid is not None else self.kid}
        if algorithm == "none":
            return jwt.encode(claims, "", algorithm="none", headers=headers)
        return jwt.encode(claims, key if key is not None else self.key, algorithm=algorithm, headers=headers)

    def invoke(
        self,
        aad_object_id: str,
        verb: str,
        data: Mapping[str, Any],
        *,
        tenant_id: str | None = None,
        activity_id: str | None = None,
        reply_to: str | None = None,
        conversation: str | None = None,
        name: str = "adaptiveCard/action",
    ) -> dict[str, Any]:
        """The invoke activity of an Action.Execute click on a card, exactly as Teams shapes it."""
        tenant = tenant_id or self.tenant_id
        return {
            "type": "invoke",
            "name": name,
            "id": activity_id or f"f:{uuid.uuid4()}",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "localTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime()),
            "channelId": "msteams",
            "serviceUrl": self.service_url,
            "from": {"id": f"29:{aad_object_id[:8]}", "name": "A Person", "aadObjectId": aad_object_id},
            "conversation": {
                "id": conversation or next(iter(sorted(self.conversations))),
                "conversationType": "channel",
                "tenantId": tenant,
                "isGroup": True,
            },
            "recipient": {"id": f"28:{self.app_id}", "name": "mcp-gate"},
            "entities": [{"type": "clientInfo", "locale": "en-US", "country": "US", "platform": "Web"}],
            "channelData": {"tenant": {"id": tenant}, "source": {"name": "message"}},
            "replyToId": reply_to or "1700000000000",
            "value": {
                "action": {"type": "Action.Execute", "id": f"act-{verb}", "verb": verb, "data": dict(data)},
                "trigger": "manual",
            },
            "locale": "en-US",
        }

    # -- the HTTP side ------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(handler.path).path
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        status, headers, body = self._route(method, path, raw, handler.headers.get("authorization"))
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json; charset=utf-8")
        handler.send_header("content-length", str(len(data)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _route(
        self, method: str, path: str, raw: bytes, authorization: str | None
    ) -> tuple[int, dict[str, str], Any]:
        if method == "GET" and path == "/v1/.well-known/openidconfiguration":
            return (
                200,
                {},
                {
                    "issuer": ISSUER,
                    "authorization_endpoint": "https://invalid.botframework.com",
                    "jwks_uri": self.url + "/v1/.well-known/keys",
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                },
            )
        if method == "GET" and path == "/v1/.well-known/keys":
            return 200, {}, self.jwks()
        if method == "POST" and path.endswith("/oauth2/v2.0/token"):
            return self._token(path, raw)
        parts = [unquote(p) for p in path.split("/")]
        # /teams/v3/conversations/{id}/activities[/{activityId}]
        if len(parts) >= 6 and parts[1:4] == ["teams", "v3", "conversations"] and parts[5] == "activities":
            conversation = parts[4]
            activity_id = parts[6] if len(parts) > 6 else None
            return self._connector(method, conversation, activity_id, raw, authorization)
        # /teams/v3/conversations/{id}/members/{userId}
        if (
            method == "GET"
            and len(parts) == 7
            and parts[1:4] == ["teams", "v3", "conversations"]
            and parts[5] == "members"
        ):
            return self._member(parts[4], parts[6], authorization)
        return 404, {}, {"error": {"code": "NotFound", "message": "no such route"}}

    def _token(self, path: str, raw: bytes) -> tuple[int, dict[str, str], Any]:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        tenant = path.split("/")[1]
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != self.app_id
            or form.get("client_secret") != self.app_password
            or form.get("scope") != SCOPE
            or tenant not in (self.tenant_id, "botframework.com")
        ):
            return 401, {}, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client."}
        access = f"fake-access-{uuid.uuid4().hex}"
        with self._lock:
            self._access_tokens.add(access)
            self.tokens_issued += 1
        return (
            200,
            {},
            {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": access},
        )

    def _member(
        self, conversation: str, user_id: str, authorization: str | None
    ) -> tuple[int, dict[str, str], Any]:
        token = authorization[7:] if authorization and authorization.startswith("Bearer ") else None
        with self._lock:
            if token not in self._access_tokens:
                return 401, {}, {"message": "Authorization has been denied for this request."}
            if conversation not in self.conversations:
                return (
                    404,
                    {},
                    {"error": {"code": "ConversationNotFound", "message": "Conversation not found."}},
                )
            member = self.members.get(user_id)
        if member is None:
            return 404, {}, {"error": {"code": "MemberNotFound", "message": "The member was not found."}}
        return 200, {}, dict(member)

    def _connector(
        self, method: str, conversation: str, activity_id: str | None, raw: bytes, authorization: str | None
    ) -> tuple[int, dict[str, str], Any]:
        token = authorization[7:] if authorization and authorization.startswith("Bearer ") else None
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        with self._lock:

            def record(status: int) -> None:
                self.calls.append(ConnectorCall(method, conversation, activity_id, body, token, status))

            for failure in self._failures:
                if failure.method in (None, method) and failure.times != 0:
                    if failure.times is not None:
                        failure.times -= 1
                    record(failure.status)
                    headers = (
                        {"retry-after": str(failure.retry_after)} if failure.retry_after is not None else {}
                    )
                    return failure.status, headers, {"error": {"code": "ServiceError", "message": "failed"}}
            if token not in self._access_tokens:
                record(401)
                return 401, {}, {"message": "Authorization has been denied for this request."}
            if conversation not in self.conversations:
                record(404)
                return (
                    404,
                    {},
                    {"error": {"code": "ConversationNotFound", "message": "Conversation not found."}},
                )
            if method == "POST" and activity_id is None:
                new_id = f"17000000{next(self._ids):05d}"
                self.activities[(conversation, new_id)] = body
                record(201)
                return 201, {}, {"id": new_id}
            if method == "PUT" and activity_id is not None:
                if (conversation, activity_id) not in self.activities:
                    record(404)
                    return 404, {}, {"error": {"code": "ActivityNotFound", "message": "Activity not found."}}
                self.activities[(conversation, activity_id)] = body
                record(200)
                return 200, {}, {"id": activity_id}
            record(405)
            return 405, {}, {"error": {"code": "BadArgument", "message": "unsupported"}}
