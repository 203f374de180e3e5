"""Pure: verify an evidence log against its signed checkpoints and retention checkpoints."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mcp_gate.checkpoints import Checkpoint, VerifierKey, open_note, parse_checkpoint
from mcp_gate.errors import CheckpointError
from mcp_gate.evidence import GENESIS_HASH, ChainVerifier, VerifyReport

__all__ = ["AuditReport", "LogVerifier", "NoteCheck"]


@dataclass(frozen=True)
class NoteCheck:
    """One signed note as read: its checkpoint if a trusted key signed it, else why not (and the
    size it claims, if its body reads as a checkpoint)."""

    checkpoint: Checkpoint | None
    problem: str | None
    source: str
    claimed_size: int | None = None


def check_notes(notes: Iterable[tuple[str, str]], verifiers: Sequence[VerifierKey]) -> list[NoteCheck]:
    """Open each (source, note text); a note no trusted key signed is a problem, not a checkpoint."""
    checks: list[NoteCheck] = []
    for source, text in notes:
        try:
            body, _ = open_note(text, verifiers)
            checks.append(NoteCheck(parse_checkpoint(body), None, source))
        except CheckpointError as exc:
            checks.append(NoteCheck(None, str(exc), source, _claimed_size(text)))
    return checks


def _claimed_size(text: str) -> int | None:
    try:
        return parse_checkpoint(text.partition("\n\n")[0] + "\n").size
    except CheckpointError:
        return None


@dataclass(frozen=True)
class AuditReport(VerifyReport):
    """A chain verification plus what the signed checkpoints prove.

    `checkpoints` counts valid signed checkpoints; `covered` is the largest size one of them
    proves; `pruned_through` is the last seq removed under a signed retention checkpoint (0 if
    none). `first_bad_seq` is the first seq the log cannot prove intact.
    """

    checkpoints: int = 0
    covered: int = 0
    pruned_through: int = 0
    keys_checked: bool = False


class LogVerifier:
    """Feeds stored rows through a `ChainVerifier` and checks every checkpoint's size and root."""

    def __init__(self, checks: Sequence[NoteCheck], *, keys_checked: bool) -> None:
        self._keys_checked = keys_checked
        self._bad_notes = [c for c in checks if c.checkpoint is None]
        valid = [c.checkpoint for c in checks if c.checkpoint is not None]
        retention = [c for c in valid if c.pruned is not None]
        self._retention = max(retention, key=lambda c: c.size, default=None)
        start = 0 if self._retention is None else self._retention.size
        start_hash = GENESIS_HASH if self._retention is None else self._retention.root
        self._chain = ChainVerifier(after_seq=start, after_hash=start_hash)
        self._start = start
        # Several notes may sign the same size; any disagreement with the log is a problem.
        self._roots: dict[int, set[str]] = {}
        for checkpoint in valid:
            if checkpoint.size > start:
                self._roots.setdefault(checkpoint.size, set()).add(checkpoint.root)
        self._valid = valid
        self._mismatch: int | None = None
        self._matched: list[int] = []

    def feed(
        self,
        seq: int,
        event_id: str,
        ts: str,
        event_type: str,
        correlation_id: str | None,
        body_text: str,
        prev_hash: str,
        entry_hash: str,
    ) -> None:
        chain = self._chain
        chain.feed(seq, event_id, ts, event_type, correlation_id, body_text, prev_hash, entry_hash)
        if self._mismatch is None and chain.ok and seq in self._roots:
            if self._roots[seq] == {entry_hash}:
                self._matched.append(seq)
            else:
                self._mismatch = seq

    def report(self) -> AuditReport:
        chain = self._chain.report()
        last = self._chain.last_seq
        proven = max(self._matched, default=self._start)
        candidates: list[tuple[int, str]] = []
        if not chain.ok:
            assert chain.first_bad_seq is not None and chain.problem is not None
            candidates.append((chain.first_bad_seq, chain.problem))
        if self._mismatch is not None:
            candidates.append(
                (
                    _after(self._matched, self._mismatch, self._start) + 1,
                    f"records up to seq {self._mismatch} differ from the signed checkpoint of that size "
                    f"(rewritten?); records after seq {_after(self._matched, self._mismatch, self._start)} "
                    "are not proven",
                )
            )
        beyond = [size for size in self._roots if size > last]
        if chain.ok and beyond:
            candidates.append(
                (
                    last + 1,
                    f"seq {last + 1} missing: the log ends at seq {last} but a signed checkpoint covers "
                    f"{max(beyond)} records (truncated?)",
                )
            )
        for bad in self._bad_notes:
            # A checkpoint no trusted key signed proves nothing about the records it claims.
            at = bad.claimed_size if bad.claimed_size else proven + 1
            claim = f" (it claims seq 1..{bad.claimed_size})" if bad.claimed_size else ""
            candidates.append(
                (at, f"seq {at}: a checkpoint from {bad.source} is not valid{claim}: {bad.problem}")
            )
        covered = max((c.size for c in self._valid), default=0)
        first_bad, problem = min(candidates, key=lambda c: c[0]) if candidates else (None, None)
        head = chain.head_hash
        return AuditReport(
            ok=first_bad is None,
            records=chain.records,
            head_hash=head,
            first_bad_seq=first_bad,
            problem=problem,
            checkpoints=len(self._valid),
            covered=covered,
            pruned_through=self._start,
            keys_checked=self._keys_checked,
        )


def _after(matched: Sequence[int], size: int, start: int) -> int:
    """The largest proven checkpoint size below `size`."""
    return max((m for m in matched if m < size), default=start)
