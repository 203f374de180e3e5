"""Microsoft Teams as an approval channel: the bot's messaging endpoint, who clicked, the decision."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_gate.approvals import Approver, Refusal, decide
from mcp_gate.channels.slack_blocks import GRANT_FOR
from mcp_gate.channels.teams_activity import TeamsClick, parse_activity, parse_body
from mcp_gate.channels.teams_auth import BotFrameworkVerifier, Unverified
from mcp_gate.channels.teams_cards import card_answer, error_answer, message_answer
from mcp_gate.channels.teams_connector import Connector
from mcp_gate.channels.teams_outbox import TeamsOutbox
from mcp_gate.clock import utc_iso
from mcp_gate.config import GateConfig, TeamsSettings
from mcp_gate.desk import Desk
from mcp_gate.errors import ConfigError, NoSuchRequest, TeamsFailure
from mcp_gate.escalation import escalated_groups, escalation_steps
from mcp_gate.gateway import Gateway
from mcp_gate.http import serve_asgi
from mcp_gate.storage.base import Tx

__all__ = ["MESSAGES_PATH", "TeamsChannel", "TeamsSecrets"]

log = logging.getLogger("mcp_gate.teams")

MESSAGES_PATH = "/api/messages"
MAX_BODY_BYTES = 256 * 1024
MEMBER_CACHE_SECONDS = 300.0
SEEN_FOR = timedelta(hours=2)  # longer than a Bot Connector token lives: a replay needs a live token


class TeamsSecrets:
    """The bot's password, read from the environment or a file when the channel starts; never logged."""

    def __init__(self, app_password: str) -> None:
        self.app_password = app_password

    def __repr__(self) -> str:
        return "TeamsSecrets(***)"

    @classmethod
    def read(cls, config: GateConfig, environ: Mapping[str, str]) -> TeamsSecrets:
        if config.teams is None:
            raise ConfigError(str(config.path), "channels.teams", "no [channels.teams] table")
        return cls(config.teams.app_password.read(environ, str(config.path)))


def _answer(body: Mapping[str, Any]) -> JSONResponse:
    return JSONResponse(dict(body), status_code=200)


class TeamsChannel:
    """Teams as an approval channel of one running gate.

    Its outbox (teams_outbox.py) keeps a card current for every request. Card actions arrive as
    Bot Connector `invoke` activities at the messaging endpoint: the token is verified first (else
    401, nothing decided), the decision is committed through the engine, and the answer is the card
    as it now stands, or a message saying why the click decided nothing."""

    def __init__(
        self,
        gate: Gateway,
        secrets: TeamsSecrets,
        *,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        poll: float = 0.1,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        settings = gate.config.teams
        if settings is None:
            raise ConfigError(str(gate.config.path), "channels.teams", "no [channels.teams] table")
        self.gate = gate
        self.settings: TeamsSettings = settings
        self.verifier = BotFrameworkVerifier(settings)
        self.connector = Connector(settings, secrets.app_password)
        self.desk = Desk(
            gate.engine,
            channel="teams",
            rules=gate.config.redaction,
            approvers=gate.config.approvers,
            links=gate.config.console,
        )
        self.wall: Callable[[], datetime] = wall or (lambda: datetime.now(UTC))
        self._members: dict[str, tuple[float, dict[str, Any]]] = {}
        self.outbox = TeamsOutbox(
            gate,
            settings,
            self.connector,
            self.desk,
            backoff=backoff,
            max_backoff=max_backoff,
            poll=poll,
            wall=self.wall,
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """The outbox and the messaging endpoint; reports the endpoint's port."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.outbox.run)
            host, port = self.settings.listen
            bound = await tg.start(
                lambda task_status: serve_asgi(
                    self.app(),
                    host,
                    port,
                    what="Teams messaging endpoint",
                    limits=self.gate.config.http,
                    max_body_bytes=MAX_BODY_BYTES,
                    # The Bot Connector addresses the bot's public name; its requests carry a JWT instead.
                    check_host=False,
                    task_status=task_status,
                )
            )
            task_status.started(bound)

    def app(self) -> Starlette:
        """POST /api/messages: a Bot Connector activity. 401 with no detail unless its token verifies."""

        async def messages(request: Request) -> Response:
            declared = request.headers.get("content-length", "")
            if declared and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
                return JSONResponse({"error": "too large"}, status_code=413)
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return JSONResponse({"error": "too large"}, status_code=413)
            activity = parse_body(body)
            try:
                if activity is None:
                    raise Unverified("the body is not a JSON object")
                await self.verifier.verify(request.headers.get("authorization", ""), activity)
            except Unverified as exc:
                log.info("Teams: refused a request to the messaging endpoint: %s", exc.why)
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            return _answer(await self.receive(activity))

        async def not_found(request: Request) -> Response:
            return JSONResponse({"error": "not found"}, status_code=404)

        return Starlette(
            routes=[
                Route(MESSAGES_PATH, messages, methods=["POST"]),
                Route("/{rest:path}", not_found, methods=["GET", "POST", "PUT", "DELETE"]),
            ]
        )

    # -- one verified activity ----------------------------------------------------------------

    async def receive(self, activity: Mapping[str, Any]) -> dict[str, Any]:
        """The invoke response body for a verified activity ({} for activities the gate ignores)."""
        click = parse_activity(activity)
        if click is None:
            return {}
        if isinstance(click, str):
            return error_answer(400, click)
        if not await self._first_sight(click.activity_id):
            # A replayed invoke decides nothing, on whichever replica it lands.
            await self._refused(click, None, "the same card action was received before (a replay)")
            return message_answer("This action was already received; it changes nothing.")
        who = await self.identify(click)
        if isinstance(who, str):
            await self._refused(click, None, who)
            return message_answer(f"You cannot decide this: {who}")
        try:
            return await self._decide(click, who)
        except NoSuchRequest:
            return message_answer(f"There is no approval request {click.request_id}.")

    async def identify(self, click: TeamsClick) -> Approver | str:
        """The approver behind a Teams user, or why they are none (said to them, and recorded): by
        their Entra object id in `teams_user`, else by the email or UPN the Connector gives for them."""
        settings = self.settings
        if click.tenant_id != settings.tenant_id:
            return (
                f"your Microsoft 365 tenant ({click.tenant_id or 'unknown'}) is not the one this gate trusts"
            )
        if click.conversation.split(";")[0] != settings.conversation:
            return "this card is not in the conversation this gate posts to"
        if click.aad_object_id is None:
            return "Teams sent no Entra ID object id for you"
        name = settings.users.get(click.aad_object_id)
        if name is not None:
            return self.gate.config.approvers[name]
        return await self._by_address(click, click.aad_object_id)

    async def _by_address(self, click: TeamsClick, object_id: str) -> Approver | str:
        unmapped = (
            f"your Teams account (object id {object_id}) is not mapped to an approver: no approver has "
            "teams_user set to it, or its email, in gate.toml"
        )
        cached = self._members.get(object_id)
        if cached is not None and cached[0] > time.monotonic():
            member = cached[1]
        else:
            try:
                member = await self.connector.member(click.conversation.split(";")[0], click.user_id)
            except TeamsFailure as exc:
                if exc.status == 404:
                    return unmapped  # not a member the Connector knows: nobody to map
                return f"the gate could not look up your Teams account ({exc.error}); try again"
            self._members[object_id] = (time.monotonic() + MEMBER_CACHE_SECONDS, member)
        if str(member.get("aadObjectId") or "").lower() != object_id:
            return unmapped
        if str(member.get("tenantId") or "").lower() != self.settings.tenant_id:
            return "your Teams account belongs to another tenant"
        if member.get("userRole") == "guest":
            return "guests in this tenant cannot decide approval requests"
        addresses = {str(member.get(k) or "").strip().lower() for k in ("email", "userPrincipalName")} - {""}
        for approver in self.gate.config.approvers.values():
            if addresses & {approver.email.strip().lower(), *(a.strip().lower() for a in approver.aliases)}:
                return approver
        return unmapped

    async def _decide(self, click: TeamsClick, who: Approver) -> dict[str, Any]:
        request = await self.gate.engine.get(click.request_id)
        # Who may decide, for the dry runs below, as the engine sees it: with the groups any sealed
        # escalation added (the engine's own decision checks the same again).
        added = escalated_groups(
            self.gate.engine.key, request, await escalation_steps(self.gate.engine, request)
        )
        widened = replace(request, groups=(*request.groups, *added)) if added else request
        if click.verb == "refresh":
            # Each viewer sees only the buttons they may use.
            allowed = decide(widened, who, "approve", channel="teams", now=self.gate.clock.now())
            return card_answer(await self.outbox.render(request, buttons=not isinstance(allowed, Refusal)))
        match click.verb:
            case "deny":
                if not click.reason:
                    dry_run = decide(widened, who, "deny", channel="teams", now=self.gate.clock.now())
                    if isinstance(dry_run, Refusal):
                        await self._refused(click, who, dry_run.why, code=dry_run.code)
                        return message_answer(f"You cannot decide this: {dry_run.why}")
                    return message_answer(
                        "Type a reason in the card first: the agent is told why it was denied."
                    )
                outcome = await self.desk.deny(click.request_id, who, reason=click.reason)
            case "approve":
                outcome = await self.desk.approve(click.request_id, who)
            case "approve_for":
                outcome = await self.desk.approve(click.request_id, who, grant_for=GRANT_FOR)
        if isinstance(outcome, Refusal):
            await self._refused(click, who, outcome.why, code=outcome.code)
            return message_answer(f"You cannot decide this: {outcome.why}")
        self.outbox.poke()
        decided = await self.gate.engine.get(click.request_id)
        return card_answer(await self.outbox.render(decided))

    async def _first_sight(self, activity_id: str) -> bool:
        now = self.wall()
        key = f"teams:{activity_id}"
        return bool(
            await self.gate.store.transact(
                lambda tx: tx.slack_first_sight(key, utc_iso(now), utc_iso(now - SEEN_FOR))
            )
        )

    async def _refused(
        self, click: TeamsClick, who: Approver | None, why: str, *, code: str | None = None
    ) -> None:
        def write(tx: Tx) -> None:
            known = tx.get_request(click.request_id)
            extra: dict[str, Any] = {}
            if who is not None:
                extra["approver"] = who.name
            if code is not None:
                extra["code"] = code
            tx.append(
                [
                    self.gate.event(
                        "teams.refused",
                        known.correlation_id if known is not None else None,
                        request_id=click.request_id,
                        teams_user=click.aad_object_id or click.user_id,
                        teams_tenant=click.tenant_id,
                        action=click.verb,
                        activity_id=click.activity_id,
                        why=why,
                        **extra,
                    )
                ]
            )

        await self.gate.store.transact(write)
