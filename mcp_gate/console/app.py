"""The console's pages and posts: login, pending (live), one request, grants; decisions by the engine.

A thin front over `desk.Desk`: it shows what the engine holds and hands each decision to
the engine, which alone enforces who may decide, separation of duties, quorum and expiry. What the
console refuses itself (no session, a missing or wrong CSRF token, a failed login) is recorded as
`console.refused`; what the engine refuses it records as `approval.refused`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib import resources
from typing import Any
from urllib.parse import quote

import anyio
from jinja2 import Environment, PackageLoader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from mcp_gate.approvals import Approver, Refusal
from mcp_gate.channels.email import DecisionLink, verify_link
from mcp_gate.clock import utc_iso
from mcp_gate.config import ConsoleSettings, GateConfig
from mcp_gate.console.actions import AWAY_CHOICES, away, back, breakglass, may_break_glass
from mcp_gate.console.context import GRANT_CHOICES, lay_out, request_context
from mcp_gate.console.headers import SecurityHeaders, report_response
from mcp_gate.console.records import call_story, drift_rows
from mcp_gate.console.sessions import LoginLimiter, LoginMethod, Session, SessionManager, TokenLogin
from mcp_gate.desk import Desk, summarize
from mcp_gate.errors import GateError, NoSuchRequest
from mcp_gate.holds import ApprovalEngine
from mcp_gate.redaction import scrub

# The audit report of a period (since, until as UTC text or None), built beside the store.
ReportFn = Callable[[str | None, str | None], Awaitable[dict[str, Any]]]

__all__ = ["PREFIX", "Console", "build_console"]

log = logging.getLogger("mcp_gate.console")

PREFIX = "/console"
MAX_FORM = 16 * 1024
MAX_REASON = 2000
KEEPALIVE_SECONDS = 15.0
COALESCE_SECONDS = 0.2  # commits close together wake each page once
STATIC = ("console.css", "console.js")
DONE = {  # what a redirect after a decision says; fixed texts, never text from the query
    "accepted": "The new definition is accepted; agents can call the tool again.",
    "annotated": "Your note is recorded.",
    "approved": "Approved.",
    "pending": "Your approval is recorded; the request waits for more.",
    "denied": "Denied.",
    "revoked": "Revoked.",
    "grant-revoked": "Grant revoked.",
    "released by break-glass": "Released by break-glass: it runs once; every approver of its tier is told.",
    "away": "You are marked away: notices go to the other approvers meanwhile.",
    "back": "You are back: notices reach you again.",
}


class Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        self.status = status
        self.why = why
        super().__init__(why)


def _templates() -> Environment:
    env = Environment(loader=PackageLoader("mcp_gate.console", "templates"), autoescape=True)
    env.filters["quote"] = lambda value: quote(str(value), safe="")
    return env


@dataclass
class Console:
    """The console over one approval engine (the gate's own, or one beside it on the same store)."""

    engine: ApprovalEngine
    config: GateConfig
    settings: ConsoleSettings
    key: bytes
    logins: list[LoginMethod] = field(default_factory=list)
    report: ReportFn | None = None  # the audit report of a period (None: no report page)

    def __post_init__(self) -> None:
        self.desk = Desk(
            self.engine, channel="console", rules=self.config.redaction, approvers=self.config.approvers
        )
        self.sessions = SessionManager(
            self.key, self.settings.session_seconds, self.config.approvers, path=PREFIX
        )
        self.limiter = LoginLimiter(self.settings.login_attempts)
        self.token_login = TokenLogin(self.config.approvers)
        if not self.logins:
            self.logins = [self.token_login]
        self.env = _templates()
        self.secure_default = (self.settings.public_url or "").startswith("https://")

    # -- plumbing ----------------------------------------------------------------------------------

    def _secure(self, request: Request) -> bool:
        return self.secure_default or request.url.scheme == "https"

    def _page(
        self, name: str, request: Request, session: Session | None, status: int = 200, **values: Any
    ) -> HTMLResponse:
        viewer = (
            None if session is None or session.approver is None else self.config.approvers[session.approver]
        )
        template = self.env.get_template(name)
        body = template.render(
            viewer=viewer,
            csrf=self.sessions.csrf(session) if session is not None else "",
            prefix=PREFIX,
            gate=self.config.name,
            **values,
        )
        return HTMLResponse(body, status_code=status)

    async def _record_refusal(self, request: Request, why: str, session: Session | None) -> None:
        client = request.client.host if request.client else None
        try:
            await self.engine.store.append(
                [
                    self.engine.events(
                        "console.refused",
                        None,
                        why=why,
                        method=request.method,
                        path=scrub(request.url.path[:200], self.config.redaction),
                        approver=session.approver if session else None,
                        client=client,
                    )
                ]
            )
        except GateError as exc:
            log.error("could not record a refused console request: %s", exc)

    async def _viewer(self, request: Request) -> tuple[Session, Approver] | None:
        session = self.sessions.read(request)
        if session is None or session.approver is None:
            return None
        return session, self.config.approvers[session.approver]

    async def _form(self, request: Request) -> dict[str, str]:
        raw = await request.body()
        if len(raw) > MAX_FORM:
            raise Refused(413, "the form is too large")
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        await form.close()
        return values

    async def _checked_post(self, request: Request) -> tuple[Session, Approver, dict[str, str]]:
        """A state-changing request: a logged-in session and its CSRF token, or Refused (recorded)."""
        session = self.sessions.read(request)
        if session is None or session.approver is None:
            await self._record_refusal(request, "no session", session)
            raise Refused(401, "You are not logged in (or your session ended). Log in and try again.")
        form = await self._form(request)
        if not self.sessions.csrf_ok(session, form.get("csrf")):
            await self._record_refusal(request, "missing or wrong CSRF token", session)
            raise Refused(403, "This form is not from this console (its CSRF token is missing or wrong).")
        return session, self.config.approvers[session.approver], form

    def _to_login(self, request: Request) -> Response:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote(back, safe='')}", status_code=303)

    # -- login ---------------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        session = self.sessions.read(request)
        if session is not None and session.approver is not None:
            return RedirectResponse(_next(request.query_params.get("next")), status_code=303)
        if session is None:
            session = self.sessions.fresh()
        response = self._login(request, session, None, 200)
        self.sessions.set_cookie(response, session, secure=self._secure(request))
        return response

    def _login(self, request: Request, session: Session, error: str | None, status: int) -> HTMLResponse:
        methods = [{"key": m.key, "label": m.label, **m.form()} for m in self.logins]
        return self._page(
            "login.html",
            request,
            session,
            status,
            methods=methods,
            error=error,
            next=_next(request.query_params.get("next")),
        )

    async def login_token(self, request: Request) -> Response:
        session = self.sessions.read(request)
        client = request.client.host if request.client else "unknown"
        form = await self._form(request)
        if session is None or not self.sessions.csrf_ok(session, form.get("csrf")):
            await self._record_refusal(request, "login without the login form's CSRF token", session)
            session = self.sessions.fresh()
            response = self._login(request, session, "The login form expired. Please try again.", 403)
            self.sessions.set_cookie(response, session, secure=self._secure(request))
            return response
        if self.limiter.blocked(client):
            await self._record_refusal(request, "too many failed logins", session)
            return self._login(request, session, "Too many failed logins. Wait a minute and try again.", 429)
        approver = self.token_login.authenticate(form.get("token", "").strip())
        if approver is None:
            self.limiter.failed(client)
            await self._record_refusal(request, "login with an unknown token", session)
            return self._login(request, session, "That token is not an approver's token.", 401)
        return await self.establish(request, approver, self.token_login.key, form.get("next"))

    async def establish(
        self, request: Request, approver: Approver, login: str, next_path: str | None = None
    ) -> Response:
        session = self.sessions.establish(approver, login)
        response = RedirectResponse(_next(next_path), status_code=303)
        self.sessions.set_cookie(response, session, secure=self._secure(request))
        return response

    async def logout(self, request: Request) -> Response:
        session, _, _ = await self._checked_post(request)
        self.sessions.forget(session)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        self.sessions.clear_cookie(response, secure=self._secure(request))
        return response

    # -- pages -----------------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/pending", status_code=303)

    async def _rows(self) -> list[dict[str, Any]]:
        return await self.desk.open_requests()

    async def pending(self, request: Request) -> Response:
        who = await self._viewer(request)
        if who is None:
            return self._to_login(request)
        session, viewer = who
        present = [a for a in await self.desk.approvers_view() if a["name"] == viewer.name]
        return self._page(
            "pending.html",
            request,
            session,
            requests=await self._rows(),
            now=_now(self),
            away=present[0]["away"] if present else None,
            away_choices=AWAY_CHOICES,
            done=DONE.get(request.query_params.get("done", "")),
        )

    async def pending_rows(self, request: Request) -> Response:
        who = await self._viewer(request)
        if who is None:
            return Response("not logged in", status_code=401)
        return self._page("_rows.html", request, who[0], requests=await self._rows(), now=_now(self))

    async def request_page(
        self, request: Request, *, status: int = 200, refusal: str | None = None
    ) -> Response:
        who = await self._viewer(request)
        if who is None:
            return self._to_login(request)
        session, viewer = who
        request_id = request.path_params["request_id"]
        try:
            context = await request_context(self.desk, request_id, viewer)
        except NoSuchRequest:
            return self._page(
                "message.html",
                request,
                session,
                404,
                title="No such request",
                message=f"There is no request {request_id}.",
            )
        done = DONE.get(request.query_params.get("done", ""))
        return self._page(
            "request.html",
            request,
            session,
            status,
            refusal=refusal,
            done=done,
            grant_choices=GRANT_CHOICES,
            breakglass=may_break_glass(self.config.breakglass, context["r"], viewer),
            **context,
        )

    async def request_state(self, request: Request) -> Response:
        who = await self._viewer(request)
        if who is None:
            return Response("not logged in", status_code=401)
        try:
            context = await request_context(self.desk, request.path_params["request_id"], who[1])
        except NoSuchRequest:
            return Response("no such request", status_code=404)
        breakglass = may_break_glass(self.config.breakglass, context["r"], who[1])
        return self._page(
            "_state.html", request, who[0], grant_choices=GRANT_CHOICES, breakglass=breakglass, **context
        )

    async def grants(self, request: Request) -> Response:
        who = await self._viewer(request)
        if who is None:
            return self._to_login(request)
        everything = request.query_params.get("all") == "1"
        grants = await self.desk.grants(live_only=not everything)
        done = DONE.get(request.query_params.get("done", ""))
        return self._page("grants.html", request, who[0], grants=grants, everything=everything, done=done)

    # -- decisions ---------------------------------------------------------------------------------------

    async def _decide(
        self, request: Request, act: Callable[[Approver, dict[str, str]], Awaitable[dict[str, Any] | Refusal]]
    ) -> Response:
        request_id = request.path_params["request_id"]
        try:
            session, approver, form = await self._checked_post(request)
            outcome = await act(approver, form)
        except Refused as exc:
            return self._refused(request, exc)
        except NoSuchRequest:
            return self._refused(request, Refused(404, f"There is no request {request_id}."))
        except GateError as exc:
            return self._refused(request, Refused(503, f"Nothing was decided: {exc}"))
        if isinstance(outcome, Refusal):
            return await self.request_page(request, status=409, refusal=outcome.why)
        log.info("console: %s: %s", approver.name, summarize(outcome))
        state = outcome["outcome"]
        return RedirectResponse(
            f"{PREFIX}/requests/{quote(request_id, safe='')}?done={state}", status_code=303
        )

    def _refused(self, request: Request, exc: Refused) -> Response:
        session = self.sessions.read(request)
        return self._page("message.html", request, session, exc.status, title="Refused", message=exc.why)

    async def approve(self, request: Request) -> Response:
        async def act(approver: Approver, form: dict[str, str]) -> dict[str, Any] | Refusal:
            note = _text(form.get("note"))
            minutes = form.get("minutes", "")
            grant_for = None
            if minutes:
                if not minutes.isdigit() or int(minutes) not in GRANT_CHOICES:
                    raise Refused(400, f"A grant lasts one of {', '.join(map(str, GRANT_CHOICES))} minutes.")
                grant_for = timedelta(minutes=int(minutes))
            return await self.desk.approve(
                request.path_params["request_id"], approver, note=note, grant_for=grant_for
            )

        return await self._decide(request, act)

    async def deny(self, request: Request) -> Response:
        async def act(approver: Approver, form: dict[str, str]) -> dict[str, Any] | Refusal:
            reason = _text(form.get("reason"))
            if reason is None:
                raise Refused(400, "A denial needs a reason.")
            return await self.desk.deny(request.path_params["request_id"], approver, reason=reason)

        return await self._decide(request, act)

    async def revoke(self, request: Request) -> Response:
        async def act(approver: Approver, form: dict[str, str]) -> dict[str, Any] | Refusal:
            return await self.desk.revoke(request.path_params["request_id"], approver)

        return await self._decide(request, act)

    async def annotate(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        try:
            _, approver, form = await self._checked_post(request)
            note = _text(form.get("note"))
            if note is None:
                raise Refused(400, "An annotation needs some text.")
            await self.engine.annotate(request_id, approver, note, channel="console")
        except Refused as exc:
            return self._refused(request, exc)
        except NoSuchRequest:
            return self._refused(request, Refused(404, f"There is no request {request_id}."))
        return RedirectResponse(
            f"{PREFIX}/requests/{quote(request_id, safe='')}?done=annotated", status_code=303
        )

    async def revoke_grant(self, request: Request) -> Response:
        try:
            _, approver, _ = await self._checked_post(request)
            outcome = await self.desk.revoke_grant(request.path_params["grant_id"], approver)
        except Refused as exc:
            return self._refused(request, exc)
        except NoSuchRequest:
            return self._refused(request, Refused(404, "There is no such grant."))
        if isinstance(outcome, Refusal):
            return self._refused(request, Refused(409, outcome.why))
        return RedirectResponse(f"{PREFIX}/grants?done=grant-revoked", status_code=303)

    # -- emailed decision links: confirmed here after login, good once ----------------------------------

    async def _email_link(self, request: Request, session: Session, approver: Approver) -> DecisionLink:
        link = verify_link(self.key, request.path_params["token"])
        if link is None:
            await self._record_refusal(request, "an email link whose signature does not hold", session)
            raise Refused(400, "This is not a valid decision link.")
        if link.approver != approver.name:
            await self._record_refusal(request, f"an email link sent to {link.approver}", session)
            raise Refused(
                403, f"This link was sent to another approver; log in as {link.approver} to use it."
            )
        if link.expires_at <= self.engine.clock.now().timestamp():
            raise Refused(410, "This link has expired. Open the request in the console instead.")
        return link

    def _used(self, tx: Any, correlation_id: str, link: DecisionLink) -> bool:
        return any(b.get("nonce") == link.nonce for b in tx.bodies_for(correlation_id, ("email.link_used",)))

    async def email_page(self, request: Request) -> Response:
        who = await self._viewer(request)
        if who is None:
            return self._to_login(request)
        session, viewer = who
        try:
            link = await self._email_link(request, session, viewer)
            view = await self.desk.show(link.request_id)
        except Refused as exc:
            return self._refused(request, exc)
        except NoSuchRequest:
            return self._refused(request, Refused(404, "The request of this link does not exist."))
        used = await self.engine.store.read(lambda tx: self._used(tx, view["correlation_id"], link))
        return self._page(
            "email_confirm.html",
            request,
            session,
            r=view,
            verdict=link.verdict,
            used=used,
            args_rows=lay_out(view["args"]),
            token=request.path_params["token"],
        )

    async def email_confirm(self, request: Request) -> Response:
        try:
            session, approver, form = await self._checked_post(request)
            link = await self._email_link(request, session, approver)
            target = await self.engine.get(link.request_id)
            reason = _text(form.get("reason"))
            if link.verdict == "deny" and reason is None:
                raise Refused(400, "A denial needs a reason.")

            def use(tx: Any) -> bool:
                if self._used(tx, target.correlation_id, link):
                    return False
                tx.append(
                    [
                        self.engine.events(
                            "email.link_used",
                            target.correlation_id,
                            request_id=target.id,
                            nonce=link.nonce,
                            approver=approver.name,
                            verdict=link.verdict,
                        )
                    ]
                )
                return True

            if not await self.engine.store.transact(use):
                raise Refused(409, "This link was already used; its decision stands.")
            if link.verdict == "approve":
                outcome = await self.desk.approve(target.id, approver, note=reason)
            else:
                assert reason is not None
                outcome = await self.desk.deny(target.id, approver, reason=reason)
        except Refused as exc:
            return self._refused(request, exc)
        except NoSuchRequest:
            return self._refused(request, Refused(404, "The request of this link does not exist."))
        except GateError as exc:
            return self._refused(request, Refused(503, f"Nothing was decided: {exc}"))
        if isinstance(outcome, Refusal):
            return self._refused(request, Refused(409, outcome.why))
        state = outcome["outcome"]
        return RedirectResponse(
            f"{PREFIX}/requests/{quote(target.id, safe='')}?done={state}", status_code=303
        )

    # -- evidence and tools -------------------------------------------------------------------------------

    async def evidence(self, request: Request) -> Response:
        who = await self._viewer(request)
        if who is None:
            return self._to_login(request)
        correlation_id = request.path_params["correlation_id"][:100]
        records, story = await call_story(self.engine.store, correlation_id)
        rows = [
            {"seq": r.seq, "ts": r.ts, "event_type": r.event_type, "entry_hash": r.entry_hash}
            for r in records
        ]
        status = 200 if records else 404
        return self._page(
            "evidence.html", request, who[0], status, correlation_id=correlation_id, records=rows, story=story
        )

    def _operator(self, approver: Approver) -> bool:
        return bool(approver.groups & set(self.settings.operators))

    async def tools(self, request: Request) -> Response:
        who = await self._viewer(request)
        if who is None:
            return self._to_login(request)
        drift = drift_rows(await self.engine.store.list_pins())
        return self._page(
            "tools.html",
            request,
            who[0],
            drift=drift,
            operator=self._operator(who[1]),
            operator_groups=self.settings.operators,
            done=DONE.get(request.query_params.get("done", "")),
        )

    async def accept_tool(self, request: Request) -> Response:
        server, tool = request.path_params["server"], request.path_params["tool"]
        try:
            session, approver, form = await self._checked_post(request)
            if not self._operator(approver):
                await self._record_refusal(
                    request, "accepting a tool's definition needs an operator", session
                )
                raise Refused(403, "Only operators ([console] operators) may accept a tool's new definition.")
            pin = await self.engine.store.get_pin(server, tool)
            if pin is None or pin.drifted_pin is None:
                raise Refused(409, f"{server}__{tool} has no changed definition waiting to be accepted.")
            if form.get("pin") != pin.drifted_pin:
                raise Refused(409, "The definition changed again since the page was shown: look at it again.")
            event = self.engine.events(
                "tool.accepted",
                None,
                server=server,
                tool=tool,
                pin=pin.drifted_pin,
                previous_pin=None if pin.new else pin.pin,
                accepted_by=approver.name,
                channel="console",
            )
            await self.engine.store.accept_drift(server, tool, events=[event])
        except Refused as exc:
            return self._refused(request, exc)
        except GateError as exc:
            return self._refused(request, Refused(503, f"Nothing was accepted: {exc}"))
        return RedirectResponse(f"{PREFIX}/tools?done=accepted", status_code=303)

    async def report_page(self, request: Request) -> Response:
        who = await self._viewer(request)
        if who is None:
            return self._to_login(request)
        if self.report is None:
            return self._page(
                "message.html", request, who[0], 404, title="No report", message="Not served here."
            )
        since, until = request.query_params.get("since") or None, request.query_params.get("until") or None
        try:
            period = [None if v is None else _moment(v) for v in (since, until)]
        except ValueError as exc:
            return self._page("report.html", request, who[0], 400, error=str(exc), since=since, until=until)
        if request.query_params.get("show") != "1":
            return self._page("report.html", request, who[0], since=since, until=until, error=None)
        report = await self.report(period[0], period[1])
        return report_response(report)

    # -- live updates --------------------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """Server-sent events: `changed` whenever the store commits (one subscription per page to
        the store's shared change notification; no page polls the store itself)."""
        session = self.sessions.read(request)
        if session is None or session.approver is None:
            return Response("not logged in", status_code=401)
        ends = session.expires_at

        async def stream() -> AsyncIterator[str]:
            yield "retry: 3000\n\n"
            async with self.engine.store.changes() as changes:
                while self.sessions.clock() < ends:
                    woke = False
                    with anyio.move_on_after(KEEPALIVE_SECONDS):
                        await changes.wait()
                        woke = True
                    if woke:
                        await anyio.sleep(COALESCE_SECONDS)
                        yield "event: changed\ndata: {}\n\n"
                    else:
                        yield ": still here\n\n"
            yield "event: ended\ndata: {}\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return Response("not found", status_code=404)
        body = resources.files("mcp_gate.console").joinpath("static", name).read_bytes()
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(body, media_type=kind, headers={"cache-control": "max-age=300"})

    # -- the app -----------------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        p = PREFIX
        routes: list[BaseRoute] = [
            Route(p, self.home, methods=["GET"]),
            Route(f"{p}/", self.home, methods=["GET"]),
            Route(f"{p}/login", self.login_page, methods=["GET"]),
            Route(f"{p}/login/token", self.login_token, methods=["POST"]),
            Route(f"{p}/logout", self.logout, methods=["POST"]),
            Route(f"{p}/pending", self.pending, methods=["GET"]),
            Route(f"{p}/pending/rows", self.pending_rows, methods=["GET"]),
            Route(f"{p}/events", self.events, methods=["GET"]),
            Route(f"{p}/requests/{{request_id}}", self.request_page, methods=["GET"]),
            Route(f"{p}/requests/{{request_id}}/state", self.request_state, methods=["GET"]),
            Route(f"{p}/requests/{{request_id}}/approve", self.approve, methods=["POST"]),
            Route(f"{p}/requests/{{request_id}}/deny", self.deny, methods=["POST"]),
            Route(f"{p}/requests/{{request_id}}/revoke", self.revoke, methods=["POST"]),
            Route(f"{p}/requests/{{request_id}}/annotate", self.annotate, methods=["POST"]),
            Route(f"{p}/requests/{{request_id}}/breakglass", partial(breakglass, self), methods=["POST"]),
            Route(f"{p}/away", partial(away, self), methods=["POST"]),
            Route(f"{p}/back", partial(back, self), methods=["POST"]),
            Route(f"{p}/grants", self.grants, methods=["GET"]),
            Route(f"{p}/grants/{{grant_id}}/revoke", self.revoke_grant, methods=["POST"]),
            Route(f"{p}/static/{{name}}", self.static, methods=["GET"]),
            Route(f"{p}/evidence/{{correlation_id}}", self.evidence, methods=["GET"]),
            Route(f"{p}/email/{{token}}", self.email_page, methods=["GET"]),
            Route(f"{p}/email/{{token}}", self.email_confirm, methods=["POST"]),
            Route(f"{p}/tools", self.tools, methods=["GET"]),
            Route(f"{p}/tools/{{server}}/{{tool}}/accept", self.accept_tool, methods=["POST"]),
            Route(f"{p}/report", self.report_page, methods=["GET"]),
        ]
        for method in self.logins:
            routes.extend(method.routes(self.establish))
        return routes


def _moment(value: str) -> str:
    """A period's end from the report form: a date or an ISO-8601 moment, as UTC text."""
    text = value.strip()
    moment = datetime.fromisoformat(text if "T" in text or len(text) > 10 else f"{text}T00:00:00+00:00")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return utc_iso(moment)


def _now(console: Console) -> str:
    return utc_iso(console.engine.clock.now())


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    if len(value) > MAX_REASON:
        raise Refused(400, f"At most {MAX_REASON} characters, please.")
    return value or None


def _next(value: str | None) -> str:
    """Where to go after login: a path inside the console, never another site."""
    if value and value.startswith(f"{PREFIX}/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/pending"


def build_console(
    engine: ApprovalEngine,
    config: GateConfig,
    key: bytes,
    *,
    logins: list[LoginMethod] | None = None,
    settings: ConsoleSettings | None = None,
    report: ReportFn | None = None,
) -> ASGIApp:
    """The console's ASGI app under /console, over `engine`, its cookies signed with `key`."""
    chosen = settings or config.console
    if chosen is None:
        raise GateError(f"{config.path}: there is no [console] section")
    console = Console(engine, config, chosen, key, list(logins or []), report)
    return SecurityHeaders(Starlette(routes=console.routes()))
