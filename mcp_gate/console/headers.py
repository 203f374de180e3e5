"""What every console response carries: the Content-Security-Policy (no inline script, no framing)
and its sibling headers; the audit report's page, served under a policy of its own."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import MutableMapping
from typing import Any

from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_gate.report import render_html

__all__ = ["CSP", "SecurityHeaders", "report_response"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    # no-referrer would make the browser send "Origin: null" with every form post
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Every console response carries the CSP (no inline script, no framing) and its siblings."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                # A page that sets its own policy (the report's) or caching keeps it.
                missing = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message = {**message, "headers": [*headers, *missing]}
            await send(message)

        await self.app(scope, receive, with_headers)


def report_response(report: dict[str, Any]) -> Response:
    """The evidence report's own page, without its script (sorting and filtering are extras), its
    style allowed by hash: the console's pages run no inline script."""
    page = render_html(report)
    page = re.sub(r"<script>.*?</script>", "", page, flags=re.S)
    styles = re.findall(r"<style>(.*?)</style>", page, flags=re.S)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in styles
    )
    style = hashes or "'none'"
    csp = (
        f"default-src 'none'; style-src {style}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return HTMLResponse(page, headers={"content-security-policy": csp})
