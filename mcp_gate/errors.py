"""The one error tree of mcp-gate.

    GateError                      every error the gate raises on purpose
    ├── ConfigError                a bad gate.toml, client config or manifest: file, key, problem
    ├── StoreError                 the store (SQLite file or PostgreSQL) cannot be opened, read or written
    │   ├── EvidenceWriteError     an evidence record could not be committed (the call must not run)
    │   └── StoreUnreachable       the configured PostgreSQL server cannot be reached (no password shown)
    ├── CheckpointError            a key, signed note or checkpoint is malformed or does not verify
    ├── NoSuchRequest              no approval request has the id an approver named
    ├── SlackFailure               a Slack call failed: Slack's error code, never a token
    ├── TeamsFailure               a Bot Connector or token service call failed, never a secret
    ├── CallRefused                a tool call the gate will not forward; the text goes to the agent
    │   ├── UnknownTool            no such tool, or a blocked one
    │   ├── InvalidArguments       arguments are not an object, too large, or fail the tool's schema
    │   ├── Quarantined            the tool is new, or its definition changed since it was pinned
    │   └── DownstreamUnavailable  the server behind the tool is not connected
    ├── DownstreamFailed           the downstream failed during the call (connection closed, timeout)
    ├── DecisionRefused            the gate refused an approver's decision (self-approval, expired, ...)
    └── ApiUnreachable             the approver API could not be reached or answered unexpectedly

Errors carry fields; `str()` is one line a person or an LLM can act on. Foreign exceptions
are translated at the edge with `raise ... from exc`.
"""

from __future__ import annotations

__all__ = [
    "ApiUnreachable",
    "CallRefused",
    "CheckpointError",
    "ConfigError",
    "DecisionRefused",
    "DownstreamFailed",
    "DownstreamUnavailable",
    "EvidenceWriteError",
    "GateError",
    "InvalidArguments",
    "NoSuchRequest",
    "Quarantined",
    "SlackFailure",
    "StoreError",
    "StoreUnreachable",
    "TeamsFailure",
    "UnknownTool",
]


class GateError(Exception):
    """Base of every error mcp-gate raises on purpose."""


class ConfigError(GateError):
    """A configuration or manifest file is missing or wrong."""

    def __init__(self, file: str, key: str | None, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        if key:  # a key taken from the file may hold a newline; the message stays one line
            key = "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")


class StoreError(GateError):
    """The store could not do what was asked."""


class EvidenceWriteError(StoreError):
    """An evidence record could not be committed; the call it describes must not run.
    `unreachable`: because the database could not be reached (a retry later may succeed)."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        self.unreachable = unreachable
        super().__init__(message)


class StoreUnreachable(StoreError):
    """The database the config names cannot be reached: the message names it without its password."""


class CheckpointError(GateError):
    """A key, signed note or checkpoint is malformed or does not verify."""


class NoSuchRequest(GateError):
    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"no approval request {request_id!r}; `mcp-gate pending` lists the open ones")


class SlackFailure(GateError):
    """A Slack call failed: `error` is Slack's code (or what went wrong on the way), never a token.
    `unanswered`: the call was sent and no answer came back, so Slack may have carried it out."""

    def __init__(
        self,
        method: str,
        error: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        unanswered: bool = False,
    ):
        self.method = method
        self.error = error
        self.status = status
        self.retry_after = retry_after
        self.unanswered = unanswered
        where = f" (HTTP {status})" if status not in (None, 200) else ""
        super().__init__(f"Slack {method} failed: {error}{where}")


class TeamsFailure(GateError):
    """A call to the Bot Connector or its token service failed: what went wrong (an HTTP status, an
    error code), never a token or the bot's password. `unanswered`: sent, and no answer came back."""

    def __init__(
        self,
        what: str,
        error: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        unanswered: bool = False,
    ):
        self.what = what
        self.error = error
        self.status = status
        self.retry_after = retry_after
        self.unanswered = unanswered
        where = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"Teams {what} failed: {error}{where}")


class CallRefused(GateError):
    """The gate will not forward this call. The message is written for the agent."""


class UnknownTool(CallRefused):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown tool {name!r}: it is not offered by this gate; list the tools again")


class InvalidArguments(CallRefused):
    def __init__(self, tool: str, problem: str) -> None:
        self.tool = tool
        self.problem = problem
        super().__init__(f"invalid arguments for {tool}: {problem}")


class Quarantined(CallRefused):
    """`pinned` is empty for a new tool (one its server added after its tools were pinned);
    `before_run` says the change was found by the re-list just before a held or high call ran."""

    def __init__(self, tool: str, pinned: str, current: str, *, before_run: bool = False) -> None:
        self.tool = tool
        self.pinned = pinned
        self.current = current
        self.before_run = before_run
        accept = f"an operator must review it and run `mcp-gate tools accept {tool}` before it can be called"
        if not pinned:
            why = (
                f"it is a new tool, added by its server after the server's tools were pinned "
                f"(pin {current[:12]}), and awaits review"
            )
        elif before_run:
            why = (
                "its server changed its definition after this call was admitted, found when the gate "
                f"listed the server's tools again just before running it (pin {pinned[:12]} -> "
                f"{current[:12]}); the call was not run"
            )
        else:
            why = f"its definition changed since it was pinned (pin {pinned[:12]} -> {current[:12]})"
        super().__init__(f"{tool} is quarantined: {why}; {accept}")


class DownstreamUnavailable(CallRefused):
    def __init__(self, server: str, why: str) -> None:
        self.server = server
        self.why = why
        super().__init__(f"server {server!r} is not available ({why}); the call was not run, try again later")


class DownstreamFailed(GateError):
    """The downstream failed while the call was in flight: it may or may not have taken effect."""

    def __init__(self, server: str, tool: str, why: str) -> None:
        self.server = server
        self.tool = tool
        self.why = why
        super().__init__(
            f"{server}__{tool} failed in the downstream server ({why}); it may or may not have taken "
            f"effect and was not retried"
        )


class DecisionRefused(GateError):
    """The gate refused a decision (self-approval, not eligible, expired, ...): exit 1."""


class ApiUnreachable(GateError):
    """The approver API could not be reached or answered unexpectedly: exit 1."""


def not_run_text(name: str, exc: StoreError) -> str:
    """What the agent is told of a call not run because its evidence could not be recorded: one line
    an LLM can act on, saying whether waiting and trying again may help."""
    if isinstance(exc, StoreUnreachable) or getattr(exc, "unreachable", False):
        return (
            f"{name} was not run: the evidence store is unreachable; nothing was run; try again later ({exc})"
        )
    return f"{name} was not run: the gate could not write its evidence record ({exc})"
