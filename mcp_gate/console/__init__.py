"""The approval console in the browser: a thin front over the approval engine, served at /console.

`app` holds the pages and posts, `sessions` the signed cookies, CSRF tokens and login methods,
`context` what a request's page shows and which buttons its viewer gets. Templates and static files
ship inside the package (`templates/`, `static/`); no build step.
"""

from __future__ import annotations

from mcp_gate.console.app import PREFIX, Console, build_console
from mcp_gate.console.sessions import LoginMethod, TokenLogin

__all__ = ["PREFIX", "Console", "LoginMethod", "TokenLogin", "build_console"]
