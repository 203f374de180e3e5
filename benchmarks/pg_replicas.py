"""Several replicas as processes on one PostgreSQL database, beside SQLite, in one run.

1. Evidence append: 50 concurrent writers, one record per append (synchronous_commit on, the
   server's default), on one SQLite file (one process), one PostgreSQL replica (one process) and
   three PostgreSQL replicas (three processes, the writers split between them, started together).
   The chain is verified after each run: a figure over a broken chain means nothing.
2. Cross-replica release: two real `mcp-gate serve --http` replicas A and B; an agent's call held
   at A, approved through B's API; the time from sending the decision to B until the downstream
   behind A receives the call (both clocks are this machine's).

    python benchmarks/pg_replicas.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
        [--writers 50] [--seconds 5] [--releases 40]

Run from the repository root (it uses the tests' replica helpers). Tables go to stdout as
markdown, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_gate.evidence import new_event  # noqa: E402
from mcp_gate.storage.base import Store  # noqa: E402
from mcp_gate.storage.postgres import PostgresStore  # noqa: E402
from mcp_gate.storage.sqlite import SQLiteStore  # noqa: E402


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def append_for(store: Store, writers: int, seconds: float, start_at: float) -> dict[str, Any]:
    """`writers` tasks appending one record per call from `start_at` (wall clock) for `seconds`."""
    latencies: list[float] = []
    await anyio.sleep(max(0.0, start_at - time.time()))
    deadline = time.perf_counter() + seconds

    async def writer(n: int) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            await store.append(
                [new_event("call.requested", ts="2026-12-07T12:00:00Z", correlation_id=f"w{n}")]
            )
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(writers):
            tg.start_soon(writer, n)
    return {"count": len(latencies), "took": time.perf_counter() - began, "latencies": latencies}


def append_child(url: str, writers: int, seconds: float, start_at: float) -> None:
    async def go() -> None:
        async with await PostgresStore.open(url) as store:
            print(json.dumps(await append_for(store, writers, seconds, start_at)))

    anyio.run(go)


def summary(results: list[dict[str, Any]]) -> tuple[float, float, float, int]:
    latencies = sorted(x for r in results for x in r["latencies"])
    count = sum(r["count"] for r in results)
    took = max(r["took"] for r in results)
    return (
        count / took,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
        count,
    )


def fresh_database(dsn: str) -> tuple[str, str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, urllib.parse.urlsplit(dsn)._replace(path=f"/{name}").geturl()


def drop_database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def appends(dsn: str, writers: int, seconds: float) -> list[tuple[str, float, float, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        async with await SQLiteStore.open(Path(tmp) / "gate.db") as sqlite:
            result = await append_for(sqlite, writers, seconds, time.time())
            report = await sqlite.verify()
            assert report.ok and report.records == result["count"], report
            rows.append(("SQLite, one process", *summary([result])[:3]))
    progress("SQLite done")
    for replicas in (1, 3):
        name, url = fresh_database(dsn)
        try:
            async with await PostgresStore.open(url):  # the schema, before the children race for it
                pass
            start_at = time.time() + 3.0  # every child connected and waiting by then
            share = [writers // replicas + (1 if i < writers % replicas else 0) for i in range(replicas)]
            children = [
                subprocess.Popen(
                    [sys.executable, __file__, "--append-child", url, str(n), str(seconds), str(start_at)],
                    stdout=subprocess.PIPE,
                )
                for n in share
            ]
            results = []
            for child in children:
                out, _ = await anyio.to_thread.run_sync(child.communicate)
                results.append(json.loads(out))
            async with await PostgresStore.open(url, create=False) as store:
                report = await store.verify()
            total = sum(r["count"] for r in results)
            assert report.ok and report.records == total, report
            label = f"PostgreSQL, {replicas} replica process{'es' if replicas > 1 else ''}"
            rows.append((label, *summary(results)[:3]))
            progress(f"{label} done")
        finally:
            drop_database(dsn, name)
    return rows


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return (
        ordered[len(ordered) // 2],
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        statistics.fmean(ordered),
    )


async def releases(
    dsn: str, count: int
) -> tuple[tuple[float, float, float], tuple[float, float, float], int]:
    """Percentiles (p50, p99, mean ms) of the decision's round trip at B's API, and from sending the
    decision to B until the downstream at A is called; and how many calls."""
    from tests.replica_helpers import agent, api, pending, replica, replica_config

    name, url = fresh_database(dsn)
    samples: list[float] = []
    answered: list[float] = []
    committed: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = replica_config(Path(tmp), url, lease_seconds=15)
            times = Path(tmp) / "times"
            async with replica(config, "a") as a, replica(config, "b") as b, agent(a) as client:
                for i in range(count):
                    done = anyio.Event()

                    async def call(n: int = i, done: anyio.Event = done) -> None:
                        await client.call_tool("ops__deploy", {"name": f"r{n}", "seconds": 0})
                        done.set()

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call)
                        held: list[dict[str, Any]] = []
                        while not held:
                            held = await pending(b)
                            await anyio.sleep(0.02)
                        sent = time.time()
                        await api(b, "POST", f"/requests/{held[0]['id']}/approve", {})
                        answered.append((time.time() - sent) * 1000)
                        await done.wait()
                    reached = float(dict(line.split() for line in times.read_text().splitlines())[f"r{i}"])
                    samples.append((reached - sent) * 1000)
                    decided = await decided_at(url, held[0]["id"])
                    committed.append((reached - decided) * 1000)
    finally:
        drop_database(dsn, name)
    return percentiles(answered), percentiles(samples), percentiles(committed), len(samples)


async def decided_at(url: str, request_id: str) -> float:
    """The time (epoch seconds) in B's `approval.decided` record of the request."""
    async with await PostgresStore.open(url, create=False) as store:
        for record in await store.records(event_type="approval.decided"):
            if record.body.get("request_id") == request_id:
                return datetime.fromisoformat(str(record.body["ts"]).replace("Z", "+00:00")).timestamp()
    raise SystemExit(f"no approval.decided for {request_id}")


async def main(args: argparse.Namespace) -> None:
    rows = await appends(args.dsn, args.writers, args.seconds)
    answered, reached, committed, n = await releases(args.dsn, args.releases)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown CPU",
    )  # fmt: skip
    print(f"commit {commit.strip()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}")
    print(f"{args.writers} writers, one record per append, {args.seconds:g} s each, synchronous_commit on")
    print()
    print("| store | records/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for label, rate, a50, a99 in rows:
        print(f"| {label} | {rate:,.0f} | {a50:.1f} | {a99:.1f} |")
    print()
    print(f"Cross-replica release: {n} calls held at A, each approved through B's API")
    print()
    print("| interval | p50 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|")
    for label, (p50, p99, mean) in (
        ("decision sent to B's API -> B's answer", answered),
        ("decision sent to B's API -> downstream behind A called", reached),
        ("B's approval.decided record -> downstream behind A called", committed),
    ):
        print(f"| {label} | {p50:.1f} | {p99:.1f} | {mean:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--releases", type=int, default=40)
    parser.add_argument("--append-child", nargs=4, metavar=("URL", "WRITERS", "SECONDS", "START_AT"))
    parsed = parser.parse_args()
    if parsed.append_child:
        url, writers, seconds, start_at = parsed.append_child
        append_child(url, int(writers), float(seconds), float(start_at))
    else:
        anyio.run(main, parsed)
