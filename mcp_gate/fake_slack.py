"""A local fake of Slack for tests: the Web API methods the gate uses, Socket Mode, signed interactions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio

__all__ = ["ApiCall", "FakeSlack", "sign"]

SCOPES = ("chat:write", "users:read", "users:read.email", "channels:history", "groups:history")
MAX_HISTORY_LIMIT = 999


@dataclass(frozen=True)
class ApiCall:
    """One Web API request the fake received."""

    method: str
    params: Mapping[str, Any]
    token: str | None
    status: int


def _describe(predicate: Callable[[], Any]) -> str:
    """The source line of a lambda, to say in a timeout what a test was waiting for."""
    try:
        return " ".join(inspect.getsource(predicate).split())[:200]
    except (OSError, TypeError):
        return repr(predicate)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Slack-Signature Slack sends: v0= HMAC-SHA256 over `v0:timestamp:body`."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass
class _Failure:
    status: int
    times: int | None  # None: until restored
    retry_after: int | None = None
    error: str = "service_unavailable"


@dataclass
class FakeSlack:
    """Slack's Web API over HTTP (point `WebClient(base_url=fake.api_url)` at it) and Socket Mode over
    a local websocket. It checks bearer tokens and channels like Slack, records every call, and can be
    taken down, rate-limited or have its token revoked."""

    team_id: str = "T0TEAM"
    # Who the bot token is (auth.test), and what Slack stamps on every message it posts.
    bot_user_id: str = "U0GATEBOT"
    bot_id: str = "B0GATEBOT"
    app_id: str = "A0FAKE"
    bot_token: str = "xoxb-fake-bot-token"
    app_token: str = "xapp-fake-app-token"
    channels: set[str] = field(default_factory=lambda: {"C0APPROVE"})
    scopes: tuple[str, ...] = SCOPES
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[ApiCall] = field(default_factory=list)
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)
    ephemerals: list[dict[str, Any]] = field(default_factory=list)
    views: list[dict[str, Any]] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    revoked: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._ts = itertools.count(1)
        self._last_ts = 0.0
        self._http: ThreadingHTTPServer | None = None
        self._ws: Any = None
        self._sockets: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._gates: dict[str, threading.Event] = {}
        self._drops: dict[str, int] = {}

    # -- running -------------------------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[FakeSlack]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's spelling)
                fake._serve(self)

            def do_POST(self) -> None:  # noqa: N802
                fake._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._spawn(self._http.serve_forever)
        from websockets.sync.server import serve

        self._ws = serve(self._socket_session, "127.0.0.1", 0)
        self._spawn(self._ws.serve_forever)

    def stop(self) -> None:
        for ws in list(self._sockets):
            ws.close()
        if self._ws is not None:
            self._ws.shutdown()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def api_url(self) -> str:
        assert self._http is not None
        return f"http://127.0.0.1:{self._http.server_address[1]}/api/"

    @property
    def socket_url(self) -> str:
        assert self._ws is not None
        return f"ws://127.0.0.1:{self._ws.socket.getsockname()[1]}/link/?ticket=fake-ticket"

    # -- behaviour switches ------------------------------------------------------------------------

    def add_user(
        self,
        user_id: str,
        email: str | None,
        *,
        team_id: str | None = None,
        is_bot: bool = False,
        deleted: bool = False,
    ) -> None:
        profile = {"email": email} if email is not None else {}
        self.users[user_id] = {
            "id": user_id,
            "team_id": team_id or self.team_id,
            "name": user_id.lower(),
            "deleted": deleted,
            "is_bot": is_bot,
            "is_app_user": False,
            "profile": profile,
        }

    def fail(self, status: int = 503, *, times: int | None = None, retry_after: int | None = None) -> None:
        """Answer the next `times` requests (every one, if None, until `restore`) with `status`."""
        error = "ratelimited" if status == 429 else "service_unavailable"
        with self._lock:
            self._failures.append(_Failure(status, times, retry_after, error))

    def block(self, method: str) -> threading.Event:
        """Hold every call of `method` until the returned event is set (a slow Slack)."""
        gate = threading.Event()
        with self._lock:
            self._gates[method] = gate
        return gate

    def drop_answer(self, method: str, *, times: int = 1) -> None:
        """Carry out the next `times` calls of `method` (a post is shown), then hang up without an
        answer: the caller cannot know whether Slack took it (a timeout, a connection lost)."""
        with self._lock:
            self._drops[method] = self._drops.get(method, 0) + times

    def restore(self) -> None:
        with self._lock:
            self._failures.clear()

    def calls_to(self, method: str, *, ok_only: bool = True) -> list[ApiCall]:
        with self._lock:
            return [c for c in self.calls if c.method == method and (c.status == 200 or not ok_only)]

    def message_for(self, request_id: str) -> tuple[str, str, dict[str, Any]] | None:
        """(channel, ts, message) of the posted message about a request, as last updated."""
        with self._lock:
            for (channel, ts), message in self.messages.items():
                if any(str(b.get("block_id", "")).endswith(f":{request_id}") for b in message["blocks"]):
                    return channel, ts, message
        return None

    async def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 20.0, *, what: str | None = None
    ) -> Any:
        """Poll `predicate` until it returns something truthy (the fake lives in other threads);
        AssertionError naming what was awaited (`what`, or the predicate's source) after `timeout`."""
        label = what or _describe(predicate)
        try:
            with anyio.fail_after(timeout):
                # the fake's state changes in its server threads, which cannot set an anyio.Event
                while not (result := predicate()):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {label}") from None
        return result

    # -- the Web API -----------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        method = url.path.removeprefix("/api/")
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if "json" in (handler.headers.get("Content-Type") or ""):
            params |= json.loads(raw or b"{}")
        elif raw:
            params |= {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        auth = handler.headers.get("Authorization") or ""
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else params.get("token")
        with self._lock:
            gate = self._gates.get(method)
        if gate is not None:
            gate.wait(timeout=30)
        status, headers, body = self._answer(method, params, token)
        with self._lock:
            dropped = self._drops.get(method, 0) > 0
            if dropped:
                self._drops[method] -= 1
            self.calls.append(ApiCall(method, params, token, 0 if dropped else status))
        if dropped:
            handler.close_connection = True  # done, and the connection closes with no answer
            return
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(
        self, method: str, params: dict[str, Any], token: str | None
    ) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            if self._failures:
                failure = self._failures[0]
                if failure.times is not None:
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.pop(0)
                headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
                return failure.status, headers, {"ok": False, "error": failure.error}
        if method == "apps.connections.open":
            if token != self.app_token:
                return 200, {}, {"ok": False, "error": "invalid_auth"}
            return 200, {}, {"ok": True, "url": self.socket_url}
        if token != self.bot_token:
            return 200, {}, {"ok": False, "error": "invalid_auth" if token else "not_authed"}
        if self.revoked:
            return 200, {}, {"ok": False, "error": "token_revoked"}
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {}, {"ok": False, "error": "unknown_method"}
        result: tuple[int, dict[str, str], Any] = handler(params)
        return result

    def _auth_test(self, params: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        body = {
            "ok": True,
            "url": "https://fake.slack.com/",
            "team": "Fake Team",
            "user": "mcp-gate",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }
        return 200, {"x-oauth-scopes": ",".join(self.scopes)}, body

    def _channel_error(self, channel: Any) -> tuple[int, dict[str, str], Any] | None:
        if channel not in self.channels:
            return 200, {}, {"ok": False, "error": "channel_not_found"}
        if "chat:write" not in self.scopes:
            return 200, {}, {"ok": False, "error": "missing_scope", "needed": "chat:write"}
        return None

    def _chat_postMessage(self, params: dict[str, Any]) -> tuple[int, dict[str, str], Any]:  # noqa: N802
        channel = params.get("channel")
        error = self._channel_error(channel)
        if error is not None:
            return error
        message: dict[str, Any] = {
            "text": params.get("text"),
            "blocks": _blocks(params.get("blocks")),
            **self._bot_stamp(),
        }
        if params.get("metadata") is not None:
            metadata = _metadata(params.get("metadata"))
            if metadata is None:
                return 200, {}, {"ok": False, "error": "invalid_metadata_format"}
            message["metadata"] = metadata
        with self._lock:
            ts = self._new_ts()
            self.messages[(str(channel), ts)] = message
        return 200, {}, {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _bot_stamp(self) -> dict[str, str]:
        """What Slack sets on a message the bot token posts: the sender, which no one can choose."""
        return {"user": self.bot_user_id, "bot_id": self.bot_id, "app_id": self.app_id}

    def _new_ts(self) -> str:
        """A message ts as Slack makes them: the epoch time in microseconds, unique in the channel."""
        self._last_ts = max(time.time(), self._last_ts + 0.000001)
        return f"{self._last_ts:.6f}"

    def _new_ts_locked(self) -> str:
        with self._lock:
            return self._new_ts()

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        user: str = "U0SOMEONE",
        bot_id: str | None = None,
        app_id: str | None = None,
    ) -> str:
        """A message someone else posted, its ts: a person (`user`), or another app's bot (`user` its
        bot user, with `bot_id` and `app_id`). Metadata is anyone's to set, even a copy of the gate's."""
        message: dict[str, Any] = {"text": text, "blocks": [], "user": user}
        if bot_id is not None:
            message |= {"bot_id": bot_id, "app_id": app_id or "A0OTHER"}
        if metadata is not None:
            message["metadata"] = dict(metadata)
        with self._lock:
            ts = self._new_ts()
            self.messages[(channel, ts)] = message
        return ts

    def _conversations_history(self, params: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        """Newest first, between `oldest` and `latest`, `limit` a page, paged by an opaque cursor."""
        channel = str(params.get("channel"))
        if channel not in self.channels:
            return 200, {}, {"ok": False, "error": "channel_not_found"}
        needed = "groups:history" if channel.startswith("G") else "channels:history"
        if needed not in self.scopes:
            return 200, {}, {"ok": False, "error": "missing_scope", "needed": needed}
        try:
            limit = min(int(params.get("limit") or 100), MAX_HISTORY_LIMIT)
            oldest = float(params.get("oldest") or 0)
            latest = float(params.get("latest") or time.time() + 1)
            start = (
                float(base64.b64decode(params["cursor"]).decode().removeprefix("next_ts:"))
                if params.get("cursor")
                else None
            )
        except (ValueError, TypeError):
            return 200, {}, {"ok": False, "error": "invalid_arguments"}
        inclusive = _truthy(params.get("inclusive"))
        with self._lock:
            found = sorted(
                (
                    (float(ts), ts, message)
                    for (where, ts), message in self.messages.items()
                    if where == channel
                    and (oldest <= float(ts) if inclusive else oldest < float(ts))
                    and (float(ts) <= latest if inclusive else float(ts) < latest)
                    and (start is None or float(ts) <= start)
                ),
                reverse=True,
            )
        page = [
            self._history_entry(ts, m, _truthy(params.get("include_all_metadata")))
            for _, ts, m in found[:limit]
        ]
        body: dict[str, Any] = {"ok": True, "messages": page, "has_more": len(found) > limit, "pin_count": 0}
        if len(found) > limit:
            cursor = base64.b64encode(f"next_ts:{found[limit][1]}".encode()).decode()
            body["response_metadata"] = {"next_cursor": cursor}
        return 200, {}, body

    def _history_entry(self, ts: str, message: Mapping[str, Any], with_metadata: bool) -> dict[str, Any]:
        """A message as conversations.history shows it: its sender as Slack recorded it (`user`; and
        `bot_id`, `app_id` for an app's post), its metadata only when asked for."""
        entry: dict[str, Any] = {
            "type": "message",
            "ts": ts,
            "text": message.get("text"),
            "team": self.team_id,
        }
        entry |= {k: message[k] for k in ("user", "bot_id", "app_id") if k in message}
        if "bot_id" in message:
            entry["bot_profile"] = {
                "id": message["bot_id"],
                "app_id": message.get("app_id"),
                "name": "mcp-gate" if message["bot_id"] == self.bot_id else "other app",
                "deleted": False,
                "team_id": self.team_id,
            }
        if message.get("blocks"):
            entry["blocks"] = message["blocks"]
        if with_metadata and "metadata" in message:
            entry["metadata"] = message["metadata"]
        return entry

    def _chat_update(self, params: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        channel, ts = str(params.get("channel")), str(params.get("ts"))
        with self._lock:
            if (channel, ts) not in self.messages:
                return 200, {}, {"ok": False, "error": "message_not_found"}
            before = self.messages[(channel, ts)]
            if before.get("bot_id") != self.bot_id:  # only the bot that posted a message may edit it
                return 200, {}, {"ok": False, "error": "cant_update_message"}
            message = {"text": params.get("text"), "blocks": _blocks(params.get("blocks"))}
            # Slack keeps the sender, and the metadata unless the update replaces it.
            message |= {k: before[k] for k in ("user", "bot_id", "app_id", "metadata") if k in before}
            self.messages[(channel, ts)] = message
            self.updates.append({"channel": channel, "ts": ts, **message})
        return 200, {}, {"ok": True, "channel": channel, "ts": ts}

    def _chat_postEphemeral(self, params: dict[str, Any]) -> tuple[int, dict[str, str], Any]:  # noqa: N802
        error = self._channel_error(params.get("channel"))
        if error is not None:
            return error
        with self._lock:
            self.ephemerals.append(dict(params))
        return 200, {}, {"ok": True, "message_ts": self._new_ts_locked()}

    def _users_info(self, params: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        user = self.users.get(str(params.get("user")))
        if user is None:
            return 200, {}, {"ok": False, "error": "user_not_found"}
        if "users:read.email" not in self.scopes:
            user = {**user, "profile": {k: v for k, v in user["profile"].items() if k != "email"}}
        return 200, {}, {"ok": True, "user": user}

    def _views_open(self, params: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        view = params.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        with self._lock:
            self.views.append({"trigger_id": params.get("trigger_id"), "view": view})
        return 200, {}, {"ok": True, "view": {"id": "V0FAKE", **(view or {})}}

    # -- Socket Mode ------------------------------------------------------------------------------

    def _socket_session(self, ws: Any) -> None:
        if not str(ws.request.path).startswith("/link"):
            ws.close()
            return
        with self._lock:
            self._sockets.append(ws)
        try:
            ws.send(
                json.dumps(
                    {"type": "hello", "num_connections": 1, "connection_info": {"app_id": self.app_id}}
                )
            )
            for message in ws:
                data = json.loads(message)
                if isinstance(data, dict) and "envelope_id" in data:
                    with self._lock:
                        self.acks.append(data)
        except Exception:  # noqa: BLE001 (a client hanging up ends its session, nothing more)
            pass
        finally:
            with self._lock:
                if ws in self._sockets:
                    self._sockets.remove(ws)

    @property
    def connected(self) -> int:
        with self._lock:
            return len(self._sockets)

    def send_envelope(
        self,
        payload: Mapping[str, Any],
        *,
        kind: str = "interactive",
        envelope_id: str | None = None,
        retry: int = 0,
    ) -> str:
        """Deliver one Socket Mode envelope to every connected client; return its id."""
        envelope_id = envelope_id or f"env-{next(self._ts)}"
        frame = json.dumps(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": dict(payload),
                "accepts_response_payload": kind == "interactive",
                "retry_attempt": retry,
                "retry_reason": "timeout" if retry else "",
            }
        )
        self.send_frame(frame)
        return envelope_id

    def send_frame(self, frame: str | bytes) -> None:
        """Send one raw WebSocket message to every connected client: a hostile Slack, for tests."""
        with self._lock:
            sockets = list(self._sockets)
        assert sockets, "no Socket Mode client is connected"
        for ws in sockets:
            ws.send(frame)

    def acked(self, envelope_id: str) -> bool:
        with self._lock:
            return any(a.get("envelope_id") == envelope_id for a in self.acks)

    # -- interaction payloads, built as Slack builds them ----------------------------------------

    def block_actions(
        self, user_id: str, action_id: str, request_id: str, *, team_id: str | None = None
    ) -> dict[str, Any]:
        found = self.message_for(request_id)
        assert found is not None, f"no message about request {request_id} was posted"
        channel, ts, message = found
        team = team_id or self.users.get(user_id, {}).get("team_id") or self.team_id
        return {
            "type": "block_actions",
            "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": team},
            "api_app_id": self.app_id,
            "token": "legacy-verification-token",
            "team": {"id": team, "domain": "fake"},
            "trigger_id": f"trigger-{next(self._ts)}",
            "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            "channel": {"id": channel, "name": "approvals"},
            "message": {"ts": ts, **message},
            "response_url": "https://hooks.slack.invalid/actions/T0TEAM/1/x",
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": f"decision:{request_id}",
                    "value": request_id,
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }

    def view_submission(
        self, user_id: str, request_id: str, reason: str, *, team_id: str | None = None
    ) -> dict[str, Any]:
        team = team_id or self.users.get(user_id, {}).get("team_id") or self.team_id
        return {
            "type": "view_submission",
            "team": {"id": team, "domain": "fake"},
            "user": {"id": user_id, "username": user_id.lower(), "team_id": team},
            "api_app_id": self.app_id,
            "trigger_id": f"trigger-{next(self._ts)}",
            "view": {
                "id": "V0FAKE",
                "type": "modal",
                "callback_id": "mcp_gate.deny_reason",
                "private_metadata": request_id,
                "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}},
            },
        }

    @staticmethod
    def signed_form(
        payload: Mapping[str, Any], secret: str, *, timestamp: int | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """An interaction POST as Slack sends it: form body `payload=<json>` and its signature headers."""
        body = urlencode({"payload": json.dumps(dict(payload))}).encode()
        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sign(secret, ts, body),
        }
        return body, headers


def _metadata(value: Any) -> dict[str, Any] | None:
    """Message metadata as Slack takes it (an object, or its JSON in a form post); None if malformed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("event_type"), str)
        or not isinstance(value.get("event_payload"), dict)
    ):
        return None
    return value


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def _blocks(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        value = json.loads(value)
    return list(value or [])
