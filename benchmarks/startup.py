"""How fast `mcp-gate` starts: --version, and the approvers' `pending` and `approve` against a real data dir.

Each command runs as a fresh process (`python -m mcp_gate ...`), several times; the table gives
the median time to its first byte of output (stdout or stderr) and to its exit. `pending` and
`approve` work over the gate's SQLite file, as an approver beside a gate does without the
approvers' API: the script first holds real calls through an in-process gate (the notes server's
`write_note`, high tier) and stops it, leaving the requests open in its data dir; each `approve`
decides a request of its own.

With `--baseline REV`, the same commands also run from that revision of this repository (taken
with `git archive` into a temporary directory and put first on PYTHONPATH), interleaved run by run
with the checkout this script is in, so both see the same machine noise. Before timing, each
checkout's package is compiled to bytecode, as installing a wheel does.

    python benchmarks/startup.py                      # 9 runs per command
    python benchmarks/startup.py --baseline e8ff555   # before / after, side by side
    python benchmarks/startup.py --quick --json out.json

The table goes to stdout as markdown; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import selectors
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    eventually,
    notes_server,
    notes_server_table,
    running_gate,
    write_config,
)

HERE = Path(__file__).resolve().parents[1]
TOKEN = "tok-bob"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the machine and the code ------------------------------------------------------------------


def git(*args: str, cwd: Path = HERE) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def this_commit() -> str:
    """HEAD of this checkout, marked `+changes` when its tracked files differ from it."""
    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "mcp_gate")
    return f"{commit}+changes" if dirty else commit


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in load],
    }


def export(revision: str, into: Path) -> tuple[Path, str]:
    """`git archive` of `revision` unpacked into `into`; its root and short commit."""
    commit = git("rev-parse", "--short", revision)
    data = subprocess.run(["git", "archive", commit], cwd=HERE, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(into, filter="data")
    return into, commit


def compile_package(root: Path) -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "mcp_gate")], check=True)


# -- a data dir with open requests ---------------------------------------------------------------


async def hold_requests(directory: Path, count: int) -> tuple[Path, list[str]]:
    """A gate.toml whose data dir holds `count` open approval requests, left by a stopped gate."""
    config = write_config(
        directory / "gate",
        servers={"notes": notes_server_table(directory / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text(encoding="utf-8")},
        approvers={"bob": approver_table("bob@example.com", ["sre"], TOKEN)},
        tiers={"high": {"approvals": 1, "groups": ["sre"]}},
        approvals={"hold_seconds": 900, "max_pending": max(count, 10)},
    )
    async with (
        running_gate(config, servers={"notes": notes_server(directory / "notes")}) as front,
        Client(front.server, mode="legacy") as client,
        anyio.create_task_group() as tg,
    ):
        for i in range(count):
            args = {"name": f"plans/{i:04d}", "text": f"the agent's draft number {i}, to replace the note"}
            tg.start_soon(client.call_tool, "notes__write_note", args)

        async def all_held() -> list[str] | None:
            pending = await front.gateway.engine.pending()
            return [r.id for r in pending] if len(pending) == count else None

        ids = await eventually(all_held, what=f"{count} held calls", timeout=120)
        tg.cancel_scope.cancel()
    return config, ids


# -- timing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    checkout: str
    command: str
    first_output_ms: float
    exit_ms: float
    exit_code: int


def time_command(root: Path, argv: list[str], cwd: Path) -> tuple[float, float, int, bytes]:
    """(ms to first output byte, ms to exit, exit code, stdout) of `python -m mcp_gate ARGV`, run
    in `cwd` (not a checkout: `-m` puts the working directory first on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MCP_GATE_CONFIG", "MCP_GATE_TOKEN")}
    env |= {"PYTHONPATH": str(root), "MCP_GATE_TOKEN": TOKEN}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "mcp_gate", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    assert process.stdout is not None and process.stderr is not None
    first = None
    out, err = bytearray(), bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ, out)
        selector.register(process.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            for key, _ in selector.select():
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                if first is None:
                    first = time.perf_counter()
                key.data.extend(chunk)
    code = process.wait()
    ended = time.perf_counter()
    if code != 0:
        raise RuntimeError(f"mcp-gate {' '.join(argv)} exited {code}: {err.decode(errors='replace')[-400:]}")
    first = ended if first is None else first
    return (first - started) * 1000, (ended - started) * 1000, code, bytes(out)


def which_package(root: Path, cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(root))
    code = "import mcp_gate, pathlib; print(pathlib.Path(mcp_gate.__file__).resolve().parents[1])"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def measure(args: argparse.Namespace, work: Path) -> tuple[list[Run], dict[str, str]]:
    checkouts: dict[str, Path] = {}
    commits: dict[str, str] = {}
    if args.baseline:
        root, commit = export(args.baseline, work / "baseline")
        checkouts["before"], commits["before"] = root, commit
    checkouts["after" if args.baseline else "this"] = HERE
    commits["after" if args.baseline else "this"] = this_commit()
    for label, root in checkouts.items():
        found = which_package(root, work)
        if Path(found) != root.resolve():
            raise RuntimeError(f"{label}: PYTHONPATH={root} imports mcp_gate from {found}")
        compile_package(root)
    approvals = (args.runs + 1) * len(checkouts)
    progress(f"holding {approvals} calls for approval in a fresh data dir...")
    config, ids = anyio.run(hold_requests, work / "data", approvals)
    c = ["--config", str(config)]
    runs: list[Run] = []
    labels = list(checkouts)
    for n in range(args.runs + 1):  # run 0 warms the file cache and is not counted
        order = labels if n % 2 == 0 else labels[::-1]
        for label in order:
            for command, argv in (
                ("--version", ["--version"]),
                ("pending", ["pending", *c]),
                ("approve", ["approve", ids.pop(), "--note", "benchmark", *c]),
            ):
                first, exited, code, _ = time_command(checkouts[label], argv, work)
                if n:
                    runs.append(Run(label, command, first, exited, code))
        if n:
            progress(f"run {n}/{args.runs} done")
    return runs, commits


# -- output -------------------------------------------------------------------------------------


def table(runs: list[Run], commits: dict[str, str]) -> str:
    labels = list(commits)
    head = " | ".join(f"{label} ({commits[label]}) first output / exit ms" for label in labels)
    lines = [f"| command | {head} |" + (" first output after / before |" if len(labels) == 2 else ""), ""]
    lines[1] = "|---|" + "---:|" * (len(labels) + (1 if len(labels) == 2 else 0))
    for command in dict.fromkeys(r.command for r in runs):
        cells, medians = [], []
        for label in labels:
            mine = [r for r in runs if r.command == command and r.checkout == label]
            first = statistics.median(r.first_output_ms for r in mine)
            medians.append(first)
            cells.append(f"{first:.0f} / {statistics.median(r.exit_ms for r in mine):.0f}")
        ratio = f" x{medians[1] / medians[0]:.2f} |" if len(labels) == 2 else ""
        lines.append(f"| `{command}` | " + " | ".join(cells) + " |" + ratio)
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per command (default 9)")
    parser.add_argument("--baseline", metavar="REV", help="also time this git revision, interleaved")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (3 runs)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write every run here")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 3
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    before = machine()
    with tempfile.TemporaryDirectory(prefix="mcp-gate-startup-") as tmp:
        runs, commits = measure(args, Path(tmp))
    after = machine()
    print(
        f"{datetime.now(UTC).date().isoformat()}; {before['cpus']} CPUs ({before['cpu']}); Python "
        f"{before['python']}; load average {before['load_average'][0]} before, "
        f"{after['load_average'][0]} after; `python benchmarks/startup.py {' '.join(argv)}`\n"
    )
    print(f"Medians of {args.runs} runs per command, each a fresh `python -m mcp_gate` process.\n")
    print(table(runs, commits))
    if args.json is not None:
        raw = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": {"before": before, "after": after},
            "commits": commits,
            "runs": [asdict(r) for r in runs],
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
