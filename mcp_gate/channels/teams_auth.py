"""The Bot Connector's JWT on every inbound Teams request: keys from OpenID metadata, every claim checked."""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import jwt

from mcp_gate.config import TeamsSettings

__all__ = ["LEEWAY", "BotFrameworkVerifier", "Unverified", "Verified"]

log = logging.getLogger("mcp_gate.teams")

LEEWAY = 300  # seconds of clock skew on exp/nbf/iat, as the Bot Framework's own validators allow
MAX_TOKEN_CHARS = 8192
KEYS_FOR = 24 * 3600.0  # seconds a fetched key set is used before it is fetched again
REFETCH_EVERY = 60.0  # an unknown kid fetches the keys again, at most this often
FETCH_TIMEOUT = 10.0
MAX_DOCUMENT_BYTES = 256 * 1024
_BEARER = re.compile(r"Bearer ([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)")


class Unverified(Exception):
    """The request's token is not the Bot Connector's for this bot. `why` is for the gate's own log;
    the caller answers a bare 401."""

    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(why)


@dataclass(frozen=True)
class Verified:
    """A token that passed every check: its claims, and the channel its key is endorsed for."""

    claims: Mapping[str, Any]


@dataclass(frozen=True)
class _Key:
    key: Any
    endorsements: frozenset[str] | None  # None: the key set names none


def _normal_url(url: str) -> str:
    return url.rstrip("/")


class BotFrameworkVerifier:
    """Checks `Authorization: Bearer <jwt>` the way the Bot Framework says: RS256 only; a key from
    the OpenID metadata's key set (fetched again on an unknown `kid`); issuer and audience exact;
    exp/nbf with LEEWAY; the `serviceurl` claim equal to the activity's `serviceUrl`; and, where the
    key set gives endorsements, the activity's channel among them."""

    def __init__(
        self,
        settings: TeamsSettings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self.audiences = [settings.app_id, f"api://{settings.app_id}", f"api://botid-{settings.app_id}"]
        self._keys: dict[str, _Key] = {}
        self._fetched_at: float | None = None
        self._lock = anyio.Lock()

    async def verify(self, authorization: str, activity: Mapping[str, Any]) -> Verified:
        """The token's claims, or Unverified. `activity` is the parsed body (a JSON object)."""
        found = _BEARER.fullmatch(authorization.strip()) if len(authorization) <= MAX_TOKEN_CHARS else None
        if found is None:
            raise Unverified("no bearer token, or not a JWT")
        token = found.group(1)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unverified(f"unreadable token header ({type(exc).__name__})") from exc
        if header.get("alg") != "RS256":
            raise Unverified(f"algorithm {str(header.get('alg'))[:20]!r} is not RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 200:
            raise Unverified("no key id in the token")
        key = await self._key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self.audiences,
                issuer=self.settings.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud"], "verify_iat": True},
            )
        except jwt.PyJWTError as exc:
            raise Unverified(f"token refused: {type(exc).__name__}") from exc
        now = self.clock()
        nbf = claims.get("nbf")
        if nbf is not None and not isinstance(nbf, (int, float)):
            raise Unverified("nbf is not a number")
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] + LEEWAY < now:
            raise Unverified("the token has expired")  # PyJWT's own check too, on its own clock
        service_url = activity.get("serviceUrl")
        claimed = claims.get("serviceurl")
        if (
            not isinstance(service_url, str)
            or not isinstance(claimed, str)
            or _normal_url(service_url) != _normal_url(claimed)
        ):
            raise Unverified("the token's serviceurl is not the activity's serviceUrl")
        channel = activity.get("channelId")
        if key.endorsements is not None and channel not in key.endorsements:
            raise Unverified(f"the signing key is not endorsed for channel {str(channel)[:40]!r}")
        return Verified(claims)

    async def _key(self, kid: str) -> _Key:
        async with self._lock:
            stale = self._fetched_at is None or self.monotonic() - self._fetched_at > KEYS_FOR
            if kid not in self._keys and not stale:
                # An unknown kid: the keys may have rolled over; look again, but not on every request.
                stale = self.monotonic() - (self._fetched_at or 0.0) > REFETCH_EVERY
            if stale:
                try:
                    await self._fetch()
                except Unverified as exc:
                    log.warning("Teams: cannot read the Bot Framework signing keys: %s", exc.why)
                    if not self._keys:
                        raise
            found = self._keys.get(kid)
        if found is None:
            raise Unverified("the token's key id is not in the Bot Framework key set")
        return found

    async def load_keys(self) -> int:
        """Fetch the signing keys now (for `mcp-gate teams test`); how many there are, or Unverified."""
        async with self._lock:
            await self._fetch()
            return len(self._keys)

    async def _fetch(self) -> None:
        self._fetched_at = self.monotonic()
        async with httpx2.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as client:
            metadata = await _get_json(client, self.settings.openid_metadata)
            uri = metadata.get("jwks_uri")
            if not isinstance(uri, str) or not _usable_keys_url(uri):
                raise Unverified("the OpenID metadata names no usable jwks_uri")
            document = await _get_json(client, uri)
        keys: dict[str, _Key] = {}
        entries = document.get("keys")
        for entry in entries if isinstance(entries, list) else []:
            if (
                not isinstance(entry, dict)
                or entry.get("kty") != "RSA"
                or not isinstance(entry.get("kid"), str)
            ):
                continue
            if entry.get("use") not in (None, "sig"):
                continue
            try:
                key = jwt.PyJWK(
                    {k: v for k, v in entry.items() if k in ("kty", "kid", "n", "e", "use")}, "RS256"
                ).key
            except jwt.PyJWTError:
                continue
            endorsed = entry.get("endorsements")
            endorsements = (
                frozenset(e for e in endorsed if isinstance(e, str)) if isinstance(endorsed, list) else None
            )
            keys[entry["kid"]] = _Key(key, endorsements)
        if not keys:
            raise Unverified("the key set holds no RSA signing key")
        self._keys = keys


async def _get_json(client: httpx2.AsyncClient, url: str) -> dict[str, Any]:
    try:
        response = await client.get(url)
    except httpx2.HTTPError as exc:
        raise Unverified(f"cannot fetch {url}: {type(exc).__name__}") from exc
    if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
        raise Unverified(f"{url} answered HTTP {response.status_code}")
    try:
        found = json.loads(response.content)
    except ValueError as exc:
        raise Unverified(f"{url} is not JSON") from exc
    if not isinstance(found, dict):
        raise Unverified(f"{url} is not a JSON object")
    return found


def _usable_keys_url(uri: str) -> bool:
    """https anywhere, plain http only to this machine (the local fake): by the parsed host, so
    `http://127.0.0.1.example.com` is not taken for a loopback address."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return False
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
