"""The long form of the kill-point crash harness (tests/test_crash.py runs each point once in CI).

Each round runs every named crash point, in a random order, against a fresh real gate: the gate is
killed with SIGKILL at the point (tests/crash/launch.py arms it), started again on the same data
dir, and the harness checks that nothing ran twice, no approved call was lost, an interrupted call
is call.outcome_unknown and never re-run, the seq has no gaps and `audit verify` passes.

    python benchmarks/crash.py                      # 5 rounds of every point
    python benchmarks/crash.py --rounds 20 --seed 7
    python benchmarks/crash.py --points after_result,while_signing --rounds 50

Progress goes to stderr, a summary table to stdout. Exit status 1 when any point failed.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import test_crash as harness  # noqa: E402


def points() -> dict[str, object]:
    table: dict[str, object] = dict(harness.SCENARIOS)
    table["while_signing"] = harness.scenario_while_signing
    table["during_export"] = harness.scenario_during_export
    table["during_slack_post"] = harness.scenario_during_slack_post
    table["during_slack_update"] = harness.scenario_during_slack_update
    return table


async def run_one(point: str, scenario: object, workdir: Path) -> None:
    if point in ("while_signing", "during_export"):
        await scenario(harness.signing_world(workdir))  # type: ignore[operator]
    elif point.startswith("during_slack"):
        with harness.slack_world(workdir) as (world, fake):
            await scenario(world, fake)  # type: ignore[operator]
    else:
        await scenario(harness.make_world(workdir))  # type: ignore[operator]


def main(argv: list[str] | None = None) -> int:
    table = points()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every point (default 5)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random order")
    parser.add_argument("--points", default=",".join(table), help=f"comma-separated, of: {', '.join(table)}")
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.points.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in table]
    if unknown:
        parser.error(f"unknown point(s) {', '.join(unknown)}; known: {', '.join(table)}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"crash harness: {args.rounds} round(s) of {len(chosen)} point(s), seed {seed}", file=sys.stderr)
    results: dict[str, list[float | None]] = {p: [] for p in chosen}
    for round_no in range(1, args.rounds + 1):
        order = chosen[:]
        rng.shuffle(order)
        for point in order:
            with tempfile.TemporaryDirectory(prefix=f"crash-{point}-") as tmp:
                started = time.perf_counter()
                try:
                    anyio.run(run_one, point, table[point], Path(tmp))
                except BaseException:  # a broken invariant: report it and go on
                    traceback.print_exc()
                    results[point].append(None)
                    print(f"round {round_no}: {point} FAILED", file=sys.stderr)
                    continue
                seconds = time.perf_counter() - started
                results[point].append(seconds)
                print(f"round {round_no}: {point} ok in {seconds:.1f}s", file=sys.stderr)
    print("| point | runs | failed | mean s |\n|---|---:|---:|---:|")
    for point, runs in results.items():
        ok = [r for r in runs if r is not None]
        mean = f"{sum(ok) / len(ok):.1f}" if ok else "-"
        print(f"| {point} | {len(runs)} | {len(runs) - len(ok)} | {mean} |")
    return 1 if any(r is None for runs in results.values() for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
