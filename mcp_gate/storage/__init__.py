"""Where the gate keeps its state: `open_store` and `open_reader` (the SQLite file), `open_database`
and `open_database_reader` (a PostgreSQL database), the one way in to a backend.

The Protocols callers are typed against live in `storage.base`; the backends in `storage.sqlite`
and `storage.postgres` (imported on first use: psycopg is the `postgres` extra's)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from mcp_gate.clock import Clock
from mcp_gate.errors import StoreError
from mcp_gate.notary import Notary
from mcp_gate.storage.base import Inflight, LogReader, Store, Tx
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.storage.sqlite.reader import read_only, verify_file

if TYPE_CHECKING:
    from mcp_gate.audit import AuditReport
    from mcp_gate.checkpoints import VerifierKey
    from mcp_gate.storage.postgres.replicas import ReplicaLock

__all__ = [
    "copy_into_database",
    "database_schema",
    "file_head",
    "open_database",
    "open_database_reader",
    "open_reader",
    "open_store",
    "lapsed_replica_calls",
    "replica_lock",
    "replica_seen",
    "verify_database",
    "verify_file",
]

_NO_DRIVER = "the PostgreSQL store needs psycopg: pip install 'mcp-gate[postgres]'"


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


def _postgres() -> None:
    """StoreError saying what to install when the PostgreSQL driver is not there."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise StoreError(_NO_DRIVER) from exc


async def open_database(
    url: str,
    *,
    clock: Clock | None = None,
    notary: Notary | None = None,
    pool_size: int = 4,
    connect_timeout: float = 10.0,
    create: bool = False,
    replica: str | None = None,
) -> Store:
    """Open the store in the PostgreSQL database at `url`; StoreError naming it (never its password)
    if it cannot be reached or its schema is not this gate's. With `create`, a database the gate
    never touched gets the schema, as `open_store` creates a file; an older one needs
    `mcp-gate store migrate`. `replica`: the serving replica's id (`replica_lock`), which its calls
    in flight carry."""
    _postgres()
    from mcp_gate.storage.postgres import PostgresStore

    return await PostgresStore.open(
        url,
        clock=clock,
        notary=notary,
        pool_size=pool_size,
        connect_timeout=connect_timeout,
        create=create,
        replica=replica,
    )


def open_database_reader(url: str) -> AbstractContextManager[LogReader]:
    """A consistent read-only snapshot of the database's evidence, for a worker thread."""
    _postgres()
    from mcp_gate.storage.postgres.reader import read_only as read_database

    return read_database(url)


async def verify_database(
    url: str,
    *,
    verifiers: Sequence[VerifierKey] | None = None,
    extra_notes: Sequence[tuple[str, str]] = (),
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """`verify_file` for a PostgreSQL database: the chain and every checkpoint, writing nothing."""
    _postgres()
    from mcp_gate.storage.postgres.reader import verify_database as verify

    return await verify(url, verifiers=verifiers, extra_notes=extra_notes, progress=progress)


def replica_lock(
    url: str, *, replica: str | None = None, lease_seconds: float = 15.0, connect_timeout: float = 10.0
) -> ReplicaLock:
    """The replicas' lock on the database (what `datadir.DataDirLock` is to one host's file) and
    this replica's lease row, renewed by `ReplicaLock.renew`."""
    _postgres()
    from mcp_gate.storage.postgres.replicas import ReplicaLock

    return ReplicaLock(url, replica=replica, lease_seconds=lease_seconds, connect_timeout=connect_timeout)


def lapsed_replica_calls(tx: Tx, me: str) -> list[Inflight]:
    """Inside a write transaction on the database: the calls in flight of every other replica
    whose lease lapsed, marked as taken over by `me` (`replicas.lapsed_calls`)."""
    from mcp_gate.storage.postgres.replicas import lapsed_calls

    return lapsed_calls(tx, me)


def replica_seen(tx: Tx, replica: str) -> dict[str, object] | None:
    """What the database last knew of `replica`: host, pid, last heartbeat, a clean stop."""
    from mcp_gate.storage.postgres.replicas import replica_of

    return replica_of(tx, replica)


async def database_schema(url: str, *, apply: bool, connect_timeout: float = 10.0) -> tuple[int, int, int]:
    """(version before, version after, the version this gate knows) of the database's schema;
    with `apply`, the missing migrations are applied first (in one transaction)."""
    _postgres()
    import anyio.to_thread
    import psycopg

    from mcp_gate.storage.postgres import schema

    def run() -> tuple[int, int, int]:
        with schema.connect(url, connect_timeout=connect_timeout) as conn:
            try:
                if apply:
                    before, after = schema.migrate(conn)
                else:
                    before = after = schema.schema_version(conn)
            except psycopg.Error as exc:
                raise StoreError(f"{schema.redacted(url)}: {' '.join(str(exc).split())}") from exc
            return before, after, schema.SCHEMA_VERSION

    return await anyio.to_thread.run_sync(run)


async def copy_into_database(
    source: Path, url: str, *, progress: Callable[[int, int], None] | None = None
) -> tuple[int, str]:
    """Copy the SQLite file `source` whole into the empty database at `url` (one transaction);
    the (seq, hash) of the copied head. StoreError, writing nothing, for a non-empty target."""
    _postgres()
    import anyio.to_thread

    from mcp_gate.storage.postgres.copy import copy_sqlite

    return await anyio.to_thread.run_sync(lambda: copy_sqlite(source, url, progress=progress))


async def file_head(path: Path) -> tuple[int, str]:
    """The (seq, hash) of the chain's head in the SQLite file at `path`, read without writing."""
    import anyio.to_thread

    def run() -> tuple[int, str]:
        with read_only(path) as reader:
            return reader.head()

    return await anyio.to_thread.run_sync(run)
