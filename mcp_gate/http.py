"""HTTP plumbing shared by the agent front and the approvers' API: bearer tokens, limits, Host
checks and serving on a socket."""

from __future__ import annotations

import json
import logging
import socket
from collections import deque
from typing import Any, Literal

import anyio
import anyio.abc
import h11
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from mcp_gate.config import HttpSettings
from mcp_gate.errors import GateError

__all__ = ["BodyLimit", "HostGuard", "bearer_token", "json_error", "serve_asgi"]

log = logging.getLogger("mcp_gate.http")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None for anything else."""
    for key, value in scope.get("headers", []):
        if key.lower() != b"authorization":
            continue
        header: str = value.decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()
    return None


async def json_error(send: Send, status: int, fields: dict[str, str]) -> None:
    """Answer with a small JSON body and close the connection."""
    body = json.dumps(fields).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def _host_name(authority: str) -> str:
    """`example.com:8765` -> `example.com`; `[::1]:8765` -> `[::1]`."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[: authority.find("]") + 1] if "]" in authority else authority
    return authority.rpartition(":")[0] if ":" in authority else authority


class HostGuard:
    """ASGI guard against DNS rebinding: the Host header must name this machine's loopback or one
    of the configured allowed hosts, and an Origin header, when sent, must be http(s) on one of
    those. Runs before authentication, so a rebinding page learns nothing."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        allowed = {h.strip().lower() for h in (*LOOPBACK_HOSTS, *allowed_hosts)}
        # A configured entry may carry a port ("gate.example.com:8765") or not (any port).
        self.names = {h for h in allowed if _host_name(h) == h}
        self.authorities = allowed - self.names

    def _allowed(self, authority: str) -> bool:
        authority = authority.strip().lower()
        return authority in self.authorities or _host_name(authority) in self.names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        if host is None or not self._allowed(host):
            why = f"Host {host!r} is not served here; add it to [http] allowed_hosts in gate.toml"
            await json_error(send, 421, {"error": why, "code": "misdirected_request"})
            return
        origin = _header(scope, b"origin")
        if origin is not None:
            scheme, sep, rest = origin.partition("://")
            if not sep or scheme.lower() not in ("http", "https") or not self._allowed(rest.split("/")[0]):
                why = f"Origin {origin!r} is not allowed; add its host to [http] allowed_hosts in gate.toml"
                await json_error(send, 403, {"error": why, "code": "forbidden_origin"})
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: read a request's body, at most `max_bytes` of it and within `timeout`
    seconds, before the app sees it. Too big gets 413 as soon as the limit is passed (the rest is
    never read); too slow gets 408. The app then reads the buffered body as usual."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._too_big(send)
            return
        body = bytearray()
        last: Message | None = None
        with anyio.move_on_after(self.timeout) as scope_timer:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    last = message
                    break
                body.extend(message.get("body", b""))
                if len(body) > self.max_bytes:
                    await self._too_big(send)
                    return
                if not message.get("more_body", False):
                    break
        if scope_timer.cancelled_caught:
            why = f"the request body did not arrive within {self.timeout:g} s"
            await json_error(send, 408, {"error": why, "code": "request_timeout"})
            return
        queued: deque[Message] = deque()
        if last is None:
            queued.append({"type": "http.request", "body": bytes(body), "more_body": False})
        else:
            queued.append(last)

        async def replay() -> Message:
            return queued.popleft() if queued else await receive()

        await self.app(scope, replay, send)

    async def _too_big(self, send: Send) -> None:
        why = f"the request body is over {self.max_bytes} bytes"
        await json_error(send, 413, {"error": why, "code": "body_too_large"})


class _HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for a request's headers: a connection that has not
    sent complete headers `header_timeout` seconds after it opened (or after its last response)
    is closed. uvicorn's keep-alive timer is reset by every byte, so it does not cover this."""

    header_timeout = 10.0
    _responses = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        self._responses += 1
        super().on_response_complete()
        self._arm_header_deadline()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (a control character in a header, headers over 16 KiB, a
        broken chunk) gets the same one-line JSON error as every other refusal, not plain text."""
        body = json.dumps({"error": "the request is not valid HTTP/1.1", "code": "bad_request"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _arm_header_deadline(self) -> None:
        if not self.transport.is_closing():
            self.loop.call_later(self.header_timeout, self._header_deadline, self._responses)

    def _header_deadline(self, responses: int) -> None:
        # Only for the request this timer was armed for: a later response arms its own timer.
        idle = self.conn.their_state is h11.IDLE
        if responses == self._responses and idle and not self.transport.is_closing():
            log.info("closing a connection that sent no complete request headers in time")
            self.transport.close()


async def serve_asgi(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    what: str,
    limits: HttpSettings,
    max_body_bytes: int,
    check_host: bool = True,
    lifespan: Literal["on", "off"] = "off",
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on host:port with uvicorn behind the Host guard and body limits; port 0 picks
    a free port, reported via task_status."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise GateError(f"{what}: cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    bound: int = sock.getsockname()[1]
    guarded = HostGuard(
        BodyLimit(app, max_bytes=max_body_bytes, timeout=limits.body_timeout), limits.allowed_hosts
    )
    protocol = type("HeaderDeadline", (_HeaderDeadline,), {"header_timeout": limits.header_timeout})
    config = uvicorn.Config(
        guarded,
        log_level="warning",
        access_log=False,
        lifespan=lifespan,
        http=protocol,
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=16 * 1024,
    )
    server = uvicorn.Server(config)
    task_status.started(bound)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
