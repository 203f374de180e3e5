"""Test-only launcher: runs `mcp-gate` with a crash point armed, so the harness can SIGKILL the gate
at a named step of the call path. Production code has no such hook; this file wraps it from outside.

    MCP_GATE_CRASH_AT=after_in_flight [MCP_GATE_CRASH_HIT=1] python tests/crash/launch.py serve ...

MCP_GATE_CRASH_INFO names a file the launcher writes `pid` and `admin_port` lines to.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mcp_gate.bundle as bundle  # noqa: E402
import mcp_gate.storage.sqlite as sqlite_store  # noqa: E402
import mcp_gate.storage.sqlite.signing as signing  # noqa: E402
import mcp_gate.storage.sqlite.tx as sqlite_tx  # noqa: E402
from mcp_gate.cli import main  # noqa: E402

# point name -> the event type whose commit ends the step (checked after the commit returns)
AFTER_COMMIT = {
    "after_call_requested": "call.requested",
    "after_hold_persisted": "approval.requested",
    "after_outcome": "call.executed",
    "after_slack_post": "slack.posted",
}
POINTS = (
    *AFTER_COMMIT,
    "after_vote",
    "after_deciding_vote",
    "after_in_flight",
    "after_request_written",
    "after_result",
    "inside_group_commit",
    "while_signing",
    "during_export",
    "during_slack_post",
    "during_slack_update",
)

POINT = os.environ.get("MCP_GATE_CRASH_AT", "")
HIT = int(os.environ.get("MCP_GATE_CRASH_HIT", "1"))
INFO = os.environ.get("MCP_GATE_CRASH_INFO")
_hits = 0
_lock = threading.Lock()


def note(key: str, value: object) -> None:
    if INFO:
        with open(INFO, "a", encoding="utf-8") as handle:
            handle.write(f"{key} {value}\n")


def reached(point: str) -> None:
    """The process dies here, at once and without cleanup, when `point` is the armed one."""
    global _hits
    if point != POINT:
        return
    with _lock:
        _hits += 1
        if _hits < HIT:
            return
    note("crashed", point)
    os.kill(os.getpid(), signal.SIGKILL)


def _arm_store() -> None:
    original_commit = sqlite_store._commit_batch
    original_append = sqlite_tx._append
    original_begin = sqlite_tx.SQLiteTx.begin_inflight
    original_head = signing.write_head
    seen = threading.local()

    def append(conn: Any, events: Any) -> Any:
        records = original_append(conn, events)
        collected = getattr(seen, "events", None)
        if collected is not None:
            collected.extend(dict(e) for e in events)
        return records

    def begin_inflight(self: Any, *args: Any, **kwargs: Any) -> None:
        original_begin(self, *args, **kwargs)
        seen.inflight = True

    def commit(conn: Any, batch: Any, notary: Any, clock: Any) -> Any:
        seen.events, seen.inflight = [], False
        if len(batch) > 1:
            first = batch[0]
            inner = first.fn

            def then_die(c: Any) -> Any:
                result = inner(c)
                reached("inside_group_commit")  # this job's writes are in the open transaction
                return result

            first.fn = then_die
        try:
            result = original_commit(conn, batch, notary, clock)
        finally:
            events, inflight = seen.events, seen.inflight
            seen.events = None
        if any(job.error is not None for job in batch):
            return result
        kinds = {e.get("event_type") for e in events}
        for point, kind in AFTER_COMMIT.items():
            if kind in kinds:
                reached(point)
        for e in events:
            if e.get("event_type") == "approval.decided":
                reached("after_vote" if e.get("state") == "pending" else "after_deciding_vote")
        if inflight:
            reached("after_in_flight")
        return result

    def write_head(path: Any, text: str) -> None:
        original_head(path, text)
        reached("while_signing")  # the head file is written; the checkpoint row is not committed

    sqlite_store._commit_batch = commit
    # Every module that calls `_append` by name: the store's own writes and `SQLiteTx.append`.
    sqlite_store._append = append
    sqlite_tx._append = append
    sqlite_tx.SQLiteTx.begin_inflight = begin_inflight  # type: ignore[method-assign]
    signing.write_head = write_head


def _arm_downstream() -> None:
    import mcp.client.stdio as stdio

    from mcp_gate.downstream import Downstream

    original_spawn = stdio._create_platform_compatible_process
    original_call = Downstream.call

    class Stdin:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        async def send(self, data: bytes) -> None:
            await self._inner.send(data)
            if b'"tools/call"' in data:
                reached("after_request_written")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    async def spawn(*args: Any, **kwargs: Any) -> Any:
        process = await original_spawn(*args, **kwargs)
        process._stdin = Stdin(process.stdin)  # anyio's Process keeps its stdin here
        return process

    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original_call(self, *args, **kwargs)
        reached("after_result")
        return result

    stdio._create_platform_compatible_process = spawn
    Downstream.call = call  # type: ignore[method-assign]


def _arm_api() -> None:
    import anyio

    import mcp_gate.health as health

    original = health.serve_admin

    async def serve_admin(
        probes: Any, host: str, port: int, *, task_status: Any = anyio.TASK_STATUS_IGNORED, **options: Any
    ) -> None:
        class Status:
            def started(self, value: Any = None) -> None:
                note("admin_port", value)
                task_status.started(value)

        await original(probes, host, port, task_status=Status(), **options)

    health.serve_admin = serve_admin


def _arm_slack() -> None:
    from mcp_gate.channels import slack_api

    api_class = slack_api.SlackApi
    original_post = api_class.post_message
    original_update = api_class.update

    async def post_message(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original_post(self, *args, **kwargs)
        reached("during_slack_post")  # Slack shows the message; the gate has not recorded it
        return result

    async def update(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original_update(self, *args, **kwargs)
        reached("during_slack_update")
        return result

    api_class.post_message = post_message  # type: ignore[method-assign]
    api_class.update = update  # type: ignore[method-assign]


def _arm_export() -> None:
    original = bundle.sign_note

    def sign_note(*args: Any, **kwargs: Any) -> Any:
        reached("during_export")  # records, checkpoints, manifest and sums written; not signed
        return original(*args, **kwargs)

    bundle.sign_note = sign_note


if POINT and POINT not in POINTS:
    sys.exit(f"launch.py: unknown crash point {POINT!r}; known: {', '.join(POINTS)}")
note("pid", os.getpid())
_arm_store()
_arm_downstream()
_arm_api()
_arm_slack()
_arm_export()
main(sys.argv[1:])
