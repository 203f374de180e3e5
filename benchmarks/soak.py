"""A bounded soak: mixed traffic through a real `mcp-gate serve` for a set time, with invariants.

An `mcp.Client` drives a real gate process over stdio in front of the example notes server, with
a local fake Slack as the approval channel and the approvers' HTTP API for decisions. Workers
call, until the time is up:

- low calls (`echo`), which must return their text;
- held calls (`append_note`, made high for the soak) that an approver approves, denies, or leaves
  to expire; each appends a unique line, so an execution shows in the note exactly once;
- now and then `crash`, which kills the downstream; the gate must respawn it;

while the fake Slack fails bursts of Web API calls. Every second it samples the gate's RSS and
open file descriptors. At the end it checks the invariants against the notes, the evidence log
and `mcp-gate audit verify`:

- every low call returned its own text;
- an approved call that succeeded appended its line exactly once; an approved call that failed
  appended it at most once; a denied or expired call never appended;
- every agent-visible outcome matches the decision (approved calls are not refused, denied and
  expired ones are);
- no call id has two `call.executed` records;
- `audit verify` passes (the hash chain has no gap).

    python benchmarks/soak.py                       # 10 minutes
    python benchmarks/soak.py --seconds 60          # what CI runs
    python benchmarks/soak.py --seconds 60 --json out.json

The report (markdown) goes to stdout; progress to stderr. Exit status 1 when an invariant broke.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_gate.evidence import Record
from mcp_gate.fake_slack import FakeSlack
from mcp_gate.storage.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
NOTES_SERVER = ROOT / "examples" / "notes_server.py"
NOTES_MANIFEST = ROOT / "examples" / "tool_manifests" / "notes.toml"
TOKEN = "soak-approver-token"
NOTE = "soak"  # every held call appends to this one note
EXPIRES_SECONDS = 3  # short, so calls left alone expire within the soak
HOLD_SECONDS = 8.0  # longer than the expiry, so a held call sees its own decision or expiry


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_gate(workdir: Path, fake: FakeSlack, port: int) -> Path:
    """gate.toml for the soak: the notes server, append_note made high, one approver, Slack."""
    manifests = workdir / "tool_manifests"
    manifests.mkdir(parents=True)
    text = NOTES_MANIFEST.read_text(encoding="utf-8").replace(
        'tools = ["append_note"]\ntier = "medium"', 'tools = ["append_note"]\ntier = "high"'
    )
    if 'tools = ["append_note"]\ntier = "high"' not in text:
        raise SystemExit("soak: the notes manifest's append_note rule has moved; update write_gate")
    (manifests / "notes.toml").write_text(text, encoding="utf-8")
    notes = workdir / "notes"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    config = workdir / "gate.toml"
    config.write_text(
        f"""[gate]
name = "soak"
data_dir = "data"
manifests = "tool_manifests"

[requester]
agent = "soak-agent"
owner = "alice@example.com"

[servers.notes]
command = {json.dumps(sys.executable)}
args = [{json.dumps(str(NOTES_SERVER))}]
env = {{ NOTES_DIR = {json.dumps(str(notes))}, NOTES_TEST_TOOLS = "1" }}

[tiers]
high = {{ approvals = 1, groups = ["sre"] }}

[approvals]
hold_seconds = {HOLD_SECONDS}
progress_seconds = 1
expires = "{EXPIRES_SECONDS}s"
max_pending = 200

[admin]
listen = "127.0.0.1:{port}"

[approvers.bob]
email = "bob@example.com"
groups = ["sre"]
token_sha256 = "{digest}"
slack_user = "U0BOB"

[slack]
team_id = "{fake.team_id}"
channel = "C0APPROVE"
api_url = "{fake.api_url}"
bot_token_env = "SOAK_SLACK_BOT"
app_token_env = "SOAK_SLACK_APP"
mode = "socket"
""",
        encoding="utf-8",
    )
    return config


# -- what happened ---------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int


@dataclass
class Report:
    seconds: float
    calls: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)  # held calls refused, by text start
    violations: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    slack_faults: int = 0
    slack_posts: int = 0
    verify_ok: bool = False
    verify_output: str = ""
    records: int = 0
    held: dict[str, Held] = field(default_factory=dict, repr=False)

    def violate(self, text: str) -> None:
        if len(self.violations) < 200:
            self.violations.append(text)
        progress(f"VIOLATION: {text}")


@dataclass
class Held:
    token: str
    intent: str  # approve | deny | expire
    result: types.CallToolResult | None = None
    decided: str | None = None  # what the approver's decision call answered


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def gate_pid(config: Path) -> int | None:
    """The pid of the `mcp-gate serve` process for `config` (the stdio client started it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and str(config).encode() in argv:
            return int(entry.name)
    return None


def sample(pid: int, started: float) -> Sample | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return Sample(round(time.monotonic() - started, 1), rss, fds)


# -- the run ---------------------------------------------------------------------------------------


async def soak(workdir: Path, seconds: float, workers: int, seed: int) -> Report:
    rng = random.Random(seed)
    report = Report(seconds=seconds)
    fake = FakeSlack(channels={"C0APPROVE"})
    fake.add_user("U0BOB", "bob@example.com")
    fake.start()
    try:
        port = free_port()
        config = write_gate(workdir, fake, port)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(workdir),
            "SOAK_SLACK_BOT": "xoxb-soak-bot-token",
            "SOAK_SLACK_APP": "xapp-soak-app-token",
        }
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "mcp_gate", "serve", "--config", str(config)], env=env
        )
        with (workdir / "gate.log").open("a", encoding="utf-8") as log:
            async with Client(stdio_client(params, errlog=log), mode="legacy") as agent:
                await _drive(agent, config, port, fake, rng, report, workers)
        report.slack_posts = len(fake.calls_to("chat.postMessage"))
    finally:
        fake.stop()
    _check_after(workdir, config, report, await _read_evidence(workdir / "data" / "gate.db"))
    return report


async def _drive(
    agent: Client,
    config: Path,
    port: int,
    fake: FakeSlack,
    rng: random.Random,
    report: Report,
    workers: int,
) -> None:
    pid = gate_pid(config)
    if pid is None:
        raise SystemExit("soak: could not find the gate's process")
    started = time.monotonic()
    deadline = started + report.seconds
    held = report.held  # token -> what the soak means to happen to it
    serial = iter(range(10**9))
    stop = anyio.Event()

    async def low() -> None:
        token = f"echo-{next(serial)}"
        result = await agent.call_tool("notes__echo", {"text": token})
        report.calls["low"] += 1
        if result.is_error:
            # a low call may fail while the downstream respawns: that must say so, not hang
            report.outcomes["low refused (downstream restarting)"] += 1
        elif _text(result) != token:
            report.violate(f"echo returned {_text(result)!r} for {token!r}")
        else:
            report.outcomes["low ok"] += 1

    async def hold(intent: str) -> None:
        token = f"{intent}-{next(serial)}"
        entry = held[token] = Held(token, intent)
        entry.result = await agent.call_tool("notes__append_note", {"name": NOTE, "text": token})
        report.calls[f"held ({intent})"] += 1

    async def crash() -> None:
        await agent.call_tool("notes__crash", {})
        report.calls["downstream killed"] += 1

    async def worker() -> None:
        while time.monotonic() < deadline:
            roll = rng.random()
            if roll < 0.55:
                await low()
            elif roll < 0.70:
                await hold("approve")
            elif roll < 0.82:
                await hold("deny")
            elif roll < 0.92:
                await hold("expire")
            else:
                await anyio.sleep(rng.random() * 0.2)

    def api(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/requests{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, None

    async def approver() -> None:
        while not stop.is_set():
            try:
                _, listing = await anyio.to_thread.run_sync(api, "GET", "")
                pending = listing["requests"]
            except (OSError, ValueError, KeyError, TypeError):
                await anyio.sleep(0.2)  # the API may still be starting
                continue
            for request in pending:
                token = str((request.get("args") or {}).get("text", ""))
                entry = held.get(token)
                if entry is None or entry.decided is not None or entry.intent == "expire":
                    continue
                verb = "approve" if entry.intent == "approve" else "deny"
                body = {"reason": "soak"} if verb == "deny" else {}
                status, _ = await anyio.to_thread.run_sync(api, "POST", f"/{request['id']}/{verb}", body)
                entry.decided = str(status)
            await anyio.sleep(0.1)

    async def killer() -> None:
        while not stop.is_set():
            await anyio.sleep(8 + rng.random() * 8)
            await crash()

    async def slack_faults() -> None:
        while not stop.is_set():
            await anyio.sleep(2 + rng.random() * 3)
            fake.fail(503, times=rng.randint(1, 4))
            report.slack_faults += 1

    async def sampler() -> None:
        while not stop.is_set():
            found = sample(pid, started)
            if found is not None:
                report.samples.append(found)
            await anyio.sleep(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(approver)
        tg.start_soon(slack_faults)
        tg.start_soon(killer)
        tg.start_soon(sampler)
        async with anyio.create_task_group() as traffic:
            for _ in range(workers):
                traffic.start_soon(worker)
            while time.monotonic() < deadline:
                await anyio.sleep(1)
                done = sum(report.calls.values())
                progress(f"soak: {time.monotonic() - started:5.0f}s of {report.seconds:g}s, {done} calls")
        stop.set()
        tg.cancel_scope.cancel()
    final = sample(pid, started)
    if final is not None:
        report.samples.append(final)
    _check_outcomes(held, report)


def _check_outcomes(held: dict[str, Held], report: Report) -> None:
    for entry in held.values():
        assert entry.result is not None  # every worker call returned before the traffic group ended
        refused = entry.result.is_error
        text = _text(entry.result)
        report.outcomes[f"{entry.intent} {'refused' if refused else 'ran'}"] += 1
        if refused:
            report.refusals[f"{entry.intent}: {_reason(text)}"] += 1
        if entry.intent in ("deny", "expire") and not refused:
            report.violate(f"{entry.token}: meant to be {entry.intent}d, but the call ran: {text!r}")
        if entry.intent == "approve" and refused and _reason(text) == "denied":
            report.violate(f"{entry.token}: approved, but the agent was told it was denied: {text!r}")


def _reason(text: str) -> str:
    """Why a held call was refused, without its ids and times."""
    if "was denied" in text:
        return "denied"
    if "expired at" in text:
        return "expired"
    if "is not available" in text:
        return "downstream unavailable"
    return text[:60]


async def _read_evidence(db: Path) -> list[Record]:
    async with await SQLiteStore.open(db) as store:
        return list(await store.records())


def _check_after(workdir: Path, config: Path, report: Report, evidence: list[Record]) -> None:
    """The invariants that read what the run left: the note, the evidence, `audit verify`."""
    held = report.held
    note = workdir / "notes" / NOTE
    lines = Counter(note.read_text().splitlines()) if note.exists() else Counter()
    for token, count in lines.items():
        entry = held.get(token)
        if entry is None:
            report.violate(f"the note holds a line no call asked for: {token!r}")
        elif count > 1:
            report.violate(f"{token}: appended {count} times (ran more than once)")
        elif entry.intent != "approve":
            report.violate(f"{token}: meant to be {entry.intent}d, but its line is in the note")
    for token, entry in held.items():
        ran_ok = entry.intent == "approve" and entry.result is not None and not entry.result.is_error
        if ran_ok and lines[token] != 1:
            report.violate(f"{token}: the agent got a result, but the note has it {lines[token]} times")
    executed = Counter(r.correlation_id for r in evidence if r.event_type == "call.executed")
    report.records = len(evidence)
    for cid, count in executed.items():
        if count > 1:
            report.violate(f"call {cid} has {count} call.executed records")
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gate", "audit", "verify", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    report.verify_ok = done.returncode == 0
    report.verify_output = (done.stdout + done.stderr).strip()
    if not report.verify_ok:
        report.violate(f"audit verify failed: {report.verify_output}")


# -- the report ------------------------------------------------------------------------------------


def commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def render(report: Report) -> str:
    out = [
        f"## Soak: {report.seconds:g} s at commit {commit()}",
        "",
        f"{date.today()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, mcp {version('mcp')}",
        "",
        "| calls | count |",
        "|---|---:|",
    ]
    out += [f"| {kind} | {n} |" for kind, n in sorted(report.calls.items())]
    out += ["", "| outcome | count |", "|---|---:|"]
    out += [f"| {kind} | {n} |" for kind, n in sorted(report.outcomes.items())]
    out += ["", "| held call refused: why | count |", "|---|---:|"]
    out += [f"| {kind} | {n} |" for kind, n in sorted(report.refusals.items())]
    out += [
        "",
        f"Slack: {report.slack_faults} fault bursts injected, {report.slack_posts} messages posted. "
        f"Evidence: {report.records} records; `audit verify`: {'passed' if report.verify_ok else 'FAILED'}.",
        f"Invariant violations: **{len(report.violations)}**",
    ]
    out += [f"- {v}" for v in report.violations[:20]]
    samples = report.samples
    if samples:
        out += ["", "Gate process over time (RSS from /proc, open file descriptors):", ""]
        out += ["| t (s) | RSS MiB | fds |", "|---:|---:|---:|"]
        step = max(1, len(samples) // 10)
        for s in [*samples[::step], samples[-1]][:12]:
            out.append(f"| {s.t:g} | {s.rss_kib / 1024:.1f} | {s.fds} |")
        rss = [s.rss_kib for s in samples]
        out += ["", f"RSS {_spark(rss)}  min {min(rss) / 1024:.1f} MiB, max {max(rss) / 1024:.1f} MiB"]
    return "\n".join(out)


def _spark(values: list[int]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    low, high = min(values), max(values)
    span = max(1, high - low)
    pick = values[:: max(1, len(values) // 40)]
    return "".join(bars[min(7, (v - low) * 8 // span)] for v in pick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to drive traffic (600)")
    parser.add_argument("--workers", type=int, default=6, help="agent calls in flight (6)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed when not given)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    progress(f"soak: seed {seed}")
    workdir = Path(tempfile.mkdtemp(prefix="mcp-gate-soak-"))
    report = anyio.run(soak, workdir, args.seconds, args.workers, seed)
    print(render(report))
    if args.json:
        figures: dict[str, Any] = {
            f.name: getattr(report, f.name) for f in fields(report) if f.name not in ("held", "samples")
        }
        figures["samples"] = [asdict(s) for s in report.samples]
        figures |= {"seed": seed, "commit": commit(), "violation_count": len(report.violations)}
        args.json.write_text(json.dumps(figures, indent=2, default=str), encoding="utf-8")
    if args.keep:
        progress(f"soak: kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
