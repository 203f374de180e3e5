"""Connect to, supervise and call the downstream tool servers (the only importer of mcp.client):
over stdio, streamable HTTP, or in this process (an SDK `Server` an embedding program or a test hands in)."""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import anyio
import httpx2
import mcp_types as types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared.dispatcher import ProgressFnT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_gate.config import ServerSpec
from mcp_gate.errors import DownstreamFailed, DownstreamUnavailable

__all__ = ["Downstream", "Downstreams", "ElicitFn", "InProcessServer", "ProgressFn", "describe_failure"]

log = logging.getLogger("mcp_gate.downstream")

ProgressFn = ProgressFnT
# A server living in the gate's process: connected through the SDK's in-memory transport, with the
# same sessions, notifications and elicitation as over a pipe, and no subprocess.
InProcessServer = Server[Any] | MCPServer
ToolsChanged = Callable[["Downstream"], Awaitable[None]]
# Answers a downstream's own elicitation for the call that caused it (relayed to the agent, or refused).
ElicitFn = Callable[[types.ElicitRequestParams], Awaitable[types.ElicitResult | types.ErrorData]]

# Set around each call: a 2026-07-28 downstream's questions are answered inside the calling task
# (the SDK's retry loop), so this names the call exactly. A 2025-era downstream asks through the
# connection's own task, where it is unset.
_CALL_RELAY: contextvars.ContextVar[ElicitFn | None] = contextvars.ContextVar("mcp_gate_call_relay")

State = Literal["starting", "up", "down", "disabled"]

LIST_TIMEOUT = 30.0
HEALTH_INTERVAL = 15.0
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 30.0


def describe_failure(exc: BaseException) -> str:
    """One line saying why a connection attempt or call failed, from whatever the SDK raised."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename or exc}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}"
    if isinstance(exc, MCPError):
        if exc.code == types.CONNECTION_CLOSED:
            return "connection closed"
        if exc.code == types.REQUEST_TIMEOUT:
            return "timed out"
        return f"error {exc.code}: {exc.error.message}"
    if isinstance(exc, httpx2.HTTPError):
        return f"HTTP error: {exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass(eq=False)
class Downstream:
    """One downstream server: its spec, its live client while up, and the tools it serves."""

    spec: ServerSpec
    log_dir: Path | None = None
    in_process: InProcessServer | None = None
    state: State = "starting"
    last_error: str | None = None  # for operators (`check`): may quote the server's stderr
    last_failure: str | None = None  # for agents and evidence: never the server's own output
    tools: dict[str, types.Tool] = field(default_factory=dict)
    connects: int = 0
    protocol_version: str | None = None
    _client: Client | None = None
    _dead: anyio.Event = field(default_factory=anyio.Event)
    _refresh: anyio.Event = field(default_factory=anyio.Event)
    _settled: anyio.Event = field(default_factory=anyio.Event)
    _relays: dict[int, ElicitFn | None] = field(default_factory=dict)
    _relay_ids: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def name(self) -> str:
        return self.spec.name

    async def call(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        progress: ProgressFn | None = None,
        elicit: ElicitFn | None = None,
        pass_input: bool = False,
        resume: tuple[types.InputResponses | None, str | None] | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Call a tool once. Never retried: a failure after sending may have taken effect.

        `elicit` answers the server's own elicitation requests made during this call. With
        `pass_input`, a 2026-07-28 server's InputRequiredResult is returned instead; `resume`
        carries the answers and the server's state back to it."""
        client = self._client
        if client is None or self.state != "up":
            raise DownstreamUnavailable(self.name, self.last_failure or self.state)
        relay_id = next(self._relay_ids)
        self._relays[relay_id] = elicit
        token = _CALL_RELAY.set(elicit)
        modern = self.protocol_version in MODERN_PROTOCOL_VERSIONS
        if resume is not None and not modern:
            raise DownstreamUnavailable(
                self.name, "it no longer speaks 2026-07-28, so answers cannot reach it"
            )
        try:
            if modern and (pass_input or resume is not None):
                responses, state = resume or (None, None)
                result = await client.session.call_tool(
                    tool,
                    dict(arguments),
                    read_timeout_seconds=self.spec.timeout,
                    progress_callback=progress,
                    input_responses=responses,
                    request_state=state,
                    allow_input_required=True,
                )
            else:
                result = await client.call_tool(
                    tool, dict(arguments), read_timeout_seconds=self.spec.timeout, progress_callback=progress
                )
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                self._mark_dead("connection closed during a call")
            raise DownstreamFailed(self.name, tool, describe_failure(exc)) from exc
        except (OSError, httpx2.HTTPError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._mark_dead(describe_failure(exc))
            raise DownstreamFailed(self.name, tool, describe_failure(exc)) from exc
        finally:
            _CALL_RELAY.reset(token)
            del self._relays[relay_id]
        if not isinstance(result, types.CallToolResult | types.InputRequiredResult):
            raise DownstreamFailed(self.name, tool, f"unexpected result type {type(result).__name__}")
        return result

    async def relist(self, timeout: float) -> bool:
        """List the server's tools again now, within `timeout` seconds; True if they changed.

        For a check just before a call runs: a server may change a definition without sending
        `list_changed`. DownstreamUnavailable if the listing cannot be had (fail closed)."""
        client = self._client
        if client is None or self.state != "up":
            raise DownstreamUnavailable(self.name, self.last_failure or self.state)
        try:
            with anyio.fail_after(timeout):
                listed = await client.list_tools()
        except TimeoutError as exc:
            raise DownstreamUnavailable(
                self.name, f"it did not list its tools within {timeout:g}s, so they could not be checked"
            ) from exc
        except (
            MCPError,
            OSError,
            httpx2.HTTPError,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ) as exc:
            raise DownstreamUnavailable(
                self.name, f"listing its tools to check them failed: {describe_failure(exc)}"
            ) from exc
        tools = {t.name: t for t in listed.tools}
        if tools == self.tools:
            return False
        self.tools = tools
        return True

    async def _elicit(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        """The server asks its client (the gate) something: hand it to the call it belongs to."""
        try:
            relay = _CALL_RELAY.get()
        except LookupError:
            # Asked over a 2025-era connection: nothing on the wire names the call. Only with a
            # single call in flight is it certain whose question this is.
            live = list(self._relays.values())
            if len(live) != 1:
                return types.ErrorData(
                    code=types.INVALID_REQUEST,
                    message=(
                        f"mcp-gate declined to relay this elicitation: {len(live)} calls to this server are "
                        "in flight, so it cannot tell which one asks"
                    ),
                )
            relay = live[0]
        if relay is None:
            return types.ErrorData(
                code=types.INVALID_REQUEST,
                message="mcp-gate declined to relay this elicitation: no agent asks",
            )
        return await relay(params)

    def _mark_dead(self, why: str) -> None:
        if self.state == "up":
            self.state = "down"
            self.last_error = self.last_failure = why
        self._dead.set()

    def _target(self) -> InProcessServer | AbstractAsyncContextManager[Any]:
        if self.in_process is not None:
            return self.in_process
        return self._transport()

    def _transport(self) -> AbstractAsyncContextManager[Any]:
        spec = self.spec
        if spec.url is not None:
            http = httpx2.AsyncClient(
                headers=dict(spec.headers), timeout=httpx2.Timeout(30.0, read=max(300.0, spec.timeout))
            )
            return _http_transport(spec.url, http)
        assert spec.command is not None
        params = StdioServerParameters(
            command=spec.command,
            args=list(spec.args),
            env=dict(spec.env),
            cwd=str(spec.cwd) if spec.cwd is not None else None,
        )
        return _stdio_transport(params, self._errlog_path())

    def _errlog_path(self) -> Path | None:
        if self.log_dir is None:
            return None
        return self.log_dir / f"{self.name}.stderr.log"

    def _last_stderr_line(self) -> str | None:
        if self.in_process is not None:  # no process, no stderr: an older run's log is not this one's
            return None
        path = self._errlog_path()
        if path is None or not path.exists():
            return None
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 4096))
                lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        except OSError:
            return None
        return lines[-1][:300] if lines else None

    async def _message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._refresh.set()

    async def supervise(self, on_tools_changed: ToolsChanged) -> None:
        """Connect, serve until the connection dies, reconnect with backoff; forever."""
        if self.spec.disabled:
            self.state = "disabled"
            self._settled.set()
            return
        backoff = BACKOFF_FIRST
        while True:
            try:
                async with Client(
                    self._target(),
                    mode=self.spec.protocol,
                    message_handler=self._message,
                    elicitation_callback=self._elicit,
                    cache=None,
                ) as client:
                    with anyio.fail_after(LIST_TIMEOUT):
                        listed = await client.list_tools()
                    self.tools = {t.name: t for t in listed.tools}
                    self._client = client
                    self.protocol_version = client.protocol_version
                    self.state = "up"
                    self.last_error = self.last_failure = None
                    self.connects += 1
                    backoff = BACKOFF_FIRST
                    log.info(
                        "%s: connected (%s), %d tools", self.name, client.protocol_version, len(self.tools)
                    )
                    await on_tools_changed(self)
                    self._settled.set()
                    await self._watch(client, on_tools_changed)
            except Exception as exc:  # any failure of the connection is recorded and retried
                why = self.last_failure = describe_failure(exc)
                stderr = self._last_stderr_line()
                self.last_error = f"{why} (last stderr line: {stderr})" if stderr else why
                log.warning("%s: %s; reconnecting in %.1fs", self.name, self.last_error, backoff)
            finally:
                self._client = None
                if self.state != "disabled":
                    self.state = "down"
                self._dead = anyio.Event()
                self._refresh = anyio.Event()
            self._settled.set()
            if self.tools:
                self.tools = {}
                await on_tools_changed(self)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _watch(self, client: Client, on_tools_changed: ToolsChanged) -> None:
        """Wait for death; re-list tools on a list_changed notification or every HEALTH_INTERVAL."""
        while not self._dead.is_set():
            with anyio.move_on_after(HEALTH_INTERVAL):
                async with anyio.create_task_group() as tg:

                    async def wait_for(event: anyio.Event) -> None:
                        await event.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(wait_for, self._dead)
                    tg.start_soon(wait_for, self._refresh)
            if self._dead.is_set():
                return
            self._refresh = anyio.Event()
            with anyio.fail_after(LIST_TIMEOUT):
                listed = await client.list_tools()
            tools = {t.name: t for t in listed.tools}
            if tools != self.tools:
                self.tools = tools
                await on_tools_changed(self)


@asynccontextmanager
async def _stdio_transport(params: StdioServerParameters, errlog_path: Path | None) -> AsyncIterator[Any]:
    errlog: TextIO | None = None
    try:
        if errlog_path is not None:
            errlog_path.parent.mkdir(parents=True, exist_ok=True)
            errlog = errlog_path.open("a", encoding="utf-8")
        if errlog is not None:
            async with stdio_client(params, errlog=errlog) as streams:
                yield streams
        else:
            async with stdio_client(params) as streams:
                yield streams
    finally:
        if errlog is not None:
            errlog.close()


@asynccontextmanager
async def _http_transport(url: str, http: httpx2.AsyncClient) -> AsyncIterator[Any]:
    async with http, streamable_http_client(url, http_client=http) as streams:
        yield streams


class Downstreams:
    """Every downstream of one gate, each supervised in its own task."""

    def __init__(
        self,
        specs: Mapping[str, ServerSpec],
        *,
        log_dir: Path | None = None,
        in_process: Mapping[str, InProcessServer] | None = None,
    ) -> None:
        served = in_process or {}
        self.by_name: dict[str, Downstream] = {
            name: Downstream(spec, log_dir=log_dir, in_process=served.get(name))
            for name, spec in specs.items()
        }

    def __getitem__(self, name: str) -> Downstream:
        return self.by_name[name]

    def __iter__(self) -> Any:
        return iter(self.by_name.values())

    async def run(
        self,
        on_tools_changed: ToolsChanged,
        *,
        startup_timeout: float = math.inf,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Supervise all downstreams; report started once each has connected or failed once."""
        async with anyio.create_task_group() as tg:
            for ds in self.by_name.values():
                tg.start_soon(ds.supervise, on_tools_changed, name=f"supervise {ds.name}")
            with anyio.move_on_after(startup_timeout):
                for ds in self.by_name.values():
                    await ds._settled.wait()
            task_status.started()
