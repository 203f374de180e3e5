"""Suite-wide fixtures: the anyio backend, every thread's stack on a timeout, and no process a test
started outlives it."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children, …), read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name sits in parentheses and may hold spaces: fields follow the last ")".
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if state != "Z":
            parents[int(entry.name)] = int(ppid)
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def reap(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def no_process_outlives_its_test() -> Iterator[None]:
    """Kill whatever a test left running (a downstream server, a gate, a CLI), even when the test
    failed or timed out; say so on stderr, since a well-behaved test leaves nothing behind."""
    if not sys.platform.startswith("linux"):
        yield
        return
    before = descendants(os.getpid())
    yield
    left = descendants(os.getpid()) - before
    if left:
        reap(left)
        print(f"\nreaped {len(left)} process(es) the test left running: {sorted(left)}", file=sys.stderr)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: object) -> None:
    """Just before pytest-timeout fails a test, dump every thread's stack (its own signal method
    shows only the main thread's, and a hang is often a worker thread the loop waits on)."""
    timeout = float(getattr(settings, "timeout", 0) or 0)
    if timeout > 0:
        faulthandler.dump_traceback_later(max(timeout - 0.25, timeout * 0.9), exit=False)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    faulthandler.cancel_dump_traceback_later()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if sys.platform.startswith("linux"):
        reap(descendants(os.getpid()))
