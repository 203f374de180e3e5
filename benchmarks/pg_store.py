"""Evidence append through the stores themselves: 50 concurrent writers on one `SQLiteStore`, on one
`PostgresStore`, and spread over three `PostgresStore`s on one database (three replicas' group
commits, here in one process), each writer appending one record per call, synchronous_commit on.

    python benchmarks/pg_store.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
        [--writers 50] [--seconds 5]

Each PostgreSQL run uses a database of its own, dropped afterwards. The chain is verified after
each run (a figure over a broken chain means nothing).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from pathlib import Path

import anyio
import psycopg

from mcp_gate.evidence import new_event
from mcp_gate.storage.base import Store
from mcp_gate.storage.postgres import PostgresStore
from mcp_gate.storage.sqlite import SQLiteStore


async def run(stores: Sequence[Store], writers: int, seconds: float) -> tuple[float, float, float]:
    """(records/s, p50 ms, p99 ms) of `writers` tasks appending one record per call, round-robin
    over `stores`, for `seconds`."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def writer(store: Store, n: int) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await store.append(
                [new_event("call.requested", ts="2026-12-07T12:00:00Z", correlation_id=f"w{n}")]
            )
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(writers):
            tg.start_soon(writer, stores[n % len(stores)], n)
    took = time.perf_counter() - began
    report = await stores[0].verify()
    if not report.ok or report.records != len(latencies):
        raise SystemExit(f"the chain is not whole after the run: {report}")
    ordered = sorted(latencies)
    return len(latencies) / took, ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99)] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with await SQLiteStore.open(Path(tmp) / "gate.db") as sqlite:
            rows.append(("SQLite, one store", *await run([sqlite], args.writers, args.seconds)))
    for replicas in (1, 3):
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = urllib.parse.urlsplit(args.dsn)._replace(path=f"/{name}").geturl()
        try:
            stores = [await PostgresStore.open(url) for _ in range(replicas)]
            try:
                label = f"PostgreSQL, {replicas} store{'s' if replicas > 1 else ''}"
                rows.append((label, *await run(stores, args.writers, args.seconds)))
            finally:
                for store in stores:
                    await store.close()
        finally:
            with psycopg.connect(args.dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown CPU",
    )  # fmt: skip
    print(f"commit {commit.strip()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}")
    print(f"{args.writers} writers, one record per append, {args.seconds:g} s each")
    print()
    print("| store | records/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for label, rate, p50, p99 in rows:
        print(f"| {label} | {rate:,.0f} | {p50:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    anyio.run(main)
