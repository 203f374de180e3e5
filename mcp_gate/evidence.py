"""Evidence records: canonical JSON, the SHA-256 hash chain, its verification and rendering."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import rfc8785

from mcp_gate.clock import Clock, utc_iso
from mcp_gate.errors import EvidenceWriteError
from mcp_gate.events import EventType, is_event_type
from mcp_gate.redaction import redact  # re-exported: evidence is stored redacted
from mcp_gate.redaction import safe_repr as _safe_repr

__all__ = [
    "ARGS_DIGEST",
    "GENESIS_HASH",
    "ChainVerifier",
    "EventFactory",
    "MakeEvent",
    "Record",
    "VerifyReport",
    "canonical_json",
    "chain_events",
    "chain_hash",
    "digest",
    "args_digest",
    "args_key_id",
    "result_digest",
    "new_event",
    "parse_canonical",
    "redact",
    "render_story",
    "sha256_hex",
]

GENESIS_HASH = "0" * 64
# How `args_sha256` is computed since the per-deployment key (older records: plain SHA-256).
ARGS_DIGEST = "hmac-sha256"
_ARGS_CONTEXT = b"mcp-gate/args/v1\x00"

_MAX_SAFE_INT = 2**53 - 1
# The columns a stored row repeats from its body; a mismatch means one of them was edited.
_COLUMNS = ("event_id", "ts", "event_type", "correlation_id")


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value.

    Raises ValueError for anything outside I-JSON: integers beyond +-(2**53 - 1), NaN and
    infinities, non-string keys, lone surrogates, non-JSON types.
    """
    # Fast and exact for the common case: only dicts with text keys, lists, text, booleans, null
    # and integers in range, and all of it ASCII. There the standard library's encoder with sorted
    # keys writes exactly the JCS bytes; anything else goes to rfc8785 (which may refuse it).
    try:
        if _plain(value):
            text = _FAST_ENCODER.encode(value)
            if text.isascii():
                return text.encode("ascii")
    except RecursionError:
        pass
    return rfc8785.dumps(value)


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_MAX_SAFE_INT <= value <= _MAX_SAFE_INT)
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return False


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(value: Any) -> str:
    """SHA-256 of the canonical JSON of a value (for `args_sha256`, `result_sha256`)."""
    return sha256_hex(canonical_json(value))


def args_digest(key: bytes, args: Any) -> str:
    """`args_sha256`: HMAC-SHA256 under the deployment's argument key of the canonical arguments.

    It binds an approval to one exact call (same arguments, same key: same digest, across
    restarts), but unlike a plain SHA-256 it cannot be brute-forced from the log to recover a
    redacted value (a 4-digit PIN, a short password) by anyone without the key."""
    return hmac.new(key, _ARGS_CONTEXT + canonical_json(args), hashlib.sha256).hexdigest()


def result_digest(wire: Any) -> str:
    """`result_sha256`: the RFC 8785 digest of a result. Results outside I-JSON (integers beyond
    2**53, say) come from the downstream, not the agent, so they are hashed as sorted-key JSON
    rather than refused."""
    try:
        return digest(wire)
    except ValueError:
        fallback = json.dumps(wire, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        return "json:" + hashlib.sha256(fallback.encode("utf-8", "surrogatepass")).hexdigest()


def args_key_id(key: bytes) -> str:
    """A short public name for an argument key, recorded in `gate.started`: it tells which key
    made a record's `args_sha256` without revealing the key."""
    return hmac.new(key, b"mcp-gate/args-key-id/v1", hashlib.sha256).hexdigest()[:16]


class MakeEvent(Protocol):
    """What builds one event body: an `EventFactory`, or a method that hands on to one."""

    def __call__(
        self, event_type: EventType, correlation_id: str | None, **fields: Any
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class EventFactory:
    """Builds event bodies that carry what every record of one gate carries: its name, version and
    policy hash, and a timestamp from the gate's clock."""

    gate_name: str
    version: str
    policy_sha256: str
    clock: Clock

    def __call__(self, event_type: EventType, correlation_id: str | None, **fields: Any) -> dict[str, Any]:
        return new_event(
            event_type,
            ts=utc_iso(self.clock.now()),
            correlation_id=correlation_id,
            gate={"name": self.gate_name, "version": self.version},
            policy_sha256=self.policy_sha256,
            **fields,
        )


def chain_hash(prev_hash: str, body_canonical: bytes) -> str:
    """The entry hash of a record: SHA-256 over the previous entry hash and the canonical body."""
    return sha256_hex(prev_hash.encode("ascii") + body_canonical)


@dataclass(frozen=True)
class Record:
    """One stored evidence record. `body` is the full record as hashed, including the columns."""

    seq: int
    event_id: str
    ts: str
    event_type: str
    correlation_id: str | None
    body: Mapping[str, Any]
    prev_hash: str
    entry_hash: str


_REQUIRED_TEXT = ("event_id", "ts", "event_type")


def chain_events(events: Sequence[Mapping[str, Any]], seq: int, prev_hash: str) -> list[tuple[Record, str]]:
    """Chain event bodies onto a log whose head is (`seq`, `prev_hash`): each gets the next seq and
    its entry hash. Every backend stores the canonical body text returned beside each record, so
    one `ChainVerifier` checks them all. EvidenceWriteError for a body that cannot be chained;
    ValueError or TypeError for one that is not JSON."""
    chained: list[tuple[Record, str]] = []
    for index, event in enumerate(events):
        body = dict(event)
        for name in _REQUIRED_TEXT:
            if not isinstance(body.get(name), str):
                raise EvidenceWriteError(f"event {index} has no text {name!r}; build events with new_event()")
        correlation_id = body.get("correlation_id")
        if correlation_id is not None and not isinstance(correlation_id, str):
            raise EvidenceWriteError(f"event {index} has a correlation_id that is not text or null")
        seq += 1
        body["seq"] = seq
        text = canonical_json(body)
        entry_hash = chain_hash(prev_hash, text)
        record = Record(
            seq=seq,
            event_id=body["event_id"],
            ts=body["ts"],
            event_type=body["event_type"],
            correlation_id=correlation_id,
            body=body,
            prev_hash=prev_hash,
            entry_hash=entry_hash,
        )
        chained.append((record, text.decode("utf-8")))
        prev_hash = entry_hash
    return chained


def new_event(event_type: EventType, *, ts: str, correlation_id: str | None, **fields: Any) -> dict[str, Any]:
    """A record body without `seq` (the store assigns it). Fields must be JSON values."""
    return {
        "event_id": uuid.uuid4().hex,
        "ts": ts,
        "event_type": event_type,
        "correlation_id": correlation_id,
        **fields,
    }


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of verifying a chain.

    `records` counts every row read; `head_hash` is the entry hash of the last record that
    verified (the genesis hash if none did); `first_bad_seq` is the sequence number at which
    the chain first breaks, so records 1..first_bad_seq-1 are intact.
    """

    ok: bool
    records: int
    head_hash: str
    first_bad_seq: int | None
    problem: str | None


class ChainVerifier:
    """Checks stored rows fed in stored order, in constant memory; the first problem wins."""

    def __init__(self, *, after_seq: int = 0, after_hash: str = GENESIS_HASH) -> None:
        # A log pruned under a signed retention checkpoint starts after `after_seq`, linked to
        # `after_hash`, the removed records' chain head.
        self._last_seq = after_seq
        self._head_hash = after_hash
        self._records = 0
        self._first_bad_seq: int | None = None
        self._problem: str | None = None

    @property
    def ok(self) -> bool:
        return self._problem is None

    @property
    def last_seq(self) -> int:
        """The seq of the last record that verified."""
        return self._last_seq

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
        self._records += 1
        if self._problem is not None:
            return
        expected = self._last_seq + 1
        # The common case in as few steps as possible; anything unusual goes to `_check`, which
        # names the problem (and is the authority if this path is ever stricter than it).
        if (
            type(seq) is int
            and seq == expected
            and type(body_text) is str
            and prev_hash == self._head_hash
            and type(entry_hash) is str
        ):
            try:
                body = _loads(body_text)
                data = body_text.encode("utf-8")
            except ValueError:
                body = None
            if (
                type(body) is dict
                and type(body.get("seq")) is int
                and body["seq"] == seq
                and _same(body, "event_id", event_id)
                and _same(body, "ts", ts)
                and _same(body, "event_type", event_type)
                and _same(body, "correlation_id", correlation_id)
                and _sha256(prev_hash.encode("ascii") + data).hexdigest() == entry_hash
            ):
                self._last_seq = expected
                self._head_hash = entry_hash
                return
        problem = self._check(
            expected, seq, (event_id, ts, event_type, correlation_id), body_text, prev_hash, entry_hash
        )
        if problem is not None:
            self._first_bad_seq = expected
            self._problem = problem
            return
        self._last_seq = expected
        self._head_hash = entry_hash

    def _check(
        self,
        expected: int,
        seq: Any,
        columns: tuple[Any, ...],
        body_text: Any,
        prev_hash: Any,
        entry_hash: Any,
    ) -> str | None:
        """The first problem with one row, in a fixed order.

        The entry hash is checked over the stored bytes. Canonical form is checked only where that
        hash does not match, to say whether the body was re-formatted or edited: where it matches,
        the bytes are those the gate hashed (it writes canonical JSON), or a rewrite with
        recomputed hashes, which only signed checkpoints can catch.
        """
        if type(seq) is not int:
            return f"seq {expected}: the seq column holds {seq!r}, not a number (edited?)"
        if seq > expected:
            after = f"after seq {expected - 1}" if expected > 1 else "at the start"
            return f"seq {expected} missing {after} (deleted?)"
        if seq < expected:
            return f"seq {seq} found again where seq {expected} was expected (duplicated or reordered?)"
        if not isinstance(body_text, str):
            return f"seq {seq}: body is not text (edited?)"
        try:
            body = json.loads(body_text)
            data = body_text.encode("utf-8")
        except ValueError:
            return f"seq {seq}: body is not valid canonical JSON (edited?)"
        if not isinstance(body, dict):
            return f"seq {seq}: body is not a JSON object (edited?)"
        body_seq = body.get("seq")
        if type(body_seq) is not int or body_seq != seq:
            return f"seq {seq}: the body says seq {body_seq!r} (moved or reordered?)"
        for name, column in zip(_COLUMNS, columns, strict=True):
            if name not in body or body[name] != column or type(body[name]) is not type(column):
                return f"seq {seq}: column {name} does not match the body (edited?)"
        if prev_hash != self._head_hash:
            link = f"seq {seq - 1}" if seq > 1 else "the genesis hash"
            return f"seq {seq}: prev_hash does not link to {link} (inserted or reordered?)"
        if not isinstance(entry_hash, str) or entry_hash != chain_hash(prev_hash, data):
            try:
                canonical = canonical_json(body)
            except ValueError:
                return f"seq {seq}: body is not valid canonical JSON (edited?)"
            if canonical != data:
                return f"seq {seq}: body is not in canonical form (re-formatted or edited?)"
            return f"seq {seq}: entry_hash does not match its contents (edited?)"
        return None

    def report(self) -> VerifyReport:
        return VerifyReport(
            ok=self._problem is None,
            records=self._records,
            head_hash=self._head_hash,
            first_bad_seq=self._first_bad_seq,
            problem=self._problem,
        )


_loads = json.JSONDecoder().decode
_sha256 = hashlib.sha256


def _same(body: dict[str, Any], name: str, column: Any) -> bool:
    value = body.get(name, _MISSING)
    return value == column and type(value) is type(column)


_MISSING = object()


def _no_float(text: str) -> Any:
    raise _NotFast


def _safe_int(text: str) -> int:
    number = int(text)
    if not -_MAX_SAFE_INT <= number <= _MAX_SAFE_INT:
        raise _NotFast
    return number


class _NotFast(Exception):
    """The text holds a float or an integer beyond I-JSON: only rfc8785 can say what is canonical."""


_FAST_DECODER = json.JSONDecoder(parse_float=_no_float, parse_int=_safe_int, parse_constant=_no_float)
_FAST_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def parse_canonical(body_text: str) -> tuple[Any, bytes]:
    """The parsed body and its RFC 8785 bytes, computed fast where that is exact.

    For ASCII text with no float literal and no integer beyond +-(2**53 - 1), `json.dumps` with
    sorted keys and no whitespace yields exactly the JCS bytes (key order by code point equals
    UTF-16 order for ASCII; both escape the same characters). If the text already is those
    bytes it is canonical; otherwise rfc8785 decides, as before.
    """
    if body_text.isascii():
        try:
            body = _FAST_DECODER.decode(body_text)
        except _NotFast:
            pass
        else:
            fast = _FAST_ENCODER.encode(body)
            if fast == body_text:
                return body, body_text.encode("ascii")
            return body, canonical_json(body)
    body = json.loads(body_text)
    return body, canonical_json(body)


_ARGS_WIDTH = 200


def render_story(records: Sequence[Record]) -> str:
    """A readable multi-line story of one call, for `mcp-gate audit show CORRELATION_ID`."""
    if not records:
        return "(no records)"
    correlation_id = next((r.correlation_id for r in records if r.correlation_id), None)
    agent = _first(records, "requester", "agent")
    owner = _first(records, "requester", "owner")
    server = _first(records, "server")
    tool = _first(records, "tool")
    header = [f"call {correlation_id or '?'}"]
    header.append(f"requester {agent or '?'}" + (f" (owner {owner})" if owner else ""))
    if server or tool:
        header.append(f"tool {server or '?'}__{tool or '?'}")
    lines = ["  ".join(header)]
    for record in records:
        details = _details(record.event_type, record.body)
        line = f"  {_clock_time(record.ts)}  #{record.seq:<5} {record.event_type:<16}"
        lines.append(f"{line} {details}".rstrip())
    return "\n".join(lines)


def _first(records: Sequence[Record], *path: str) -> str | None:
    for record in records:
        value = _get(record.body, *path)
        if value is not None:
            return _text(value)
    return None


def _get(body: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(body, Mapping):
            return None
        body = body.get(key)
    return body


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _compact(value, _ARGS_WIDTH)


def _compact(value: Any, width: int) -> str:
    try:
        text = json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=_safe_repr
        )
    except (TypeError, ValueError):
        text = _safe_repr(value)
    return text if len(text) <= width else f"{text[:width]}…"


def _clock_time(ts: Any) -> str:
    # "2026-11-24T16:48:32.123456Z" -> "16:48:32.123"
    if isinstance(ts, str) and len(ts) >= 23 and ts[10] == "T":
        return ts[11:23]
    return _text(ts)


def _details(event_type: str, body: Mapping[str, Any]) -> str:
    parts: list[str] = []

    def add(label: str, *path: str, width: int = _ARGS_WIDTH) -> None:
        value = _get(body, *path)
        if value is not None:
            shown = value if isinstance(value, str) else _compact(value, width)
            parts.append(f"{label}={shown}")

    match event_type if is_event_type(event_type) else None:
        case "policy.decided":
            add("tier", "tier")
            add("requirement", "requirement")
            add("rule", "rule")
            reason = _get(body, "reason")
            if reason is not None:
                parts.append(f"({_text(reason)})")
        case "call.requested":
            parts.append(f"args={_compact(_get(body, 'args'), _ARGS_WIDTH)}")
        case "call.executed":
            add("request", "request_id")
            add("duration_ms", "duration_ms")
            if _get(body, "is_error") is True:
                parts.append("is_error")
            add("result", "result")
        case "call.failed" | "call.refused":
            add("error", "error")
        case "tool.pinned" | "tool.drifted":
            pin = _get(body, "pin")
            if pin is not None:
                parts.append(f"pin={_text(pin)[:12]}")
        case "approval.requested":
            add("request", "request_id")
            add("needs", "required")
            add("from", "groups")
            add("expires", "expires_at")
            add("justification", "justification")
        case "approval.decided":
            add("request", "request_id")
            add("by", "approver")
            add("verdict", "verdict")
            add("via", "channel")
            add("note", "note")
            add("quorum", "quorum")
        case "approval.refused":
            add("request", "request_id")
            add("by", "approver")
            add("code", "code")
            add("why", "why")
        case "approval.joined" | "approval.expired" | "approval.revoked" | "approval.voided":
            add("request", "request_id")
            add("by", "approver")
            add("why", "why")
        case "call.deferred":
            add("request", "request_id")
            add("by", "approver")
            add("why", "why")
        case "call.released":
            add("request", "request_id")
            add("approvers", "approvers")
            add("grant", "grant_id")
        case "grant.created" | "grant.revoked":
            add("grant", "grant_id")
            add("by", "approver")
            add("for", "duration")
        case "call.outcome_unknown":
            add("request", "request_id")
            add("why", "why")
        case "confirm.asked" | "confirm.decided" | "call.resumed":
            add("kind", "kind")
            add("by", "decider")
            add("outcome", "outcome")
            add("via", "channel")
            add("reason", "reason")
            add("justification", "justification")
            add("expires", "expires_at")
        case "confirm.refused":
            add("code", "code")
            add("why", "why")
        case "elicitation.relayed":
            add("message", "message")
            add("action", "action")
            add("declined", "declined")
        case _:
            add("error", "error")
            add("reason", "reason")
    return " ".join(parts)
