"""Evidence an auditor accepts, through the real `mcp-gate` command: keys, checkpoints, bundles, report."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_gate import __version__
from mcp_gate.approvals import Approved, Denied, Refusal
from mcp_gate.checkpoints import SigningKey, open_note, parse_checkpoint, split_notes
from mcp_gate.config import load_config
from mcp_gate.errors import ConfigError
from mcp_gate.evidence import new_event
from mcp_gate.gateway import Gateway
from mcp_gate.notary import Notary, notary_for
from mcp_gate.report import render_html, summarize
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    FakeClock,
    approver_table,
    eventually,
    notes_server,
    notes_server_table,
    running_gate,
    write_config,
)

APPROVERS = {
    "bob": approver_table("bob@example.com", ["sre"], "tok-bob"),
    "dave": approver_table("dave@example.com", ["security"], "tok-dave"),
    "alice": {**approver_table("alice@corp.example", ["sre"], "tok-alice"), "aliases": ["Alice@Example.com"]},
}
TIERS = {"high": {"approvals": 1, "groups": ["sre", "security"]}}
HOSTILE = "<script>alert(1)</script>"
EVIDENCE = '\n[evidence]\ncheckpoint_every_records = 50\ncopy_to_file = "copies/checkpoints.log"\n'


def mcp_gate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "MCP_GATE_CONFIG"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "mcp_gate", *args], capture_output=True, text=True, env=environ, timeout=120
    )


def make_config(directory: Path, extra: str = EVIDENCE) -> Path:
    config = write_config(
        directory / "gate",
        servers={"notes": notes_server_table(directory / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=APPROVERS,
        tiers=TIERS,
        approvals={"hold_seconds": 30, "progress_seconds": 0.05},
        extra=extra,
    )
    (config.parent / "copies").mkdir(exist_ok=True)
    return config


async def wait_for_request(gate: Gateway, count: int) -> Any:
    async def enough() -> list[Any] | None:
        pending = await gate.engine.pending()
        return pending if len(pending) >= count else None

    return (await eventually(enough, what=f"{count} pending approval request(s)"))[-1]


async def drive(config: Path) -> None:
    """An echo, an approved write, a write whose owner tries to approve it and that is then denied."""
    notes = notes_server(config.parent.parent / "notes")
    async with (
        running_gate(config, servers={"notes": notes}) as front,
        Client(front.server, mode="legacy") as agent,
    ):
        gate = front.gateway
        assert not (await agent.call_tool("notes__echo", {"text": "hi"})).is_error
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.call_tool, "notes__write_note", {"name": "a", "text": "one"})
            request = await wait_for_request(gate, 1)
            assert isinstance(
                await gate.engine.decide(request.id, APPROVER(gate, "bob"), "approve", channel="t"), Approved
            )
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.call_tool, "notes__write_note", {"name": "b", "text": "two"})
            request = await wait_for_request(gate, 1)
            refused = await gate.engine.decide(request.id, APPROVER(gate, "alice"), "approve", channel="t")
            assert isinstance(refused, Refusal) and refused.code == "self-approval"
            denied = await gate.engine.decide(
                request.id, APPROVER(gate, "dave"), "deny", channel="t", note=HOSTILE
            )
            assert isinstance(denied, Denied)


def APPROVER(gate: Gateway, name: str) -> Any:  # noqa: N802 (reads as a lookup)
    return gate.config.approvers[name]


@dataclass(frozen=True)
class Gate:
    config: Path
    pubkey: str
    at_shutdown: tuple[int, int] = (0, 0)  # (last seq, largest checkpoint size) when the gate stopped

    @property
    def db(self) -> Path:
        return self.config.parent / "data" / "gate.db"


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Gate:
    config = make_config(tmp_path_factory.mktemp("audit"))
    done = mcp_gate("keys", "init", "--config", str(config))
    assert done.returncode == 0, done.stderr
    anyio.run(drive, config)
    db = config.parent / "data" / "gate.db"
    last = bodies(db)[-1]["seq"]
    return Gate(config, done.stdout.strip(), (last, max(checkpoint_sizes(db, done.stdout.strip()))))


def copy_gate(gate: Gate, tmp_path: Path) -> Gate:
    shutil.copytree(gate.config.parent, tmp_path / "gate")
    return Gate(tmp_path / "gate" / "gate.toml", gate.pubkey)


def bodies(db: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(db)) as conn:
        return [json.loads(b) for (b,) in conn.execute("SELECT body FROM evidence ORDER BY seq")]


def checkpoint_sizes(db: Path, pubkey: str) -> list[int]:
    from mcp_gate.checkpoints import VerifierKey

    key = VerifierKey.from_text(pubkey)
    with closing(sqlite3.connect(db)) as conn:
        notes = [n for (n,) in conn.execute("SELECT note FROM checkpoints ORDER BY id")]
    return [parse_checkpoint(open_note(n, [key])[0]).size for n in notes]


# -- keys and checkpoints ------------------------------------------------------------------


def test_keys_init_writes_a_0600_key_prints_its_public_key_and_never_overwrites_it(gate: Gate) -> None:
    key_file = gate.config.parent / "data" / "signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert SigningKey.from_text(key_file.read_text()).verifier.to_text() == gate.pubkey
    assert re.fullmatch(r"mcp-gate-test-gate\+[0-9a-f]{8}\+[A-Za-z0-9+/=]+", gate.pubkey)
    again = mcp_gate("keys", "init", "--config", str(gate.config))
    assert again.returncode == 2 and "never overwritten" in again.stderr and "Traceback" not in again.stderr
    assert SigningKey.from_text(key_file.read_text()).verifier.to_text() == gate.pubkey


def test_every_approval_decision_is_checkpointed_at_once_and_shutdown_covers_the_tail(gate: Gate) -> None:
    records = bodies(gate.db)
    sizes = checkpoint_sizes(gate.db, gate.pubkey)
    decided = [b["seq"] for b in records if b["event_type"] == "approval.decided"]
    assert len(decided) == 2
    for seq in decided:  # the checkpoint of the commit that wrote it (with its call.released)
        assert any(seq <= size <= seq + 1 for size in sizes), (seq, sizes)
    last, covered = gate.at_shutdown
    assert covered == last  # the checkpoint signed at shutdown covers the last record
    copies = (gate.config.parent / "copies" / "checkpoints.log").read_text()
    assert len(list(split_notes(copies))) == len(sizes)


@pytest.mark.anyio
async def test_a_quiet_gate_signs_its_unsigned_tail_every_checkpoint_interval(tmp_path: Path) -> None:
    """No write comes after the call, and the gate's clock stands still: only the timer can sign."""
    config = make_config(tmp_path, extra='\n[evidence]\ncheckpoint_every = "1s"\n')
    created = mcp_gate("keys", "init", "--config", str(config))
    assert created.returncode == 0, created.stderr
    db = config.parent / "data" / "gate.db"
    notes = notes_server(config.parent.parent / "notes")
    async with (
        running_gate(config, clock=FakeClock(), servers={"notes": notes}) as front,
        Client(front.server, mode="legacy") as agent,
    ):
        assert not (await agent.call_tool("notes__echo", {"text": "hi"})).is_error
        head = bodies(db)[-1]["seq"]
        assert max(checkpoint_sizes(db, created.stdout.strip())) < head  # the call's records: unsigned
        await eventually(
            lambda: max(checkpoint_sizes(db, created.stdout.strip())) >= head,
            what=f"the checkpoint timer to sign up to seq {head}",
            interval=0.05,
        )
        assert bodies(db)[-1]["seq"] == head  # signed by the timer, not by a later write


def test_a_gate_key_readable_by_others_is_refused_with_one_line(gate: Gate, tmp_path: Path) -> None:
    copy = copy_gate(gate, tmp_path)
    os.chmod(copy.config.parent / "data" / "signing.key", 0o644)
    with pytest.raises(ConfigError, match=r"evidence\.key: .*readable by others \(mode 0644\)"):
        notary_for(load_config(copy.config, os.environ))
    done = mcp_gate("check", "--config", str(copy.config))
    assert done.returncode == 2 and "readable by others" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_audit_verify_checks_every_checkpoint_and_records_that_it_ran(gate: Gate, tmp_path: Path) -> None:
    copy = copy_gate(gate, tmp_path)
    done = mcp_gate("audit", "verify", "--config", str(copy.config), env={"USER": "vera"})
    assert done.returncode == 0, done.stderr
    assert re.search(
        r"chain intact, head \w+; \d+ signed checkpoint\(s\) verified, covering seq 1\.\.\d+", done.stdout
    )
    verified = bodies(copy.db)[-1]
    assert verified["event_type"] == "audit.verified" and verified["ok"] is True
    assert verified["by"] == "vera"  # who ran it, from $USER


def test_verify_with_a_public_key_needs_no_usable_private_key(gate: Gate, tmp_path: Path) -> None:
    copy = copy_gate(gate, tmp_path)
    os.chmod(copy.config.parent / "data" / "signing.key", 0o644)  # the gate itself would refuse it
    done = mcp_gate("audit", "verify", "--config", str(copy.config), "--pubkey", gate.pubkey)
    assert done.returncode == 0, done.stderr
    assert re.search(r"\d+ signed checkpoint\(s\) verified", done.stdout)
    assert "not recording this check" in done.stderr and "Traceback" not in done.stderr
    assert bodies(copy.db)[-1]["event_type"] != "audit.verified"


def test_an_auditor_verifies_a_copy_of_the_file_with_only_the_public_key(gate: Gate, tmp_path: Path) -> None:
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.copy(gate.db, auditor / "gate.db")
    (auditor / "gate.toml").write_text('[gate]\nname = "copy"\ndata_dir = "."\n')
    os.chmod(auditor / "gate.db", 0o444)
    done = mcp_gate(
        "audit", "verify", "--config", str(auditor / "gate.toml"), "--pubkey", gate.pubkey, "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["keys_checked"] and report["checkpoints"] >= 3
    assert not list(auditor.glob("*.key"))


def test_an_auditor_with_their_own_copy_of_the_checkpoints_catches_a_truncated_log(
    gate: Gate, tmp_path: Path
) -> None:
    held = tmp_path / "held-by-the-auditor.txt"
    shutil.copy(gate.config.parent / "copies" / "checkpoints.log", held)
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.copy(gate.db, auditor / "gate.db")
    (auditor / "gate.toml").write_text('[gate]\nname = "copy"\ndata_dir = "."\n')
    last = bodies(auditor / "gate.db")[-1]["seq"]
    with closing(sqlite3.connect(auditor / "gate.db")) as conn, conn:
        for trigger in ("evidence_no_delete", "checkpoints_no_delete"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DELETE FROM evidence WHERE seq > ?", (last - 3,))
        conn.execute("DELETE FROM checkpoints")
    args = ("audit", "verify", "--config", str(auditor / "gate.toml"), "--pubkey", gate.pubkey)
    assert mcp_gate(*args).returncode == 0  # nothing left in the file says it was longer
    done = mcp_gate(*args, "--checkpoints", str(held))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith(f"TAMPERED: seq {last - 2} missing") and "truncated" in done.stdout


def test_the_evidence_settings_reach_the_notary(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        extra='\n[evidence]\ncheckpoint_every_records = 7\ncheckpoint_every = "2m"\n'
        'copy_to_file = "copies/c.log"\nwebhook_url_env = "HOOK"\nwebhook_secret_env = "HOOK_SECRET"\n',
    )
    hook = {"HOOK": "https://hooks.example/x", "HOOK_SECRET": "s3"}
    assert mcp_gate("keys", "init", "--config", str(config), env=hook).returncode == 0
    notary = notary_for(load_config(config, hook))
    assert notary is not None and (notary.every_records, notary.every_seconds) == (7, 120.0)
    file_sink, webhook = notary.sinks
    assert file_sink.name.endswith("copies/c.log") and webhook.name == "webhook hooks.example"
    assert "s3" not in repr(notary) and "hooks.example/x" not in repr(notary)


def test_a_full_rewrite_of_the_file_is_caught_by_the_checkpoint_copies(gate: Gate, tmp_path: Path) -> None:
    copy = copy_gate(gate, tmp_path)
    from mcp_gate.evidence import GENESIS_HASH, canonical_json, chain_hash

    with closing(sqlite3.connect(copy.db)) as conn, conn:
        for trigger in ("evidence_no_update", "checkpoints_no_delete"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DELETE FROM checkpoints")
        prev = GENESIS_HASH
        for seq, text in list(conn.execute("SELECT seq, body FROM evidence ORDER BY seq")):
            body = json.loads(text)
            body["ts"] = body["ts"].replace("20", "19", 1) if seq >= 3 else body["ts"]
            new = canonical_json(body)
            entry = chain_hash(prev, new)
            conn.execute(
                "UPDATE evidence SET body = ?, ts = ?, prev_hash = ?, entry_hash = ? WHERE seq = ?",
                (new.decode(), body["ts"], prev, entry, seq),
            )
            prev = entry
    done = mcp_gate("audit", "verify", "--config", str(copy.config))
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED")
    assert "differ from the signed checkpoint" in done.stdout


# -- bundles ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(gate: Gate, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("bundles")
    directory, tarball = out / "bundle", out / "bundle.tar.gz"
    for path in (directory, tarball):
        done = mcp_gate(
            "audit", "export", "--config", str(gate.config), "--since", "2020-01-01", "--out", str(path)
        )
        assert done.returncode == 0, done.stderr
        assert "exported" in done.stdout
    return directory, tarball


def test_a_bundle_verifies_offline_with_only_the_public_key(gate: Gate, bundles: tuple[Path, Path]) -> None:
    for bundle in bundles:
        done = mcp_gate("audit", "verify", "--bundle", str(bundle), "--pubkey", gate.pubkey)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "signature and every file hash verified" in done.stdout
    names = sorted(p.name for p in bundles[0].iterdir())
    assert names == [
        "SHA256SUMS",
        "SHA256SUMS.sig",
        "checkpoints.txt",
        "manifest.json",
        "pubkey.txt",
        "records.jsonl",
    ]
    manifest = json.loads((bundles[0] / "manifest.json").read_text())
    assert (
        manifest["gate"]["name"] == "test-gate"
        and manifest["count"] == manifest["last_seq"] - manifest["first_seq"] + 1
    )
    assert manifest["event_types"]["approval.decided"] == 2 and manifest["policy_sha256"]


def test_export_and_bundle_verification_leave_evidence_of_the_export(
    gate: Gate, bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    exported = [b for b in bodies(gate.db) if b["event_type"] == "audit.exported"]
    assert len(exported) == 2 and all(e["count"] > 0 and len(e["sums_sha256"]) == 64 for e in exported)
    copy = copy_gate(gate, tmp_path)
    done = mcp_gate(
        "audit", "verify", "--bundle", str(bundles[1]), "--pubkey", gate.pubkey, "--config", str(copy.config)
    )
    assert done.returncode == 0, done.stderr
    verified = bodies(copy.db)[-1]
    assert verified["event_type"] == "audit.verified" and verified["kind"] == "bundle"
    assert verified["ok"] is True and verified["bundle"] == str(bundles[1])
    assert verified["records"] == exported[-1]["count"]


def test_a_bundle_verified_away_from_any_gate_records_nothing_and_needs_no_config(
    gate: Gate, bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    def verify_in(folder: Path) -> subprocess.CompletedProcess[str]:
        """`audit verify --bundle` run from `folder`, with no $MCP_GATE_CONFIG."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "mcp_gate",
                "audit",
                "verify",
                "--bundle",
                str(bundles[0]),
                "--pubkey",
                gate.pubkey,
            ],
            capture_output=True,
            text=True,
            cwd=folder,
            env={k: v for k, v in os.environ.items() if k != "MCP_GATE_CONFIG"},
            timeout=120,
        )

    done = verify_in(tmp_path)
    assert done.returncode == 0 and "signature and every file hash verified" in done.stdout, done.stderr
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "gate.toml").write_text("[gate\n")  # someone else's broken file where the auditor works
    done = verify_in(tmp_path)
    assert done.returncode == 0 and "signature and every file hash verified" in done.stdout, done.stderr
    assert "not recording this check" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Gate:
    """25,000 records, 1,000 a day from 2026-11-01, past the progress bars' threshold; checkpoints at
    1,000 (the first commit) and every 5,000 after it."""
    config = make_config(
        tmp_path_factory.mktemp("big"), extra="\n[evidence]\ncheckpoint_every_records = 5000\n"
    )
    created = mcp_gate("keys", "init", "--config", str(config))
    assert created.returncode == 0, created.stderr

    async def fill() -> None:
        notary = notary_for(load_config(config, os.environ))
        async with await SQLiteStore.open(config.parent / "data" / "gate.db", notary=notary) as store:
            for day in range(1, 26):
                ts = f"2026-11-{day:02d}T00:00:00.000000Z"
                await store.append(
                    [new_event("call.requested", ts=ts, correlation_id=None) for _ in range(1000)]
                )

    anyio.run(fill)
    return Gate(config, created.stdout.strip())


def test_long_exports_and_verifications_draw_a_progress_bar_on_stderr(big_log: Gate, tmp_path: Path) -> None:
    bar = r"(?m)^{} \[#{{30}}\] (250\d\d)/\1$"  # full at the end (text mode reads \r as a line end)
    done = mcp_gate("audit", "verify", "--config", str(big_log.config))
    assert done.returncode == 0 and re.search(bar.format("verifying"), done.stderr), done.stderr
    out = tmp_path / "all.tar.gz"
    done = mcp_gate(
        "audit", "export", "--config", str(big_log.config), "--until", "2026-11-26", "--out", str(out)
    )
    assert done.returncode == 0 and re.search(bar.format("exporting"), done.stderr), done.stderr
    assert "exporting" not in done.stdout  # stdout stays clean for scripts
    done = mcp_gate("audit", "verify", "--bundle", str(out), "--pubkey", big_log.pubkey)
    assert done.returncode == 0 and re.search(bar.format("verifying"), done.stderr), done.stderr


def test_a_bounded_export_holds_its_period_up_to_the_next_checkpoint_and_says_so(
    big_log: Gate, tmp_path: Path
) -> None:
    out = tmp_path / "nov3"
    done = mcp_gate(
        "audit", "export", "--config", str(big_log.config), "--since", "2026-11-03", "--until", "2026-11-04",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "exported 4000 records (seq 2001..6000)" in done.stdout  # widened to the checkpoint at 6000
    manifest = json.loads((out / "manifest.json").read_text())
    config = load_config(big_log.config, os.environ)
    assert manifest["period"] == {
        "since": "2026-11-03T00:00:00.000000Z",
        "until": "2026-11-04T00:00:00.000000Z",
    }
    assert (manifest["first_seq"], manifest["last_seq"], manifest["count"]) == (2001, 6000, 4000)
    assert manifest["gate"] == {
        "name": "test-gate",
        "version": __version__,
        "config_sha256": config.config_sha256,
    }
    seqs = [json.loads(line)["seq"] for line in (out / "records.jsonl").read_text().splitlines()]
    assert seqs == list(range(2001, 6001))


def test_an_export_signs_a_checkpoint_of_the_head_first(big_log: Gate, tmp_path: Path) -> None:
    copy = copy_gate(big_log, tmp_path)
    head = bodies(copy.db)[-1]["seq"]
    assert max(checkpoint_sizes(copy.db, big_log.pubkey)) < head
    done = mcp_gate("audit", "export", "--config", str(copy.config), "--out", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    assert f"(seq 1..{head})" in done.stdout
    assert head in checkpoint_sizes(copy.db, big_log.pubkey)


def tampered(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def flip_a_byte(copy: Path) -> str:
    data = bytearray((copy / "records.jsonl").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "records.jsonl").write_bytes(bytes(data))
    return "records.jsonl was changed"


def drop_a_record(copy: Path) -> str:
    lines = (copy / "records.jsonl").read_text().splitlines(keepends=True)
    (copy / "records.jsonl").write_text("".join(lines[:3] + lines[4:]))
    return "records.jsonl was changed"


def duplicate_a_record(copy: Path) -> str:
    lines = (copy / "records.jsonl").read_text().splitlines(keepends=True)
    (copy / "records.jsonl").write_text("".join(lines[:4] + lines[3:]))
    return "records.jsonl was changed"


def insert_a_record(copy: Path) -> str:
    lines = (copy / "records.jsonl").read_text().splitlines(keepends=True)
    forged = json.loads(lines[2]) | {"body": {"event_type": "approval.decided", "approver": "mallory"}}
    (copy / "records.jsonl").write_text("".join([*lines[:3], json.dumps(forged) + "\n", *lines[3:]]))
    return "records.jsonl was changed"


def add_a_file(copy: Path) -> str:
    (copy / "extra.jsonl").write_text("{}\n")
    return "unexpected file extra.jsonl"


def remove_the_signature(copy: Path) -> str:
    (copy / "SHA256SUMS.sig").unlink()
    return "missing file SHA256SUMS.sig"


def rewrite_the_sums(copy: Path) -> str:
    import hashlib

    drop_a_record(copy)
    sums = (copy / "SHA256SUMS").read_text()
    digest = hashlib.sha256((copy / "records.jsonl").read_bytes()).hexdigest()
    (copy / "SHA256SUMS").write_text(re.sub(r"^\w+(  records\.jsonl)$", digest + r"\1", sums, flags=re.M))
    return "SHA256SUMS differs from the signed copy"


@pytest.mark.parametrize(
    "tamper",
    [
        flip_a_byte,
        drop_a_record,
        duplicate_a_record,
        insert_a_record,
        add_a_file,
        remove_the_signature,
        rewrite_the_sums,
    ],  # fmt: skip
)
def test_any_change_to_a_bundle_fails_verification_and_names_what(
    gate: Gate, bundles: tuple[Path, Path], tmp_path: Path, tamper: Any
) -> None:
    copy = tampered(bundles[0], tmp_path)
    expected = tamper(copy)
    done = mcp_gate("audit", "verify", "--bundle", str(copy), "--pubkey", gate.pubkey)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stdout.startswith("TAMPERED") and expected in done.stdout, done.stdout


@pytest.mark.parametrize("where", [0.3, 0.5, 0.9])
def test_a_changed_byte_in_a_tarball_fails_verification_in_one_line(
    gate: Gate, bundles: tuple[Path, Path], tmp_path: Path, where: float
) -> None:
    data = bytearray(bundles[1].read_bytes())
    data[int(len(data) * where)] ^= 0x20
    (tmp_path / "b.tar.gz").write_bytes(bytes(data))
    done = mcp_gate("audit", "verify", "--bundle", str(tmp_path / "b.tar.gz"), "--pubkey", gate.pubkey)
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode == 2:  # the damage reached the gzip or tar headers: not a bundle at all
        assert "not a directory or a .tar.gz bundle" in done.stderr and not done.stdout
    else:
        assert done.returncode == 1, done.stderr
        assert done.stdout.startswith("TAMPERED: bundle") and len(done.stdout.strip().splitlines()) == 1


def test_no_changed_byte_anywhere_in_a_tarball_verifies_or_escapes_as_a_crash(
    gate: Gate, bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    from mcp_gate.bundle import verify_bundle
    from mcp_gate.checkpoints import VerifierKey
    from mcp_gate.errors import GateError

    key = VerifierKey.from_text(gate.pubkey)
    original = bundles[1].read_bytes()
    damaged = tmp_path / "b.tar.gz"
    for at in range(0, len(original), max(1, len(original) // 97)):
        data = bytearray(original)
        data[at] ^= 0x20
        damaged.write_bytes(bytes(data))
        try:
            report = verify_bundle(damaged, key)
        except GateError as exc:
            assert "not a directory or a .tar.gz bundle" in str(exc), (at, exc)
        else:
            # Deflate has bits that decode to nothing (block padding, unused code lengths) and the
            # gzip header's name, time and OS are covered by nothing: a flip there leaves the very
            # same tarball, which rightly verifies. Any flip that changes the tarball must fail.
            if report.ok:
                assert gzip.decompress(bytes(data)) == gzip.decompress(original), at
            else:
                assert report.problem, at


def test_a_bundle_fails_against_another_key(bundles: tuple[Path, Path]) -> None:
    other = SigningKey.generate("mcp-gate-test-gate").verifier.to_text()
    done = mcp_gate("audit", "verify", "--bundle", str(bundles[1]), "--pubkey", other)
    assert done.returncode == 1 and "no signature by a trusted key" in done.stdout


def test_a_bundle_whose_records_were_changed_and_resigned_by_someone_else_fails_at_the_seq(
    gate: Gate, bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    """Even with a valid-looking signature (a stolen key), the records must match the checkpoints."""
    from mcp_gate.bundle import verify_bundle
    from mcp_gate.checkpoints import VerifierKey, sign_note

    key = SigningKey.from_text((gate.config.parent / "data" / "signing.key").read_text())
    copy = tampered(bundles[0], tmp_path)
    lines = (copy / "records.jsonl").read_text().splitlines(keepends=True)
    first = json.loads(lines[0])["seq"]
    del lines[5]
    (copy / "records.jsonl").write_text("".join(lines))
    import hashlib

    sums = "".join(
        f"{hashlib.sha256((copy / n).read_bytes()).hexdigest()}  {n}\n"
        for n in ("manifest.json", "records.jsonl", "checkpoints.txt", "pubkey.txt")
    )
    (copy / "SHA256SUMS").write_text(sums)
    (copy / "SHA256SUMS.sig").write_text(sign_note(sums, key))
    report = verify_bundle(copy, VerifierKey.from_text(gate.pubkey))
    assert not report.ok and report.first_bad_seq == first + 5 and "missing" in (report.problem or "")


# -- the report ------------------------------------------------------------------------------


def test_the_report_checks_the_checkpoint_copies_as_audit_verify_does(gate: Gate, tmp_path: Path) -> None:
    """Truncate the log and delete its checkpoints: the copies on other storage still catch it."""
    copy = copy_gate(gate, tmp_path)
    last = bodies(copy.db)[-1]["seq"]
    with closing(sqlite3.connect(copy.db)) as conn, conn:
        for trigger in ("evidence_no_delete", "checkpoints_no_delete"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DELETE FROM evidence WHERE seq > ?", (last - 5,))
        conn.execute("DELETE FROM checkpoints")
    done = mcp_gate("audit", "report", "--config", str(copy.config), "--format", "json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["verification"]["ok"] is False
    assert report["verification"]["first_bad_seq"] == last - 4
    verified = mcp_gate("audit", "verify", "--config", str(copy.config))
    assert verified.returncode == 1 and verified.stdout.startswith("TAMPERED")


def test_the_json_report_lists_approvals_refusals_and_zero_unapproved_calls(
    gate: Gate, tmp_path: Path
) -> None:
    copy = copy_gate(gate, tmp_path)
    done = mcp_gate("audit", "report", "--config", str(copy.config), "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["gate"] == "test-gate" and report["verification"]["ok"] is True
    assert (
        report["unapproved_calls"]["count"] == 0 and "call.released" in report["unapproved_calls"]["method"]
    )
    approved, denied = report["approvals"]
    assert approved["requester"] == "test-agent" and approved["owner"] == "alice@example.com"
    assert approved["approvers"] == ["bob"] and approved["outcome"] == "approved"
    assert approved["latency_seconds"] is not None and approved["latency_seconds"] >= 0
    assert denied["outcome"] == "denied" and denied["deniers"] == ["dave"]
    assert [r["by"] for r in report["self_approval_refusals"]] == ["alice"]
    assert report["denials"][0]["note"] == HOSTILE
    tiers = {(r["server"], r["tier"]): r for r in report["calls_by_server_tier"]}
    assert tiers[("notes", "high")]["requested"] == 2 and tiers[("notes", "high")]["ran"] == 1
    assert tiers[("notes", "low")]["ran"] == 1
    assert bodies(copy.db)[-1]["event_type"] == "audit.reported"


def test_the_html_report_is_one_self_contained_page_with_every_value_escaped(
    gate: Gate, tmp_path: Path
) -> None:
    copy = copy_gate(gate, tmp_path)
    out = tmp_path / "report.html"
    done = mcp_gate("audit", "report", "--config", str(copy.config), "--out", str(out))
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "0 calls ran without a required approval" in page
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"""(src|href)\s*=|<link|@import|url\(""", page)
    assert page.count("<script>") == 1 and "localeCompare" in page  # the inline sorter and filter


def seeded_log() -> list[dict[str, Any]]:
    def ev(kind: str, cid: str, **fields: Any) -> dict[str, Any]:
        return {"event_type": kind, "ts": "2026-11-24T12:00:00.000000Z", "correlation_id": cid, **fields}

    who = {"requester": {"agent": "agent-1", "owner": "alice@example.com"}, "server": "db", "tool": "drop"}
    return [
        ev("policy.decided", "ok", **who, tier="high", requirement="1 approval"),
        ev("call.released", "ok", request_id="R1", approvers=["bob"]),
        ev("call.executed", "ok"),
        ev("policy.decided", "bad", **who, tier="critical", requirement="2 approvals"),
        ev("call.released", "bad", request_id="R2", approvers=["bob", "bob"]),
        ev("call.executed", "bad"),
        ev("policy.decided", "granted", **who, tier="high", requirement="1 approval"),
        ev("call.released", "granted", grant_id="G1"),
        ev("call.executed", "granted"),
        ev("policy.decided", "sneaky", **who, tier="high", requirement="1 approval"),
        ev("call.failed", "sneaky"),
        ev("policy.decided", "low", **who, tier="low", requirement="run"),
        ev("call.executed", "low"),
    ]


def test_a_seeded_unapproved_call_appears_in_the_report_and_zero_says_zero() -> None:
    report = summarize(seeded_log())
    assert [c["correlation_id"] for c in report["unapproved_calls"]["calls"]] == ["bad", "sneaky"]
    page = render_html({**report, "gate": "g", "gate_version": "x", "period": {"since": None, "until": None},
                        "verification": {"ok": True, "records": 13, "keys_checked": False}})  # fmt: skip
    assert "2 call(s) ran without a required approval" in page
    clean = summarize(seeded_log()[:3])
    assert clean["unapproved_calls"]["count"] == 0


def test_a_call_decided_before_the_period_and_run_inside_it_is_still_checked() -> None:
    log = seeded_log()
    before = {cid: [b for b in log[:5] if b["correlation_id"] == cid] for cid in ("ok", "bad")}
    inside = log[5:] + [log[2]]  # "bad" and "ok" ran in the period; their decisions came before it
    report = summarize(inside, lambda cid: before.get(cid, []))
    assert [c["correlation_id"] for c in report["unapproved_calls"]["calls"]] == ["bad", "sneaky"]
    ran = {(r["server"], r["tier"]): r["ran"] for r in report["calls_by_server_tier"]}
    assert ran == {("db", "critical"): 1, ("db", "high"): 3, ("db", "low"): 1}


def test_a_call_that_ran_with_no_policy_decision_at_all_is_a_violation() -> None:
    orphan = {"event_type": "call.executed", "ts": "2026-11-24T12:00:00.000000Z", "correlation_id": "x",
              "server": "db", "tool": "drop"}  # fmt: skip
    report = summarize([*seeded_log()[:3], orphan])
    [violation] = report["unapproved_calls"]["calls"]
    assert violation["correlation_id"] == "x" and "no policy.decided" in violation["requirement"]


@pytest.mark.anyio
async def test_the_report_names_every_expiry_revocation_grant_and_drift_with_who_and_what(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    start = clock.moment

    def config_for(variant: str) -> Path:
        return write_config(
            tmp_path / "gate",
            servers={"notes": notes_server_table(tmp_path / "notes", variant=variant)},
            manifests={"notes": NOTES_MANIFEST.read_text()},
            approvers=APPROVERS,
            tiers=TIERS,
            approvals={"hold_seconds": 0.2, "progress_seconds": 0.05, "expires": "1d"},
        )

    config = config_for("1")
    notes = notes_server(tmp_path / "notes", variant="1")
    async with (
        running_gate(config, clock=clock, servers={"notes": notes}) as front,
        Client(front.server, mode="legacy") as agent,
    ):
        gate = front.gateway
        people = gate.config.approvers
        early = {"name": "early", "text": "asked before the period"}
        await agent.call_tool("notes__write_note", early)
        early_request = await wait_for_request(gate, 1)
        clock.advance(hours=1)  # the period starts here
        await gate.engine.decide(early_request.id, people["bob"], "approve", channel="t")
        assert not (await agent.call_tool("notes__write_note", early)).is_error

        await agent.call_tool("notes__write_note", {"name": "a", "text": "1"})
        expiring = await wait_for_request(gate, 1)
        clock.moment = expiring.expires_at + timedelta(milliseconds=1)
        late = await gate.engine.decide(expiring.id, people["bob"], "approve", channel="t")
        assert isinstance(late, Refusal) and late.code == "expired"

        await agent.call_tool("notes__write_note", {"name": "b", "text": "2"})
        revoking = await wait_for_request(gate, 1)
        await gate.engine.decide(revoking.id, people["bob"], "approve", channel="t")
        assert not isinstance(await gate.engine.revoke(revoking.id, people["dave"]), Refusal)

        await agent.call_tool("notes__write_note", {"name": "c", "text": "3"})
        granting = await wait_for_request(gate, 1)
        await gate.engine.decide(
            granting.id, people["bob"], "approve", channel="t", grant_for=timedelta(minutes=30)
        )
        [grant] = await gate.engine.grants()
        await gate.engine.revoke_grant(grant.id, people["dave"])
    config = config_for("2")  # read_note's description changes: drift
    async with running_gate(
        config, clock=clock, servers={"notes": notes_server(tmp_path / "notes", variant="2")}
    ):
        pass
    accepted = mcp_gate("tools", "accept", "notes__read_note", "--config", str(config), env={"USER": "olga"})
    assert accepted.returncode == 0, accepted.stderr

    since = (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = await anyio.to_thread.run_sync(
        lambda: mcp_gate("audit", "report", "--config", str(config), "--since", since, "--format", "json")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["period"] == {"since": since.replace("Z", ".000000Z"), "until": None}
    assert len(report["policy_versions"]) >= 1 and all(
        len(v["policy_sha256"]) == 64 for v in report["policy_versions"]
    )
    assert report["unapproved_calls"]["count"] == 0
    high = next(r for r in report["calls_by_server_tier"] if r["tier"] == "high")
    assert high["ran"] == 1 and high["requested"] == 4  # early's retry, a, b and c
    [expiry] = report["expiries"]
    assert expiry["request_id"] == expiring.id and expiry["tool"] == "write_note" and expiry["expires_at"]
    assert expiry["requester"] == "test-agent", expiry
    [revocation] = report["revocations"]
    assert revocation == revocation | {"request_id": revoking.id, "by": "dave", "tool": "write_note"}
    created, revoked = report["grants"]
    assert created["event"] == "grant.created" and created["by"] == "bob" and created["for"] == "30m"
    assert revoked["event"] == "grant.revoked" and revoked["by"] == "dave"
    assert (revoked["server"], revoked["tool"]) == ("notes", "write_note")
    drifted, accepted_row = report["drift"]
    assert drifted["event"] == "tool.drifted" and drifted["tool"] == "read_note"
    assert drifted["previous_pin"] and drifted["pin"] != drifted["previous_pin"]
    assert accepted_row["event"] == "tool.accepted" and accepted_row["by"] == "olga"
    assert accepted_row["pin"] == drifted["pin"]
    page = render_html(report)
    for shown in (expiring.id, revoking.id, grant.id, "olga", drifted["pin"]):
        assert shown in page


@pytest.mark.anyio
async def test_the_report_command_exits_1_when_a_call_ran_unapproved(tmp_path: Path) -> None:
    config = make_config(tmp_path, extra="")
    events = []
    for e in seeded_log():
        kind, ts, cid = e.pop("event_type"), e.pop("ts"), e.pop("correlation_id")
        events.append(new_event(kind, ts=ts, correlation_id=cid, **e))
    key = SigningKey.generate("k")
    async with await SQLiteStore.open(config.parent / "data" / "gate.db", notary=Notary(key, "o")) as store:
        await store.append(events)
    report = ("audit", "report", "--config", str(config), "--format", "json")
    done = await anyio.to_thread.run_sync(lambda: mcp_gate(*report))
    assert done.returncode == 1
    assert json.loads(done.stdout)["unapproved_calls"]["count"] == 2


# -- retention -------------------------------------------------------------------------------


@contextmanager
def old_log(tmp_path: Path) -> Iterator[Path]:
    config = make_config(tmp_path, extra='\n[evidence]\nretention = "30d"\n')
    db = config.parent / "data" / "gate.db"
    assert mcp_gate("keys", "init", "--config", str(config)).returncode == 0

    async def fill() -> None:
        from mcp_gate.notary import notary_for

        async with await SQLiteStore.open(db, notary=notary_for(load_config(config, os.environ))) as store:
            old = [f"2020-01-{d:02d}T00:00:00.000000Z" for d in range(1, 11)]
            await store.append([new_event("call.requested", ts=ts, correlation_id=None) for ts in old])
            await store.append(
                [new_event("call.requested", ts="2099-01-01T00:00:00.000000Z", correlation_id=None)]
            )

    anyio.run(fill)
    yield config


def test_pruning_keeps_verification_passing_with_the_gap_explained(tmp_path: Path) -> None:
    with old_log(tmp_path) as config:
        done = mcp_gate("audit", "prune", "--config", str(config))
        assert done.returncode == 0, done.stderr
        assert "pruned seq 1..10 (10 records" in done.stdout
        db = config.parent / "data" / "gate.db"
        remaining = bodies(db)
        assert remaining[0]["seq"] == 11 and remaining[-1]["event_type"] == "evidence.pruned"
        assert remaining[-1]["count"] == 10
        verified = mcp_gate("audit", "verify", "--config", str(config))
        assert verified.returncode == 0, verified.stdout
        assert "seq 1..10 pruned under a signed retention checkpoint" in verified.stdout


def test_records_removed_without_a_retention_checkpoint_fail_verification(tmp_path: Path) -> None:
    with old_log(tmp_path) as config:
        db = config.parent / "data" / "gate.db"
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("DROP TRIGGER evidence_no_delete")
            conn.execute("DELETE FROM evidence WHERE seq <= 4")
        done = mcp_gate("audit", "verify", "--config", str(config))
        assert done.returncode == 1 and "seq 1 missing" in done.stdout


def test_a_retention_checkpoint_signed_by_another_key_does_not_explain_a_gap(tmp_path: Path) -> None:
    from mcp_gate.checkpoints import Pruned

    with old_log(tmp_path) as config:
        db = config.parent / "data" / "gate.db"
        with closing(sqlite3.connect(db)) as conn, conn:
            root = conn.execute("SELECT entry_hash FROM evidence WHERE seq = 4").fetchone()[0]
            forged = Notary(SigningKey.generate("mcp-gate-test-gate"), "mcp-gate/test-gate").sign(
                4, root, datetime.now(UTC), pruned=Pruned(1, 4, 4, root)
            )
            conn.execute("DROP TRIGGER evidence_no_delete")
            conn.execute("DELETE FROM evidence WHERE seq <= 4")
            conn.execute(
                "INSERT INTO checkpoints (size, kind, created_at, note) VALUES (4, 'retention', ?, ?)",
                ("2026-12-01T00:00:00.000000Z", forged),
            )
        done = mcp_gate("audit", "verify", "--config", str(config))
        assert done.returncode == 1 and done.stdout.startswith("TAMPERED"), done.stdout
        assert "seq 1 missing" in done.stdout


def test_prune_without_a_signing_key_is_a_one_line_error_and_removes_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path, extra='\n[evidence]\nretention = "30d"\n')
    db = config.parent / "data" / "gate.db"

    async def fill() -> None:
        db.parent.mkdir(exist_ok=True)
        async with await SQLiteStore.open(db) as store:
            await store.append(
                [new_event("call.requested", ts="2020-01-01T00:00:00.000000Z", correlation_id=None)]
            )
            await store.append(
                [new_event("call.requested", ts="2099-01-01T00:00:00.000000Z", correlation_id=None)]
            )

    anyio.run(fill)
    done = mcp_gate("audit", "prune", "--config", str(config))
    assert done.returncode == 2 and "needs a signing key" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and len(bodies(db)) == 2


def test_a_configured_key_path_is_taken_from_gate_toml_and_signs(tmp_path: Path) -> None:
    config = make_config(tmp_path, extra='\n[evidence]\nkey = "keys/gate.key"\n')
    (config.parent / "keys").mkdir()
    created = mcp_gate("keys", "init", "--config", str(config))
    assert created.returncode == 0, created.stderr
    key_file = config.parent / "keys" / "gate.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and not (config.parent / "data" / "signing.key").exists()
    assert mcp_gate("keys", "show", "--config", str(config)).stdout.strip() == created.stdout.strip()
    anyio.run(drive, config)
    sizes = checkpoint_sizes(config.parent / "data" / "gate.db", created.stdout.strip())
    assert sizes and max(sizes) == bodies(config.parent / "data" / "gate.db")[-1]["seq"]


def test_prune_without_a_retention_setting_is_a_one_line_error(gate: Gate) -> None:
    done = mcp_gate("audit", "prune", "--config", str(gate.config))
    assert done.returncode == 2 and "evidence.retention: not set" in done.stderr


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ('[evidence]\ncheckpoint_every = "soon"\n', "evidence.checkpoint_every"),
        ("[evidence]\ncheckpoint_every_records = 0\n", "evidence.checkpoint_every_records"),
        ('[evidence]\nwebhook_url_env = "NO_SUCH_VAR_X"\n', "evidence.webhook_url_env: environment variable"),
        ('[evidence]\nretention = "1h"\n', "evidence.retention: must be at least 1d"),
        ('[evidence]\nkey = "missing.key"\n', "evidence.key"),
        ("[evidence]\nsigner = 1\n", "evidence.signer"),
    ],
)
def test_a_bad_evidence_section_is_one_clear_line(tmp_path: Path, extra: str, fragment: str) -> None:
    config = make_config(tmp_path, extra="\n" + extra)
    done = mcp_gate("check", "--config", str(config))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and fragment in done.stderr, done.stderr


def test_check_reports_a_missed_checkpoint_copy_in_one_line(gate: Gate, tmp_path: Path) -> None:
    copy = copy_gate(gate, tmp_path)
    body = new_event("checkpoint.copy_failed", ts="2026-11-24T12:00:00.000000Z", correlation_id=None,
                     size=7, failed=["webhook hooks.example: answered HTTP 500"])  # fmt: skip
    anyio.run(_append, copy.db, body)
    done = mcp_gate("check", "--config", str(copy.config))
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("checkpoints:")]
    assert "size 7" in line and "webhook hooks.example: answered HTTP 500" in line


async def _append(db: Path, body: dict[str, Any]) -> None:
    async with await SQLiteStore.open(db) as store:
        await store.append([body])


def test_tarball_members_are_only_the_bundle_files(bundles: tuple[Path, Path]) -> None:
    with tarfile.open(bundles[1]) as tar:
        assert sorted(tar.getnames()) == sorted(p.name for p in bundles[0].iterdir())


def test_long_jobs_draw_one_progress_line_on_stderr_and_short_ones_none() -> None:
    import io

    from mcp_gate.bundle import Progress

    out = io.StringIO()
    bar = Progress("verifying", 100_000, stream=out)
    for _ in range(4):
        bar.advance(25_000)
    bar.close()
    assert out.getvalue().endswith("100000/100000\n") and "\r" in out.getvalue()
    quiet = io.StringIO()
    small = Progress("verifying", 10, stream=quiet)
    small.advance(10)
    small.close()
    assert quiet.getvalue() == ""


def test_verification_reports_progress_as_it_streams(gate: Gate) -> None:
    from mcp_gate.storage import verify_file

    seen: list[tuple[int, int]] = []
    report = anyio.run(lambda: verify_file(gate.db, progress=lambda done, total: seen.append((done, total))))
    assert report.ok and seen[-1] == (report.records, report.records)


def test_a_new_key_over_an_unsigned_log_says_no_checkpoint_yet_not_an_empty_range(tmp_path: Path) -> None:
    config = make_config(tmp_path)

    async def one_unsigned_record() -> None:
        (config.parent / "data").mkdir(exist_ok=True)
        async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
            await store.append(
                [new_event("gate.started", ts="2026-12-01T00:00:00.000000Z", correlation_id="c" * 32)]
            )

    anyio.run(one_unsigned_record)
    assert mcp_gate("keys", "init", "--config", str(config)).returncode == 0
    done = mcp_gate("audit", "verify", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "no signed checkpoint yet" in done.stdout and "1..0" not in done.stdout
