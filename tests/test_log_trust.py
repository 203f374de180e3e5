"""Trust in the log's own history: the signed head beside the key, signing only extensions, the key pin."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import pytest
from test_audit_cli import drive, make_config, mcp_gate

from mcp_gate.checkpoints import open_note, parse_checkpoint
from mcp_gate.config import load_config
from mcp_gate.errors import StoreError
from mcp_gate.evidence import GENESIS_HASH, canonical_json, chain_hash, new_event
from mcp_gate.notary import Notary, create_key_file, head_path, notary_for
from mcp_gate.storage.sqlite import SQLiteStore


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A gate with a key that served a few calls; its config and public key."""
    config = make_config(tmp_path_factory.mktemp("trust"))
    done = mcp_gate("keys", "init", "--config", str(config))
    assert done.returncode == 0, done.stderr
    anyio.run(drive, config)
    return config, done.stdout.strip()


def copy_of(ran: tuple[Path, str], tmp_path: Path) -> Path:
    shutil.copytree(ran[0].parent, tmp_path / "gate")
    (tmp_path / "gate" / "copies" / "checkpoints.log").unlink()  # no copy leaves the machine
    return tmp_path / "gate" / "gate.toml"


def db_of(config: Path) -> Path:
    return config.parent / "data" / "gate.db"


def rewrite_and_delete_checkpoints(db: Path) -> None:
    """What a local attacker with the database does: recompute the whole chain, empty the table."""
    with closing(sqlite3.connect(db)) as conn, conn:
        for trigger in ("evidence_no_update", "checkpoints_no_delete"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DELETE FROM checkpoints")
        prev = GENESIS_HASH
        for seq, text in list(conn.execute("SELECT seq, body FROM evidence ORDER BY seq")):
            body = json.loads(text)
            if seq >= 3:
                body["ts"] = body["ts"].replace("20", "19", 1)
            new = canonical_json(body)
            entry = chain_hash(prev, new)
            conn.execute(
                "UPDATE evidence SET body = ?, ts = ?, prev_hash = ?, entry_hash = ? WHERE seq = ?",
                (new.decode(), body["ts"], prev, entry, seq),
            )
            prev = entry


def stored_checkpoints(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0])


def test_keys_init_starts_a_0600_signed_head_at_size_zero(ran: tuple[Path, str], tmp_path: Path) -> None:
    config = make_config(tmp_path)
    done = mcp_gate("keys", "init", "--config", str(config))
    assert done.returncode == 0, done.stderr
    head = config.parent / "data" / "signing.key.head"
    assert head.stat().st_mode & 0o777 == 0o600
    from mcp_gate.checkpoints import VerifierKey

    body, _ = open_note(head.read_text(), [VerifierKey.from_text(done.stdout.strip())])
    assert parse_checkpoint(body).size == 0


def test_a_rewritten_log_with_its_checkpoints_deleted_fails_verification(
    ran: tuple[Path, str], tmp_path: Path
) -> None:
    config = copy_of(ran, tmp_path)
    rewrite_and_delete_checkpoints(db_of(config))
    for extra in ([], ["--pubkey", ran[1]]):
        done = mcp_gate("audit", "verify", "--config", str(config), *extra)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stdout.startswith("TAMPERED") and "no signed checkpoint yet" not in done.stdout
        assert "differ from the signed checkpoint" in done.stdout  # the signed head's root
    assert stored_checkpoints(db_of(config)) == 0  # verify's own record signed nothing over the forgery


def test_nothing_signs_a_checkpoint_over_a_rewritten_log(ran: tuple[Path, str], tmp_path: Path) -> None:
    config = copy_of(ran, tmp_path)
    rewrite_and_delete_checkpoints(db_of(config))
    done = mcp_gate("audit", "export", "--config", str(config), "--out", str(tmp_path / "bundle"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "checkpoints were deleted" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert stored_checkpoints(db_of(config)) == 0
    notary = notary_for(load_config(config, os.environ))
    with pytest.raises(
        StoreError, match=r"gate\.db: the checkpoint table ends at size 0 but this key signed"
    ):
        anyio.run(lambda: SQLiteStore.open(db_of(config), notary=notary))


@pytest.mark.anyio
async def test_a_running_store_refuses_to_sign_once_the_log_under_it_is_rewritten(tmp_path: Path) -> None:
    key = create_key_file(tmp_path / "signing.key", "gate")
    notary = Notary(key, "mcp-gate/t", head=head_path(tmp_path / "signing.key"))
    db = tmp_path / "gate.db"

    def event(kind: str = "call.requested") -> dict[str, object]:
        return new_event(kind, ts="2026-12-01T00:00:00.000000Z", correlation_id=None)

    async with await SQLiteStore.open(db, notary=notary) as store:
        await store.append([event(), event(), event(), event("approval.decided")])
        assert len(await store.checkpoint_notes()) == 1
        rewrite_and_delete_checkpoints(db)
        await store.append([event(), event("approval.decided")])  # a checkpoint is due: none is signed
        assert await store.checkpoint_notes() == []
        with pytest.raises(StoreError, match="refusing to sign: record 4 differs"):
            await store.checkpoint()
    body, _ = open_note(notary.head.read_text(), [key.verifier])  # type: ignore[union-attr]
    assert parse_checkpoint(body).size == 4  # the head still names the last honest checkpoint


def test_deleted_checkpoints_alone_fail_verification_and_start_up(
    ran: tuple[Path, str], tmp_path: Path
) -> None:
    config = copy_of(ran, tmp_path)
    with closing(sqlite3.connect(db_of(config))) as conn, conn:
        conn.execute("DROP TRIGGER checkpoints_no_delete")
        conn.execute("DELETE FROM checkpoints")
    done = mcp_gate("audit", "verify", "--config", str(config))
    assert done.returncode == 1 and "checkpoint history deleted" in done.stdout, done.stdout
    notary = notary_for(load_config(config, os.environ))
    with pytest.raises(StoreError, match="checkpoints were deleted"):
        anyio.run(lambda: SQLiteStore.open(db_of(config), notary=notary))


def test_deleting_the_head_file_too_still_fails_while_a_key_exists(
    ran: tuple[Path, str], tmp_path: Path
) -> None:
    config = copy_of(ran, tmp_path)
    rewrite_and_delete_checkpoints(db_of(config))
    (config.parent / "data" / "signing.key.head").unlink()
    done = mcp_gate("audit", "verify", "--config", str(config))
    assert done.returncode == 1 and "signed-head file" in done.stdout and "missing" in done.stdout
    notary = notary_for(load_config(config, os.environ))
    with pytest.raises(StoreError, match="signed-head file .* is missing, but the key was pinned"):
        anyio.run(lambda: SQLiteStore.open(db_of(config), notary=notary))
    assert stored_checkpoints(db_of(config)) == 0


def test_verify_without_pubkey_says_it_trusts_the_local_key(ran: tuple[Path, str], tmp_path: Path) -> None:
    config = copy_of(ran, tmp_path)
    local = mcp_gate("audit", "verify", "--config", str(config))
    assert local.returncode == 0 and local.stdout.startswith("ok:"), local.stdout + local.stderr
    assert "trusting the public key of the local signing key" in local.stderr
    assert "--pubkey" in local.stderr
    pinned = mcp_gate("audit", "verify", "--config", str(config), "--pubkey", ran[1])
    assert pinned.returncode == 0 and "trusting" not in pinned.stderr


def test_a_swapped_key_is_caught_by_the_key_pinned_in_the_log(ran: tuple[Path, str], tmp_path: Path) -> None:
    config = copy_of(ran, tmp_path)
    data = config.parent / "data"
    with closing(sqlite3.connect(db_of(config))) as conn, conn:
        conn.execute("DROP TRIGGER checkpoints_no_delete")
        conn.execute("DELETE FROM checkpoints")
    (data / "signing.key").unlink()
    (data / "signing.key.head").unlink()
    swapped = create_key_file(data / "signing.key", "mcp-gate-test-gate")
    for extra in ([], ["--pubkey", swapped.verifier.to_text()]):
        done = mcp_gate("audit", "verify", "--config", str(config), *extra)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "not the key the log pinned" in done.stdout and "swapped" in done.stdout


def test_check_warns_when_no_checkpoint_copy_leaves_the_machine(tmp_path: Path) -> None:
    config = make_config(tmp_path, extra="\n[evidence]\ncheckpoint_every_records = 50\n")
    without_key = mcp_gate("check", "--config", str(config))
    assert "kept on this machine only" not in without_key.stdout
    assert mcp_gate("keys", "init", "--config", str(config)).returncode == 0
    done = mcp_gate("check", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checkpoints: WARNING: signed checkpoints are kept on this machine only" in done.stdout
    assert "webhook_url_env" in done.stdout
    with_sink = make_config(tmp_path / "sink")
    assert mcp_gate("keys", "init", "--config", str(with_sink)).returncode == 0
    assert "kept on this machine only" not in mcp_gate("check", "--config", str(with_sink)).stdout


@pytest.mark.anyio
async def test_a_log_from_before_the_head_file_adopts_its_last_checkpoint(tmp_path: Path) -> None:
    key = create_key_file(tmp_path / "signing.key", "gate")
    db = tmp_path / "gate.db"
    event = new_event("approval.decided", ts="2026-12-01T00:00:00.000000Z", correlation_id=None)
    async with await SQLiteStore.open(db, notary=Notary(key, "mcp-gate/t")) as store:  # no head file
        await store.append([event])
    head = head_path(tmp_path / "signing.key")
    assert not head.exists()
    async with await SQLiteStore.open(db, notary=Notary(key, "mcp-gate/t", head=head)):
        pass
    assert head.stat().st_mode & 0o777 == 0o600
    body, _ = open_note(head.read_text(), [key.verifier])
    assert parse_checkpoint(body).size == 1


def test_a_deleted_head_is_not_taken_from_the_table_once_the_key_was_pinned(
    ran: tuple[Path, str], tmp_path: Path
) -> None:
    config = copy_of(ran, tmp_path)
    (config.parent / "data" / "signing.key.head").unlink()
    notary = notary_for(load_config(config, os.environ))
    with pytest.raises(StoreError, match="signed-head file .* is missing, but the key was pinned"):
        anyio.run(lambda: SQLiteStore.open(db_of(config), notary=notary))
    done = mcp_gate("audit", "verify", "--config", str(config))
    assert done.returncode == 1 and "signed-head file" in done.stdout


@pytest.mark.anyio
async def test_a_log_with_records_but_no_checkpoint_and_no_head_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "gate.db"
    event = new_event("call.requested", ts="2026-12-01T00:00:00.000000Z", correlation_id=None)
    async with await SQLiteStore.open(db) as store:
        await store.append([event])
    key = create_key_file(tmp_path / "signing.key", "gate")
    notary = Notary(key, "mcp-gate/t", head=head_path(tmp_path / "signing.key"))
    with pytest.raises(StoreError, match="1 records, no signed checkpoint and no signed-head file"):
        await SQLiteStore.open(db, notary=notary)
