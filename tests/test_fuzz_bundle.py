"""Hostile evidence bundles given to `audit verify --bundle`: traversal, links, huge or missing
members, a wrong SHA256SUMS, a forged manifest, non-tar bytes and gzip bombs. Each is refused in
one line, and verifying writes nothing anywhere."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_gate.bundle import (
    BUNDLE_FORMAT,
    MAX_MEMBERS,
    MAX_RECORD_LINE_BYTES,
    BundleReport,
    verify_bundle,
)
from mcp_gate.checkpoints import SigningKey, sign_note
from mcp_gate.errors import GateError

KEY = SigningKey.generate("fuzz.example/gate")
NAMES = ("manifest.json", "records.jsonl", "checkpoints.txt", "pubkey.txt")
MANIFEST = {
    "format": BUNDLE_FORMAT,
    "first_seq": 1,
    "last_seq": 1,
    "count": 1,
    "first_prev_hash": "0" * 64,
    "last_entry_hash": "0" * 64,
}


def files(**changes: bytes) -> dict[str, bytes]:
    base = {
        "manifest.json": json.dumps(MANIFEST).encode(),
        "records.jsonl": b"{}\n",
        "checkpoints.txt": b"",
        "pubkey.txt": KEY.verifier.to_text().encode() + b"\n",
    }
    return base | {name.replace("_", "."): data for name, data in changes.items()}


def signed(content: dict[str, bytes], *, sums_for: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The bundle's files with a SHA256SUMS (of `sums_for`, default the files) signed by KEY."""
    listed = sums_for or content
    sums = "".join(f"{hashlib.sha256(listed[n]).hexdigest()}  {n}\n" for n in sorted(listed))
    return content | {"SHA256SUMS": sums.encode(), "SHA256SUMS.sig": sign_note(sums, KEY).encode()}


def tarball(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return path


def link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def refused(path: Path) -> str:
    """Verify `path`; it must fail with one line, as a report or a GateError. Returns the line."""
    try:
        report = verify_bundle(path, KEY.verifier)
    except GateError as exc:
        line = str(exc)
    else:
        assert isinstance(report, BundleReport) and not report.ok
        line = report.problem or ""
    assert line and "\n" not in line
    return line


def snapshot(directory: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_size) for p in directory.rglob("*") if not p.is_symlink())


HOSTILE_TARS = {
    "path traversal": lambda: [("../x", b"escape"), *signed(files()).items()],
    "absolute path": lambda: [("/tmp/mcp-gate-fuzz-abs", b"escape"), *signed(files()).items()],
    "symlink member": lambda: [
        link("records.jsonl", tarfile.SYMTYPE, "/etc/passwd"),
        *((n, d) for n, d in signed(files()).items() if n != "records.jsonl"),
    ],
    "hardlink member": lambda: [
        link("records.jsonl", tarfile.LNKTYPE, "pubkey.txt"),
        *((n, d) for n, d in signed(files()).items() if n != "records.jsonl"),
    ],
    "missing member": lambda: [(n, d) for n, d in signed(files()).items() if n != "checkpoints.txt"],
    "wrong SHA256SUMS": lambda: list(signed(files(), sums_for=files(records_jsonl=b"other\n")).items()),
    "forged manifest": lambda: list(signed(files(manifest_json=b"[]")).items()),
    "manifest with text seqs": lambda: list(
        signed(files(manifest_json=json.dumps(MANIFEST | {"first_seq": "1"}).encode())).items()
    ),
    "too many members": lambda: [(f"f{i}", b"") for i in range(MAX_MEMBERS + 1)],
    "huge record line": lambda: list(signed(files(records_jsonl=b"x" * (MAX_RECORD_LINE_BYTES + 1))).items()),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_a_hostile_tarball_is_refused_in_one_line_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    path = tarball(tmp_path / "bundle.tar.gz", HOSTILE_TARS[case]())
    before = snapshot(tmp_path)
    refused(path)
    assert snapshot(tmp_path) == before
    assert not (tmp_path.parent / "x").exists() and not Path("/tmp/mcp-gate-fuzz-abs").exists()


def test_a_well_formed_signed_bundle_gets_past_the_container_checks(tmp_path: Path) -> None:
    # The fixtures above are hostile only where they say: this one is refused later, at the records.
    path = tarball(tmp_path / "bundle.tar.gz", list(signed(files()).items()))
    assert "records.jsonl: seq 1" in refused(path) or "no signed checkpoint" in refused(path)


def test_a_gzip_bomb_of_member_headers_is_refused_after_a_few_members(tmp_path: Path) -> None:
    # 100,000 empty members: 50 MB of tar headers in a few hundred KB of gzip.
    path = tmp_path / "bomb.tar.gz"
    header = tarfile.TarInfo("f").tobuf(format=tarfile.GNU_FORMAT)
    with gzip.open(path, "wb", compresslevel=9) as out:
        for _ in range(100):
            out.write(header * 1000)
    assert f"more than {MAX_MEMBERS} files" in refused(path)


def test_a_directory_bundle_whose_files_are_symlinks_is_refused(tmp_path: Path) -> None:
    # Before this was refused, records.jsonl -> /dev/zero made the hash loop forever.
    directory = tmp_path / "bundle"
    directory.mkdir()
    for name, data in signed(files()).items():
        (directory / name).write_bytes(data)
    (directory / "records.jsonl").unlink()
    os.symlink("/dev/zero", directory / "records.jsonl")
    assert "not a regular file" in refused(directory)


@pytest.mark.parametrize(
    "data",
    # mtime=0: the parameters are built when each xdist worker collects, and must be the same bytes
    [b"", b"not a tarball", b"\x1f\x8b\x08\x00" + b"\0" * 20, gzip.compress(b"\0" * 4096, mtime=0)[:-4]],
    ids=["empty", "text", "gzip header only", "truncated gzip"],
)
def test_bytes_that_are_no_tarball_are_refused_in_one_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(data)
    refused(path)


VALID = tarball(Path(tempfile.mkdtemp(prefix="fuzz-bundle-")) / "b.tar.gz", list(signed(files()).items()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_damage_to_a_tarball_is_refused_in_one_line(data: st.DataObject) -> None:
    raw = bytearray(VALID.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        path = Path(scratch) / "b.tar.gz"
        path.write_bytes(bytes(raw[:cut]))
        refused(path)


@pytest.mark.parametrize("case", ["path traversal", "forged manifest", "too many members"])
def test_the_cli_says_one_line_for_a_hostile_bundle(tmp_path: Path, case: str) -> None:
    path = tarball(tmp_path / "bundle.tar.gz", HOSTILE_TARS[case]())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcp_gate",
            "audit",
            "verify",
            "--bundle",
            str(path),
            "--pubkey",
            KEY.verifier.to_text(),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode in (1, 2), done.stdout + done.stderr
    shown = (done.stdout + done.stderr).strip()
    assert "Traceback" not in shown and "\n" not in shown, shown
