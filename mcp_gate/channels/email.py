"""Email as an approval channel: each request mailed to its eligible approvers with signed links.

A mail carries the request's context and two links, Approve and Deny, into the console. Each link
is signed with the console's key, names the request, the verdict and the one approver it was sent
to, ends after `[email] link_expires`, and is good once: the console shows a confirmation page
after login and only the click there decides, through the engine. Who was mailed is recorded
(`email.sent`) under the request's correlation id, which is how a restarted gate knows not to mail
again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

import anyio

from mcp_gate.approvals import ApprovalRequest, Approver
from mcp_gate.availability import read_availability
from mcp_gate.channels.leases import claim
from mcp_gate.clock import utc_iso
from mcp_gate.config import EmailSettings
from mcp_gate.errors import GateError
from mcp_gate.gateway import Gateway
from mcp_gate.redaction import scrub

__all__ = ["DecisionLink", "EmailChannel", "eligible", "sign_link", "verify_link"]

log = logging.getLogger("mcp_gate.email")

SMTP_TIMEOUT = 20.0
RETRY_SECONDS = 30.0
LEASE_SECONDS = 120.0  # a gate's lease on one mail: SMTP_TIMEOUT for each of a few steps, and more
MAX_ARGS_CHARS = 4000

LinkVerdict = Literal["approve", "deny"]


@dataclass(frozen=True)
class DecisionLink:
    """What an emailed link says: this approver may confirm this verdict on this request until then."""

    request_id: str
    verdict: LinkVerdict
    approver: str
    expires_at: float  # seconds since the epoch
    nonce: str


def _link_key(key: bytes) -> bytes:
    return hashlib.sha256(b"mcp-gate email link\0" + key).digest()


def sign_link(key: bytes, link: DecisionLink) -> str:
    payload = json.dumps(
        [link.request_id, link.verdict, link.approver, link.expires_at, link.nonce], separators=(",", ":")
    ).encode()
    body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    signature = hmac.new(_link_key(key), payload, hashlib.sha256).hexdigest()
    return f"{body}.{signature}"


def verify_link(key: bytes, token: str) -> DecisionLink | None:
    """The link a token names if its signature holds (its time and use are checked by the caller)."""
    if len(token) > 1024 or "." not in token:
        return None
    body, _, signature = token.rpartition(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError:
        return None
    expected = hmac.new(_link_key(key), payload, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return None
    try:
        rid, verdict, approver, expires_at, nonce = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if verdict not in ("approve", "deny"):
        return None
    return DecisionLink(str(rid), verdict, str(approver), float(expires_at), str(nonce))


def eligible(request: ApprovalRequest, approvers: Mapping[str, Approver]) -> list[Approver]:
    """The approvers who may decide `request`: in its groups (any, without groups), never its owner."""
    owner = request.binding.owner.strip().lower()
    return [
        a
        for a in approvers.values()
        if owner not in a.identities() and (not request.groups or a.groups & set(request.groups))
    ]


class EmailChannel:
    """Mails every new open request once; woken by the store's changes, retried after a failure."""

    def __init__(self, gate: Gateway, settings: EmailSettings, password: str | None, key: bytes) -> None:
        self.gate = gate
        self.settings = settings
        self.password = password
        self.key = key
        console = gate.config.console
        assert console is not None and console.public_url is not None  # checked when the config loaded
        self.public_url = console.public_url
        self._noticed = 0  # the last break-glass record looked at

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self.gate.store.changes() as changes:
            while True:
                try:
                    await self.send_due()
                except GateError as exc:
                    log.error("email: cannot read the open requests: %s", exc)
                with anyio.move_on_after(RETRY_SECONDS):
                    await changes.wait()

    async def send_due(self) -> int:
        """Mail each open request not mailed yet, and each break-glass use not told yet; how many."""
        sent = await self.breakglass_notices()
        for request in await self.gate.engine.pending():
            if request.state != "pending":
                continue
            if await self._mailed(request):
                continue
            # Of several gates sharing the store, the one holding the lease mails it; it looks
            # again under the lease, as another may have mailed it meanwhile.
            leased = await claim(self.gate, f"email:{request.id}", LEASE_SECONDS)
            if not leased or await self._mailed(request):
                continue
            sent += await self._send(request)
        return sent

    async def _mailed(self, request: ApprovalRequest) -> bool:
        done = await self.gate.store.read(lambda tx: tx.bodies_for(request.correlation_id, ("email.sent",)))
        return any(b.get("request_id") == request.id for b in done)

    async def _send(self, request: ApprovalRequest) -> int:
        # Not routed to an approver who is away (`mcp-gate away`); the request's view says so
        # when that leaves nobody.
        present = await read_availability(self.gate.store, self.gate.engine.key, self.gate.clock.now())
        everyone = eligible(request, self.gate.config.approvers)
        approvers = present.available(everyone)
        messages = [self._message(request, a) for a in approvers]
        messages += [self._notice(request, to) for to in self.settings.notify]
        try:
            await anyio.to_thread.run_sync(self._deliver, messages)
        except (OSError, smtplib.SMTPException) as exc:
            why = " ".join(str(exc).split())[:300] or type(exc).__name__
            log.warning("email: request %s not mailed: %s", request.id, why)
            await self.gate.store.append(
                [self.gate.event("email.send_failed", request.correlation_id, request_id=request.id, why=why)]
            )
            return 0
        await self.gate.store.append(
            [
                self.gate.event(
                    "email.sent",
                    request.correlation_id,
                    request_id=request.id,
                    to=[a.name for a in approvers],
                    away=[a.name for a in everyone if present.is_away(a.name)],
                    notified=list(self.settings.notify),
                )
            ]
        )
        return 1

    async def breakglass_notices(self) -> int:
        """Mail every approver of the tier (away or not: it is an alarm) of each break-glass use,
        once, recorded as `email.breakglass_notified`."""
        used = await self.gate.store.records(event_type="breakglass.used", after_seq=self._noticed)
        if not used:
            return 0
        told = await self._told()  # read once a pass; again only under a lease just taken
        sent = 0
        for record in used:
            if record.event_id not in told:
                if not await claim(self.gate, f"email.breakglass:{record.event_id}", LEASE_SECONDS):
                    return sent  # another gate is mailing it: look again on the next pass
                if record.event_id in await self._told():  # mailed meanwhile, by another gate
                    self._noticed = record.seq
                    continue
                body = record.body
                names = [str(n) for n in body.get("notify") or []]
                approvers = [self.gate.config.approvers[n] for n in names if n in self.gate.config.approvers]
                what = f"{body.get('server')}__{body.get('tool')} (tier {body.get('tier')})"
                text = [
                    f"Break-glass on {self.gate.config.name}: {body.get('operator')} released request "
                    f"{body.get('request_id')}, {what}, without its approvals.",
                    f"Reason: {body.get('reason')}",
                    "",
                    f"Details: {self.public_url}/requests/{body.get('request_id')}",
                ]
                mails = [
                    self._mail(a.email, f"Break-glass: {what} ({body.get('request_id')})", text)
                    for a in approvers
                ]
                try:
                    await anyio.to_thread.run_sync(self._deliver, mails)
                except (OSError, smtplib.SMTPException) as exc:
                    log.warning("email: break-glass notice not mailed: %s", " ".join(str(exc).split())[:300])
                    return sent  # this one (and those after it) on the next pass
                await self.gate.store.append(
                    [
                        self.gate.event(
                            "email.breakglass_notified",
                            record.correlation_id,
                            notice_of=record.event_id,
                            request_id=body.get("request_id"),
                            to=[a.name for a in approvers],
                        )
                    ]
                )
                sent += 1
            self._noticed = record.seq
        return sent

    async def _told(self) -> set[object]:
        return {
            r.body.get("notice_of")
            for r in await self.gate.store.records(event_type="email.breakglass_notified")
        }

    def _deliver(self, messages: list[EmailMessage]) -> None:
        s = self.settings
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=SMTP_TIMEOUT) as smtp:
            if s.starttls:
                # Verified: the server's certificate and name, against [email] ca_file or the
                # system's CAs (smtplib's own default context checks neither).
                smtp.starttls(context=ssl.create_default_context(cadata=s.ca_pem))
            if s.username is not None and self.password is not None:
                smtp.login(s.username, self.password)
            for message in messages:
                smtp.send_message(message)

    def _link(self, request: ApprovalRequest, approver: Approver, verdict: LinkVerdict) -> str:
        expires = min(
            request.expires_at.timestamp(), self.gate.clock.now().timestamp() + self.settings.link_seconds
        )
        link = DecisionLink(request.id, verdict, approver.name, expires, secrets.token_urlsafe(12))
        return f"{self.public_url}/email/{sign_link(self.key, link)}"

    def _context(self, request: ApprovalRequest) -> list[str]:
        b = request.binding
        args = json.dumps(scrub(request.args, self.gate.config.redaction), indent=2, ensure_ascii=False)
        if len(args) > MAX_ARGS_CHARS:
            args = args[:MAX_ARGS_CHARS] + "\n... (cut; the console shows them whole)"
        lines = [
            f"Request {request.id} on {self.gate.config.name}: {b.server}__{b.tool} ({request.tier})",
            f"Requester: {b.agent} for {b.owner}",
            f"Rule: {request.rule}: {request.reason}",
            f"Expires: {utc_iso(request.expires_at)}",
        ]
        if request.justification:
            lines.append(f"The requester's reason (unverified): {request.justification}")
        return [*lines, "", "Arguments (as sent by the agent; secrets redacted):", args, ""]

    def _message(self, request: ApprovalRequest, approver: Approver) -> EmailMessage:
        body = [
            *self._context(request),
            "Each link opens the console, which asks you to log in and confirm:",
            "a link alone decides nothing.",
            f"Approve: {self._link(request, approver, 'approve')}",
            f"Deny:    {self._link(request, approver, 'deny')}",
            f"Details: {self.public_url}/requests/{request.id}",
        ]
        return self._mail(
            approver.email,
            f"Approval needed: {request.binding.server}__{request.binding.tool} ({request.id})",
            body,
        )

    def _notice(self, request: ApprovalRequest, to: str) -> EmailMessage:
        body = [*self._context(request), "You are told of this request; you cannot decide it."]
        return self._mail(
            to, f"Held for approval: {request.binding.server}__{request.binding.tool} ({request.id})", body
        )

    def _mail(self, to: str, subject: str, body: list[str]) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.sender
        message["To"] = to
        message["Subject"] = " ".join(subject.split())[:200]
        message.set_content("\n".join(body))
        return message
