"""Slack as an approval channel: post held calls, take verified clicks, keep every message current."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from mcp_gate.approvals import ApprovalRequest, Approver, Refusal, RequestState, decide
from mcp_gate.channels.api import Desk
from mcp_gate.channels.slack_api import AuthInfo, SlackApi, SocketModeLink, connect_socket_mode
from mcp_gate.channels.slack_blocks import (
    GRANT_FOR,
    deny_modal,
    metadata_request_id,
    refusal_text,
    render_request,
    request_metadata,
)
from mcp_gate.channels.slack_clicks import Click, modal_errors, parse_interaction
from mcp_gate.channels.slack_http import MAX_AGE, MAX_BODY_BYTES, build_interactions_app
from mcp_gate.clock import utc_iso
from mcp_gate.config import GateConfig, SlackSettings
from mcp_gate.errors import ConfigError, GateError, NoSuchRequest, SlackFailure
from mcp_gate.gateway import Gateway
from mcp_gate.holds import grant_refusal
from mcp_gate.http import serve_asgi
from mcp_gate.storage.base import SlackMessage, Tx

__all__ = ["SlackChannel", "SlackSecrets"]

log = logging.getLogger("mcp_gate.slack")

OPEN: tuple[RequestState, ...] = ("pending", "approved")
FINAL = ("denied", "expired", "revoked", "void", "executed", "failed", "outcome_unknown")
USER_CACHE_SECONDS = 300.0
LEASE = timedelta(seconds=30)
SEEN_FOR = timedelta(seconds=2 * MAX_AGE)
# Looking for a message a gate may have posted without recording it (conversations.history):
HISTORY_PAGE = 200  # messages a page
HISTORY_PAGES = 5  # pages at most; a busier channel cannot be searched, and the request is posted again
CLOCK_SKEW = timedelta(minutes=5)  # the gate's clock against Slack's, when it says where to start
LOOK_EVERY = timedelta(seconds=5)  # how often a request another gate is posting is looked up
SKIP_CHANNEL = ("channel_not_found", "not_in_channel", "is_archived")  # no message of ours there


@dataclass(frozen=True)
class SlackSecrets:
    """The tokens, read from the environment or files when the channel starts; never logged."""

    bot_token: str
    app_token: str | None
    signing_secret: str | None

    def __repr__(self) -> str:
        return "SlackSecrets(***)"

    @classmethod
    def read(cls, config: GateConfig, environ: Mapping[str, str]) -> SlackSecrets:
        settings = config.slack
        if settings is None:
            raise ConfigError(str(config.path), "slack", "no [slack] table")
        file = str(config.path)
        return cls(
            bot_token=settings.bot_token.read(environ, file),
            app_token=None if settings.app_token is None else settings.app_token.read(environ, file),
            signing_secret=(
                None if settings.signing_secret is None else settings.signing_secret.read(environ, file)
            ),
        )


# -- the channel ----------------------------------------------------------------------------------


def _utc(moment: datetime) -> str:
    return utc_iso(moment)


class SlackChannel:
    """Slack as an approval channel of one running gate.

    An outbox keeps Slack in step with the store: every open request gets a message (posted with
    backoff while Slack fails), and every message is re-rendered when its request changes, whoever
    changed it (a click, the CLI or API of another process, expiry, revocation). Clicks arrive over
    Socket Mode or the HTTP endpoint, are acknowledged at once and decided afterwards."""

    def __init__(
        self,
        gate: Gateway,
        secrets: SlackSecrets,
        *,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        poll: float = 0.1,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        settings = gate.config.slack
        if settings is None:
            raise ConfigError(str(gate.config.path), "slack", "no [slack] table")
        self.gate = gate
        self.settings: SlackSettings = settings
        self.secrets = secrets
        self.api = SlackApi(secrets.bot_token, settings.api_url)
        self.desk = Desk(gate.engine, channel="slack", rules=gate.config.redaction)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll = poll
        # Retries and replay windows follow real time, whatever clock the gate's requests use.
        self.wall: Callable[[], datetime] = wall or (lambda: datetime.now(UTC))
        self._users: dict[str, tuple[float, dict[str, Any]]] = {}
        self._poke = anyio.Event()
        self.link: SocketModeLink | None = None
        self._looked: dict[str, datetime] = {}  # request id -> when it may be looked up again
        self._me: AuthInfo | None = None  # who the bot token is, once asked

    # -- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[int | None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The outbox, the click worker and the receiver; reports the HTTP port (or None)."""
        self._clicks_in, clicks_out = anyio.create_memory_object_stream[tuple[str, dict[str, Any]]](1000)
        with self._clicks_in, clicks_out:
            await self._run(clicks_out, task_status)

    async def _run(
        self,
        clicks: anyio.abc.ObjectReceiveStream[tuple[str, dict[str, Any]]],
        task_status: anyio.abc.TaskStatus[int | None],
    ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._outbox)
            tg.start_soon(self._worker, clicks, tg)
            if self.settings.mode == "http":
                assert self.settings.listen is not None and self.secrets.signing_secret is not None
                app = build_interactions_app(
                    self.secrets.signing_secret, self.accept, time.time, immediate=modal_errors
                )
                host, port = self.settings.listen
                bound = await tg.start(
                    lambda task_status: serve_asgi(
                        app,
                        host,
                        port,
                        what="Slack interactions endpoint",
                        limits=self.gate.config.http,
                        max_body_bytes=MAX_BODY_BYTES,
                        # Slack addresses its public name; its requests are signed instead.
                        check_host=False,
                        task_status=task_status,
                    )
                )
                task_status.started(bound)
            else:
                await tg.start(self._socket_mode)
                task_status.started(None)

    def poke(self) -> None:
        self._poke.set()

    async def _socket_mode(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self.secrets.app_token is not None
        token = anyio.lowlevel.current_token()
        send = self._clicks_in

        def deliver(envelope_id: str, payload: dict[str, Any]) -> None:
            try:
                anyio.from_thread.run_sync(send.send_nowait, (f"env:{envelope_id}", payload), token=token)
            except (anyio.WouldBlock, anyio.ClosedResourceError, RuntimeError) as exc:
                # Acked but not taken: nothing is decided, and the person can click again.
                log.warning("dropped a Slack click: %s", type(exc).__name__)

        task_status.started()
        delay = self.backoff
        while True:
            try:
                self.link = await anyio.to_thread.run_sync(
                    connect_socket_mode,
                    self.secrets.app_token,
                    self.secrets.bot_token,
                    self.settings.api_url,
                    deliver,
                )
            except SlackFailure as exc:
                log.warning("Slack Socket Mode: %s; retrying in %.0fs", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    link, self.link = self.link, None
                    await anyio.to_thread.run_sync(link.close)

    async def accept(self, key: str, payload: dict[str, Any]) -> str | None:
        """Take one delivery (HTTP): None once, "replayed" for a delivery seen before."""
        if not await self._first_sight(key):
            return "the request was already received (a replay)"
        self._clicks_in.send_nowait((key, payload))
        return None

    async def _first_sight(self, key: str) -> bool:
        now = self.wall()
        return await self.gate.store.transact(
            lambda tx: tx.slack_first_sight(key, _utc(now), _utc(now - SEEN_FOR))
        )

    async def _worker(
        self, clicks: anyio.abc.ObjectReceiveStream[tuple[str, dict[str, Any]]], tg: anyio.abc.TaskGroup
    ) -> None:
        async for key, payload in clicks:
            if key.startswith("env:") and not await self._safely(self._first_sight(key)):
                continue  # a re-delivered envelope: it was handled the first time
            click = parse_interaction(payload)
            if click is not None:
                tg.start_soon(self._safely, self.handle(click))

    async def _safely(self, work: Any) -> Any:
        try:
            return await work
        except GateError as exc:
            log.error("Slack: %s", exc)
        except Exception:  # a bug handling one click or message must not stop the gate
            log.exception("Slack: unexpected failure")
        return None

    # -- who clicked --------------------------------------------------------------------------

    async def identify(self, user_id: str, team_id: str) -> Approver | str:
        """The approver behind a Slack user, or why they are none (said to them, and recorded)."""
        team = self.settings.team_id
        if team_id != team:
            return f"your Slack workspace ({team_id or 'unknown'}) is not the one this gate trusts ({team})"
        cached = self._users.get(user_id)
        if cached is not None and cached[0] > time.monotonic():
            user = cached[1]
        else:
            try:
                user = await self.api.user_info(user_id)
            except SlackFailure as exc:
                return f"the gate could not look up your Slack account ({exc.error}); try again"
            self._users[user_id] = (time.monotonic() + USER_CACHE_SECONDS, user)
        if user.get("is_bot") or user.get("is_app_user") or user_id == "USLACKBOT":
            return "bots and apps cannot decide approval requests"
        if user.get("deleted"):
            return "your Slack account is deactivated"
        if user.get("team_id") != team:
            return f"your Slack account belongs to another workspace ({user.get('team_id')})"
        approvers = self.gate.config.approvers
        name = self.settings.users.get(user_id)
        if name is not None:
            return approvers[name]
        profile = user.get("profile")
        if not isinstance(profile, dict):
            profile = {}
        email = str(profile.get("email") or "").strip().lower()
        if not email:
            return (
                f"your Slack account ({user_id}) shows the gate no email, and no approver has "
                f'slack_user = "{user_id}" in gate.toml'
            )
        for approver in approvers.values():
            if email == approver.email.strip().lower() or email in {
                a.strip().lower() for a in approver.aliases
            }:
                return approver
        return f"your Slack account ({email}) is not an approver of this gate"

    # -- a click ------------------------------------------------------------------------------

    async def handle(self, click: Click) -> None:
        who = await self.identify(click.user_id, click.team_id)
        if isinstance(who, str):
            # Linked to the request's story when the id names one (`audit show` lists the attempt).
            known = await self.gate.store.read(lambda tx: tx.get_request(click.request_id))
            await self.gate.record(
                "slack.refused",
                known.correlation_id if known is not None else None,
                request_id=click.request_id,
                slack_user=click.user_id,
                slack_team=click.team_id,
                action=click.kind,
                why=who,
            )
            await self._tell(click, who)
            return
        if click.kind != "deny":
            # Before deciding: the render that follows the decision already mentions its decider.
            await self._remember_voter(click.request_id, who.name, click.user_id)
        try:
            match click.kind:
                case "deny":
                    # The reason is asked for first; the modal's submission is the decision.
                    request = await self.gate.engine.get(click.request_id)
                    dry_run = decide(request, who, "deny", channel="slack", now=self.gate.clock.now())
                    if isinstance(dry_run, Refusal):
                        # Someone who may not decide is told so now, not after typing a reason.
                        await self.gate.record(
                            "slack.refused",
                            request.correlation_id,
                            request_id=request.id,
                            approver=who.name,
                            slack_user=click.user_id,
                            slack_team=click.team_id,
                            action=click.kind,
                            code=dry_run.code,
                            why=dry_run.why,
                        )
                        await self._tell(click, dry_run.why)
                        return
                    if click.trigger_id is None:
                        await self._tell(click, "Slack sent no trigger to ask for a reason; try again")
                        return
                    await self.api.open_view(click.trigger_id, deny_modal(request.id, request.binding.tool))
                    return
                case "deny_reason":
                    outcome = await self.desk.deny(click.request_id, who, reason=click.reason or "")
                case "approve":
                    outcome = await self.desk.approve(click.request_id, who)
                case "approve_for":
                    outcome = await self.desk.approve(click.request_id, who, grant_for=GRANT_FOR)
        except NoSuchRequest:
            await self._tell(click, f"there is no approval request {click.request_id}")
            return
        except SlackFailure as exc:
            log.warning("Slack: could not ask for a reason: %s", exc)
            return
        if isinstance(outcome, Refusal):
            await self._tell(click, outcome.why)
            return
        self.poke()

    async def _tell(self, click: Click, why: str) -> None:
        channel = click.channel or await self._message_channel(click.request_id)
        if channel is None:
            return
        try:
            await self.api.post_ephemeral(channel, click.user_id, refusal_text(why))
        except SlackFailure as exc:
            log.warning("Slack: could not tell %s why: %s", click.user_id, exc)

    async def _message_channel(self, request_id: str) -> str | None:
        message = await self.gate.store.read(lambda tx: tx.slack_message(request_id))
        return message.channel if message is not None else None

    async def _remember_voter(self, request_id: str, approver: str, user_id: str) -> None:
        def write(tx: Tx) -> None:
            message = tx.slack_message(request_id)
            if message is not None:
                tx.save_slack_message(replace(message, voters={**message.voters, approver: user_id}))

        await self.gate.store.transact(write)

    # -- the outbox -----------------------------------------------------------------------------

    async def _outbox(self) -> None:
        last_head: tuple[int, str] | None = None
        while True:
            poke = self._poke
            head = await self._safely(self.gate.store.head())
            if head != last_head or poke.is_set():
                if poke.is_set():
                    self._poke = anyio.Event()
                if await self._safely(self.sync()) is not None:
                    last_head = head
            else:
                await self._safely(self.sync(due_only=True))
            with anyio.move_on_after(self.poll):
                await self._poke.wait()

    async def sync(self, *, due_only: bool = False) -> int:
        """Post, update or give up on every message that needs it; return how many were sent."""
        now = self.wall()
        requests, messages = await self.gate.store.read(
            lambda tx: (tx.requests(states=OPEN), {m.request_id: m for m in tx.slack_messages()})
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
        return sent

    async def _sync_one(self, request: ApprovalRequest, message: SlackMessage | None, now: datetime) -> bool:
        final = request.state in FINAL
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
        key = _render_key(request, voters)
        if key == message.rendered_sha256 or not _due(message, now):
            return False
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
        channel = self.settings.channel_for(request.binding.server, request.tier)
        return list(dict.fromkeys([channel, self.settings.channel]))

    async def _look_up(self, request: ApprovalRequest) -> tuple[str, str] | SlackFailure | None:
        """(channel, ts) of the request's message found in Slack by its metadata; None if it is not
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
        rendered = {**await self.render(request, {}), "metadata": request_metadata(request.id)}
        failure: SlackFailure | None = None
        for target in self._targets(request):
            try:
                where, ts = await self.api.post_message(target, rendered)
            except SlackFailure as exc:
                failure = exc
                if exc.error in ("channel_not_found", "not_in_channel", "is_archived"):
                    continue  # an override channel is wrong: the default channel still gets it
                break
            posted = replace(
                claimed,
                channel=where,
                ts=ts,
                rendered_sha256=_render_key(request, {}),
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
        self, message: SlackMessage, request: ApprovalRequest, exc: SlackFailure, now: datetime, *, event: str
    ) -> None:
        attempts = message.attempts + 1
        delay = min(self.backoff * 2 ** (attempts - 1), self.max_backoff)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        log.warning("Slack: %s for request %s; retrying in %.1fs", exc, request.id, delay)
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
                        state="expired" if request.state in OPEN else request.state,
                        attempts=message.attempts,
                        last_error=message.last_error,
                    )
                ]
            )

        await self.gate.store.transact(write)

    async def render(self, request: ApprovalRequest, voters: Mapping[str, str]) -> dict[str, Any]:
        """The message for a request as it stands (text and blocks)."""
        view = await self.desk.show(request.id)
        offered = self.gate.offered.get(view["name"])
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


def _render_key(request: ApprovalRequest, voters: Mapping[str, str]) -> str:
    """What a message shows, as a hash: a change in any of it means the message needs an update."""
    shown = {
        "state": request.state,
        "votes": [(v.approver, v.verdict, v.channel, utc_iso(v.at), v.note) for v in request.votes],
        "closed_by": request.closed_by,
        "voters": dict(sorted(voters.items())),
    }
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()


def _due(message: SlackMessage, now: datetime) -> bool:
    return message.next_attempt_at is None or message.next_attempt_at <= _utc(now)


def _attempted(message: SlackMessage) -> bool:
    """A post was begun (a lease was taken) and never recorded: the message may be in Slack."""
    return message.ts is None and message.lease_until is not None


def _leased(message: SlackMessage, now: datetime) -> bool:
    return message.lease_until is not None and message.lease_until > _utc(now)
