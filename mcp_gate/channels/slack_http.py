"""Slack's HTTP interactivity endpoint: signature, freshness and replay checks, then a quick 200."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["MAX_AGE", "MAX_FUTURE", "build_interactions_app", "verify_signature"]

MAX_AGE = 300  # seconds: Slack's own rule for stale requests
MAX_FUTURE = 5  # seconds: clocks differ a little, never by minutes
MAX_BODY_BYTES = 256 * 1024
PATH = "/slack/interactions"

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, *, now: float) -> str | None:
    """None if the body carries a valid, fresh Slack signature; else why not (for the 401).

    Unlike slack_sdk's verifier this never raises on a malformed header and rejects future-dated
    timestamps; replays are caught by the caller, which remembers signatures it has seen."""
    timestamp = headers.get("x-slack-request-timestamp", "")
    signature = headers.get("x-slack-signature", "")
    if not _TIMESTAMP.fullmatch(timestamp):
        return "missing or malformed X-Slack-Request-Timestamp"
    if not _SIGNATURE.fullmatch(signature):
        return "missing or malformed X-Slack-Signature"
    age = now - int(timestamp)
    if age > MAX_AGE:
        return "the request is too old"
    if age < -MAX_FUTURE:
        return "the request is dated in the future"
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "the signature does not match"
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused if it names a key twice (two readers could take different values)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("duplicate key")
    return found


def parse_form_payload(body: bytes) -> dict[str, Any] | None:
    """The JSON object in a `payload=` form body, or None if the body is anything else."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=10)
        [raw] = form["payload"]
        payload = json.loads(raw, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, KeyError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


Accept = Callable[[str, dict[str, Any]], Awaitable[str | None]]


def build_interactions_app(
    secret: str, accept: Accept, clock: Callable[[], float], *, immediate: Callable[[dict[str, Any]], Any]
) -> Starlette:
    """POST /slack/interactions. `accept(key, payload)` remembers the delivery (None) or says why it
    is refused (a replay); the decision itself is made later, after the 200. `immediate(payload)`
    may give a response body Slack needs at once (a modal's validation errors)."""

    def refuse(why: str, status: int = 401) -> Response:
        return JSONResponse({"error": why}, status_code=status)

    async def interactions(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return refuse("the body is too large", 413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return refuse("the body is too large", 413)
        headers = {k.lower(): v for k, v in request.headers.items()}
        why = verify_signature(secret, headers, body, now=clock())
        if why is not None:
            return refuse(why)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        payload = parse_form_payload(body) if kind == "application/x-www-form-urlencoded" else None
        if payload is None:
            return refuse("the body is not a form with a JSON payload", 400)
        errors = immediate(payload)
        if errors is not None:
            return JSONResponse(errors)
        key = "sig:" + hashlib.sha256(headers["x-slack-signature"].encode()).hexdigest()
        why = await accept(key, payload)
        if why is not None:
            return refuse(why)
        return Response(status_code=200)

    async def not_found(request: Request) -> Response:
        return JSONResponse({"error": "not found"}, status_code=404)

    return Starlette(
        routes=[
            Route(PATH, interactions, methods=["POST"]),
            Route("/{rest:path}", not_found, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )
