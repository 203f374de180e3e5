"""Export bundles: a streaming export of evidence with its checkpoints, and their offline verification."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mcp_gate.audit import check_notes
from mcp_gate.checkpoints import (
    Signer,
    VerifierKey,
    open_note,
    sign_note,
    split_notes,
)
from mcp_gate.errors import CheckpointError, GateError
from mcp_gate.evidence import ChainVerifier, canonical_json, parse_canonical
from mcp_gate.storage.base import LogReader

__all__ = ["BundleReport", "Progress", "export_bundle", "verify_bundle"]

RECORDS = "records.jsonl"
CHECKPOINTS = "checkpoints.txt"
PUBKEY = "pubkey.txt"
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
SUMS_NOTE = "SHA256SUMS.sig"
_SIGNED_FILES = (MANIFEST, RECORDS, CHECKPOINTS, PUBKEY)
BUNDLE_FORMAT = "mcp-gate-evidence-bundle/1"
_CHUNK = 1 << 16
# Stated limits of `audit verify --bundle` (docs/limits.md): a bundle has six files, so a tarball
# listing more members is refused before its headers fill memory; each records.jsonl line, and
# each other file, has a most size.
MAX_MEMBERS = 64
MAX_RECORD_LINE_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = 64 * 1024 * 1024
_LINE_KEYS = {"body", "entry_hash", "prev_hash", "seq"}


class Progress:
    """A one-line progress bar on stderr for long jobs; silent below `threshold` items."""

    def __init__(
        self, label: str, total: int, *, threshold: int = 20_000, stream: IO[str] | None = None
    ) -> None:
        self.label = label
        self.total = total
        self._on = total >= threshold
        self._stream = stream or sys.stderr
        self._last = 0.0
        self._done = 0

    @property
    def done(self) -> int:
        return self._done

    def advance(self, count: int = 1) -> None:
        self._done += count
        if self._on and (now := time.monotonic()) - self._last >= 0.5:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        share = self._done / self.total if self.total else 1.0
        bar = "#" * int(share * 30)
        self._stream.write(f"\r{self.label} [{bar:<30}] {self._done}/{self.total}")
        self._stream.flush()

    def close(self) -> None:
        if self._on:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()


@dataclass(frozen=True)
class ExportResult:
    path: Path
    first_seq: int
    last_seq: int
    count: int
    sums_sha256: str


def export_bundle(
    reader: LogReader,
    key: Signer,
    out: Path,
    *,
    since: str | None,
    until: str | None,
    gate: Mapping[str, Any],
    progress: Callable[[str, int], Progress] | None = None,
) -> ExportResult:
    """Write the records with since <= ts < until (extended to the next signed checkpoint so the tail
    is provable) to `out`: a directory, or a .tar.gz when the name ends so. Memory stays flat."""
    if out.exists():
        raise GateError(f"--out {out}: already exists; choose a new path")
    span = reader.seq_range(since, until)
    if span is None:
        raise GateError("audit export: no records in that period")
    first, last = span
    notes = reader.notes()
    covering = sorted(size for size, _, _ in notes if size >= last)
    if not covering:
        raise GateError("audit export: no signed checkpoint covers the period's last record yet")
    last = covering[0]
    tarred = out.name.endswith((".tar.gz", ".tgz"))
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent)) if tarred else out
    try:
        if not tarred:
            out.mkdir(parents=True)
        total = last - first + 1
        bar = progress("exporting", total) if progress else Progress("exporting", total)
        count, prev_hash, entry_hash = 0, None, None
        types: dict[str, int] = {}
        policies: set[str] = set()
        with (work / RECORDS).open("wb") as handle:
            for row in reader.rows(first, last):
                seq, _eid, _ts, event_type, _cid, body_text, row_prev, row_entry = row
                if prev_hash is None:
                    prev_hash = row_prev
                line = {
                    "seq": seq,
                    "prev_hash": row_prev,
                    "entry_hash": row_entry,
                    "body": json.loads(body_text),
                }
                handle.write(canonical_json(line) + b"\n")
                types[event_type] = types.get(event_type, 0) + 1
                policy = line["body"].get("policy_sha256")
                if isinstance(policy, str):
                    policies.add(policy)
                entry_hash = row_entry
                count += 1
                bar.advance()
        bar.close()
        if count != total:
            raise GateError(
                f"audit export: the log has {count} records in seq {first}..{last}; run audit verify"
            )
        kept = [note for _, _, note in notes]
        (work / CHECKPOINTS).write_text("\n".join(kept) + ("\n" if kept else ""), "utf-8")
        (work / PUBKEY).write_text(key.verifier.to_text() + "\n", "utf-8")
        manifest = {
            "format": BUNDLE_FORMAT,
            "gate": dict(gate),
            "period": {"since": since, "until": until},
            "first_seq": first,
            "last_seq": last,
            "count": count,
            "first_prev_hash": prev_hash,
            "last_entry_hash": entry_hash,
            "event_types": dict(sorted(types.items())),
            "policy_sha256": sorted(policies),
            "checkpoints": len(kept),
            "key_id": key.verifier.key_id,
        }
        (work / MANIFEST).write_bytes(canonical_json(manifest) + b"\n")
        sums = "".join(f"{_file_sha256(work / name)}  {name}\n" for name in _SIGNED_FILES)
        (work / SUMS).write_text(sums, "utf-8")
        (work / SUMS_NOTE).write_text(sign_note(sums, key), "utf-8")
        if tarred:
            with tarfile.open(out, "w:gz") as tar:
                for name in (*_SIGNED_FILES, SUMS, SUMS_NOTE):
                    tar.add(work / name, arcname=name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if tarred:
            out.unlink(missing_ok=True)
        raise
    if tarred:
        shutil.rmtree(work, ignore_errors=True)
    sums_sha256 = hashlib.sha256(sums.encode()).hexdigest()
    return ExportResult(out, first, last, count, sums_sha256)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BundleReport:
    """What verifying a bundle found: ok, or the first problem, naming the file and seq."""

    ok: bool
    records: int
    first_seq: int | None
    last_seq: int | None
    checkpoints: int
    first_bad_seq: int | None
    problem: str | None


# What a damaged bundle raises while it is read (a changed byte in a .tar.gz can surface as any).
_UNREADABLE = (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError, KeyError, tarfile.TarError)


class _Bundle:
    """Read access to the files of a bundle directory or .tar.gz, streaming."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise GateError(f"--bundle {path}: no such file or directory")
        self.path = path
        self.tarred = path.is_file()
        try:
            is_tar = not self.tarred or tarfile.is_tarfile(path)
        except _UNREADABLE:
            is_tar = False
        if not is_tar:
            raise GateError(f"--bundle {path}: not a directory or a .tar.gz bundle")

    def container_problem(self) -> str | None:
        """For a .tar.gz, what is wrong with the bytes around the files: the gzip stream must end
        with a matching CRC-32 and length, and nothing but zero padding may follow the last
        member. (The gzip header's own time and OS fields are not covered by anything.)"""
        if not self.tarred:
            return None
        end = self._members()[1]
        with gzip.open(self.path, "rb") as stream:
            stream.seek(end)
            while chunk := stream.read(_CHUNK):  # to EOF: gzip checks its CRC-32 and length here
                if chunk.strip(b"\0"):
                    return "the .tar.gz holds bytes after its last file"
        return None

    def names(self) -> list[str]:
        if not self.tarred:
            return sorted(p.name for p in self.path.iterdir())
        return self._members()[0]

    @functools.cache  # noqa: B019 (one _Bundle per verification; the tarball is read once for this)
    def _members(self) -> tuple[list[str], int]:
        """The member names of the .tar.gz, and the offset where its end-of-archive blocks begin."""
        with tarfile.open(self.path, "r:gz") as tar:
            names = []
            for member in tar:
                names.append(member.name)
                if len(names) > MAX_MEMBERS:
                    raise GateError(f"--bundle {self.path}: more than {MAX_MEMBERS} files; not a bundle")
            return sorted(names), tar.offset

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        if not self.tarred:
            if not stat.S_ISREG((self.path / name).lstat().st_mode):  # a symlink may name /dev/zero
                raise GateError(f"{name} in the bundle is not a regular file")
            with (self.path / name).open("rb") as handle:
                yield handle
            return
        with tarfile.open(self.path, "r:gz") as tar:
            member = tar.getmember(name)
            if not member.isfile():
                raise GateError(f"{name} in the bundle is not a regular file")
            extracted = tar.extractfile(member)
            assert extracted is not None
            yield extracted

    def read(self, name: str, limit: int = MAX_FILE_BYTES) -> bytes:
        with self.open(name) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise GateError(f"{name} in the bundle is too large")
        return data

    def sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        with self.open(name) as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


def verify_bundle(path: Path, pubkey: VerifierKey, *, progress: Progress | None = None) -> BundleReport:
    """Verify a bundle with nothing but the gate's public key: signature over SHA256SUMS, every
    file's hash, no file added or missing, the records' chain and count, and every checkpoint."""
    bundle = _Bundle(path)

    def fail(problem: str, seq: int | None = None, records: int = 0) -> BundleReport:
        return BundleReport(False, records, None, None, 0, seq, problem)

    try:
        if (problem := bundle.container_problem()) is not None:
            return fail(problem)
        names = bundle.names()
        expected = sorted((*_SIGNED_FILES, SUMS, SUMS_NOTE))
        if names != expected:
            extra = sorted(set(names) - set(expected))
            missing = sorted(set(expected) - set(names))
            what = f"unexpected file {extra[0]}" if extra else f"missing file {missing[0]}"
            return fail(f"the bundle has an {what}" if extra else f"the bundle is {what}")
        sums_text = bundle.read(SUMS).decode("utf-8")
        try:
            body, _ = open_note(bundle.read(SUMS_NOTE).decode("utf-8"), [pubkey])
        except CheckpointError as exc:
            return fail(f"{SUMS_NOTE}: {exc}")
        if body != sums_text:
            return fail(f"{SUMS} differs from the signed copy in {SUMS_NOTE}")
        listed = {}
        for line in sums_text.splitlines():
            digest, _, name = line.partition("  ")
            listed[name] = digest
        if sorted(listed) != sorted(_SIGNED_FILES):
            return fail(f"{SUMS} does not list exactly the bundle's files")
        for name in _SIGNED_FILES:
            if bundle.sha256(name) != listed[name]:
                return fail(f"{name} was changed: its SHA-256 does not match {SUMS}")
        manifest = json.loads(bundle.read(MANIFEST))
        if not _manifest_shape(manifest):
            return fail(f"{MANIFEST}: not an mcp-gate evidence bundle")
        notes_text = bundle.read(CHECKPOINTS).decode("utf-8")
        checks = check_notes(((CHECKPOINTS, n) for n in split_notes(notes_text)), [pubkey])
        return _verify_records(bundle, manifest, checks, progress)
    except _UNREADABLE as exc:
        return fail(f"the bundle cannot be read: {type(exc).__name__}: {exc}")


def _manifest_shape(manifest: Any) -> bool:
    """A bundle's manifest is an object of this format with whole-number seqs and text hashes."""
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        return False
    numbers = [manifest.get(k) for k in ("first_seq", "last_seq", "count")]
    hashes = [manifest.get(k) for k in ("first_prev_hash", "last_entry_hash")]
    return all(type(n) is int for n in numbers) and all(isinstance(h, str) for h in hashes)


def _verify_records(
    bundle: _Bundle, manifest: Mapping[str, Any], checks: Any, progress: Progress | None
) -> BundleReport:
    first, last, count = manifest["first_seq"], manifest["last_seq"], manifest["count"]
    bad = [c for c in checks if c.checkpoint is None]
    valid = [c.checkpoint for c in checks if c.checkpoint is not None]
    if bad:
        return BundleReport(False, 0, first, last, len(valid), first, f"{CHECKPOINTS}: {bad[0].problem}")
    roots: dict[int, set[str]] = {}
    for checkpoint in valid:
        roots.setdefault(checkpoint.size, set()).add(checkpoint.root)
    if last not in roots:
        return BundleReport(
            False, 0, first, last, len(valid), last, f"no signed checkpoint covers seq {last}"
        )
    chain = ChainVerifier(after_seq=first - 1, after_hash=manifest["first_prev_hash"])
    records = 0
    bar = progress or Progress("verifying", count)
    with bundle.open(RECORDS) as handle:
        while line := handle.readline(MAX_RECORD_LINE_BYTES + 1):
            if len(line) > MAX_RECORD_LINE_BYTES:
                seq = first + records
                too_long = f"{RECORDS}: seq {seq}: the line is longer than {MAX_RECORD_LINE_BYTES} bytes"
                return BundleReport(False, records, first, last, len(valid), seq, too_long)
            raw = line.decode("utf-8")  # a bad byte is UnicodeDecodeError: "cannot be read"
            records += 1
            problem = _feed_line(chain, raw, first + records - 1)
            if problem is not None:
                return BundleReport(False, records, first, last, len(valid), first + records - 1, problem)
            seq = chain.last_seq
            if seq in roots and roots[seq] != {chain.report().head_hash}:
                return BundleReport(
                    False,
                    records,
                    first,
                    last,
                    len(valid),
                    seq,
                    f"{RECORDS}: seq {seq} differs from the signed checkpoint of that size",
                )
            bar.advance()
    bar.close()
    if records != count or chain.last_seq != last:
        missing = chain.last_seq + 1
        return BundleReport(
            False,
            records,
            first,
            last,
            len(valid),
            missing,
            f"{RECORDS}: seq {missing} missing: {records} records where the manifest says {count}",
        )
    if chain.report().head_hash != manifest["last_entry_hash"]:
        return BundleReport(
            False, records, first, last, len(valid), last, f"{MANIFEST}: last_entry_hash differs"
        )
    return BundleReport(True, records, first, last, len(valid), None, None)


def _feed_line(chain: ChainVerifier, raw: str, expected: int) -> str | None:
    line = raw[:-1] if raw.endswith("\n") else raw
    try:
        item, canonical = parse_canonical(line)
        if canonical != line.encode("utf-8") or not isinstance(item, dict) or set(item) != _LINE_KEYS:
            return f"{RECORDS}: seq {expected}: the line is not a canonical record (edited?)"
        body = item["body"]
        if not isinstance(body, dict):
            return f"{RECORDS}: seq {expected}: the record's body is not an object (edited?)"
        # In canonical form "body" comes first and "entry_hash" next: the body's own bytes.
        body_text = line[len('{"body":') : line.rindex(',"entry_hash":"')]
        get: Callable[[str], Any] = body.get
        chain.feed(
            item["seq"], get("event_id"), get("ts"), get("event_type"), get("correlation_id"),
            body_text, item["prev_hash"], item["entry_hash"],
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{RECORDS}: seq {expected}: the line is not a record (edited?)"
    return None if chain.ok else f"{RECORDS}: {chain.report().problem}"
