"""The console's operator actions beside deciding: break-glass on one request, and an approver's own
away and back. Each goes through the same engine calls as the CLI and the API (`Desk`), behind the
console's session and CSRF checks; the buttons show only for those the engine would accept."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mcp_gate.approvals import Approver, Refusal, parse_duration
from mcp_gate.config import BreakGlassSettings
from mcp_gate.errors import GateError

if TYPE_CHECKING:
    from mcp_gate.console.app import Console

__all__ = ["AWAY_CHOICES", "away", "back", "breakglass", "may_break_glass"]

AWAY_CHOICES = ("1h", "4h", "8h", "1d", "3d")  # offered on the pending page, besides "until back"


def may_break_glass(settings: BreakGlassSettings, view: dict[str, Any], viewer: Approver) -> bool:
    """Whether the break-glass form shows for `viewer`: a member of a [breakglass] group, never on
    a request made for themselves, only while it is pending (the engine checks all of it again)."""
    if not settings.groups or not (viewer.groups & settings.groups) or view.get("state") != "pending":
        return False
    return str(view["requester"]["owner"]).strip().lower() not in viewer.identities()


async def breakglass(console: Console, request: Request) -> Response:
    async def act(approver: Approver, form: dict[str, str]) -> dict[str, Any] | Refusal:
        reason = (form.get("reason") or "").strip()
        return await console.desk.break_glass(
            request.path_params["request_id"],
            approver,
            reason=reason,
            settings=console.config.breakglass,
            approvers=console.config.approvers,
        )

    return await console._decide(request, act)


async def away(console: Console, request: Request) -> Response:
    from mcp_gate.console.app import PREFIX, Refused

    try:
        _, approver, form = await console._checked_post(request)
        choice = form.get("for", "")
        until = None
        if choice:
            if choice not in AWAY_CHOICES:
                raise Refused(400, f"Away for one of {', '.join(AWAY_CHOICES)}, or until you are back.")
            until = console.engine.clock.now() + parse_duration(choice)
        note = (form.get("note") or "").strip()[:200] or None
        await console.desk.away(approver, until=until, note=note)
    except Refused as exc:
        return console._refused(request, exc)
    except GateError as exc:
        return console._refused(request, Refused(503, f"Nothing was recorded: {exc}"))
    return RedirectResponse(f"{PREFIX}/pending?done=away", status_code=303)


async def back(console: Console, request: Request) -> Response:
    from mcp_gate.console.app import PREFIX, Refused

    try:
        _, approver, _ = await console._checked_post(request)
        await console.desk.back(approver)
    except Refused as exc:
        return console._refused(request, exc)
    except GateError as exc:
        return console._refused(request, Refused(503, f"Nothing was recorded: {exc}"))
    return RedirectResponse(f"{PREFIX}/pending?done=back", status_code=303)
