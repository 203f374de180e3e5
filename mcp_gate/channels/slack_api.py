"""The Slack Web API and Socket Mode behind small async methods: the only importer of slack_sdk."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any
from urllib.error import URLError

import anyio
import anyio.to_thread

from mcp_gate.errors import SlackFailure

__all__ = ["SlackApi", "SocketModeLink", "connect_socket_mode"]

# slack_sdk logs through this logger; it never sees a token (it redacts Authorization itself).
sdk_log = logging.getLogger("mcp_gate.slack.sdk")

TIMEOUT = 10
CLOSE_TIMEOUT = 5.0  # seconds a Socket Mode link may take to stop its threads


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if str(key).lower() == name.lower():
            return str(value[0] if isinstance(value, list) else value)
    return None


@dataclass(frozen=True)
class AuthInfo:
    """Who a token is (auth.test): `user` is the bot's name, `user_id` its Slack user."""

    team_id: str
    user: str
    user_id: str
    bot_id: str | None
    scopes: frozenset[str]

    def sent(self, message: Mapping[str, Any]) -> bool:
        """Whether a message (as conversations.history shows it) was posted with this token. Slack
        sets its `bot_id` and `user` itself, where anyone may copy the rest, metadata included."""
        if self.bot_id is not None and message.get("bot_id") != self.bot_id:
            return False
        return bool(self.user_id) and message.get("user") == self.user_id


class SlackApi:
    """Async calls of the sync WebClient (run in worker threads); failures become SlackFailure."""

    def __init__(self, token: str, base_url: str, *, timeout: int = TIMEOUT) -> None:
        from slack_sdk import WebClient

        # No retry handlers: the gate's outbox retries with its own backoff and honours Retry-After.
        self._client = WebClient(
            token=token, base_url=base_url, timeout=timeout, logger=sdk_log, retry_handlers=[]
        )
        self.base_url = base_url

    def __repr__(self) -> str:
        return f"SlackApi({self.base_url!r})"

    async def call(self, method: str, **params: Any) -> tuple[dict[str, Any], Mapping[str, Any]]:
        """(response data, response headers) of one Web API method."""
        return await anyio.to_thread.run_sync(self._call, method, params)

    def _call(self, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], Mapping[str, Any]]:
        from slack_sdk.errors import SlackApiError, SlackClientError

        as_json = method.startswith(("chat.", "views."))
        try:
            if as_json:
                response = self._client.api_call(method, json=params)
            else:
                response = self._client.api_call(method, params=params)
        except SlackApiError as exc:
            resp = exc.response
            data = resp.data if isinstance(resp.data, dict) else {}
            retry = _header(resp.headers, "Retry-After")
            raise SlackFailure(
                method,
                str(data.get("error") or "unexpected response"),
                status=resp.status_code,
                retry_after=float(retry) if retry and retry.isdigit() else None,
            ) from exc
        except SlackClientError as exc:
            raise SlackFailure(method, type(exc).__name__) from exc
        except (URLError, ValueError) as exc:  # not sent (unreachable, refused), or an answer not JSON
            raise SlackFailure(method, f"unreachable ({type(exc).__name__}: {_reason(exc)})") from exc
        except (OSError, HTTPException) as exc:
            # Sent, and no answer read (timed out, connection lost): Slack may have done it.
            raise SlackFailure(
                method, f"no answer ({type(exc).__name__}: {_reason(exc)})", unanswered=True
            ) from exc
        data = response.data if isinstance(response.data, dict) else {}
        return data, dict(response.headers or {})

    async def auth_test(self) -> AuthInfo:
        data, headers = await self.call("auth.test")
        scopes = _header(headers, "x-oauth-scopes") or ""
        return AuthInfo(
            team_id=str(data.get("team_id") or ""),
            user=str(data.get("user") or ""),
            user_id=str(data.get("user_id") or ""),
            bot_id=data.get("bot_id"),
            scopes=frozenset(s.strip() for s in scopes.split(",") if s.strip()),
        )

    async def post_message(self, channel: str, message: Mapping[str, Any]) -> tuple[str, str]:
        data, _ = await self.call("chat.postMessage", channel=channel, **message)
        return str(data.get("channel") or channel), str(data["ts"])

    async def history(
        self, channel: str, *, oldest: str, limit: int, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a channel's messages since `oldest` (newest first, with their metadata), and
        the cursor of the next page (None on the last one)."""
        params: dict[str, Any] = {
            "channel": channel,
            "oldest": oldest,
            "inclusive": "true",
            "limit": limit,
            "include_all_metadata": "true",
        }
        if cursor:
            params["cursor"] = cursor
        data, _ = await self.call("conversations.history", **params)
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise SlackFailure("conversations.history", "no messages in the answer")
        meta = data.get("response_metadata")
        following = meta.get("next_cursor") if isinstance(meta, dict) else None
        if not data.get("has_more"):
            return [m for m in messages if isinstance(m, dict)], None
        if not isinstance(following, str) or not following:
            raise SlackFailure("conversations.history", "more messages but no cursor in the answer")
        return [m for m in messages if isinstance(m, dict)], following

    async def update(self, channel: str, ts: str, message: Mapping[str, Any]) -> None:
        await self.call("chat.update", channel=channel, ts=ts, **message)

    async def post_ephemeral(self, channel: str, user: str, text: str) -> None:
        await self.call("chat.postEphemeral", channel=channel, user=user, text=text)

    async def user_info(self, user: str) -> dict[str, Any]:
        data, _ = await self.call("users.info", user=user)
        found = data.get("user")
        if not isinstance(found, dict):
            raise SlackFailure("users.info", "no user in the answer")
        return found

    async def open_view(self, trigger_id: str, view: Mapping[str, Any]) -> None:
        await self.call("views.open", trigger_id=trigger_id, view=dict(view))


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return " ".join(str(reason or exc).split())[:200]


Deliver = Callable[[str, dict[str, Any]], None]


class SocketModeLink:
    """A Socket Mode connection (slack_sdk's threaded builtin client): every envelope is acknowledged
    first, in the client's thread, then handed to `deliver(envelope_id, payload)`."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._closed = threading.Event()

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected())

    def close(self) -> None:
        """End the connection and every thread of the client, within CLOSE_TIMEOUT seconds.

        Not slack_sdk's own close(): its session runner sets `terminated = False` just after
        checking that the session is active, so a close landing in between leaves the runner
        looping forever and close() joining it forever. Here termination is asserted until the
        runner has stopped, and no join waits without a bound."""
        if self._closed.is_set():
            return
        self._closed.set()
        client = self._client
        client.closed = True
        client.auto_reconnect_enabled = False
        client.current_session_state.terminated = True
        client.disconnect()
        runners = [client.current_session_runner, client.current_app_monitor, client.message_processor]
        for runner in runners:
            runner.event.set()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for runner in runners:
            thread = runner.thread
            while thread is not None and thread.is_alive() and time.monotonic() < deadline:
                client.current_session_state.terminated = True  # again: the runner may have reset it
                thread.join(timeout=0.05)
            if thread is not None and thread.is_alive():
                sdk_log.warning("a Slack Socket Mode thread did not stop within %ss", CLOSE_TIMEOUT)
        client.message_workers.shutdown(wait=False, cancel_futures=True)


RECEIVE_CHUNK = 64 * 1024  # bytes a Socket Mode recv() reads at once


def connect_socket_mode(app_token: str, bot_token: str, base_url: str, deliver: Deliver) -> SocketModeLink:
    """Blocking: open a Socket Mode connection (call it in a worker thread). SlackFailure if it fails."""
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError, SlackClientError
    from slack_sdk.socket_mode import SocketModeClient
    from slack_sdk.socket_mode.request import SocketModeRequest
    from slack_sdk.socket_mode.response import SocketModeResponse

    web = WebClient(token=bot_token, base_url=base_url, timeout=TIMEOUT, logger=sdk_log, retry_handlers=[])
    # The SDK's frame reader recurses once per recv() chunk: with its 1 KiB default, one frame of
    # about 1 MB exhausts the recursion limit and leaves the session dead. 64 KiB chunks take
    # frames of tens of MB, far past anything Slack sends.
    client = SocketModeClient(
        app_token=app_token,
        web_client=web,
        logger=sdk_log,
        concurrency=4,
        receive_buffer_size=RECEIVE_CHUNK,
    )

    def on_request(sm: Any, request: SocketModeRequest) -> None:
        # Ack first: Slack wants it within 3 seconds, and recording the decision may take longer.
        sm.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        if request.type == "interactive" and isinstance(request.payload, dict):
            deliver(request.envelope_id, request.payload)

    client.socket_mode_request_listeners.append(on_request)
    try:
        client.connect()
    except SlackApiError as exc:
        SocketModeLink(client).close()
        data = exc.response.data if isinstance(exc.response.data, dict) else {}
        raise SlackFailure("apps.connections.open", str(data.get("error") or "failed")) from exc
    except (SlackClientError, OSError, ValueError) as exc:
        SocketModeLink(client).close()
        raise SlackFailure("apps.connections.open", f"cannot connect ({type(exc).__name__})") from exc
    return SocketModeLink(client)
