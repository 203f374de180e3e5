"""Sealed decisions: what releases a held call is re-derived from evidence the gate sealed itself.

The tables of requests, votes and grants are the engine's working state; they are not trusted to
release a call. Every decision record the engine writes (a request, a vote, a revocation, a grant
and its revocation) carries a `seal`: an HMAC-SHA256 of the record under the deployment's
decision key (`data_dir/decisions.key`, 0600). Before an approved request releases its call, and
before a grant stands in for an approval, the engine reads the sealed records of that request back
from the evidence chain and derives from them alone who approved, whether anybody denied or
revoked, and what the request required. A row written by a process without the key (an inserted
vote, a request set to approved, a lowered quorum, a grant out of nowhere, an unsealed record
appended to the chain) derives nothing, so it releases nothing; the engine records what it found.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_gate.approvals import ApprovalRequest, Grant
from mcp_gate.clock import utc_iso
from mcp_gate.config import check_private
from mcp_gate.errors import GateError, StoreError
from mcp_gate.events import GRANT_DECISIONS, REQUEST_DECISIONS, event_type_of
from mcp_gate.evidence import canonical_json

__all__ = [
    "Derived",
    "derive",
    "grant_forgery",
    "load_key",
    "seal",
    "sealed_by",
]

_DOMAIN = b"mcp-gate/decision/v1\n"
_UNSEALED = ("seq", "seal")  # the store adds seq after sealing; the seal cannot cover itself


def load_key(path: Path, what: str = "elicitation key") -> bytes:
    """A gate key: 32 random bytes in a 0600 file, created on first use."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
        check_private(path, what)
        key = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read or create the {what} {path}: {exc.strerror or exc}") from exc
    except GateError as exc:  # readable by others: a store problem to the callers of this key
        raise StoreError(str(exc)) from None
    if len(key) != 32:
        raise StoreError(f"{path}: the {what} is {len(key)} bytes, not 32; delete it to make a new one")
    return key


def _mac(key: bytes, body: Mapping[str, Any]) -> str:
    content = {k: v for k, v in body.items() if k not in _UNSEALED}
    return hmac.new(key, _DOMAIN + canonical_json(content), hashlib.sha256).hexdigest()


def seal(key: bytes, body: dict[str, Any]) -> dict[str, Any]:
    """The event body with its seal."""
    return {**body, "seal": _mac(key, body)}


def sealed_by(key: bytes, body: Mapping[str, Any]) -> bool:
    """Was this record sealed under `key`?"""
    mark = body.get("seal")
    return isinstance(mark, str) and hmac.compare_digest(mark, _mac(key, body))


@dataclass(frozen=True)
class Derived:
    """What the sealed records of one request say. `forged` lists what did not match them."""

    approvers: tuple[str, ...]
    denied_by: str | None
    revoked_by: str | None
    forged: tuple[str, ...]
    broken_by: str | None = None  # the operator whose sealed break-glass stands in for the approvals
    broken_reason: str | None = None

    def why_not(self, required: int) -> str | None:
        """Why these records do not release a request that needs `required` approvals, or None."""
        if self.forged:
            return "its approval could not be verified: " + "; ".join(self.forged)
        if self.denied_by or self.revoked_by:
            return f"its sealed records show it {'denied' if self.denied_by else 'revoked'}"
        if self.broken_by is not None:
            return None
        if len(self.approvers) < required:
            return f"its sealed records show {len(self.approvers)} of {required} approvals"
        return None


def derive(key: bytes, request: ApprovalRequest, bodies: Iterable[Mapping[str, Any]]) -> Derived:
    """Who decided `request`, from its evidence records alone, and where its row disagrees."""
    forged: list[str] = []
    requested: Mapping[str, Any] | None = None
    approvers: list[str] = []
    denied_by: str | None = None
    revoked_by: str | None = None
    broken: Mapping[str, Any] | None = None
    for body in bodies:
        kind = event_type_of(body)
        if body.get("request_id") != request.id or kind not in REQUEST_DECISIONS:
            continue
        if not sealed_by(key, body):
            forged.append(f"an unsealed {body.get('event_type')} record (seq {body.get('seq')})")
            continue
        match kind:
            case "approval.requested":
                requested = body
            case "approval.decided":
                who = body.get("approver")
                if body.get("verdict") == "deny":
                    denied_by = denied_by or str(who)
                elif isinstance(who, str) and who not in approvers:
                    approvers.append(who)
            case "approval.revoked":
                revoked_by = revoked_by or str(body.get("approver"))
            case "breakglass.used":
                broken = broken or body
    if requested is None:
        forged.append("no sealed approval.requested record")
    else:
        forged.extend(_request_mismatch(request, requested))
    row_approvers = sorted(v.approver for v in request.approvals)
    if row_approvers != sorted(approvers) and not forged:
        unsealed = sorted(set(row_approvers) - set(approvers))
        if unsealed:
            forged.append(f"approvals with no sealed decision: {', '.join(unsealed)}")
    if broken is None:
        return Derived(tuple(approvers), denied_by, revoked_by, tuple(forged))
    return Derived(
        tuple(approvers),
        denied_by,
        revoked_by,
        tuple(forged),
        broken_by=str(broken.get("operator")),
        broken_reason=str(broken.get("reason")),
    )


def _request_mismatch(request: ApprovalRequest, sealed: Mapping[str, Any]) -> list[str]:
    b = request.binding
    expected: dict[str, Any] = {
        "required": request.required,
        "groups": list(request.groups),
        "expires_at": utc_iso(request.expires_at),
        "server": b.server,
        "tool": b.tool,
        "pin": b.pin,
        "args_sha256": b.args_sha256,
        "requester": {"agent": b.agent, "owner": b.owner},
        "policy_sha256": b.policy_sha256,
        "tier": request.tier,
        "rule": request.rule,
    }
    return [
        f"the request's {name} differs from its sealed record"
        for name, value in expected.items()
        if sealed.get(name) != value
    ]


def grant_forgery(key: bytes, grant: Grant, bodies: Iterable[Mapping[str, Any]]) -> str | None:
    """Why the evidence does not back this grant row (or shows it revoked), or None if it does."""
    created: Mapping[str, Any] | None = None
    for body in bodies:
        if body.get("grant_id") != grant.id or event_type_of(body) not in GRANT_DECISIONS:
            continue
        if not sealed_by(key, body):
            continue
        if event_type_of(body) == "grant.revoked":
            return f"grant {grant.id} was revoked by {body.get('approver')}"
        created = body
    if created is None:
        return f"grant {grant.id} has no sealed grant.created record"
    expected: dict[str, Any] = {
        "requester": {"agent": grant.agent, "owner": grant.owner},
        "server": grant.server,
        "tool": grant.tool,
        "expires_at": utc_iso(grant.expires_at),
        "approver": grant.created_by,
        "rule": grant.rule,
        "pin": grant.pin,
        "policy_sha256": grant.policy_sha256,
        "request_id": grant.request_id,
    }
    wrong = [name for name, value in expected.items() if created.get(name) != value]
    if wrong:
        return f"grant {grant.id} differs from its sealed record in {', '.join(wrong)}"
    return None
