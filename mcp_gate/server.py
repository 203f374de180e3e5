"""The agent-facing MCP server: stdio and streamable HTTP, both protocol eras."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import IO, Any, BinaryIO, cast

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import Server, ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.message import SessionMessage
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_gate import __version__
from mcp_gate.channels.elicitation import ContextAsker
from mcp_gate.config import Agent, Requester
from mcp_gate.downstream import ProgressFn
from mcp_gate.errors import GateError
from mcp_gate.gateway import Gateway
from mcp_gate.http import bearer_token, json_error, serve_asgi
from mcp_gate.idp import TokenVerifier
from mcp_gate.metrics import GateMetrics
from mcp_gate.oauth import REQUESTER_SCOPE_KEY, ResourceServer
from mcp_gate.tracing import traceparent_of

__all__ = ["MAX_STDIO_LINE_BYTES", "BearerAuth", "FrontServer", "REQUESTER_SCOPE_KEY"]

log = logging.getLogger("mcp_gate.server")

# One JSON-RPC message on stdin. The largest call the gate admits (256 KiB of arguments as
# canonical JSON) takes at most 1.5 MiB even with every character written as a \\uXXXX escape;
# 4 MiB leaves room for the rest of the message and for whitespace, and bounds what one line costs.
MAX_STDIO_LINE_BYTES = 4 * 1024 * 1024

# Arguments of a tools/call that are not an object, as the agent sent them (see `_keep_bad_arguments`).
_BAD_ARGUMENTS: ContextVar[tuple[Any, ...]] = ContextVar("mcp_gate_bad_arguments", default=())


async def _keep_bad_arguments(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Let a tools/call whose `arguments` are not an object reach the gate, which refuses it as a
    tool error with the reason and records it. The SDK would answer -32602 with no reason before
    the gate ever saw the call, leaving no evidence of it."""
    params = ctx.params
    if ctx.method == "tools/call" and isinstance(params, Mapping):
        given = params.get("arguments")
        if given is not None and not isinstance(given, dict):
            token = _BAD_ARGUMENTS.set((given,))
            try:
                return await call_next(replace(ctx, params={**params, "arguments": {}}))
            finally:
                _BAD_ARGUMENTS.reset(token)
    return await call_next(ctx)


class _GateServer(Server[Any]):
    """The SDK's server, announcing `tools.listChanged` on every transport: the gate tells agents
    when a downstream's tools change. The streamable HTTP session manager builds each session's
    initialize answer from these defaults, with no way to pass NotificationOptions in."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> Any:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True),
            experimental_capabilities,
            extensions,
        )


class FrontServer:
    """The MCP server agents talk to, built over a running Gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.bus = InMemorySubscriptionBus()
        self.verifier: TokenVerifier | None = None  # with [identity], made with the HTTP app
        self._legacy_sessions: list[ServerSession] = []
        # Over stdio and HTTP every request says on the wire whether it asked for progress; in this
        # process (tests, embedding) the modern dispatcher carries no token, so progress is relayed.
        self._on_the_wire = False
        self.server: Server[Any] = _GateServer(
            "mcp-gate",
            version=__version__,
            title=f"mcp-gate ({gateway.config.name})",
            instructions=(
                "Tools are named <server>__<tool>. Calls the gate refuses or cannot run come back as "
                "tool errors that say why; read the reason before retrying."
            ),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=ListenHandler(self.bus),
            get_tool_input_schema=gateway.offering.input_schema,
        )
        self.server.middleware.append(_keep_bad_arguments)
        self.server.add_notification_handler(
            "notifications/initialized", types.NotificationParams, self._initialized
        )
        gateway.offering.listeners.append(self.tools_changed)

    def initialization_options(self) -> Any:
        return self.server.create_initialization_options(NotificationOptions(tools_changed=True))

    async def _initialized(self, ctx: ServerRequestContext[Any], params: Any) -> None:
        # The SDK keeps no public list of live legacy connections; keep the sessions to tell them
        # about tool changes.
        self._legacy_sessions.append(ctx.session)

    async def tools_changed(self) -> None:
        await self.bus.publish(ToolsListChanged())
        alive = []
        for session in self._legacy_sessions:
            try:
                await session.send_tool_list_changed()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, RuntimeError, OSError):
                continue
            alive.append(session)
        self._legacy_sessions = alive

    async def _list_tools(self, ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.gateway.offering.list_tools())

    def _requester(self, ctx: ServerRequestContext[Any]) -> tuple[Requester, str]:
        request = ctx.request
        if request is not None and hasattr(request, "scope"):
            agent = request.scope.get(REQUESTER_SCOPE_KEY)
            if isinstance(agent, Requester):
                return agent, "http"
            if not isinstance(agent, Agent):
                # The ASGI guard admits no request without an agent; this is a second lock.
                raise PermissionError("no authenticated agent on this HTTP request")
            return agent.requester(), "http"
        return self.gateway.config.requester, "stdio"

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        requester, transport = self._requester(ctx)
        bad = _BAD_ARGUMENTS.get()
        request = ctx.request
        scope = getattr(request, "scope", None) if request is not None else None
        return await self.gateway.call(
            requester,
            params.name,
            bad[0] if bad else params.arguments,
            transport=transport,
            progress=_progress_relay(ctx) if not self._on_the_wire or _asked_for_progress(ctx) else None,
            asker=ContextAsker(ctx, params),
            trace_context=traceparent_of(scope.get("headers")) if isinstance(scope, dict) else None,
        )

    async def serve_stdio(self) -> None:
        """Serve the agent on stdin/stdout. Raises GateError for a line longer than
        MAX_STDIO_LINE_BYTES: the connection closes, with that one line on stderr."""
        from mcp.server.stdio import stdio_server

        self._on_the_wire = True
        with _claimed_stdin() as wire:
            lines = anyio.AsyncFile(cast(IO[str], BoundedLines(wire, MAX_STDIO_LINE_BYTES)))
            async with stdio_server(stdin=lines) as (read, write):
                answered_send, answered = anyio.create_memory_object_stream[SessionMessage | Exception](0)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_answer_unreadable, read, answered_send, write)
                    await self.server.run(answered, write, self.initialization_options())
                    tg.cancel_scope.cancel()

    def http_app(self) -> ASGIApp:
        self._on_the_wire = True
        limits = self.gateway.config.http
        app = self.server.streamable_http_app(
            max_request_body_size=limits.max_body_bytes,
            # serve_asgi's HostGuard checks Host and Origin for every path, with the configured
            # allowed hosts, before authentication; the SDK's own check knows only loopback names.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        identity = self.gateway.config.identity
        if identity is None:
            return BearerAuth(app, self.gateway.config.agents, self.gateway.metrics)
        if self.verifier is None:
            self.verifier = TokenVerifier(identity, config_file=str(self.gateway.config.path))

        async def record(body: dict[str, Any]) -> None:
            await self.gateway.record("token.refused", None, **body)

        return ResourceServer(
            app,
            identity,
            self.verifier,
            agents=self.gateway.config.agents,
            tier_of=self.tier_of,
            record=record,
            metrics=self.gateway.metrics,
        )

    def tier_of(self, name: str, arguments: Any) -> str | None:
        """The tier a call of `name` with `arguments` would get, where the tool is offered and the
        arguments are an object (else None: the pipeline refuses such a call with its reason)."""
        offered = self.gateway.offering.offered.get(name)
        if offered is None or not isinstance(arguments, dict | None):
            return None
        try:
            return offered.classify(arguments or {}, self.gateway.manifests.get(offered.server)).tier
        except Exception:  # hostile arguments: the pipeline decides, records and refuses them
            return None

    async def serve_http(self, host: str, port: int, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve streamable HTTP on host:port (port 0 picks a free one; the bound port is reported)."""
        limits = self.gateway.config.http
        await serve_asgi(
            self.http_app(),
            host,
            port,
            what="mcp-gate",
            limits=limits,
            max_body_bytes=limits.max_body_bytes,
            lifespan="on",
            task_status=task_status,
        )


async def _answer_unreadable(
    read: MemoryObjectReceiveStream[SessionMessage | Exception],
    onward: MemoryObjectSendStream[SessionMessage | Exception],
    write: MemoryObjectSendStream[SessionMessage],
) -> None:
    """Pass the SDK's stdin messages on, answering each line it could not read as JSON-RPC 2.0
    asks: -32700 for a line that is not JSON it can parse, -32600 for JSON that is not a message.
    The SDK yields such a line as an exception and drops it unanswered, so a client would wait."""
    async with read, onward:
        async for item in read:
            if isinstance(item, ValidationError):
                await write.send(SessionMessage(_unreadable_answer(item)))
            elif isinstance(item, Exception):
                log.warning("unreadable message on stdin: %s", type(item).__name__)
            else:
                await onward.send(item)


def _unreadable_answer(exc: ValidationError) -> types.JSONRPCError:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] == "json_invalid":
        # Not JSON to the SDK's parser (or nested or sized past its limits): no id can be read.
        reason = str(errors[0]["msg"])[:200]
        error = types.ErrorData(code=types.PARSE_ERROR, message=f"Parse error: {reason}")
        return types.JSONRPCError(jsonrpc="2.0", id=None, error=error)
    error = types.ErrorData(code=types.INVALID_REQUEST, message="Invalid Request: not a JSON-RPC 2.0 message")
    return types.JSONRPCError(jsonrpc="2.0", id=_request_id(exc), error=error)


def _request_id(exc: ValidationError) -> str | int | None:
    """The id of a JSON value that is not a valid message, where it is an object with a usable one.
    Pydantic gives the whole object as the input of an error one level down (a missing field)."""
    for error in exc.errors(include_url=False):
        depth = len(error["loc"])
        whole = error.get("input") if depth == 1 or (depth == 2 and error["type"] == "missing") else None
        if isinstance(whole, dict):
            found = whole.get("id")
            if isinstance(found, str | int) and not isinstance(found, bool):
                return found
    return None


class BoundedLines:
    """The agent's stdin as text lines of at most `limit` bytes each. The SDK's own stdio reader
    reads a line whatever its length, so one endless line would take all memory."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self.raw = raw
        self.limit = limit

    def readline(self) -> str:
        line = self.raw.readline(self.limit + 1)
        if len(line) > self.limit and not line.endswith(b"\n"):
            raise GateError(
                f"a JSON-RPC message on stdin is longer than {self.limit} bytes, the limit; "
                "closing the connection"
            )
        # As the SDK reads stdin: bytes that are not UTF-8 become U+FFFD, never an exception.
        return line.decode("utf-8", errors="replace")


@contextmanager
def _claimed_stdin() -> Iterator[BinaryIO]:
    """stdin on a private descriptor, with fd 0 pointed at the null device meanwhile (as the
    SDK does when it owns stdin), so no child process reads the agent's messages."""
    if not sys.stdin or not _is_fd(sys.stdin, 0):
        yield sys.stdin.buffer
        return
    wire = os.dup(0)  # never closed: a worker thread may still block reading it at exit
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        yield os.fdopen(wire, "rb", closefd=False)
    finally:
        os.dup2(wire, 0)


def _is_fd(stream: IO[str], fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


def _asked_for_progress(ctx: ServerRequestContext[Any]) -> bool:
    """Whether the request carries `_meta.progressToken`. Without one the SDK drops every progress
    notification, so a held call need not wake every `progress_seconds` to send one."""
    meta = (ctx.params or {}).get("_meta")
    token = meta.get("progressToken") if isinstance(meta, Mapping) else None
    return isinstance(token, str | int) and not isinstance(token, bool)


def _progress_relay(ctx: ServerRequestContext[Any]) -> ProgressFn:
    # report_progress is a no-op for a request that did not ask; over stdio and HTTP such a request
    # gets no relay at all (`_asked_for_progress`), in this process it gets one (no token is seen).
    async def relay(progress: float, total: float | None, message: str | None) -> None:
        await ctx.session.report_progress(progress, total, message)

    return relay


class BearerAuth:
    """ASGI guard: every HTTP request must carry `Authorization: Bearer <token>` of a configured
    agent. The token is compared by SHA-256 in constant time, never logged, never forwarded."""

    def __init__(self, app: ASGIApp, agents: Mapping[str, Agent], metrics: GateMetrics | None = None) -> None:
        self.app = app
        self.by_digest = {agent.token_sha256: agent for agent in agents.values()}
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path", "").startswith("/.well-known/oauth"):
            # OAuth clients probe for metadata after a 401; say plainly there is none to find.
            why = (
                "this gate uses bearer tokens, not OAuth: send Authorization: Bearer <token> of a "
                "configured [agents.NAME]"
            )
            await json_error(send, 404, {"error": "not_found", "error_description": why})
            return
        agent = self._authenticate(scope)
        if agent is None:
            if self.metrics is not None:
                reason = "missing" if bearer_token(scope) is None else "unknown"
                self.metrics.refused_tokens.labels("agent", reason).inc()
            await _unauthorized(send)
            return
        scope[REQUESTER_SCOPE_KEY] = agent
        await self.app(scope, receive, send)

    def _authenticate(self, scope: Scope) -> Agent | None:
        token = bearer_token(scope)
        if token is None:
            return None
        presented = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for known, agent in self.by_digest.items():
            if hmac.compare_digest(known, presented):
                found = agent
        return found


async def _unauthorized(send: Send) -> None:
    body = (
        b'{"error":"unauthorized",'
        b'"error_description":"a valid bearer token of a configured agent is required; '
        b'this gate uses bearer tokens, not OAuth"}'
    )
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Bearer realm="mcp-gate"'),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
