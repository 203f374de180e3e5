"""A separate signer: the gate holds no private key, asks a command to sign, and checks what it returns."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_audit_cli import drive, make_config, mcp_gate

from mcp_gate.checkpoints import SigningKey, open_note, parse_checkpoint
from mcp_gate.config import load_config
from mcp_gate.errors import CheckpointError, ConfigError
from mcp_gate.evidence import new_event
from mcp_gate.notary import CommandSigner, Notary
from mcp_gate.storage.sqlite import SQLiteStore

SIGNER = """\
import base64, sys
from mcp_gate.checkpoints import SigningKey
key = SigningKey.from_text(open(sys.argv[1]).read())
sys.stdout.write(base64.b64encode(key.sign(sys.stdin.buffer.read())).decode() + "\\n")
"""


def signer_files(directory: Path, key: SigningKey) -> tuple[Path, Path]:
    """A signer program and the key only it reads (standing in for an HSM or a KMS)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "signer.py"
    script.write_text(SIGNER)
    key_file = directory / "held-by-the-signer.key"
    key_file.write_text(key.to_text())
    return script, key_file


def signer_section(script: Path, key_file: Path, pubkey: str) -> str:
    command = json.dumps([sys.executable, str(script), str(key_file)])
    return f'\n[evidence]\ncheckpoint_every_records = 50\nsigner = {command}\nsigner_pubkey = "{pubkey}"\n'


def event(event_type: str = "call.requested") -> dict[str, object]:
    return new_event(event_type, ts="2026-11-24T12:00:00.000000Z", correlation_id="c1")


@pytest.mark.anyio
async def test_a_gate_with_a_separate_signer_signs_checkpoints_without_holding_a_key(tmp_path: Path) -> None:
    key = SigningKey.generate("gate-hsm")
    script, key_file = signer_files(tmp_path / "hsm", key)
    pubkey = key.verifier.to_text()
    config = make_config(tmp_path, signer_section(script, key_file, pubkey))
    await drive(config)
    data_dir = load_config(config, {}).data_dir
    # No signing key in the gate's folder (the argument-digest and decision keys belong there).
    assert not [key for key in data_dir.glob("*.key") if key.name not in ("args.key", "decisions.key")]

    verified = mcp_gate("audit", "verify", "--config", str(config), "--pubkey", pubkey, "--json")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] and report["keys_checked"] and report["checkpoints"] >= 2

    shown = mcp_gate("keys", "show", "--config", str(config))
    assert shown.returncode == 0 and shown.stdout.strip() == pubkey
    refused = mcp_gate("keys", "init", "--config", str(config))
    assert refused.returncode == 2
    assert "separate signer" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.anyio
async def test_a_signature_the_configured_public_key_rejects_is_never_stored(tmp_path: Path) -> None:
    real, impostor = SigningKey.generate("gate-hsm"), SigningKey.generate("gate-hsm")
    script, key_file = signer_files(tmp_path / "hsm", impostor)
    signer = CommandSigner((sys.executable, str(script), str(key_file)), real.verifier)
    with pytest.raises(CheckpointError, match="rejects"):
        signer.sign(b"a body\n")
    async with await SQLiteStore.open(tmp_path / "gate.db", notary=Notary(signer, "mcp-gate/t")) as store:
        written = await store.append([event(), event("approval.decided")])
        assert [r.seq for r in written] == [1, 2]  # the records themselves are committed
        assert await store.checkpoint_notes() == []


def test_a_signer_that_fails_or_prints_nonsense_gives_a_one_line_reason(tmp_path: Path) -> None:
    key = SigningKey.generate("gate-hsm")
    failing = CommandSigner((sys.executable, "-c", "import sys; sys.exit(3)"), key.verifier)
    with pytest.raises(CheckpointError, match="exit status 3"):
        failing.sign(b"x\n")
    nonsense = CommandSigner((sys.executable, "-c", "print('not base64!')"), key.verifier)
    with pytest.raises(CheckpointError, match="base64"):
        nonsense.sign(b"x\n")
    missing = CommandSigner((str(tmp_path / "no-such-signer"),), key.verifier)
    with pytest.raises(CheckpointError, match="could not be started"):
        missing.sign(b"x\n")


@pytest.mark.anyio
async def test_checkpoints_from_a_separate_signer_open_with_its_public_key(tmp_path: Path) -> None:
    key = SigningKey.generate("gate-hsm")
    script, key_file = signer_files(tmp_path / "hsm", key)
    signer = CommandSigner((sys.executable, str(script), str(key_file)), key.verifier)
    async with await SQLiteStore.open(tmp_path / "gate.db", notary=Notary(signer, "mcp-gate/t")) as store:
        await store.append([event(), event("approval.decided")])
        notes = await store.checkpoint_notes()
    assert [parse_checkpoint(open_note(n, [key.verifier])[0]).size for n in notes] == [2]


def test_a_signer_needs_its_public_key_and_excludes_a_key_file(tmp_path: Path) -> None:
    pubkey = SigningKey.generate("gate-hsm").verifier.to_text()
    for extra, problem in [
        ('\n[evidence]\nsigner = ["/usr/bin/signer"]\n', "evidence.signer_pubkey"),
        (f'\n[evidence]\nsigner_pubkey = "{pubkey}"\n', "evidence.signer:"),
        (
            f'\n[evidence]\nkey = "k"\nsigner = ["/usr/bin/signer"]\nsigner_pubkey = "{pubkey}"\n',
            "not both",
        ),
    ]:
        config = make_config(tmp_path / str(abs(hash(extra))), extra)
        with pytest.raises(ConfigError, match=problem):
            load_config(config, {})
