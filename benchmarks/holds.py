"""What held calls cost while they wait: N calls held for approval at once in a real gate.

An `mcp.Client` starts a real `mcp-gate serve` process over stdio (2025-11-25 era, evidence on)
in front of the example notes server and calls its high-tier `write_note` N times at once, each
with its own arguments, so each call holds its own approval request. While they wait, the script
samples the gate process's memory (RSS, Linux /proc) and its CPU for a stretch with no traffic.
Then it approves held calls one at a time, from this process over the gate's SQLite file (what
`mcp-gate approve` does without the approvers' API), and times each from the decision's commit to
the agent holding the call's result, with N held and, before the N are held, with 1 held.

    python benchmarks/holds.py                 # 10,000 held calls (a few minutes on 2 cores)
    python benchmarks/holds.py --quick         # 200 held calls, a smoke run
    python benchmarks/holds.py --held 2000 --json out.json

Targets (issue 19): at most 20 KB of gate memory per held call, at most 5% of one core while they
wait, and release p50 with N held no worse than with 1 held. The table goes to stdout as markdown;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import mcp
import mcp_types as types
from mcp.client.stdio import stdio_client

from mcp_gate import runtime
from mcp_gate.config import load_config
from mcp_gate.testing import NOTES_MANIFEST, approver_table, notes_server_table, write_config

HERE = Path(__file__).resolve().parents[1]
TOOL = "notes__write_note"
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the gate process (Linux /proc) -------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.add(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


def idle_cpu(pid: int, seconds: float) -> float:
    """The process's CPU over `seconds` of wall time, in % of one core (call from a thread)."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started) * 100


def commit() -> str:
    """The commit of the package the gate runs: the checkout first on PYTHONPATH, else this one."""
    root = Path(os.environ.get("PYTHONPATH", str(HERE)).split(os.pathsep)[0])
    if not (root / ".git").exists() and root != HERE:
        return f"{root} (not a git checkout)"

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    return (
        f"{head}+changes" if git("status", "--porcelain", "--untracked-files=no", "--", "mcp_gate") else head
    )


def machine() -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "?",
    )  # fmt: skip
    return {"cpu": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Figures:
    held: int
    seconds_to_hold: float = 0.0
    seconds_to_settle: float = 0.0
    rss_idle_kb: int = 0
    rss_held_kb: int = 0
    cpu_idle_none_held: float = 0.0
    cpu_idle_all_held: float = 0.0
    release_ms_one_held: list[float] = field(default_factory=list)
    release_ms_all_held: list[float] = field(default_factory=list)
    decide_ms_one_held: list[float] = field(default_factory=list)
    decide_ms_all_held: list[float] = field(default_factory=list)

    @property
    def kb_per_held(self) -> float:
        return (self.rss_held_kb - self.rss_idle_kb) / self.held


class Agent:
    """The client side: calls held in the background, each noting when its result came back."""

    def __init__(self, client: mcp.Client, tg: anyio.abc.TaskGroup) -> None:
        self.client, self.tg = client, tg
        self.done: dict[str, anyio.Event] = {}
        self.at: dict[str, float] = {}
        self.failed: list[str] = []

    def start(self, name: str) -> None:
        self.done[name] = anyio.Event()
        self.tg.start_soon(self._call, name)

    async def _call(self, name: str) -> None:
        result = await self.client.call_tool(TOOL, {"name": name, "text": f"held call {name}"})
        self.at[name] = time.perf_counter()
        ok = isinstance(result, types.CallToolResult) and not result.is_error
        if not ok:
            self.failed.append(f"{name}: {result}")
        self.done[name].set()


def pending(db: Path, limit: int = 1) -> list[tuple[str, str]]:
    """(request id, held call's name) of open requests, read-only from the gate's file."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT id, args FROM approvals WHERE state = 'pending' ORDER BY created_at LIMIT ?", (limit,)
        ).fetchall()
    finally:
        connection.close()
    return [(row[0], json.loads(row[1])["name"]) for row in rows]


def count_pending(db: Path) -> int:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(connection.execute("SELECT count(*) FROM approvals WHERE state = 'pending'").fetchone()[0])
    finally:
        connection.close()


async def release_one(engine: Any, approver: Any, agent: Agent, db: Path) -> tuple[float, float]:
    """Approve the oldest held call: (ms the decision took to commit, ms from commit to result)."""
    [(request_id, name)] = pending(db)
    t0 = time.perf_counter()
    await engine.decide(request_id, approver, "approve", channel="cli")
    committed = time.perf_counter()
    with anyio.fail_after(60):
        await agent.done[name].wait()
    return (committed - t0) * 1000, (agent.at[name] - committed) * 1000


async def wait_held(db: Path, count: int, timeout: float) -> None:
    with anyio.fail_after(timeout):
        # The gate is another process: its file is all there is to watch.
        while count_pending(db) < count:  # noqa: ASYNC110
            await anyio.sleep(0.05 if count < 100 else 0.5)


async def run(args: argparse.Namespace, work: Path) -> Figures:
    config_path = write_config(
        work / "gate",
        servers={"notes": notes_server_table(work / "notes", test_tools=False)},
        manifests={"notes": NOTES_MANIFEST.read_text(encoding="utf-8")},
        approvers={"bob": approver_table("bob@example.com", ["sre"], "tok-bob")},
        tiers={"high": {"approvals": 1, "groups": ["sre"]}},
        approvals={
            "hold_seconds": 3600,
            "expires": "2h",
            "max_pending": max(args.held, 10),
            "progress_seconds": args.progress_seconds,
        },
    )
    config = load_config(config_path, os.environ)
    db = work / "gate" / "data" / "gate.db"
    approver = config.approvers["bob"]
    figures = Figures(args.held)
    env = {name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ}
    params = mcp.StdioServerParameters(  # run in `work`: `-m` puts the working directory on sys.path
        command=sys.executable,
        args=["-m", "mcp_gate", "serve", "--config", str(config_path)],
        env=env,
        cwd=work,
    )
    errlog = (work / "gate.stderr.log").open("a", encoding="utf-8")
    gate_pid = 0
    try:
        async with AsyncExitStack() as stack:
            before = children(os.getpid())
            client = await stack.enter_async_context(
                mcp.Client(stdio_client(params, errlog=errlog), mode="legacy")
            )
            [gate_pid] = sorted(children(os.getpid()) - before)
            engine = await stack.enter_async_context(runtime.open_engine(config))
            tg = await stack.enter_async_context(anyio.create_task_group())
            agent = Agent(client, tg)

            progress(f"1 held: {args.releases} releases, one at a time...")
            for i in range(args.releases + 3):
                agent.start(f"one-{i}")
                await wait_held(db, 1, 30)
                decided, released = await release_one(engine, approver, agent, db)
                if i >= 3:  # the first few warm the gate up
                    figures.decide_ms_one_held.append(decided)
                    figures.release_ms_one_held.append(released)
            await anyio.sleep(args.settle)
            figures.rss_idle_kb = rss_kb(gate_pid)
            progress(f"idle CPU with no call held, {args.idle_seconds:g}s...")
            figures.cpu_idle_none_held = await anyio.to_thread.run_sync(idle_cpu, gate_pid, args.idle_seconds)

            progress(f"holding {args.held} calls...")
            started = time.perf_counter()
            for i in range(args.held):
                agent.start(f"held-{i:05d}")
                if i % 500 == 499:
                    await anyio.lowlevel.checkpoint()  # let the client write what it has queued
            await wait_held(db, args.held, args.hold_timeout)
            figures.seconds_to_hold = time.perf_counter() - started
            progress(f"{args.held} held after {figures.seconds_to_hold:.1f}s; letting the gate idle...")
            await anyio.sleep(args.settle)
            # The gate has work left once every request is stored (each held call's first read of
            # its request, woken by the records of its own hold): wait until a second of its CPU
            # is below 10% of a core, for at most --settle-max seconds.
            settling = time.perf_counter()
            while time.perf_counter() - settling < args.settle_max:
                if await anyio.to_thread.run_sync(idle_cpu, gate_pid, 1.0) < 10:
                    break
            figures.seconds_to_settle = args.settle + time.perf_counter() - settling
            figures.rss_held_kb = rss_kb(gate_pid)
            progress(f"idle CPU with {args.held} held, {args.idle_seconds:g}s...")
            figures.cpu_idle_all_held = await anyio.to_thread.run_sync(idle_cpu, gate_pid, args.idle_seconds)

            progress(f"{args.held} held: {args.releases} releases, one at a time...")
            for _ in range(args.releases):
                decided, released = await release_one(engine, approver, agent, db)
                figures.decide_ms_all_held.append(decided)
                figures.release_ms_all_held.append(released)
            if agent.failed:
                raise RuntimeError(f"{len(agent.failed)} released calls failed, first: {agent.failed[0]}")
            progress("stopping the gate (SIGKILL: the calls still held are left as they are)...")
            os.kill(gate_pid, signal.SIGKILL)
            tg.cancel_scope.cancel()
    except BaseException:
        errlog.flush()
        tail = (work / "gate.stderr.log").read_text(encoding="utf-8", errors="replace").splitlines()
        if gate_pid == 0 or tail:
            progress("the gate's stderr ended with:\n" + "\n".join(tail[-15:]))
        raise
    finally:
        errlog.close()
    return figures


def table(f: Figures) -> str:
    p50 = statistics.median
    one, many = f.release_ms_one_held, f.release_ms_all_held
    return "\n".join(
        [
            "| figure | value | target |",
            "|---|---:|---:|",
            f"| calls held at once | {f.held:,} (held within {f.seconds_to_hold:.1f} s, the gate idle "
            f"{f.seconds_to_settle:.1f} s later) | 10,000 |",
            f"| gate RSS, none held / all held | {f.rss_idle_kb / 1024:.1f} / "
            f"{f.rss_held_kb / 1024:.1f} MiB | |",
            f"| memory per held call | {f.kb_per_held:.1f} KB | <= 20 KB |",
            f"| gate CPU while idle, none held | {f.cpu_idle_none_held:.1f}% of one core | |",
            f"| gate CPU while idle, all held | {f.cpu_idle_all_held:.1f}% of one core | <= 5% |",
            f"| release p50 / max, 1 held | {p50(one):.1f} / {max(one):.1f} ms | |",
            f"| release p50 / max, {f.held:,} held | {p50(many):.1f} / {max(many):.1f} ms | = 1 held |",
            f"| decision commit p50, 1 held / {f.held:,} held | {p50(f.decide_ms_one_held):.1f} / "
            f"{p50(f.decide_ms_all_held):.1f} ms | |",
        ]
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=10_000, help="calls held at once (default 10,000)")
    parser.add_argument("--releases", type=int, default=20, help="releases timed per case (default 20)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="CPU sampling window (default 10)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before sampling")
    parser.add_argument("--settle-max", type=float, default=120.0, help="then wait at most this for idle")
    parser.add_argument(
        "--progress-seconds", type=float, default=5.0, help="[approvals] progress_seconds (default 5)"
    )
    parser.add_argument("--hold-timeout", type=float, default=900.0, help="give up holding after this")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 held, short windows")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.held, args.releases, args.idle_seconds, args.settle = 200, 5, 3.0, 1.0
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    started = machine()
    with tempfile.TemporaryDirectory(prefix="mcp-gate-holds-") as tmp:
        figures = anyio.run(run, args, Path(tmp))
    ended = machine()
    print(
        f"{datetime.now(UTC).date().isoformat()}; commit {commit()}; {started['cpus']} CPUs "
        f"({started['cpu']}); Python {started['python']}; load average {started['load_average'][0]} "
        f"before, {ended['load_average'][0]} after; `python benchmarks/holds.py {' '.join(argv)}`\n"
    )
    print(table(figures))
    if args.json is not None:
        raw = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "commit": commit(),
            "machine": {"before": started, "after": ended},
            "figures": asdict(figures) | {"kb_per_held": figures.kb_per_held},
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
