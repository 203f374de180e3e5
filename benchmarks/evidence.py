"""Evidence log throughput and verification speed.

Append throughput (records/s) with 1 and 50 concurrent writers on one `SQLiteStore`
(synchronous=FULL, WAL), with the store's group commit, against a baseline that commits each
write alone (one BEGIN IMMEDIATE ... COMMIT and fsync per write, as the store did before group
commit). Then `audit verify` speed over files of 100,000 and 1,000,000 records, each built with
bulk inserts of precomputed rows and verified in a fresh child process so its peak RSS is its own,
and the same files exported to a .tar.gz bundle and the bundle verified offline (each in a child).

    python benchmarks/evidence.py                # full run (a few minutes on 2 cores)
    python benchmarks/evidence.py --quick        # smoke run: 2,000 appends, 20,000-record verify
    python benchmarks/evidence.py --sizes 100000 # choose the verify sizes

Tables go to stdout as markdown; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from mcp_gate.bundle import Progress
from mcp_gate.evidence import GENESIS_HASH, new_event
from mcp_gate.storage import verify_file
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.storage.sqlite.tx import _append, _in_transaction


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def event(i: int) -> dict[str, Any]:
    return new_event(
        "call.requested",
        ts="2026-11-24T12:00:00.000000Z",
        correlation_id=uuid.uuid4().hex,
        requester={"agent": "bench", "owner": "alice@example.com"},
        server="notes",
        tool="echo",
        args={"text": f"hello {i}"},
    )


async def group_commit(path: Path, writers: int, per_writer: int) -> float:
    async with await SQLiteStore.open(path) as store:

        async def writer(w: int) -> None:
            for i in range(per_writer):
                await store.append([event(w * per_writer + i)])

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for w in range(writers):
                tg.start_soon(writer, w)
        elapsed = time.perf_counter() - started
        assert (await store.verify()).ok
    return writers * per_writer / elapsed


async def one_commit_each(path: Path, writers: int, per_writer: int) -> float:
    """The baseline: every write its own transaction under one lock, one fsync each."""
    async with await SQLiteStore.open(path) as store:
        conn = store._require_open()
        lock = anyio.Lock()

        async def writer(w: int) -> None:
            for i in range(per_writer):
                events = [event(w * per_writer + i)]
                async with lock:
                    await anyio.to_thread.run_sync(_in_transaction, conn, lambda c, e=events: _append(c, e))

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for w in range(writers):
                tg.start_soon(writer, w)
        elapsed = time.perf_counter() - started
    return writers * per_writer / elapsed


def build_log(path: Path, count: int) -> float:
    """A valid evidence file of `count` records, written with bulk inserts (not the slow path)."""
    started = time.perf_counter()
    async_open = anyio.run(SQLiteStore.open, path)  # creates the schema
    anyio.run(async_open.close)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA journal_mode = WAL")
    prev = GENESIS_HASH
    batch: list[tuple[Any, ...]] = []
    conn.execute("BEGIN")
    for seq in range(1, count + 1):
        cid = f"{seq:032x}"
        body = {
            "args": {"text": f"hello {seq}"},
            "correlation_id": cid,
            "event_id": f"e{seq:031x}",
            "event_type": "call.requested",
            "gate": {"name": "bench", "version": "0.1.0"},
            "policy_sha256": "0" * 64,
            "requester": {"agent": "bench", "owner": "alice@example.com"},
            "seq": seq,
            "server": "notes",
            "tool": "echo",
            "ts": "2026-11-24T12:00:00.000000Z",
        }
        # ASCII, integers only: json.dumps with sorted keys is exactly RFC 8785 here.
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        entry = hashlib.sha256(prev.encode() + text.encode()).hexdigest()
        batch.append((seq, body["event_id"], body["ts"], "call.requested", cid, text, prev, entry))
        prev = entry
        if len(batch) == 50_000:
            conn.executemany("INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
            batch.clear()
    conn.executemany("INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def verify_child(path: str) -> None:
    started = time.perf_counter()
    report = anyio.run(verify_file, Path(path))
    elapsed = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"ok": report.ok, "records": report.records, "seconds": elapsed, "rss_mb": rss_mb}))


def export_child(path: str, out: str) -> None:
    """Sign a checkpoint of the head, export the whole log as a .tar.gz, and report time and peak RSS."""
    from mcp_gate.bundle import export_bundle
    from mcp_gate.checkpoints import SigningKey
    from mcp_gate.notary import Notary
    from mcp_gate.storage.sqlite.reader import read_only

    key = SigningKey.generate("mcp-gate-bench")

    async def sign() -> None:
        async with await SQLiteStore.open(Path(path), notary=Notary(key, "mcp-gate/bench")) as store:
            await store.checkpoint()

    anyio.run(sign)
    started = time.perf_counter()
    with read_only(Path(path)) as reader:
        result = export_bundle(
            reader, key, Path(out), since=None, until=None, gate={"name": "bench"},
            progress=lambda label, total: Progress(label, total, threshold=sys.maxsize),
        )  # fmt: skip
    elapsed = time.perf_counter() - started
    (Path(out).parent / "pubkey.txt").write_text(key.verifier.to_text())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"records": result.count, "seconds": elapsed, "rss_mb": rss_mb}))


def bundle_child(out: str) -> None:
    from mcp_gate.bundle import verify_bundle
    from mcp_gate.checkpoints import VerifierKey

    key = VerifierKey.from_text((Path(out).parent / "pubkey.txt").read_text())
    started = time.perf_counter()
    report = verify_bundle(Path(out), key, progress=Progress("verifying", 0, threshold=sys.maxsize))
    elapsed = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"ok": report.ok, "records": report.records, "seconds": elapsed, "rss_mb": rss_mb}))


def child(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--sizes", type=int, nargs="+", help="verify sizes (default 100000 1000000)")
    parser.add_argument("--appends", type=int, default=10_000, help="records per append run (default 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each append case (default 3)")
    parser.add_argument("--verify-child", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--export-child", nargs=2, metavar=("PATH", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--bundle-child", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.verify_child:
        verify_child(args.verify_child)
        return
    if args.export_child:
        export_child(*args.export_child)
        return
    if args.bundle_child:
        bundle_child(args.bundle_child)
        return
    appends = 2_000 if args.quick else args.appends
    sizes = args.sizes or ([20_000] if args.quick else [100_000, 1_000_000])
    print(f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {platform.machine()}\n")
    repeats = 1 if args.quick else max(1, args.repeats)
    print(f"Append runs: {repeats} of each case, median and range of records/s\n")
    print("| writers | commits | records | records/s (median) | min | max |")
    print("|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as directory:
        for writers in (1, 50):
            per = max(1, appends // writers) if writers > 1 else max(1, appends // 10)
            for name, run in (("one per write", one_commit_each), ("group commit", group_commit)):
                rates = []
                for attempt in range(repeats):
                    path = Path(directory) / f"{name.replace(' ', '-')}-{writers}-{attempt}.db"
                    progress(
                        f"appending {writers * per} records, {writers} writer(s), {name}, run {attempt + 1}"
                    )
                    rates.append(anyio.run(run, path, writers, per))
                print(
                    f"| {writers} | {name} | {writers * per} | {statistics.median(rates):,.0f} | "
                    f"{min(rates):,.0f} | {max(rates):,.0f} |",
                    flush=True,
                )
        print("\n| records | build s | verify s | records/s | peak RSS MB | ok |")
        print("|---:|---:|---:|---:|---:|---|")
        exports: list[str] = []
        for size in sizes:
            path = Path(directory) / f"verify-{size}.db"
            progress(f"building a {size}-record file...")
            built = build_log(path, size)
            progress(f"verifying {size} records in a child process...")
            done = subprocess.run(
                [sys.executable, __file__, "--verify-child", str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout)
            rate = result["records"] / result["seconds"]
            print(
                f"| {size:,} | {built:.1f} | {result['seconds']:.2f} | {rate:,.0f} | "
                f"{result['rss_mb']:.0f} | {result['ok']} |",
                flush=True,
            )
            out = Path(directory) / f"bundle-{size}" / "evidence.tar.gz"
            out.parent.mkdir()
            progress(f"exporting {size} records to a .tar.gz in a child process...")
            exported = child("--export-child", str(path), str(out))
            progress(f"verifying the {size}-record bundle in a child process...")
            checked = child("--bundle-child", str(out))
            exports.append(
                f"| {size:,} | {exported['seconds']:.1f} | {exported['rss_mb']:.0f} | "
                f"{out.stat().st_size / 2**20:.1f} | {checked['seconds']:.1f} | {checked['rss_mb']:.0f} | "
                f"{checked['ok']} |"
            )
            path.unlink()
            shutil.rmtree(out.parent)
        print("\n| records | export s | export RSS MB | bundle MB | bundle verify s | verify RSS MB | ok |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        for line in exports:
            print(line, flush=True)


if __name__ == "__main__":
    main()
