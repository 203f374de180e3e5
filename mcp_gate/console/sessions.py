"""The console's sessions: signed cookies, CSRF tokens, the login methods and their rate limit.

A session is a signed cookie (HMAC-SHA256 under the console key) naming a random session id, the
approver and when it ends; nothing in it is secret, and nothing unsigned is believed. Every
state-changing request carries a CSRF token derived from the session id, so a page of another site
cannot post for the viewer. Logging in rotates the session id; logging out forgets it.

People log in by a `LoginMethod`. The one built in is the approver's token from gate.toml
(`TokenLogin`); a method that signs people in elsewhere (an identity provider) adds its own routes
and hands the approver it established to `SessionManager.establish`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from mcp_gate.approvals import Approver

__all__ = [
    "COOKIE",
    "LoginLimiter",
    "LoginMethod",
    "Session",
    "SessionManager",
    "TokenLogin",
]

COOKIE = "mcp_gate_console"
MAX_COOKIE = 4096
FORGOTTEN_LIMIT = 10_000  # logged-out session ids remembered until they would have ended


@dataclass(frozen=True)
class Session:
    """Who is looking (None before login), the id CSRF tokens derive from, and when it ends."""

    sid: str
    approver: str | None
    expires_at: float
    login: str | None = None  # the login method that established it ("token", ...)


class SessionManager:
    """Makes, signs and reads session cookies; derives and checks CSRF tokens."""

    def __init__(
        self,
        key: bytes,
        lifetime: float,
        approvers: Mapping[str, Approver],
        *,
        path: str = "/console",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = hashlib.sha256(b"mcp-gate console session\0" + key).digest()
        self.lifetime = lifetime
        self.approvers = approvers
        self.path = path
        self.clock = clock
        self._forgotten: dict[str, float] = {}

    # -- cookies ---------------------------------------------------------------------------------

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def encode(self, session: Session) -> str:
        payload = json.dumps(
            {"sid": session.sid, "who": session.approver, "exp": session.expires_at, "via": session.login},
            separators=(",", ":"),
        ).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._sign(payload)}"

    def decode(self, value: str | None) -> Session | None:
        """The session a cookie names, if its signature holds, it has not ended, nor been logged out."""
        if not value or len(value) > MAX_COOKIE or "." not in value:
            return None
        body, _, signature = value.rpartition(".")
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError:
            return None
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            data = json.loads(payload)
            session = Session(str(data["sid"]), data["who"], float(data["exp"]), data.get("via"))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires_at <= self.clock() or session.sid in self._forgotten:
            return None
        if session.approver is not None and session.approver not in self.approvers:
            return None  # removed from gate.toml since: no longer an approver
        return session

    def read(self, request: Request) -> Session | None:
        return self.decode(request.cookies.get(COOKIE))

    def fresh(self) -> Session:
        """A session for a visitor who has not logged in: it carries the login form's CSRF token."""
        return Session(secrets.token_urlsafe(18), None, self.clock() + min(self.lifetime, 3600.0))

    def establish(self, approver: Approver, login: str) -> Session:
        """A new session (a new id: a session id seen before login never becomes a logged-in one)."""
        return Session(secrets.token_urlsafe(18), approver.name, self.clock() + self.lifetime, login)

    def forget(self, session: Session) -> None:
        now = self.clock()
        self._forgotten = {sid: end for sid, end in self._forgotten.items() if end > now}
        if len(self._forgotten) < FORGOTTEN_LIMIT:
            self._forgotten[session.sid] = session.expires_at

    def set_cookie(self, response: Response, session: Session, *, secure: bool) -> None:
        response.set_cookie(
            COOKIE,
            self.encode(session),
            max_age=max(1, int(session.expires_at - self.clock())),
            path=self.path,
            secure=secure,
            httponly=True,
            samesite="lax",
        )

    def clear_cookie(self, response: Response, *, secure: bool) -> None:
        response.delete_cookie(COOKIE, path=self.path, secure=secure, httponly=True, samesite="lax")

    # -- CSRF ------------------------------------------------------------------------------------

    def csrf(self, session: Session) -> str:
        return hmac.new(self._key, b"csrf\0" + session.sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf(session), token)


class LoginLimiter:
    """At most `attempts` failed logins per client address in any minute."""

    def __init__(self, attempts: int, *, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.attempts = attempts
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        now = self.clock()
        failures = self._failures.setdefault(client, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def blocked(self, client: str) -> bool:
        return len(self._recent(client)) >= self.attempts

    def failed(self, client: str) -> None:
        if len(self._failures) > 10_000:  # a flood of addresses: forget the quiet ones
            self._failures = {
                c: f for c, f in self._failures.items() if f and f[-1] > self.clock() - self.window
            }
        self._recent(client).append(self.clock())


# Called by a login method once it knows who logged in: sets the session and redirects onwards.
Establish = Callable[[Request, Approver, str], Awaitable[Response]]


class LoginMethod(Protocol):
    """One way to log in to the console, listed on its login page."""

    @property
    def key(self) -> str:
        """Names the method in sessions and evidence ("token", "oidc")."""
        ...

    @property
    def label(self) -> str:
        """What the login page calls it."""
        ...

    def routes(self, establish: Establish) -> list[BaseRoute]:
        """The method's own routes under /console/login/<key> (a form post, a redirect and its callback)."""
        ...

    def form(self) -> Mapping[str, Any]:
        """What the login page shows for it: {"kind": "token"} renders the token form,
        {"kind": "link", "href": ...} a button that starts the method's flow."""
        ...


@dataclass(frozen=True)
class TokenLogin:
    """Log in with an approver's token from gate.toml (`mcp-gate approvers token NAME` makes one).
    The form post is handled by the console itself (CSRF, rate limit, evidence), so no routes."""

    approvers: Mapping[str, Approver]
    key: str = "token"
    label: str = "Approver token"

    def routes(self, establish: Establish) -> list[BaseRoute]:
        return []

    def form(self) -> Mapping[str, Any]:
        return {"kind": "token"}

    def authenticate(self, token: str) -> Approver | None:
        """The approver whose token this is, compared by SHA-256 in constant time."""
        presented = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for approver in self.approvers.values():
            if approver.token_sha256 is not None and hmac.compare_digest(approver.token_sha256, presented):
                found = approver
        return found
