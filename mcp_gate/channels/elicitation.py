"""The elicitation channel: ask the person at the agent in their own client, in both protocol eras."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server import ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_gate.questions import Era, Unsupported

__all__ = ["ContextAsker"]


class ContextAsker:
    """An `Asker` over one low-level SDK request context (the front server's tools/call)."""

    def __init__(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> None:
        self._ctx = ctx
        self._params = params

    @property
    def era(self) -> Era:
        return "modern" if self._ctx.protocol_version in MODERN_PROTOCOL_VERSIONS else "legacy"

    @property
    def can_elicit(self) -> bool:
        caps = self._ctx.session.client_capabilities
        if caps is None or caps.elicitation is None:
            return False
        # An empty elicitation capability means form mode (the spec's backwards-compatible reading).
        return caps.elicitation.form is not None or caps.elicitation.url is None

    @property
    def request_state(self) -> str | None:
        return self._params.request_state

    async def ask(self, message: str, schema: Mapping[str, Any]) -> types.ElicitResult | Unsupported:
        if self.era != "legacy":
            return Unsupported("a 2026-07-28 client cannot be asked in the middle of a call")
        try:
            return await self._ctx.session.elicit_form(
                message, dict(schema), related_request_id=self._ctx.request_id
            )
        except MCPError as exc:
            return Unsupported(f"the client could not show the question ({exc.error.message[:200]})")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            return Unsupported(f"the client went away ({type(exc).__name__})")

    def answer(self, key: str) -> types.ElicitResult | None:
        found = (self._params.input_responses or {}).get(key)
        return found if isinstance(found, types.ElicitResult) else None

    def responses(self) -> types.InputResponses | None:
        return self._params.input_responses

    @property
    def can_open_url(self) -> bool:
        caps = self._ctx.session.client_capabilities
        return caps is not None and caps.elicitation is not None and caps.elicitation.url is not None

    async def offer_url(self, message: str, url: str, elicitation_id: str) -> str | Unsupported:
        if self.era != "legacy":
            return Unsupported("a 2026-07-28 client cannot be asked in the middle of a call")
        try:
            result = await self._ctx.session.elicit_url(
                message, url, elicitation_id, related_request_id=self._ctx.request_id
            )
        except MCPError as exc:
            return Unsupported(f"the client could not show the link ({exc.error.message[:200]})")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            return Unsupported(f"the client went away ({type(exc).__name__})")
        return result.action

    async def url_done(self, elicitation_id: str) -> None:
        with contextlib.suppress(MCPError, anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._ctx.session.send_elicit_complete(
                elicitation_id, related_request_id=self._ctx.request_id
            )
