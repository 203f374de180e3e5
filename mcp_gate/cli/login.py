"""`mcp-gate login` and `logout`: an approver signs in at the identity provider with the device
authorization grant (RFC 8628); the tokens are kept in their config dir (0600) and refreshed there."""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING, Any

from mcp_gate.cli._common import EXIT_OK, add_config, load_config_from_args, progress, say, subcommand
from mcp_gate.errors import GateError

if TYPE_CHECKING:  # the config, the HTTP client and the verifier load with the command, not the CLI
    import httpx2

    from mcp_gate.config import GateConfig, IdentitySettings

__all__ = ["add_commands", "stored_access_token"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_BEFORE = 30  # seconds: a token this close to its end is refreshed before use
TIMEOUT = 30.0


def _identity(config: GateConfig) -> tuple[IdentitySettings, str]:
    identity = config.identity
    if identity is None:
        raise GateError(f"{config.path}: login needs an [identity] section naming the identity provider")
    if identity.cli_client_id is None:
        raise GateError(
            f"{config.path}: identity.cli_client_id: name the public client `mcp-gate login` signs in with"
        )
    return identity, identity.cli_client_id


def _scopes(identity: IdentitySettings) -> str:
    wanted = [
        "openid",
        "email",
        "profile",
        "offline_access",
        *identity.scopes_supported(),
        *identity.cli_scopes,
    ]
    return " ".join(dict.fromkeys(wanted))


def _endpoints(http: httpx2.Client, identity: IdentitySettings) -> dict[str, Any]:
    import httpx2

    try:
        document: dict[str, Any] = http.get(identity.discovery).json()
    except (httpx2.HTTPError, ValueError) as exc:
        raise GateError(
            f"cannot read the identity provider's discovery document {identity.discovery}: {exc}"
        ) from exc
    if document.get("issuer") != identity.issuer:
        raise GateError(
            f"{identity.discovery} names issuer {str(document.get('issuer'))[:200]!r}, "
            f"not {identity.issuer!r}"
        )
    return document


def _post(http: httpx2.Client, url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    import httpx2

    try:
        response = http.post(url, data=form, headers={"accept": "application/json"})
        body = response.json()
    except (httpx2.HTTPError, ValueError) as exc:
        raise GateError(f"the identity provider at {url} failed: {exc}") from exc
    return response.status_code, body if isinstance(body, dict) else {}


def _check(identity: IdentitySettings, tokens: dict[str, Any]) -> dict[str, Any]:
    """The access token as the gate will check it, so a login the gate would refuse fails here."""
    import anyio

    from mcp_gate.idp import TokenRefused, TokenVerifier

    access = tokens.get("access_token")
    if not isinstance(access, str):
        raise GateError("the identity provider answered without an access token")
    try:
        verified = anyio.run(TokenVerifier(identity).check, access)
    except TokenRefused as refused:
        raise GateError(
            f"the identity provider's token would be refused by the gate: {refused.why}"
        ) from refused
    claims = verified.claims
    return {
        "issuer": identity.issuer,
        "access_token": access,
        "refresh_token": tokens.get("refresh_token"),
        "expires_at": verified.expires_at,
        "sub": verified.subject,
        "email": claims.get(identity.email_claim),
        "name": claims.get(identity.name_claim),
    }


def cmd_login(args: argparse.Namespace) -> int:
    import httpx2

    from mcp_gate.config import user_token_path, write_user_token

    config = load_config_from_args(args)
    identity, client_id = _identity(config)
    with httpx2.Client(timeout=TIMEOUT, follow_redirects=False) as http:
        endpoints = _endpoints(http, identity)
        device_url, token_url = (
            endpoints.get("device_authorization_endpoint"),
            endpoints.get("token_endpoint"),
        )
        if not isinstance(device_url, str) or not isinstance(token_url, str):
            raise GateError(f"the identity provider {identity.issuer} offers no device authorization grant")
        form = {"client_id": client_id, "scope": _scopes(identity), "resource": identity.audience}
        status, started = _post(http, device_url, form)
        if status != 200 or not isinstance(started.get("device_code"), str):
            raise GateError(
                f"the identity provider refused to start a device login: {started.get('error', status)}"
            )
        shown = started.get("verification_uri_complete") or started.get("verification_uri")
        progress(f"To sign in, open {shown} and enter the code {started.get('user_code')}")
        interval = float(started.get("interval") or 5)
        deadline = time.monotonic() + float(started.get("expires_in") or 600)
        poll = {
            "grant_type": DEVICE_GRANT,
            "device_code": started["device_code"],
            "client_id": client_id,
            "resource": identity.audience,
        }
        while True:
            if time.monotonic() > deadline:
                raise GateError("the login code expired before it was entered; run `mcp-gate login` again")
            time.sleep(interval)
            status, answer = _post(http, token_url, poll)
            error = answer.get("error")
            if status == 200:
                break
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += 5
                continue
            raise GateError(
                f"the login did not complete: {answer.get('error_description') or error or status}"
            )
    stored = _check(identity, answer)
    path = user_token_path(os.environ)
    write_user_token(path, stored)
    who = stored["name"] or stored["email"] or stored["sub"]
    say(f"signed in as {who} (subject {stored['sub']} at {identity.issuer}); the token is kept in {path}")
    return EXIT_OK


def cmd_logout(args: argparse.Namespace) -> int:
    from mcp_gate.config import remove_user_token, user_token_path

    path = user_token_path(os.environ)
    say("signed out: the stored login is removed" if remove_user_token(path) else "not signed in")
    return EXIT_OK


def stored_access_token(config: GateConfig) -> str | None:
    """The stored login's access token for this gate's identity provider, refreshed first when it is
    about to end (and kept again); None when nobody has logged in here."""
    import httpx2

    from mcp_gate.config import read_user_token, user_token_path, write_user_token

    identity = config.identity
    path = user_token_path(os.environ)
    stored = read_user_token(path) if identity is not None else None
    if stored is None or identity is None or stored.get("issuer") != identity.issuer:
        return None
    expires_at = stored.get("expires_at")
    if isinstance(expires_at, int | float) and expires_at - REFRESH_BEFORE > time.time():
        token: str = stored["access_token"]
        return token
    refresh = stored.get("refresh_token")
    if not isinstance(refresh, str) or identity.cli_client_id is None:
        raise GateError("the stored login has expired; run `mcp-gate login` again")
    with httpx2.Client(timeout=TIMEOUT, follow_redirects=False) as http:
        token_url = _endpoints(http, identity).get("token_endpoint")
        if not isinstance(token_url, str):
            raise GateError(f"the identity provider {identity.issuer} names no token endpoint")
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": identity.cli_client_id,
            "resource": identity.audience,
        }
        status, answer = _post(http, token_url, form)
    if status != 200:
        raise GateError(
            f"the stored login could not be refreshed ({answer.get('error', status)}); "
            "run `mcp-gate login` again"
        )
    renewed = _check(identity, {**answer, "refresh_token": answer.get("refresh_token") or refresh})
    write_user_token(path, renewed)
    access: str = renewed["access_token"]
    return access


def add_commands(sub: Any) -> None:
    p = subcommand(
        sub,
        "login",
        "sign in at the identity provider (device grant) to approve with its token",
        "Sign in at the [identity] provider with the device authorization grant (RFC 8628): open the "
        "address shown, enter the code, and the token is kept in your config dir (0600), refreshed when "
        "it ends, and used by pending, show, approve and deny when neither MCP_GATE_TOKEN nor "
        "--token-file is given.",
    )
    add_config(p)
    p.set_defaults(func=cmd_login)
    p = subcommand(sub, "logout", "forget the stored login", "Remove the token `mcp-gate login` kept.")
    p.set_defaults(func=cmd_logout)
