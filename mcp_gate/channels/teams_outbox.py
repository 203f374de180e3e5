"""The Teams outbox: an Adaptive Card for each open request, posted once under a lease, kept current."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import anyio

from mcp_gate.approvals import ApprovalRequest, grant_refusal
from mcp_gate.channels.leases import claim
from mcp_gate.channels.slack_blocks import GRANT_FOR
from mcp_gate.channels.slack_outbox import LEASE, UPDATE_LEASE, safely
from mcp_gate.channels.teams_cards import breakglass_card, render_card
from mcp_gate.channels.teams_connector import Connector
from mcp_gate.clock import utc_iso
from mcp_gate.config import TeamsSettings
from mcp_gate.desk import Desk
from mcp_gate.errors import TeamsFailure
from mcp_gate.escalation import escalation_steps
from mcp_gate.events import OPEN_STATES, TERMINAL_STATES, EventType
from mcp_gate.gateway import Gateway
from mcp_gate.storage.base import SlackMessage, Tx

__all__ = ["TeamsOutbox", "render_key"]

log = logging.getLogger("mcp_gate.teams")

NOTICE_LEASE_SECONDS = 60.0  # a gate's lease on posting one break-glass notice


def render_key(request: ApprovalRequest, escalations: int = 0) -> str:
    """What a card shows, as a hash: a change in any of it means the card needs an update."""
    shown: dict[str, Any] = {
        "state": request.state,
        "votes": [(v.approver, v.verdict, v.channel, utc_iso(v.at), v.note) for v in request.votes],
        "closed_by": request.closed_by,
    }
    if escalations:  # absent otherwise, so a card rendered before escalations existed keeps its key
        shown["escalations"] = escalations
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()


class TeamsOutbox:
    """Keeps Teams in step with the store: every open request gets a card in the configured
    conversation (posted with backoff while the Connector fails, honouring Retry-After, under a lease
    so that two gates sharing the store post it once), and every card is updated in place when its
    request changes, whoever changed it (a click, the CLI, Slack, another replica, expiry).

    A post the Connector took but never answered for (a lost connection) cannot be looked up: Bot
    Framework gives a bot no history of its own posts. It is not posted again at once; after the lease
    runs out it is, and `teams.posted` says `maybe_twice`, so a second card is never silent."""

    def __init__(
        self,
        gate: Gateway,
        settings: TeamsSettings,
        connector: Connector,
        desk: Desk,
        *,
        backoff: float,
        max_backoff: float,
        poll: float,
        wall: Callable[[], datetime],
    ) -> None:
        self.gate = gate
        self.settings = settings
        self.connector = connector
        self.desk = desk
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll = poll
        self.wall = wall
        self._poke = anyio.Event()
        self._noticed = 0  # the last break-glass record looked at

    def poke(self) -> None:
        """Sync now: a request changed in this process."""
        self._poke.set()

    async def run(self) -> None:
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
        """Post, update or give up on every card that needs it; return how many were sent."""
        now = self.wall()
        requests, messages = await self.gate.store.read(
            lambda tx: (tx.requests(states=OPEN_STATES), {m.request_id: m for m in tx.teams_messages()})
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
        return sent + await self.breakglass_notices()

    async def breakglass_notices(self) -> int:
        """Tell the approvals conversation of each break-glass use, naming every approver of the
        tier, once, recorded as `teams.breakglass_notified` (checked before posting)."""
        store = self.gate.store
        used = await store.records(event_type="breakglass.used", after_seq=self._noticed)
        if not used:
            return 0
        told = await self._told()  # read once a pass; again only under a lease just taken
        sent = 0
        for record in used:
            if record.event_id not in told:
                # Of several gates sharing the store, the one holding the lease posts it.
                if not await claim(self.gate, f"teams.breakglass:{record.event_id}", NOTICE_LEASE_SECONDS):
                    return sent  # another gate is posting it: look again on the next pass
                if record.event_id in await self._told():  # posted meanwhile, by another gate
                    self._noticed = record.seq
                    continue
                body = record.body
                card = breakglass_card(body, gate=self.gate.config.name)
                try:
                    activity_id = await self.connector.post_card(self.settings.conversation, card)
                except TeamsFailure as exc:
                    log.warning("Teams: break-glass notice not posted: %s", exc)
                    return sent  # this one (and those after it) on the next pass
                notice = self.gate.event(
                    "teams.breakglass_notified",
                    record.correlation_id,
                    notice_of=record.event_id,
                    request_id=body.get("request_id"),
                    conversation=self.settings.conversation,
                    activity_id=activity_id,
                    approvers=[str(n) for n in body.get("notify") or []],
                )
                await store.append([notice])
                sent += 1
            self._noticed = record.seq
        return sent

    async def _told(self) -> set[object]:
        found = await self.gate.store.records(event_type="teams.breakglass_notified")
        return {r.body.get("notice_of") for r in found}

    async def _sync_one(self, request: ApprovalRequest, message: SlackMessage | None, now: datetime) -> bool:
        final = request.state in TERMINAL_STATES
        if message is None or message.ts is None:
            if final or request.expired_at(self.gate.clock.now()):
                if message is not None and not message.done and not _leased(message, now):
                    await self._give_up(message, request)
                elif message is None:
                    await self._give_up(SlackMessage(request.id, self.settings.conversation), request)
                return False
            return await self._post(request, message, now)
        key = render_key(request, len(await escalation_steps(self.gate.engine, request)))
        if key == message.rendered_sha256 or not _due(message, now) or _leased(message, now):
            return False
        now = self.wall()

        def claim(tx: Tx) -> bool:
            # Under a lease, as a post is: of several gates sharing the store, one applies the update.
            current = tx.teams_message(message.request_id)
            if current is None or current.rendered_sha256 == key or _leased(current, now):
                return False
            tx.save_teams_message(replace(current, lease_until=utc_iso(now + UPDATE_LEASE)))
            return True

        if not await self.gate.store.transact(claim):
            return False
        # The request as it is now, which the card shows: the pass's copy may be old by now, and a
        # key for an older state would have the next pass send this same card again.
        request_id = request.id
        fresh = await self.gate.store.read(lambda tx: tx.get_request(request_id))
        request = fresh if fresh is not None else request
        final = request.state in TERMINAL_STATES
        key = render_key(request, len(await escalation_steps(self.gate.engine, request)))
        card = await self.render(request)
        try:
            await self.connector.update_card(message.channel, message.ts, card)
        except TeamsFailure as exc:
            await self._failed(message, request, exc, now, event="teams.update_failed")
            return False

        def write(tx: Tx) -> None:
            current = tx.teams_message(message.request_id) or message
            tx.save_teams_message(
                replace(
                    current,
                    rendered_sha256=key,
                    attempts=0,
                    next_attempt_at=None,
                    lease_until=None,
                    last_error=None,
                    done=final,
                )
            )
            if final:
                tx.append(
                    [
                        self.gate.event(
                            "teams.updated",
                            request.correlation_id,
                            request_id=request.id,
                            conversation=message.channel,
                            activity_id=message.ts,
                            state=request.state,
                        )
                    ]
                )

        await self.gate.store.transact(write)
        return True

    async def _post(self, request: ApprovalRequest, message: SlackMessage | None, now: datetime) -> bool:
        conversation = self.settings.conversation
        maybe_twice = message is not None and message.last_error == "unanswered"

        now = self.wall()  # the pass's `now` may be old by now: a lease runs from the moment it is taken

        def claim(tx: Tx) -> SlackMessage | None:
            current = tx.teams_message(request.id)
            if current is not None and (
                current.ts is not None or not _due(current, now) or _leased(current, now)
            ):
                return None
            claimed = replace(
                current or SlackMessage(request.id, conversation), lease_until=utc_iso(now + LEASE)
            )
            tx.save_teams_message(claimed)
            return claimed

        claimed = await self.gate.store.transact(claim)
        if claimed is None:
            return False
        key = render_key(request, len(await escalation_steps(self.gate.engine, request)))
        card = await self.render(request)
        try:
            activity_id = await self.connector.post_card(conversation, card)
        except TeamsFailure as exc:
            await self._failed(claimed, request, exc, now, event="teams.post_failed")
            return False

        def write(tx: Tx) -> None:
            current = tx.teams_message(request.id) or claimed
            tx.save_teams_message(
                replace(
                    current,
                    channel=conversation,
                    ts=activity_id,
                    rendered_sha256=key,
                    attempts=0,
                    next_attempt_at=None,
                    lease_until=None,
                    last_error=None,
                )
            )
            extra = {"maybe_twice": True} if maybe_twice else {}
            tx.append(
                [
                    self.gate.event(
                        "teams.posted",
                        request.correlation_id,
                        request_id=request.id,
                        conversation=conversation,
                        activity_id=activity_id,
                        attempts=claimed.attempts + 1,
                        **extra,
                    )
                ]
            )

        await self.gate.store.transact(write)
        self.poke()  # a decision taken while posting shows at once
        return True

    async def _failed(
        self,
        message: SlackMessage,
        request: ApprovalRequest,
        exc: TeamsFailure,
        now: datetime,
        *,
        event: EventType,
    ) -> None:
        attempts = message.attempts + 1
        delay = min(self.backoff * 2 ** (attempts - 1), self.max_backoff)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        log.warning("Teams: %s for request %s; retrying in %.1fs", exc, request.id, delay)
        now = max(now, self.wall())  # the backoff and the lease run from the failure, not the pass's start
        next_at = utc_iso(now + timedelta(seconds=delay))
        # A post the Connector may have taken keeps its lease: no other gate posts it until it runs out.
        maybe_posted = exc.unanswered and message.ts is None
        lease = utc_iso(max(now + LEASE, now + timedelta(seconds=delay))) if maybe_posted else None

        def write(tx: Tx) -> None:
            current = tx.teams_message(message.request_id) or message
            tx.save_teams_message(
                replace(
                    current,
                    attempts=attempts,
                    next_attempt_at=next_at,
                    lease_until=lease,
                    last_error="unanswered" if maybe_posted else exc.error,
                )
            )
            tx.append(
                [
                    self.gate.event(
                        event,
                        request.correlation_id,
                        request_id=request.id,
                        conversation=message.channel,
                        error=exc.error,
                        status=exc.status,
                        attempt=attempts,
                        retry_in_seconds=delay,
                    )
                ]
            )

        await self.gate.store.transact(write)

    async def _give_up(self, message: SlackMessage, request: ApprovalRequest) -> None:
        def write(tx: Tx) -> None:
            current = tx.teams_message(message.request_id) or message
            tx.save_teams_message(replace(current, done=True, lease_until=None))
            tx.append(
                [
                    self.gate.event(
                        "teams.not_posted",
                        request.correlation_id,
                        request_id=request.id,
                        state="expired" if request.state in OPEN_STATES else request.state,
                        attempts=message.attempts,
                        last_error=message.last_error,
                    )
                ]
            )

        await self.gate.store.transact(write)

    async def render(self, request: ApprovalRequest, *, buttons: bool = True) -> dict[str, Any]:
        """The card for a request as it stands."""
        view = await self.desk.show(request.id)
        offered = self.gate.offering.offered.get(view["name"])
        return render_card(
            view,
            gate=self.gate.config.name,
            justification=request.justification,
            tool_description=offered.served.description if offered is not None else None,
            grant_allowed=grant_refusal(request, GRANT_FOR, self.gate.policy_sha256) is None,
            buttons=buttons,
            refresh_users=self.eligible_users(
                request, tuple(g for s in view.get("escalations") or [] for g in s.get("to_groups") or [])
            ),
            console_url=view.get("console_url") or self.settings.console_url,
        )

    def eligible_users(self, request: ApprovalRequest, added: tuple[str, ...] = ()) -> list[str]:
        """The Teams users (object ids) mapped to approvers who may decide this request (its groups
        and those its escalations added): those who see its buttons when the card refreshes for them."""
        approvers = self.gate.config.approvers
        owner = request.binding.owner.strip().lower()
        groups = set(request.groups) | set(added) if request.groups else set()
        found = []
        for user, name in sorted(self.settings.users.items()):
            approver = approvers[name]
            if owner in approver.identities():
                continue
            if not groups or approver.groups & groups:
                found.append(user)
        return found


def _due(message: SlackMessage, now: datetime) -> bool:
    return message.next_attempt_at is None or message.next_attempt_at <= utc_iso(now)


def _leased(message: SlackMessage, now: datetime) -> bool:
    return message.lease_until is not None and message.lease_until > utc_iso(now)
