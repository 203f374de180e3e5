"""The Slack outbox: a message for each open request, posted once, found again after a crash, kept current."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import anyio

from mcp_gate.approvals import ApprovalRequest, grant_refusal
from mcp_gate.availability import read_availability
from mcp_gate.channels.slack_api import AuthInfo, SlackApi
from mcp_gate.channels.slack_blocks import (
    GRANT_FOR,
    escape_mrkdwn,
    metadata_request_id,
    render_request,
    request_metadata,
)
from mcp_gate.clock import utc_iso
from mcp_gate.config import SlackSettings
from mcp_gate.desk import Desk
from mcp_gate.errors import GateError, SlackFailure
from mcp_gate.escalation import escalation_steps
from mcp_gate.events import OPEN_STATES, TERMINAL_STATES, EventType
from mcp_gate.gateway import Gateway
from mcp_gate.storage.base import SlackMessage, Tx

__all__ = ["LEASE", "UPDATE_LEASE", "SlackOutbox", "safely"]

log = logging.getLogger("mcp_gate.slack")

LEASE = timedelta(seconds=30)
# An update's claim is short: applying a render twice shows the same thing, so a gate killed
# mid-update holds the message back only briefly, while gates sharing the store still apply each
# render once in the common case.
UPDATE_LEASE = timedelta(seconds=15)
# Looking for a message a gate may have posted without recording it (conversations.history):
HISTORY_PAGE = 200  # messages a page
HISTORY_PAGES = 5  # pages at most; a busier channel cannot be searched, and the request is posted again
CLOCK_SKEW = timedelta(minutes=5)  # the gate's clock against Slack's, when it says where to start
LOOK_EVERY = timedelta(seconds=5)  # how often a request another gate is posting is looked up
SKIP_CHANNEL = ("channel_not_found", "not_in_channel", "is_archived")  # no message of ours there
NOTICES: dict[EventType, EventType] = {
    "breakglass.used": "slack.breakglass_notified",
    "approval.escalated": "slack.escalation_notified",
}


async def safely(work: Any) -> Any:
    """Await `work`, logging a failure instead of raising it: one message or click must not stop the gate."""
    try:
        return await work
    except GateError as exc:
        log.error("Slack: %s", exc)
    except Exception:  # a bug handling one click or message must not stop the gate
        log.exception("Slack: unexpected failure")
    return None


def _utc(moment: datetime) -> str:
    return utc_iso(moment)


class SlackOutbox:
    """Keeps Slack in step with the store: every open request gets a message (posted with backoff
    while Slack fails, under a lease so that two gates sharing the store post it once), and every
    message is re-rendered when its request changes, whoever changed it (a click, the CLI or API of
    another process, expiry, revocation). A post that may have reached Slack unrecorded (the gate
    died, or Slack never answered) is looked for in the channel's history before it is posted again."""

    def __init__(
        self,
        gate: Gateway,
        settings: SlackSettings,
        api: SlackApi,
        desk: Desk,
        *,
        backoff: float,
        max_backoff: float,
        poll: float,
        wall: Callable[[], datetime],
    ) -> None:
        self.gate = gate
        self.settings = settings
        self.api = api
        self.desk = desk
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll = poll
        self.wall = wall
        self._poke = anyio.Event()
        self._looked: dict[str, datetime] = {}  # request id -> when it may be looked up again
        self._me: AuthInfo | None = None  # who the bot token is, once asked
        self._noticed: dict[str, int] = {}  # records up to this seq have been told, by kind

    def poke(self) -> None:
        """Sync now: a request changed in this process."""
        self._poke.set()

    async def run(self) -> None:
        """Sync whenever the store's head moves or someone pokes, and retry what is due meanwhile."""
        last_head: tuple[int, str] | None = None
        while True:
            poke = self._poke
            head = await safely(self.gate.store.head())
            if head != last_head or poke.is_set():
                if poke.is_set():
                    self._poke = anyio.Event()
                if await safely(self.sync()) is not None:
                    last_head = head
            else:
                await safely(self.sync(due_only=True))
            with anyio.move_on_after(self.poll):
                await self._poke.wait()

    async def sync(self, *, due_only: bool = False) -> int:
        """Post, update or give up on every message that needs it; return how many were sent."""
        now = self.wall()
        requests, messages = await self.gate.store.read(
            lambda tx: (tx.requests(states=OPEN_STATES), {m.request_id: m for m in tx.slack_messages()})
        )
        by_id = {r.id: r for r in requests}
        missing = sorted(messages.keys() - by_id.keys())
        closed = await self.gate.store.read(lambda tx: [tx.get_request(i) for i in missing])
        by_id |= {r.id: r for r in closed if r is not None}
        sent = 0
        for request in by_id.values():
            message = messages.get(request.id)
            if due_only and (message is None or not _due(message, now)):
                continue
            if await self._sync_one(request, message, now):
                sent += 1
        return sent + await self.notices()

    async def notices(self) -> int:
        """Tell approvers, once each, of every break-glass use (every approver of the tier) and
        every escalation (the members of the groups it added), mentioning them in the request's
        channel and the default one (and an escalation's own channel); recorded as
        `slack.breakglass_notified` / `slack.escalation_notified`, which are checked before posting."""
        sent = 0
        for kind, told_kind in NOTICES.items():
            store = self.gate.store
            used = await store.records(event_type=kind, after_seq=self._noticed.get(kind, 0))
            if not used:
                continue
            told = {r.body.get("notice_of") for r in await store.records(event_type=told_kind)}
            for record in used:
                if record.event_id not in told:
                    if not await self._notice(record.body, record.event_id, told_kind):
                        break  # Slack failed: try this one (and those after it) on the next sync
                    sent += 1
                self._noticed[kind] = record.seq
        return sent

    def _notice_text(self, body: Mapping[str, Any], mentions: str) -> str:
        def e(key: str) -> str:
            return escape_mrkdwn(str(body.get(key)))

        what = f"request `{e('request_id')}` ({e('server')}__{e('tool')}, tier {e('tier')})"
        gate = escape_mrkdwn(self.gate.config.name)
        if body.get("event_type") == "breakglass.used":
            return (
                f":rotating_light: *Break-glass* on gate {gate}: {e('operator')} released {what} without "
                f"its approvals. Reason: {e('reason')}\nApprovers of this tier: {mentions}"
            )
        groups = escape_mrkdwn(", ".join(str(g) for g in body.get("to_groups") or []))
        step = body.get("step", 1)
        label = f"*Escalated* (step {step})" if isinstance(step, int) and step > 1 else "*Escalated*"
        return (
            f":arrow_double_up: {label} on gate {gate}: nobody decided {what} within {e('after')}; "
            f"{groups} may decide it now, until it expires at {e('expires_at')}.\nPlease look: {mentions}"
        )

    async def _notified(self, body: Mapping[str, Any]) -> list[str]:
        """Who a notice mentions: every approver of the tier for a break-glass (an alarm reaches
        everyone), the members of the added groups for an escalation, less those marked away."""
        if body.get("event_type") == "breakglass.used":
            return [str(n) for n in body.get("notify") or []]
        groups = {str(g) for g in body.get("to_groups") or []}
        owner = str((body.get("requester") or {}).get("owner", "")).strip().lower()
        present = await read_availability(self.gate.store, self.gate.engine.key, self.gate.clock.now())
        return sorted(
            a.name
            for a in self.gate.config.approvers.values()
            if a.groups & groups and owner not in a.identities() and not present.is_away(a.name)
        )

    async def _notice(self, body: Mapping[str, Any], event_id: str, told_kind: EventType) -> bool:
        names = await self._notified(body)
        ids = {name: sorted(u for u, a in self.settings.users.items() if a == name) for name in names}
        mentions = (
            " ".join(f"<@{u}>" for name in names for u in ids[name]) or "(no approver has a Slack user)"
        )
        text = self._notice_text(body, mentions)
        message = {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
        targets = self._channels(str(body.get("server")), str(body.get("tier")))
        if isinstance(body.get("channel"), str) and body.get("event_type") == "approval.escalated":
            targets = list(dict.fromkeys([str(body["channel"]), *targets]))
        posted: list[str] = []
        for target in targets:
            try:
                where, _ = await self.api.post_message(target, message)
            except SlackFailure as exc:
                if exc.error in SKIP_CHANNEL:
                    continue
                log.error("Slack: the notice for %s was not posted: %s", body.get("request_id"), exc)
                return False
            posted.append(where)
        await self.gate.record(
            told_kind,
            body.get("correlation_id") if isinstance(body.get("correlation_id"), str) else None,
            request_id=body.get("request_id"),
            notice_of=event_id,
            channels=posted,
            approvers=names,
            slack_users=[u for name in names for u in ids[name]],
        )
        return True

    async def _sync_one(self, request: ApprovalRequest, message: SlackMessage | None, now: datetime) -> bool:
        final = request.state in TERMINAL_STATES
        if message is None or message.ts is None:
            unread: SlackFailure | None = None
            if message is not None and _attempted(message) and self._may_look(message, now):
                found = await self._look_up(request)
                if isinstance(found, tuple):
                    return await self._adopt(request, message, *found)
                unread = found
            if final or request.expired_at(self.gate.clock.now()):
                if (
                    message is not None
                    and (message.attempts or _attempted(message))
                    and not message.done
                    and not _leased(message, now)
                ):
                    await self._give_up(message, request)
                return False
            return await self._post(request, message, now, unread=unread)
        voters = message.voters
        key = _render_key(request, voters, len(await escalation_steps(self.gate.engine, request)))
        if key == message.rendered_sha256 or not _due(message, now) or _leased(message, now):
            return False
        now = self.wall()  # the pass's `now` may be old by now: a lease runs from the moment it is taken

        def claim(tx: Tx) -> bool:
            # Under a lease, as a post is: of several gates sharing the store, one applies the update.
            current = tx.slack_message(message.request_id)
            if current is None or current.rendered_sha256 == key or _leased(current, now):
                return False
            tx.save_slack_message(replace(current, lease_until=_utc(now + UPDATE_LEASE)))
            return True

        if not await self.gate.store.transact(claim):
            return False
        # The request as it is now, which the message shows: the pass's copy may be old by now, and
        # a key for an older state would have the next pass send this same message again.
        request_id = request.id
        fresh = await self.gate.store.read(lambda tx: tx.get_request(request_id))
        request = fresh if fresh is not None else request
        final = request.state in TERMINAL_STATES
        key = _render_key(request, voters, len(await escalation_steps(self.gate.engine, request)))
        rendered = await self.render(request, voters)
        try:
            await self.api.update(message.channel, message.ts, rendered)
        except SlackFailure as exc:
            await self._failed(message, request, exc, now, event="slack.update_failed")
            return False

        def write(tx: Tx) -> None:
            # Re-read: a decider may have been remembered since; keep them, and if this render
            # missed them, leave the message open so the next pass shows them.
            current = tx.slack_message(message.request_id) or message
            rendered_all = dict(current.voters) == dict(voters)
            tx.save_slack_message(
                replace(
                    current,
                    rendered_sha256=key,
                    attempts=0,
                    next_attempt_at=None,
                    lease_until=None,
                    last_error=None,
                    done=final and rendered_all,
                )
            )

        await self.gate.store.transact(write)
        return True

    def _may_look(self, message: SlackMessage, now: datetime) -> bool:
        """Whether to look for the message of an attempt that may have reached Slack: always before
        it is posted again (the lease has passed), every LOOK_EVERY while another gate holds it."""
        if not _leased(message, now):
            return _due(message, now)
        if self._looked.get(message.request_id, now) > now:
            return False
        self._looked[message.request_id] = now + LOOK_EVERY
        return True

    def _targets(self, request: ApprovalRequest) -> list[str]:
        """The channels a request's message goes to, in order: its own, then the default one."""
        return self._channels(request.binding.server, request.tier)

    def _channels(self, server: str, tier: str) -> list[str]:
        channel = self.settings.channel_for(server, tier)
        return list(dict.fromkeys([channel, self.settings.channel]))

    async def _look_up(self, request: ApprovalRequest) -> tuple[str, str] | SlackFailure | None:
        """(channel, ts) of the request's message found in Slack (see _find); None if it is not
        there; the failure if the history could not be read (a missing history scope, an error)."""
        oldest = f"{(request.created_at - CLOCK_SKEW).timestamp():.6f}"
        read = False
        for target in self._targets(request):
            try:
                ts = await self._find(target, request.id, oldest)
            except SlackFailure as exc:
                if exc.error in SKIP_CHANNEL:
                    continue  # the gate cannot post there either: the message is not there
                log.warning(
                    "Slack: cannot look for the message of request %s in %s: %s", request.id, target, exc
                )
                return exc
            read = True
            if ts is not None:
                return target, ts
        return None if read else SlackFailure("conversations.history", "no channel could be read")

    async def _find(self, channel: str, request_id: str, oldest: str) -> str | None:
        """The ts of the request's message in a channel: one with its metadata, posted by this
        gate's own bot (anyone in the channel can post a message with the same metadata)."""
        if self._me is None:
            self._me = await self.api.auth_test()
        me = self._me
        cursor: str | None = None
        for _ in range(HISTORY_PAGES):
            messages, cursor = await self.api.history(
                channel, oldest=oldest, limit=HISTORY_PAGE, cursor=cursor
            )
            for found in messages:
                if (
                    metadata_request_id(found) == request_id
                    and me.sent(found)
                    and isinstance(found.get("ts"), str)
                ):
                    return str(found["ts"])
            if cursor is None:
                return None
        raise SlackFailure(
            "conversations.history", f"more than {HISTORY_PAGES * HISTORY_PAGE} messages to search"
        )

    async def _adopt(self, request: ApprovalRequest, message: SlackMessage, channel: str, ts: str) -> bool:
        """Take over a message an earlier attempt posted but never recorded; the next pass renders it."""

        def write(tx: Tx) -> bool:
            current = tx.slack_message(request.id) or message
            if current.ts is not None:
                return False  # recorded meanwhile by the gate that posted it
            tx.save_slack_message(
                replace(
                    current,
                    channel=channel,
                    ts=ts,
                    rendered_sha256=None,  # what it shows is unknown: it is updated at once
                    attempts=0,
                    next_attempt_at=None,
                    lease_until=None,
                    last_error=None,
                    done=False,
                )
            )
            tx.append([self._posted(request, channel, ts, current.attempts + 1, recovered=True)])
            return True

        adopted = await self.gate.store.transact(write)
        self.poke()
        return bool(adopted)

    async def _post(
        self,
        request: ApprovalRequest,
        message: SlackMessage | None,
        now: datetime,
        *,
        unread: SlackFailure | None = None,
    ) -> bool:
        """Post a request's message. `unread`: an earlier attempt may have posted it, but the
        history could not be read to find it; it is posted anyway (it may show twice), and said so."""
        channel = self.settings.channel_for(request.binding.server, request.tier)
        now = self.wall()  # as for an update: the lease runs from the moment it is taken

        def claim(tx: Tx) -> SlackMessage | None:
            current = tx.slack_message(request.id)
            if current is not None and (
                current.ts is not None or not _due(current, now) or _leased(current, now)
            ):
                return None
            claimed = replace(current or SlackMessage(request.id, channel), lease_until=_utc(now + LEASE))
            tx.save_slack_message(claimed)
            return claimed

        claimed = await self.gate.store.transact(claim)
        if claimed is None:
            return False
        steps = len(await escalation_steps(self.gate.engine, request))
        rendered = {**await self.render(request, {}), "metadata": request_metadata(request.id)}
        failure: SlackFailure | None = None
        for target in self._targets(request):
            try:
                where, ts = await self.api.post_message(target, rendered)
            except SlackFailure as exc:
                failure = exc
                if exc.error in SKIP_CHANNEL:
                    continue  # an override channel is wrong: the default channel still gets it
                break
            posted = replace(
                claimed,
                channel=where,
                ts=ts,
                rendered_sha256=_render_key(request, {}, steps),
                attempts=0,
                next_attempt_at=None,
                lease_until=None,
                last_error=None,
            )

            def write(tx: Tx, posted: SlackMessage = posted) -> None:
                current = tx.slack_message(request.id)
                if current is not None and current.ts == posted.ts:
                    return  # another gate found this very message in the history and recorded it
                tx.save_slack_message(posted if current is None else replace(posted, voters=current.voters))
                assert posted.ts is not None
                tx.append(
                    [self._posted(request, posted.channel, posted.ts, claimed.attempts + 1, unread=unread)]
                )

            await self.gate.store.transact(write)
            self.poke()  # a decision taken while posting shows at once
            return True
        assert failure is not None
        await self._failed(claimed, request, failure, now, event="slack.post_failed")
        return False

    def _posted(
        self,
        request: ApprovalRequest,
        channel: str,
        ts: str,
        attempts: int,
        *,
        recovered: bool = False,
        unread: SlackFailure | None = None,
    ) -> dict[str, Any]:
        """The `slack.posted` record: the message a request has in Slack, posted or (`recovered`)
        found in the history; `unread`: the history that might have held it could not be read."""
        extra: dict[str, Any] = {}
        if recovered:
            extra["recovered"] = True
        if unread is not None:
            extra["unchecked_history"] = unread.error
        return self.gate.event(
            "slack.posted",
            request.correlation_id,
            request_id=request.id,
            channel=channel,
            message_ts=ts,
            attempts=attempts,
            **extra,
        )

    async def _failed(
        self,
        message: SlackMessage,
        request: ApprovalRequest,
        exc: SlackFailure,
        now: datetime,
        *,
        event: EventType,
    ) -> None:
        attempts = message.attempts + 1
        delay = min(self.backoff * 2 ** (attempts - 1), self.max_backoff)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        log.warning("Slack: %s for request %s; retrying in %.1fs", exc, request.id, delay)
        self.gate.metrics.channel_failures.labels("slack").inc()
        self.gate.metrics.channel_retries.labels("slack").inc()
        next_at = _utc(now + timedelta(seconds=delay))
        # A post Slack may have taken keeps its claim, run out: like a gate that died after posting,
        # the next attempt looks for the message in the history before it posts again.
        maybe_posted = exc.unanswered and message.ts is None
        unanswered = {"unanswered": True} if maybe_posted else {}

        def write(tx: Tx) -> None:
            current = tx.slack_message(message.request_id) or message
            tx.save_slack_message(
                replace(
                    current,
                    attempts=attempts,
                    next_attempt_at=next_at,
                    lease_until=_utc(now) if maybe_posted else None,
                    last_error=exc.error,
                )
            )
            tx.append(
                [
                    self.gate.event(
                        event,
                        request.correlation_id,
                        request_id=request.id,
                        channel=message.channel,
                        error=exc.error,
                        status=exc.status,
                        attempt=attempts,
                        retry_in_seconds=delay,
                        **unanswered,
                    )
                ]
            )

        await self.gate.store.transact(write)

    async def _give_up(self, message: SlackMessage, request: ApprovalRequest) -> None:
        def write(tx: Tx) -> None:
            current = tx.slack_message(message.request_id) or message
            tx.save_slack_message(replace(current, done=True, lease_until=None))
            tx.append(
                [
                    self.gate.event(
                        "slack.not_posted",
                        request.correlation_id,
                        request_id=request.id,
                        state="expired" if request.state in OPEN_STATES else request.state,
                        attempts=message.attempts,
                        last_error=message.last_error,
                    )
                ]
            )

        await self.gate.store.transact(write)

    async def render(self, request: ApprovalRequest, voters: Mapping[str, str]) -> dict[str, Any]:
        """The message for a request as it stands (text and blocks)."""
        view = await self.desk.show(request.id)
        offered = self.gate.offering.offered.get(view["name"])
        description = offered.served.description if offered is not None else None
        grant_allowed = grant_refusal(request, GRANT_FOR, self.gate.policy_sha256) is None
        recent = [
            c for c in view.pop("recent_calls", []) if c.get("correlation_id") != request.correlation_id
        ]
        return render_request(
            view,
            gate=self.gate.config.name,
            recent_calls=recent,
            tool_description=description,
            justification=request.justification,
            grant_allowed=grant_allowed,
            voters=voters,
        )


def _render_key(request: ApprovalRequest, voters: Mapping[str, str], escalations: int = 0) -> str:
    """What a message shows, as a hash: a change in any of it means the message needs an update."""
    shown: dict[str, Any] = {
        "state": request.state,
        "votes": [(v.approver, v.verdict, v.channel, utc_iso(v.at), v.note) for v in request.votes],
        "closed_by": request.closed_by,
        "voters": dict(sorted(voters.items())),
    }
    if escalations:  # absent otherwise, so a message rendered before escalations existed keeps its key
        shown["escalations"] = escalations
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()


def _due(message: SlackMessage, now: datetime) -> bool:
    return message.next_attempt_at is None or message.next_attempt_at <= _utc(now)


def _attempted(message: SlackMessage) -> bool:
    """A post was begun (a lease was taken) and never recorded: the message may be in Slack."""
    return message.ts is None and message.lease_until is not None


def _leased(message: SlackMessage, now: datetime) -> bool:
    return message.lease_until is not None and message.lease_until > _utc(now)
