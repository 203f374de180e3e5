"""Where a low-tier call's time goes in the gate's process: pyinstrument over sequential `echo` calls.

An in-process gate (the front in memory, as overhead.py's breakdown: no stdio on the agent's side)
with evidence on, in front of the example notes server over stdio; an `mcp.Client` makes
`--calls` sequential `notes__echo` calls (2025-11-25 era) under pyinstrument's statistical
profiler, after a warm-up. Prints the first `--lines` lines of pyinstrument's text report.
Needs pyinstrument (`pip install pyinstrument`).

    python benchmarks/profile_call.py --calls 2000
    python benchmarks/profile_call.py --html profile.html
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import anyio
import mcp
from pyinstrument import Profiler

from mcp_gate.testing import NOTES_MANIFEST, notes_server_table, running_gate, write_config


async def run(args: argparse.Namespace, work: Path) -> Profiler:
    config = write_config(
        work,
        servers={"notes": notes_server_table(work / "notes", test_tools=False)},
        manifests={"notes": NOTES_MANIFEST.read_text(encoding="utf-8")},
    )
    profiler = Profiler(interval=args.interval, async_mode="enabled")
    async with running_gate(config) as front, mcp.Client(front.server, mode="legacy") as client:
        for i in range(args.warmup):
            await client.call_tool("notes__echo", {"text": f"warm {i}"})
        profiler.start()
        for i in range(args.calls):
            result = await client.call_tool("notes__echo", {"text": f"ping {i}"})
            if result.is_error:
                raise RuntimeError(f"echo failed: {result}")
        profiler.stop()
    return profiler


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="profiled calls (default 2000)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.0005, help="sampling interval, s")
    parser.add_argument("--lines", type=int, default=80, help="lines of the text report (default 80)")
    parser.add_argument("--html", type=Path, help="also write pyinstrument's HTML report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mcp-gate-profile-") as tmp:
        profiler = anyio.run(run, args, Path(tmp))
    report = profiler.output_text(unicode=False, color=False, show_all=False)
    print("\n".join(report.splitlines()[: args.lines]))
    if args.html is not None:
        args.html.write_text(profiler.output_html(), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
