"""Work that one gate of several sharing a store does: a lease on it in the store (`Tx.claim`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mcp_gate.clock import utc_iso
from mcp_gate.gateway import Gateway

__all__ = ["claim"]


async def claim(gate: Gateway, key: str, seconds: float) -> bool:
    """Take, or renew, the lease `key` for this gate for `seconds` of wall time. Of several gates
    sharing the store, the one this returns True to does that piece of work (a mail, a notice)."""
    now = datetime.now(UTC)
    start, end = utc_iso(now), utc_iso(now + timedelta(seconds=seconds))
    return await gate.store.transact(lambda tx: tx.claim(key, gate.holder, start, end))
