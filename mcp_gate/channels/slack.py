"""Slack as an approval channel: its outbox posts held calls; here clicks arrive, are verified and decided."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from mcp_gate.approvals import Approver, Refusal, decide
from mcp_gate.channels.slack_api import SlackApi, SocketModeLink, connect_socket_mode
from mcp_gate.channels.slack_blocks import GRANT_FOR, deny_modal, refusal_text
from mcp_gate.channels.slack_clicks import Click, modal_errors, parse_interaction
from mcp_gate.channels.slack_http import MAX_AGE, MAX_BODY_BYTES, build_interactions_app
from mcp_gate.channels.slack_outbox import SlackOutbox, safely
from mcp_gate.clock import utc_iso
from mcp_gate.config import GateConfig, SlackSettings
from mcp_gate.desk import Desk
from mcp_gate.errors import ConfigError, NoSuchRequest, SlackFailure
from mcp_gate.gateway import Gateway
from mcp_gate.http import serve_asgi
from mcp_gate.storage.base import Tx

__all__ = ["SlackChannel", "SlackSecrets"]

log = logging.getLogger("mcp_gate.slack")

USER_CACHE_SECONDS = 300.0
SEEN_FOR = timedelta(seconds=2 * MAX_AGE)


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


class SlackChannel:
    """Slack as an approval channel of one running gate.

    Its outbox (slack_outbox.py) keeps a message current for every request. Clicks arrive over
    Socket Mode or the HTTP endpoint, are acknowledged at once and decided afterwards, by an
    approver the clicking Slack account maps to."""

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
        self.desk = Desk(
            gate.engine,
            channel="slack",
            rules=gate.config.redaction,
            approvers=gate.config.approvers,
            links=gate.config.console,
        )
        self.backoff = backoff
        self.max_backoff = max_backoff
        # Retries and replay windows follow real time, whatever clock the gate's requests use.
        self.wall: Callable[[], datetime] = wall or (lambda: datetime.now(UTC))
        self._users: dict[str, tuple[float, dict[str, Any]]] = {}
        self.link: SocketModeLink | None = None
        self.outbox = SlackOutbox(
            gate,
            settings,
            self.api,
            self.desk,
            backoff=backoff,
            max_backoff=max_backoff,
            poll=poll,
            wall=self.wall,
        )

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
            tg.start_soon(self.outbox.run)
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
            lambda tx: tx.slack_first_sight(key, utc_iso(now), utc_iso(now - SEEN_FOR))
        )

    async def _worker(
        self, clicks: anyio.abc.ObjectReceiveStream[tuple[str, dict[str, Any]]], tg: anyio.abc.TaskGroup
    ) -> None:
        async for key, payload in clicks:
            if key.startswith("env:") and not await safely(self._first_sight(key)):
                continue  # a re-delivered envelope: it was handled the first time
            click = parse_interaction(payload)
            if click is not None:
                tg.start_soon(safely, self.handle(click))

    # -- who clicked --------------------------------------------------------------------------

    async def identify(self, user_id: str, team_id: str) -> Approver | str:
        """The approver behind a Slack user, with their subject at the identity provider where
        [identity] maps one, or why they are none (said to them, and recorded)."""
        found = await self._approver(user_id, team_id)
        identity = self.gate.config.identity
        if isinstance(found, str) or identity is None:
            return found
        # An explicit [identity.subjects] entry for this Slack user, else the subject of the
        # approver their verified Slack email (or slack_user) matched.
        subject = identity.slack_subjects.get(user_id) or found.subject
        if subject is not None:
            found = replace(found, issuer=identity.issuer, subject=subject)
        elif identity.require_idp:
            return (
                f"your Slack account ({user_id}) maps to no subject at the identity provider, and "
                "[identity] require_idp is on: add it under [identity.subjects] or the approver's subject"
            )
        return found

    async def _approver(self, user_id: str, team_id: str) -> Approver | str:
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
        self.outbox.poke()

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
