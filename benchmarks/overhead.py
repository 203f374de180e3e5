"""What the gate costs per call: low-tier echo calls direct to a downstream and through the gate.

Runs, in one process and one run, the example notes server's `echo` tool from an SDK client
(`mcp.Client`) over stdio, directly, through a bare proxy (FastMCP's `create_proxy`,
benchmarks/bare_proxy.py: no policy, no evidence; the `bench` extra) and through a real
`mcp-gate serve` process with evidence on, sequentially and with many calls in flight, in both
protocol eras. The three are interleaved within each repeat (the order rotates) so machine noise
hits them alike; ratios are computed within a repeat and the table shows medians over repeats.
A second table gives the CPU each process spends per call (Linux /proc), a third breaks one
sequential call through an in-process gate into its parts, a fourth compares in-process gates
with metrics on and off.

    python benchmarks/overhead.py                 # full run (about 2 minutes on 2 cores)
    python benchmarks/overhead.py --quick         # smoke run
    python benchmarks/overhead.py --json out.json # also write the per-repeat figures
    python benchmarks/overhead.py --only-metrics  # only the metrics on / off comparison
    python benchmarks/overhead.py --no-proxy      # without the bare proxy (no `bench` extra)

The table goes to stdout as markdown; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import inspect
import json
import math
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import Any, TextIO

import anyio
import mcp
import mcp_types as types
from mcp.client.stdio import stdio_client

from mcp_gate.metrics import GateMetrics
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import NOTES_MANIFEST, NOTES_SERVER, notes_server_table, running_gate, write_config

ERAS = {"legacy": "2025-11-25", "auto": "2026-07-28"}
GATED_TOOL = "notes__echo"
DIRECT_TOOL = "echo"
BARE_PROXY = Path(__file__).resolve().parent / "bare_proxy.py"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- figures --------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    index = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclass(frozen=True)
class Sample:
    """One timed batch: throughput, latency (ms) and CPU per call (ms, by process role)."""

    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_ms: dict[str, float]

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds

    @classmethod
    def of(cls, latencies: list[float], seconds: float, cpu_ms: dict[str, float]) -> Sample:
        ordered = sorted(latencies)
        p50, p99 = percentile(ordered, 0.50) * 1000, percentile(ordered, 0.99) * 1000
        return cls(len(ordered), seconds, p50, p99, cpu_ms)


@dataclass(frozen=True)
class Pair:
    """A direct, a gated and (with the `bench` extra) a bare-proxy sample of one cell, taken back
    to back in the same repeat."""

    era: str
    mode: str
    repeat: int
    direct: Sample
    gate: Sample
    proxy: Sample | None = None

    @property
    def p50_ratio(self) -> float:
        return self.gate.p50_ms / self.direct.p50_ms

    @property
    def throughput_ratio(self) -> float:
        return self.gate.calls_per_s / self.direct.calls_per_s

    @property
    def proxy_p50_ratio(self) -> float:
        """Gate p50 over the bare proxy's p50 (NaN without the proxy)."""
        return math.nan if self.proxy is None else self.gate.p50_ms / self.proxy.p50_ms

    @property
    def proxy_throughput_ratio(self) -> float:
        return math.nan if self.proxy is None else self.gate.calls_per_s / self.proxy.calls_per_s

    def ratios(self) -> dict[str, float]:
        return {
            "p50_ratio": self.p50_ratio,
            "throughput_ratio": self.throughput_ratio,
            "gate_over_proxy_p50": self.proxy_p50_ratio,
            "gate_over_proxy_throughput": self.proxy_throughput_ratio,
        }


# -- load -----------------------------------------------------------------------------------

Call = Callable[[int], Awaitable[None]]


def echo_caller(client: mcp.Client, tool: str) -> Call:
    async def call(i: int) -> None:
        text = f"ping {i}"
        result = await client.call_tool(tool, {"text": text})
        ok = isinstance(result, types.CallToolResult) and not result.is_error
        if not ok or result.content != [types.TextContent(type="text", text=text)]:
            raise RuntimeError(f"{tool} did not echo {text!r}: {result}")

    return call


async def sequential(call: Call, calls: int) -> tuple[float, list[float]]:
    latencies = []
    started = time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        await call(i)
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - started, latencies


async def in_flight(call: Call, calls: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    next_index = iter(range(calls))

    async def worker() -> None:
        for i in next_index:
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return time.perf_counter() - started, latencies


# -- processes (Linux /proc; CPU figures are skipped where it is missing) ---------------------

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields after the command name


def children(pid: int) -> set[int]:
    found = set()
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads."""
    fields = _stat(pid)
    return math.nan if fields is None else (int(fields[11]) + int(fields[12])) / TICK


@dataclass
class Target:
    """One client connection to time: its call and the processes that serve it, by role."""

    call: Call
    processes: dict[str, int]
    calls: int = 0

    async def counted(self, i: int) -> None:
        self.calls += 1
        await self.call(i)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: this (client) process and each serving process."""
        return {"client": time.process_time()} | {r: cpu_seconds(p) for r, p in self.processes.items()}

    async def run(self, calls: int, concurrency: int) -> Sample:
        before = self.cpu()
        if concurrency == 1:
            seconds, latencies = await sequential(self.counted, calls)
        else:
            seconds, latencies = await in_flight(self.counted, calls, concurrency)
        after = self.cpu()
        cpu_ms = {role: (after[role] - before[role]) / calls * 1000 for role in before}
        return Sample.of(latencies, seconds, cpu_ms)


# -- setup ----------------------------------------------------------------------------------


def gate_config(directory: Path, store_url: str | None = None) -> Path:
    """A gate.toml with the notes server (its default `protocol`: the gate talks to it in legacy);
    with `store_url`, its store is that PostgreSQL database instead of a SQLite file."""
    notes_dir = directory / "notes"
    return write_config(
        directory,
        servers={"notes": notes_server_table(notes_dir, test_tools=False)},
        manifests={"notes": NOTES_MANIFEST.read_text(encoding="utf-8")},
        extra="" if store_url is None else f"[store]\nurl = {json.dumps(store_url)}\n",
    )


@contextmanager
def fresh_database(dsn: str) -> Iterator[str]:
    """A new, empty database on the server at `dsn` (its URL), dropped afterwards."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urllib.parse.urlsplit(dsn)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def inherited(*names: str) -> dict[str, str]:
    """The named variables of our environment (the SDK gives servers only a minimal one)."""
    return {name: os.environ[name] for name in names if name in os.environ}


async def open_target(
    stack: AsyncExitStack,
    params: mcp.StdioServerParameters,
    mode: str,
    tool: str,
    errlog: TextIO,
    *,
    front: str | None = None,
) -> Target:
    """A connected client; `front` names the role of a process that sits in front of the notes
    server (the gate, the proxy), whose own child is then the downstream."""
    before = children(os.getpid())
    client = await stack.enter_async_context(mcp.Client(stdio_client(params, errlog=errlog), mode=mode))
    if client.protocol_version != ERAS[mode]:
        raise RuntimeError(f"mode={mode!r} negotiated {client.protocol_version}, expected {ERAS[mode]}")
    await client.call_tool(tool, {"text": "warm"})  # a proxy may start its downstream on first use
    spawned = sorted(children(os.getpid()) - before)
    processes = {"server": spawned[0]} if len(spawned) == 1 else {}
    if processes and front is not None:
        grandchildren = sorted(children(spawned[0]))
        processes = {front: spawned[0]}
        if len(grandchildren) == 1:
            processes["downstream"] = grandchildren[0]
    return Target(echo_caller(client, tool), processes, calls=1)  # the warm-up call above counts


def proxy_available() -> bool:
    return importlib.util.find_spec("fastmcp") is not None


async def count_executed(db: Path) -> int:
    store = await SQLiteStore.open(db)
    try:
        return len(await store.records(event_type="call.executed"))
    finally:
        await store.close()


# -- the stdio comparison -------------------------------------------------------------------


async def compare(args: argparse.Namespace, work: Path, store_url: str | None = None) -> list[Pair]:
    work.mkdir(parents=True, exist_ok=True)
    errlog = (work / "children.stderr.log").open("a", encoding="utf-8")
    targets: dict[tuple[str, str], Target] = {}
    pairs: list[Pair] = []
    try:
        async with AsyncExitStack() as stack:
            for era in ERAS:
                notes_dir = work / f"direct-{era}" / "notes"
                notes_dir.mkdir(parents=True)
                direct = mcp.StdioServerParameters(
                    command=sys.executable, args=[str(NOTES_SERVER)], env={"NOTES_DIR": str(notes_dir)}
                )
                config = gate_config(work / f"gate-{era}", store_url)
                gate = mcp.StdioServerParameters(
                    command=sys.executable,
                    args=["-m", "mcp_gate", "serve", "--config", str(config)],
                    env=inherited("PYTHONPATH"),  # so a checkout on PYTHONPATH is what gets measured
                )
                progress(f"starting the direct server, the bare proxy and the gate ({ERAS[era]})...")
                targets[era, "direct"] = await open_target(stack, direct, era, DIRECT_TOOL, errlog)
                if args.proxy:
                    notes_dir = work / f"proxy-{era}" / "notes"
                    notes_dir.mkdir(parents=True)
                    proxy = mcp.StdioServerParameters(
                        command=sys.executable, args=[str(BARE_PROXY)], env={"NOTES_DIR": str(notes_dir)}
                    )
                    targets[era, "proxy"] = await open_target(
                        stack, proxy, era, DIRECT_TOOL, errlog, front="proxy"
                    )
                targets[era, "gate"] = await open_target(stack, gate, era, GATED_TOOL, errlog, front="gate")

            progress(f"warming up ({args.warmup} calls per client)...")
            for target in targets.values():
                for i in range(args.warmup):
                    await target.counted(i)

            modes = [("sequential", 1), (f"{args.concurrency} in flight", args.concurrency)]
            kinds = ["direct", "proxy", "gate"] if args.proxy else ["direct", "gate"]
            for repeat in range(args.repeats):
                turn = repeat % len(kinds)
                order = kinds[turn:] + kinds[:turn]
                for era in ERAS:
                    for mode, concurrency in modes:
                        taken: dict[str, Sample] = {}
                        for kind in order:
                            target = targets[era, kind]
                            for i in range(args.warmup // 5):  # settle after switching targets
                                await target.counted(i)
                            taken[kind] = await target.run(args.calls, concurrency)
                        pair = Pair(era, mode, repeat + 1, taken["direct"], taken["gate"], taken.get("proxy"))
                        pairs.append(pair)
                        bare = (
                            ""
                            if pair.proxy is None
                            else f"proxy {pair.proxy.calls_per_s:5.0f}/s p50 {pair.proxy.p50_ms:5.2f} ms | "
                        )
                        progress(
                            f"repeat {repeat + 1}/{args.repeats} {ERAS[era]} {mode:>13}: "
                            f"direct {pair.direct.calls_per_s:5.0f}/s p50 {pair.direct.p50_ms:5.2f} ms | "
                            f"{bare}"
                            f"gate {pair.gate.calls_per_s:5.0f}/s p50 {pair.gate.p50_ms:6.2f} ms | "
                            f"p50 x{pair.p50_ratio:.2f}"
                        )
    except BaseException:
        errlog.flush()
        tail = (work / "children.stderr.log").read_text(encoding="utf-8", errors="replace").splitlines()
        progress("the servers' stderr ended with:\n" + "\n".join(tail[-15:]))
        raise
    finally:
        errlog.close()

    if store_url is not None:  # both eras' gates wrote to the one database
        from mcp_gate.storage.postgres import PostgresStore

        gated = sum(targets[era, "gate"].calls for era in ERAS)
        async with await PostgresStore.open(store_url, create=False) as store:
            executed = len(await store.records(event_type="call.executed"))
        if executed != gated:
            raise RuntimeError(f"PostgreSQL: {executed} call.executed records for {gated} gated calls")
        progress(f"evidence (PostgreSQL): {executed} call.executed records for {gated} gated calls")
        return pairs
    for era in ERAS:
        gated = targets[era, "gate"].calls
        executed = await count_executed(work / f"gate-{era}" / "data" / "gate.db")
        if executed != gated:
            raise RuntimeError(f"{ERAS[era]}: {executed} call.executed records for {gated} gated calls")
        progress(f"evidence ({ERAS[era]} gate): {executed} call.executed records for {gated} gated calls")
    return pairs


# -- the in-process breakdown ---------------------------------------------------------------

STORE_WRITES = ("append", "transact", "set_pin", "mark_drift", "accept_drift")
STORE_READS = ("read", "records", "head", "get_pin", "list_pins")


class Timers:
    """Wall time spent inside wrapped functions, summed per name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + 1

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        """Time `obj.attr` (a coroutine or plain function) by replacing it on the instance."""
        inner = getattr(obj, attr, None)
        if inner is None:
            return
        if inspect.iscoroutinefunction(inner):

            @functools.wraps(inner)
            async def timed_async(*a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await inner(*a, **kw)
                finally:
                    self.add(name, time.perf_counter() - t0)

            setattr(obj, attr, timed_async)
        else:

            @functools.wraps(inner)
            def timed(*a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return inner(*a, **kw)
                finally:
                    self.add(name, time.perf_counter() - t0)

            setattr(obj, attr, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.counts.clear()

    def ms_per(self, name: str, calls: int) -> float:
        return self.seconds.get(name, 0.0) / calls * 1000


@dataclass(frozen=True)
class Part:
    what: str
    ms_per_call: float
    note: str


async def breakdown(args: argparse.Namespace, work: Path) -> list[Part]:
    """Time the parts of sequential calls through an in-process gate (front over memory)."""
    config = gate_config(work / "in-process")
    timers = Timers()
    progress(f"in-process breakdown: {args.profile_calls} sequential calls...")
    async with running_gate(config) as front:
        gateway = front.gateway
        timers.wrap(gateway, "call", "gateway")
        timers.wrap(gateway.downstreams["notes"], "call", "downstream")
        for attr in STORE_WRITES:
            timers.wrap(gateway.store, attr, "store writes")
        for attr in STORE_READS:
            timers.wrap(gateway.store, attr, "store reads")
        timers.wrap(gateway, "_validate", "validate")
        timers.wrap(gateway, "event", "event")
        async with mcp.Client(front.server, mode="legacy") as client:
            call = echo_caller(client, GATED_TOOL)
            for i in range(args.warmup):
                await call(i)
            timers.reset()
            cpu0 = time.process_time()
            seconds, _ = await sequential(call, args.profile_calls)
            cpu = time.process_time() - cpu0
    n = args.profile_calls
    ms = {name: timers.ms_per(name, n) for name in timers.seconds}
    writes = timers.counts.get("store writes", 0) / n
    reads = timers.counts.get("store reads", 0) / n
    whole = seconds / n * 1000
    named = ("downstream", "store writes", "store reads", "validate", "event")
    commit = fsync_commit_ms(work / "commit-probe.db")
    parts = [
        Part(
            "whole call, client to client",
            whole,
            f"in-process front (no stdio on the agent side); this process used {cpu / n * 1000:.2f} ms CPU",
        ),
        Part(
            "downstream round trip",
            ms.get("downstream", 0.0),
            "SDK client + stdio + notes server: the hop a direct legacy client makes",
        ),
        Part(
            f"evidence writes ({writes:.0f} transactions)",
            ms.get("store writes", 0.0),
            "each a worker-thread hop and one BEGIN IMMEDIATE ... COMMIT (events, hash chain, in-flight "
            f"marker); a bare fsync'd commit on this disk: {commit:.2f} ms",
        ),
        Part("building evidence events", ms.get("event", 0.0), "uuid, timestamp, field merge"),
        Part("jsonschema validation", ms.get("validate", 0.0), "validator cached per pin"),
        Part(
            "rest of the gate pipeline",
            ms.get("gateway", 0.0) - sum(ms.get(k, 0.0) for k in named),
            "lookup, canonical JSON + SHA-256 of arguments and result, redaction, policy, result dump",
        ),
        Part(
            "front MCP server + in-memory client",
            whole - ms.get("gateway", 0.0),
            "SDK: parse, dispatch, validate and serialise request and result, on both sides",
        ),
    ]
    if reads:
        parts.insert(3, Part(f"store reads ({reads:.1f} per call)", ms.get("store reads", 0.0), ""))
    return parts


@dataclass(frozen=True)
class MetricsCost:
    """Sequential echo calls through an in-process gate with metrics on and off, one repeat."""

    repeat: int
    on_ms: float
    off_ms: float

    @property
    def ratio(self) -> float:
        return self.on_ms / self.off_ms


async def metrics_cost(args: argparse.Namespace, work: Path) -> list[MetricsCost]:
    """The same calls through two in-process gates, one counting into its registry and one with
    metrics off, interleaved in chunks so machine noise hits both alike."""
    results = []
    chunk = max(1, args.profile_calls // 10)
    for repeat in range(args.repeats):
        progress(f"metrics on/off, repeat {repeat + 1}: {args.profile_calls} sequential calls each...")
        async with AsyncExitStack() as stack:
            calls: dict[bool, Call] = {}
            for on in (True, False):
                config = gate_config(work / f"metrics-{'on' if on else 'off'}-{repeat}")
                front = await stack.enter_async_context(running_gate(config, metrics=GateMetrics(enabled=on)))
                client = await stack.enter_async_context(mcp.Client(front.server, mode="legacy"))
                calls[on] = echo_caller(client, GATED_TOOL)
                for i in range(args.warmup):
                    await calls[on](i)
            latencies: dict[bool, list[float]] = {True: [], False: []}
            for start in range(0, args.profile_calls, chunk):
                order = (True, False) if (start // chunk) % 2 == 0 else (False, True)
                for on in order:
                    _, taken = await sequential(calls[on], min(chunk, args.profile_calls - start))
                    latencies[on].extend(taken)
        p50 = {on: percentile(sorted(v), 0.5) * 1000 for on, v in latencies.items()}
        results.append(MetricsCost(repeat, p50[True], p50[False]))
    return results


def metrics_table(costs: list[MetricsCost]) -> str:
    lines = [
        "| in-process gate, sequential echo | p50 ms |",
        "|---|---|",
        f"| metrics on | {med([c.on_ms for c in costs]):.3f} |",
        f"| metrics off | {med([c.off_ms for c in costs]):.3f} |",
        f"| on / off (median of repeats) | {med([c.ratio for c in costs]):.3f} |",
    ]
    return "\n".join(lines)


def fsync_commit_ms(path: Path) -> float:
    """Median ms of one small committed transaction with the store's settings (WAL, synchronous=FULL)."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        timings = []
        for _ in range(200):
            t0 = time.perf_counter()
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO t (body) VALUES (?)", ("x" * 600,))
            connection.execute("COMMIT")
            timings.append(time.perf_counter() - t0)
        return statistics.median(timings) * 1000
    finally:
        connection.close()


# -- output ---------------------------------------------------------------------------------


def cells(pairs: list[Pair], concurrency: int) -> list[tuple[str, str, list[Pair]]]:
    modes = ("sequential", f"{concurrency} in flight")
    return [
        (era, mode, [p for p in pairs if p.era == era and p.mode == mode]) for era in ERAS for mode in modes
    ]


def med(values: list[float]) -> float:
    return statistics.median(values)


def table(pairs: list[Pair], concurrency: int) -> str:
    proxied = all(p.proxy is not None for p in pairs)
    lines = [
        "| era | mode | direct calls/s | direct p50 / p99 ms "
        + ("| proxy calls/s | proxy p50 / p99 ms " if proxied else "")
        + "| gate calls/s | gate p50 / p99 ms | p50 gate/direct | throughput gate/direct "
        + ("| p50 gate/proxy | throughput gate/proxy |" if proxied else "|"),
        "|---|---|" + "---:|" * (10 if proxied else 6),
    ]

    def figures(samples: list[Sample]) -> str:
        return (
            f"| {med([s.calls_per_s for s in samples]):.0f} "
            f"| {med([s.p50_ms for s in samples]):.2f} / {med([s.p99_ms for s in samples]):.2f} "
        )

    for era, mode, cell in cells(pairs, concurrency):
        line = f"| {ERAS[era]} ({era}) | {mode} " + figures([p.direct for p in cell])
        if proxied:
            line += figures([p.proxy for p in cell if p.proxy is not None])
        line += figures([p.gate for p in cell])
        line += (
            f"| x{med([p.p50_ratio for p in cell]):.2f} | x{med([p.throughput_ratio for p in cell]):.2f} |"
        )
        if proxied:
            line += (
                f" x{med([p.proxy_p50_ratio for p in cell]):.2f} "
                f"| x{med([p.proxy_throughput_ratio for p in cell]):.2f} |"
            )
        lines.append(line)
    return "\n".join(lines)


def cpu_table(pairs: list[Pair], concurrency: int) -> str | None:
    """CPU ms per call of each process, or None where /proc gave no figures."""

    def cpu(samples: list[Sample], role: str) -> str:
        values = [s.cpu_ms.get(role, math.nan) for s in samples]
        return "?" if any(math.isnan(v) for v in values) else f"{med(values):.2f}"

    if not any(p.gate.cpu_ms.get("gate") for p in pairs):
        return None
    proxied = all(p.proxy is not None for p in pairs)
    lines = [
        "CPU per call, ms (same runs):",
        "",
        "| era | mode | direct: client / server "
        + ("| proxy: client / proxy / downstream " if proxied else "")
        + "| gate: client / gate / downstream |",
        "|---|---|---:|---:|" + ("---:|" if proxied else ""),
    ]
    for era, mode, cell in cells(pairs, concurrency):
        d, g = [p.direct for p in cell], [p.gate for p in cell]
        line = f"| {ERAS[era]} | {mode} | {cpu(d, 'client')} / {cpu(d, 'server')} "
        if proxied:
            x = [p.proxy for p in cell if p.proxy is not None]
            line += f"| {cpu(x, 'client')} / {cpu(x, 'proxy')} / {cpu(x, 'downstream')} "
        line += f"| {cpu(g, 'client')} / {cpu(g, 'gate')} / {cpu(g, 'downstream')} |"
        lines.append(line)
    return "\n".join(lines)


def parts_table(parts: list[Part], calls: int) -> str:
    lines = [
        f"In-process gate, per call (legacy front, sequential, mean of {calls} calls):",
        "",
        "| part | ms per call | what it is |",
        "|---|---:|---|",
    ]
    lines.extend(f"| {p.what} | {p.ms_per_call:.2f} | {p.note} |" for p in parts)
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per timed batch (default 2000)")
    parser.add_argument("--concurrency", type=int, default=50, help="calls in flight (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians are reported (default 3)")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up calls per client (default 100)")
    parser.add_argument(
        "--profile-calls", type=int, default=2000, help="calls timed in the breakdown (default 2000)"
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (few calls, one repeat)")
    parser.add_argument(
        "--only-metrics", action="store_true", help="only the in-process metrics on / off comparison"
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the per-repeat figures here")
    parser.add_argument(
        "--no-proxy", dest="proxy", action="store_false", help="leave out the bare FastMCP proxy baseline"
    )
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        help="also run the stdio comparison with the gates' store on a fresh database of this "
        "PostgreSQL server (for example postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    args = parser.parse_args(argv)
    if args.proxy and not proxy_available():
        progress("fastmcp is not installed (pip install -e '.[bench]'): no bare-proxy baseline this run")
        args.proxy = False
    if args.quick:
        args.calls, args.repeats, args.warmup, args.profile_calls = 200, 1, 20, 200
    return args


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    measured = commit()  # what the gate processes run: the checkout as it is now, not at the end
    with tempfile.TemporaryDirectory(prefix="mcp-gate-bench-") as tmp:
        work = Path(tmp)
        if args.only_metrics:
            print(metrics_table(await metrics_cost(args, work)))
            return
        pairs = await compare(args, work)
        on_postgres: list[Pair] = []
        if args.postgres is not None:
            progress("again, with the gates' store on PostgreSQL...")
            with fresh_database(args.postgres) as url:
                on_postgres = await compare(args, work / "postgres", url)
        parts = await breakdown(args, work)
        costs = await metrics_cost(args, work)
    command = " ".join(["python benchmarks/overhead.py", *sys.argv[1:]])
    bare = f"; fastmcp {version('fastmcp')}" if args.proxy else ""
    print(
        f"{date.today().isoformat()}; commit {measured}; {os.cpu_count()} CPUs; Python "
        f"{platform.python_version()}; mcp {version('mcp')}{bare}; load average {os.getloadavg()[0]:.2f} "
        f"at the end; `{command}`\n"
    )
    print(
        f"{args.repeats} repeat(s) x {args.calls} echo calls per cell, over stdio; medians over repeats; "
        "ratios are within a repeat. The gate talks to the notes server in the 2025-11-25 era (its "
        "default `protocol`), whatever the era of its own client; the bare proxy follows its client's "
        "era (FastMCP's default).\n"
    )
    print(table(pairs, args.concurrency))
    if (cpu := cpu_table(pairs, args.concurrency)) is not None:
        print()
        print(cpu)
    if on_postgres:
        where = _server(args.postgres)
        print(f"\nThe same, in the same run, with the gates' store on PostgreSQL ({where}):\n")
        print(table(on_postgres, args.concurrency))
    print()
    print(parts_table(parts, args.profile_calls))
    print()
    print(metrics_table(costs))
    progress(f"done in {time.perf_counter() - started:.0f}s")
    if args.json is not None:
        raw = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "commit": measured,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
            "pairs": [asdict(p) | p.ratios() for p in pairs],
            "breakdown": [asdict(p) for p in parts],
            "metrics_on_off": [asdict(c) | {"ratio": c.ratio} for c in costs],
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")


def commit() -> str:
    """This checkout's HEAD, marked `+changes` when the package differs from it."""
    here = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "mcp_gate")
    return f"{head}+changes" if changed else head


def _server(dsn: str) -> str:
    """host:port of a DSN, without its user or password."""
    parts = urllib.parse.urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}"


def main(argv: list[str]) -> None:
    anyio.run(run, parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
