"""How fast a committed decision releases a held call.

For each sample an agent's high-tier call is held; an approver then approves it, either in the
gate's own process (what the HTTP API does) or from a separate process writing the shared SQLite
file (what `mcp-gate approve` does without the API). Measured, per sample:

  decision -> dispatch   from the decision's commit to the gate committing `call.released`,
                         immediately before the call is sent downstream
  decision -> result     from the decision's commit to the agent holding the downstream result

Targets: decision -> dispatch p50 under 20 ms and p99 under 100 ms.

    python benchmarks/approval_latency.py [--samples 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from mcp_gate.approvals import Approved
from mcp_gate.config import load_config
from mcp_gate.testing import NOTES_MANIFEST, approver_table, notes_server_table, running_gate, write_config

DECIDER = """
import sys, time, anyio
from pathlib import Path
from mcp_gate.config import load_config
from mcp_gate.runtime import open_engine

async def main(config):
    loaded = load_config(Path(config), {})
    async with open_engine(loaded) as engine:
        print("ready", flush=True)
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            await engine.decide(line.strip(), loaded.approvers["bob"], "approve", channel="cli")
            print(repr(time.time()), flush=True)

anyio.run(main, sys.argv[1])
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def released_at(body: dict[str, Any]) -> float:
    return datetime.fromisoformat(body["ts"]).timestamp()


async def measure(samples: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {
        "in-process (API)": {"dispatch": [], "result": []},
        "other process (CLI, SQLite)": {"dispatch": [], "result": []},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(
            root / "gate",
            servers={"notes": notes_server_table(root / "notes", test_tools=False)},
            manifests={"notes": NOTES_MANIFEST.read_text()},
            approvers={"bob": approver_table("bob@example.com", ["sre"], "tok-bob")},
            approvals={"hold_seconds": 600, "max_pending": 10_000},
        )
        loaded = load_config(config, {})
        async with running_gate(config) as front, Client(front.server, mode="legacy") as agent:
            gate = front.gateway
            async with await anyio.open_process([sys.executable, "-c", DECIDER, str(config)]) as decider:
                assert decider.stdin is not None and decider.stdout is not None
                lines = _lines(decider.stdout)
                assert (await lines.__anext__()) == "ready"
                for channel in results:
                    print(f"{channel}: {samples} samples...", file=sys.stderr, flush=True)
                    for i in range(samples + 5):
                        box: list[float] = []

                        async def call(n: int = i, sink: list[float] = box, label: str = channel) -> None:
                            await agent.call_tool(
                                "notes__write_note", {"name": f"n{n % 20}", "text": f"{label} {n}"}
                            )
                            sink.append(time.time())

                        async with anyio.create_task_group() as tg:
                            tg.start_soon(call)
                            with anyio.fail_after(30):
                                while not (pending := await gate.engine.pending()):
                                    await anyio.sleep(0.002)
                            request = pending[0]
                            if channel.startswith("in-process"):
                                outcome = await gate.engine.decide(
                                    request.id, loaded.approvers["bob"], "approve", channel="api"
                                )
                                committed = time.time()
                                assert isinstance(outcome, Approved)
                            else:
                                await decider.stdin.send(f"{request.id}\n".encode())
                                committed = float(await lines.__anext__())
                        released = await gate.store.records(
                            correlation_id=request.correlation_id, event_type="call.released"
                        )
                        if i < 5:  # warm-up
                            continue
                        results[channel]["dispatch"].append(
                            (released_at(dict(released[0].body)) - committed) * 1000
                        )
                        results[channel]["result"].append((box[0] - committed) * 1000)
                await decider.stdin.aclose()
    return results


async def _lines(stream: Any) -> Any:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode().strip()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=200, help="decisions per channel (default 200)")
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    args = parser.parse_args()
    results = anyio.run(measure, args.samples)
    print("| channel | decision -> dispatch p50 | p99 | max | decision -> result p50 | p99 |")
    print("|---|---|---|---|---|---|")
    for channel, figures in results.items():
        d, r = figures["dispatch"], figures["result"]
        print(
            f"| {channel} | {statistics.median(d):.1f} ms | {percentile(d, 99):.1f} ms | {max(d):.1f} ms "
            f"| {statistics.median(r):.1f} ms | {percentile(r, 99):.1f} ms |"
        )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
