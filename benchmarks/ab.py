"""Two versions of the gate side by side: overhead.py and evidence.py at a base and here, interleaved.

Each version runs its own copy of the benchmarks, with its own Python (a venv where that version
is installed), in alternating order round after round, so the machine's noise hits both. The
table gives, per figure, the median over rounds for each version and their ratio.

    git worktree add /tmp/base <commit>
    python -m venv /tmp/base-venv && /tmp/base-venv/bin/pip install -e /tmp/base
    python benchmarks/ab.py --base /tmp/base --base-python /tmp/base-venv/bin/python

    python benchmarks/ab.py ... --rounds 3 --quick   # a smoke run

Figures: for overhead.py, the gated p50 and throughput as ratios to the direct call in the same
repeat (the direct call does not change between versions, so it cancels the machine's drift), and
the CPU the gate process spends per call (the figure least moved by other load on the machine);
for evidence.py, group-commit records/s with 1 and 50 writers. The table goes to stdout; progress to
stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def commit(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "?"


def overhead(python: str, tree: Path, quick: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "overhead.json"
        argv = [python, str(tree / "benchmarks" / "overhead.py"), "--json", str(out), "--repeats", "1"]
        if quick:
            argv.append("--quick")
        subprocess.run(argv, cwd=tree, check=True, stdout=subprocess.DEVNULL)
        raw = json.loads(out.read_text(encoding="utf-8"))
    figures: dict[str, float] = {}
    for pair in raw["pairs"]:
        cell = f"{pair['era']} {pair['mode']}"
        figures[f"overhead: {cell}, p50 gate/direct"] = pair["p50_ratio"]
        figures[f"overhead: {cell}, throughput gate/direct"] = pair["throughput_ratio"]
        if "gate" in pair["gate"]["cpu_ms"]:
            figures[f"overhead: {cell}, gate process CPU ms/call"] = pair["gate"]["cpu_ms"]["gate"]
    return figures


_APPEND_ROW = re.compile(r"^\| (\d+) \| group commit \| \d+ \| ([\d,]+) \|")


def evidence(python: str, tree: Path, quick: bool) -> dict[str, float]:
    argv = [python, str(tree / "benchmarks" / "evidence.py"), "--sizes", "1000", "--repeats", "1"]
    if quick:
        argv.append("--quick")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(argv, cwd=tmp, check=True, capture_output=True, text=True)
    figures: dict[str, float] = {}
    for line in done.stdout.splitlines():
        if match := _APPEND_ROW.match(line):
            rate = float(match[2].replace(",", ""))
            figures[f"evidence: {match[1]} writer(s), group commit, records/s"] = rate
    if not figures:
        raise SystemExit(f"evidence.py printed no append table:\n{done.stdout}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="a checkout of the base version")
    parser.add_argument("--base-python", required=True, help="a Python with the base version installed")
    parser.add_argument("--python", default=sys.executable, help="a Python with this version installed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each benchmark (default 3)")
    parser.add_argument("--quick", action="store_true", help="short benchmark runs")
    args = parser.parse_args()
    versions = {"base": (args.base_python, args.base.resolve()), "this": (args.python, HERE)}
    seen: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in versions}
    for round_ in range(args.rounds):
        order = list(versions) if round_ % 2 == 0 else list(reversed(versions))
        for bench in (overhead, evidence):
            for name in order:
                python, tree = versions[name]
                progress(f"round {round_ + 1}/{args.rounds}: {bench.__name__}.py, {name} ({commit(tree)})")
                for figure, value in bench(python, tree, args.quick).items():
                    seen[name][figure].append(value)
    print(
        f"{date.today().isoformat()}; {os.cpu_count()} CPUs; {platform.machine()}; Python "
        f"{platform.python_version()}; base {commit(args.base)}, this {commit(HERE)}; "
        f"{args.rounds} interleaved round(s){', quick' if args.quick else ''}\n"
    )
    print("| figure | base | this | this/base |")
    print("|---|---:|---:|---:|")
    for figure in seen["this"]:
        base = statistics.median(seen["base"].get(figure) or [float("nan")])
        this = statistics.median(seen["this"][figure])
        digits = 0 if this > 100 else 2
        print(f"| {figure} | {base:,.{digits}f} | {this:,.{digits}f} | {this / base:.3f} |")


if __name__ == "__main__":
    main()
