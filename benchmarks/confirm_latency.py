"""What asking the person at the agent costs: medium-tier confirmed calls against low-tier calls.

An `mcp.Client` whose elicitation callback answers yes at once calls a real `mcp-gate serve`
process over stdio, in both protocol eras: the notes server's `echo` (low: runs at once) and
`append_note` (medium: confirmed by elicitation; mid-call in 2025-11-25, an input-required result
and a retry in 2026-07-28). Batches alternate within each repeat; the table shows medians over
repeats of per-call latency. The person's own thinking time is not part of it.

    python benchmarks/confirm_latency.py            # about 1 minute on 2 cores
    python benchmarks/confirm_latency.py --quick    # smoke run

The table goes to stdout as markdown; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters

from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import NOTES_MANIFEST, notes_server_table, write_config


async def yes(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"confirm": True})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def batch(agent: Client, tool: str, calls: int) -> list[float]:
    times = []
    for i in range(calls):
        args = {"text": f"x{i}"} if tool == "echo" else {"name": "bench", "text": f"line {i}"}
        started = time.perf_counter()
        result = await agent.call_tool(f"notes__{tool}", args)
        times.append((time.perf_counter() - started) * 1000)
        if result.is_error:
            raise SystemExit(f"{tool} failed: {result.content}")
    return times


async def run(calls: int, repeats: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("legacy", "auto"):
            config = write_config(
                Path(tmp) / mode,
                servers={"notes": notes_server_table(Path(tmp) / mode / "notes")},
                manifests={"notes": NOTES_MANIFEST.read_text()},
            )
            gate = StdioServerParameters(
                command=sys.executable, args=["-m", "mcp_gate", "serve", "--config", str(config)]
            )
            p50: dict[str, list[float]] = {"echo": [], "append_note": []}
            p99: dict[str, list[float]] = {"echo": [], "append_note": []}
            async with Client(gate, mode=mode, elicitation_callback=yes) as agent:
                await batch(agent, "echo", 20)  # warm up
                for repeat in range(repeats):
                    order = ("echo", "append_note") if repeat % 2 == 0 else ("append_note", "echo")
                    for tool in order:
                        print(f"{mode} repeat {repeat + 1}/{repeats}: {tool} x{calls}", file=sys.stderr)
                        times = await batch(agent, tool, calls)
                        p50[tool].append(statistics.median(times))
                        p99[tool].append(percentile(times, 0.99))
            async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
                decided = len(await store.records(event_type="confirm.decided"))
            assert decided == calls * repeats, (
                f"{decided} confirm.decided records, expected {calls * repeats}"
            )
            era = "2025-11-25 (legacy)" if mode == "legacy" else "2026-07-28 (auto)"
            low, med = statistics.median(p50["echo"]), statistics.median(p50["append_note"])
            rows.append(
                f"| {era} | {low:.2f} / {statistics.median(p99['echo']):.2f} | "
                f"{med:.2f} / {statistics.median(p99['append_note']):.2f} | +{med - low:.2f} |"
            )
    print("| era | low `echo` p50 / p99 ms | medium `append_note`, confirmed, p50 / p99 ms | added p50 ms |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per batch (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per era (default 3)")
    parser.add_argument("--quick", action="store_true", help="20 calls, 1 repeat")
    args = parser.parse_args()
    calls, repeats = (20, 1) if args.quick else (args.calls, args.repeats)
    anyio.run(run, calls, repeats)


if __name__ == "__main__":
    main()
