"""Which PostgreSQL driver for the store: psycopg 3 or asyncpg, measured on the two paths that matter.

(a) the evidence append: 50 concurrent writers, each transaction takes the chain head under a row
    lock on a one-row head table (or a transaction-scoped advisory lock with `--lock advisory`),
    inserts a batch of N records with seq and hash in one statement, moves the head and commits,
    with synchronous_commit on;
(b) the release: many contenders run one conditional `UPDATE ... WHERE state = 'approved'
    RETURNING` in one transaction each against the same request: exactly one must win.

Three clients: asyncpg with its pool, psycopg 3 async with psycopg_pool, and psycopg 3 sync
connections driven from worker threads (the shape a store with a synchronous `Tx` uses). Each run
creates its own database and drops it afterwards.

    python benchmarks/pg_driver.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
        [--writers 50] [--batch 1,10] [--seconds 5] [--pool 10] [--rounds 200] [--contenders 50]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg
import psycopg_pool

from mcp_gate.evidence import GENESIS_HASH, canonical_json, new_event

SCHEMA = """
CREATE TABLE head (id INT PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, entry_hash TEXT NOT NULL);
INSERT INTO head VALUES (1, 0, '{genesis}');
CREATE TABLE evidence (seq BIGINT PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL,
                       prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL);
CREATE TABLE approvals (id TEXT PRIMARY KEY, state TEXT NOT NULL, executed_by INT);
"""

HEAD_ROW = "SELECT seq, entry_hash FROM head WHERE id = 1 FOR UPDATE"
# The lock and the read must be two statements: under READ COMMITTED a statement's snapshot is taken
# before it runs, so a head read in the locking statement itself may be one commit old.
ADVISORY = "SELECT pg_advisory_xact_lock(4242)"
HEAD_READ = "SELECT seq, entry_hash FROM head WHERE id = 1"
INSERT = (
    "INSERT INTO evidence (seq, event_id, body, prev_hash, entry_hash) "
    "SELECT * FROM unnest({0}::bigint[], {1}::text[], {2}::text[], {3}::text[], {4}::text[])"
)
MOVE_HEAD = "UPDATE head SET seq = {0}, entry_hash = {1} WHERE id = 1"
RELEASE = (
    "UPDATE approvals SET state = 'executing', executed_by = {0} "
    "WHERE id = {1} AND state = 'approved' RETURNING id"
)


def chained(seq: int, prev: str, n: int) -> tuple[list[Any], int, str]:
    """N records after (seq, prev): columns as arrays, the new seq and head hash."""
    seqs, ids, bodies, prevs, hashes = [], [], [], [], []
    for _ in range(n):
        seq += 1
        body = new_event("call.requested", ts="2026-12-07T12:00:00.000000Z", correlation_id="c", seq=seq)
        text = canonical_json(body)
        entry = hashlib.sha256(prev.encode("ascii") + text).hexdigest()
        seqs.append(seq)
        ids.append(body["event_id"])
        bodies.append(text.decode())
        prevs.append(prev)
        hashes.append(entry)
        prev = entry
    return [seqs, ids, bodies, prevs, hashes], seq, prev


@dataclass
class Result:
    driver: str
    path: str
    rate: float  # records/s or releases/s
    p50_ms: float
    p99_ms: float
    note: str = ""


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# the three clients, each as "run one transaction" callables


class AsyncpgClient:
    name = "asyncpg"

    async def open(self, dsn: str, size: int) -> None:
        self.pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size)

    async def close(self) -> None:
        await self.pool.close()

    async def append(self, n: int, lock: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if lock == "advisory":
                await conn.execute(ADVISORY)
            row = await conn.fetchrow(HEAD_ROW if lock == "row" else HEAD_READ)
            seq, prev = row[0], row[1]
            cols, seq, prev = chained(seq, prev, n)
            await conn.execute(INSERT.format("$1", "$2", "$3", "$4", "$5"), *cols)
            await conn.execute(MOVE_HEAD.format("$1", "$2"), seq, prev)

    async def release(self, contender: int, rid: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            return await conn.fetchrow(RELEASE.format("$1", "$2"), contender, rid) is not None

    async def run(self, sql: str, *args: Any) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(sql, *args)


class PsycopgAsyncClient:
    name = "psycopg async"

    async def open(self, dsn: str, size: int) -> None:
        self.pool = psycopg_pool.AsyncConnectionPool(dsn, min_size=size, max_size=size, open=False)
        await self.pool.open(wait=True)

    async def close(self) -> None:
        await self.pool.close()

    async def append(self, n: int, lock: str) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            if lock == "advisory":
                await conn.execute(ADVISORY)
            row = await (await conn.execute(HEAD_ROW if lock == "row" else HEAD_READ)).fetchone()
            assert row is not None
            seq, prev = row[0], row[1]
            cols, seq, prev = chained(seq, prev, n)
            await conn.execute(_insert_pg(), cols)
            await conn.execute(MOVE_HEAD.format("%s", "%s"), (seq, prev))

    async def release(self, contender: int, rid: str) -> bool:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(RELEASE.format("%s", "%s"), (contender, rid))
            return await cur.fetchone() is not None

    async def run(self, sql: str, *args: Any) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(sql.replace("$1", "%s").replace("$2", "%s"), args)


def _insert_pg() -> str:
    return INSERT.format(*["%s"] * 5)


class PsycopgThreadClient:
    """psycopg 3 sync connections, one transaction per worker-thread hop."""

    name = "psycopg sync+threads"

    async def open(self, dsn: str, size: int) -> None:
        self.pool = psycopg_pool.ConnectionPool(dsn, min_size=size, max_size=size, open=True)
        self.pool.wait()
        self.executor = ThreadPoolExecutor(max_workers=size)

    async def close(self) -> None:
        self.executor.shutdown()
        self.pool.close()

    async def _hop(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def append(self, n: int, lock: str) -> None:
        def tx() -> None:
            with self.pool.connection() as conn, conn.transaction():
                if lock == "advisory":
                    conn.execute(ADVISORY)
                row = conn.execute(HEAD_ROW if lock == "row" else HEAD_READ).fetchone()
                assert row is not None
                seq, prev = row[0], row[1]
                cols, seq, prev = chained(seq, prev, n)
                conn.execute(_insert_pg(), cols)
                conn.execute(MOVE_HEAD.format("%s", "%s"), (seq, prev))

        await self._hop(tx)

    async def release(self, contender: int, rid: str) -> bool:
        def tx() -> bool:
            with self.pool.connection() as conn, conn.transaction():
                return conn.execute(RELEASE.format("%s", "%s"), (contender, rid)).fetchone() is not None

        result: bool = await self._hop(tx)
        return result

    async def run(self, sql: str, *args: Any) -> None:
        def tx() -> None:
            with self.pool.connection() as conn:
                conn.execute(sql.replace("$1", "%s").replace("$2", "%s"), args)

        await self._hop(tx)


# the two paths


async def bench_append(client: Any, writers: int, batch: int, seconds: float, lock: str) -> Result:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    done = 0

    async def writer() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await client.append(batch, lock)
            latencies.append(time.perf_counter() - start)
            done += batch

    began = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    took = time.perf_counter() - began
    return Result(
        client.name,
        f"append x{batch} ({lock} lock)",
        done / took,
        _pct(latencies, 0.5),
        _pct(latencies, 0.99),
    )


async def bench_release(client: Any, rounds: int, contenders: int) -> Result:
    latencies: list[float] = []
    round_times: list[float] = []
    bad = 0
    for r in range(rounds):
        rid = f"r{r}-{uuid.uuid4().hex[:6]}"
        await client.run("INSERT INTO approvals (id, state) VALUES ($1, 'approved')", rid)

        async def contend(k: int, rid: str = rid) -> bool:
            start = time.perf_counter()
            won: bool = await client.release(k, rid)
            latencies.append(time.perf_counter() - start)
            return won

        began = time.perf_counter()
        wins = await asyncio.gather(*(contend(k) for k in range(contenders)))
        round_times.append(time.perf_counter() - began)
        bad += sum(wins) != 1
    return Result(
        client.name,
        f"release, {contenders} contenders",
        rounds / sum(round_times),
        _pct(latencies, 0.5),
        _pct(latencies, 0.99),
        "exactly one winner every round" if bad == 0 else f"{bad} rounds without exactly one winner",
    )


def _machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs ({model}), {platform.python_implementation()} {platform.python_version()}"


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--batch", default="1,10")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--contenders", type=int, default=50)
    parser.add_argument("--lock", choices=["row", "advisory", "both"], default="both")
    args = parser.parse_args()
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(args.dsn, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urllib.parse.urlsplit(args.dsn)._replace(path=f"/{name}").geturl()
    results: list[Result] = []
    sync_commit = ""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            sync_commit = str(conn.execute("SHOW synchronous_commit").fetchone()[0])  # type: ignore[index]
        locks = ["row", "advisory"] if args.lock == "both" else [args.lock]
        for cls in (AsyncpgClient, PsycopgAsyncClient, PsycopgThreadClient):
            client = cls()
            await client.open(dsn, args.pool)
            try:
                await client.run("DROP TABLE IF EXISTS head, evidence, approvals")
                for statement in SCHEMA.format(genesis=GENESIS_HASH).split(";\n"):
                    if statement.strip():
                        await client.run(statement)
                for lock in locks:
                    for batch in (int(b) for b in args.batch.split(",")):
                        results.append(await bench_append(client, args.writers, batch, args.seconds, lock))
                results.append(await bench_release(client, args.rounds, args.contenders))
                await _check_chain(dsn)
            finally:
                await client.close()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    print(f"commit {_commit()}, {_machine()}, threads {threading.active_count()}")
    print(
        f"PostgreSQL at {args.dsn} (synchronous_commit={sync_commit}); {args.writers} writers, "
        f"pool {args.pool}, {args.seconds:g} s per append row; release: {args.rounds} rounds"
    )
    print()
    print("| driver | path | per s | p50 ms | p99 ms | note |")
    print("|---|---|---:|---:|---:|---|")
    for r in results:
        unit = "records" if r.path.startswith("append") else "releases"
        print(
            f"| {r.driver} | {r.path} | {r.rate:,.0f} {unit} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.note} |"
        )


async def _check_chain(dsn: str) -> None:
    """The appends above left one gapless chain (else the figures mean nothing)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT seq, prev_hash, entry_hash FROM evidence ORDER BY seq").fetchall()
    prev = GENESIS_HASH
    for expected, (seq, prev_hash, entry_hash) in enumerate(rows, start=1):
        if seq != expected or prev_hash != prev:
            raise SystemExit(f"the chain broke at seq {expected}")
        prev = entry_hash


def run(main_coro: Callable[[], Awaitable[None]] = main) -> None:
    asyncio.run(main_coro())


if __name__ == "__main__":
    run()
