"""Where the gate keeps its state: `open_store` and `open_reader`, the one way in to a backend.

The Protocols callers are typed against live in `storage.base`; today's one backend, SQLite, in
`storage.sqlite`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from mcp_gate.clock import Clock
from mcp_gate.notary import Notary
from mcp_gate.storage.base import LogReader, Store
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.storage.sqlite.reader import read_only, verify_file

__all__ = ["open_reader", "open_store", "verify_file"]


async def open_store(
    path: Path,
    *,
    clock: Clock | None = None,
    notary: Notary | None = None,
    busy_timeout: float = 10.0,
) -> Store:
    """Open (creating if needed) the store in the file at `path` (`datadir.gate_db`); StoreError
    naming the path if it cannot.

    With a `notary`, commits are followed by signed checkpoints when one is due: every writer
    that has the key should pass it, so every writer signs by the same rule."""
    return await SQLiteStore.open(path, clock=clock, busy_timeout=busy_timeout, notary=notary)


def open_reader(path: Path) -> AbstractContextManager[LogReader]:
    """A consistent read-only snapshot of the evidence file at `path`, for a worker thread; it
    never writes to the file or creates one (an auditor's copy may be read-only)."""
    return read_only(path)
