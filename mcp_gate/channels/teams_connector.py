"""The Bot Connector behind small async methods: a client-credentials token, then post and update cards."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import anyio
import httpx2

from mcp_gate.channels.teams_cards import card_attachment
from mcp_gate.config import TeamsSettings
from mcp_gate.errors import TeamsFailure

__all__ = ["Connector"]

TIMEOUT = 10.0
TOKEN_MARGIN = 300.0  # seconds before its expiry a token is replaced


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _code(response: httpx2.Response) -> str:
    """The error code in a Connector or token service answer, never its free text (which can echo input)."""
    try:
        data = json.loads(response.content)
    except ValueError:
        return "unexpected answer"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return str(error["code"])[:64]
        if isinstance(error, str):
            return error[:64]
    return "unexpected answer"


class Connector:
    """Outbound calls of one bot. The password is read once by the caller and held here only."""

    def __init__(
        self, settings: TeamsSettings, password: str, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._password = password
        self._token: tuple[str, float] | None = None
        self._lock = anyio.Lock()
        self.monotonic = monotonic

    def __repr__(self) -> str:
        return f"Connector({self.settings.service_url!r})"

    async def token(self) -> str:
        """A Bot Connector access token (client credentials), cached until shortly before it expires."""
        async with self._lock:
            if self._token is not None and self._token[1] > self.monotonic():
                return self._token[0]
            form = {
                "grant_type": "client_credentials",
                "client_id": self.settings.app_id,
                "client_secret": self._password,
                "scope": self.settings.scope,
            }
            try:
                async with httpx2.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
                    response = await client.post(self.settings.token_endpoint, data=form)
            except httpx2.HTTPError as exc:
                raise TeamsFailure("token request", f"unreachable ({type(exc).__name__})") from exc
            if response.status_code != 200:
                raise TeamsFailure(
                    "token request",
                    _code(response),
                    status=response.status_code,
                    retry_after=_retry_after(response),
                )
            try:
                data = json.loads(response.content)
                access, expires_in = str(data["access_token"]), float(data["expires_in"])
            except (ValueError, KeyError, TypeError) as exc:
                raise TeamsFailure("token request", "no access_token in the answer") from exc
            self._token = (access, self.monotonic() + max(0.0, expires_in - TOKEN_MARGIN))
            return access

    def _url(self, conversation: str, activity_id: str | None = None) -> str:
        base = self.settings.service_url.rstrip("/")
        url = f"{base}/v3/conversations/{quote(conversation, safe='')}/activities"
        return url if activity_id is None else f"{url}/{quote(activity_id, safe='')}"

    async def _send(self, what: str, method: str, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        token = await self.token()
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        try:
            async with httpx2.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
                response = await client.request(method, url, content=json.dumps(body), headers=headers)
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
            raise TeamsFailure(what, f"unreachable ({type(exc).__name__})") from exc
        except httpx2.HTTPError as exc:
            # Sent, and no answer read: the Connector may have carried it out.
            raise TeamsFailure(what, f"no answer ({type(exc).__name__})", unanswered=True) from exc
        if response.status_code == 401:
            self._token = None  # refused: the next attempt asks for a fresh token
        if response.status_code >= 300:
            raise TeamsFailure(
                what, _code(response), status=response.status_code, retry_after=_retry_after(response)
            )
        try:
            data = json.loads(response.content or b"{}")
        except ValueError:
            data = {}
        return data if isinstance(data, dict) else {}

    async def member(self, conversation: str, user_id: str) -> dict[str, Any]:
        """One member of a conversation as the Connector knows them (email, userPrincipalName, tenantId,
        aadObjectId, userRole): the gate asks with its own token, so the answer is not the clicker's word."""
        base = self.settings.service_url.rstrip("/")
        url = f"{base}/v3/conversations/{quote(conversation, safe='')}/members/{quote(user_id, safe='')}"
        token = await self.token()
        try:
            async with httpx2.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
                response = await client.get(url, headers={"authorization": f"Bearer {token}"})
        except httpx2.HTTPError as exc:
            raise TeamsFailure("member lookup", f"unreachable ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise TeamsFailure("member lookup", _code(response), status=response.status_code)
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            raise TeamsFailure("member lookup", "not JSON") from exc
        if not isinstance(data, dict):
            raise TeamsFailure("member lookup", "not a member")
        return data

    async def post_card(self, conversation: str, card: Mapping[str, Any]) -> str:
        """Post a card as a new activity in a conversation; its activity id."""
        body = {"type": "message", "attachments": [card_attachment(card)]}
        data = await self._send("post", "POST", self._url(conversation), body)
        found = data.get("id")
        if not isinstance(found, str) or not found:
            raise TeamsFailure("post", "no activity id in the answer", unanswered=True)
        return found

    async def update_card(self, conversation: str, activity_id: str, card: Mapping[str, Any]) -> None:
        body = {"type": "message", "id": activity_id, "attachments": [card_attachment(card)]}
        await self._send("update", "PUT", self._url(conversation, activity_id), body)
