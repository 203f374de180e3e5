"""The identity provider's access tokens: discovery, the key set (cached, refreshed, rate-limited), claims.

`TokenVerifier.check` gives a `VerifiedToken` or raises `TokenRefused`, whose `code` and `why` name
the reason (for the gate's log and evidence; the token itself is never logged or stored). It also
serves the MCP SDK's `TokenVerifier` protocol (`verify_token`), so the SDK's auth machinery can use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import jwt
from mcp.server.auth.provider import AccessToken

from mcp_gate.config import IdentitySettings, introspection_secret
from mcp_gate.errors import ConfigError

__all__ = ["MAX_TOKEN_CHARS", "TokenRefused", "TokenVerifier", "VerifiedToken", "scopes_of"]

log = logging.getLogger("mcp_gate.idp")

MAX_TOKEN_CHARS = 16 * 1024
FETCH_TIMEOUT = 10.0
MAX_DOCUMENT_BYTES = 512 * 1024
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class TokenRefused(Exception):
    """A bearer token the gate does not accept. `code` is a short stable name (for metrics and
    evidence), `why` a sentence for the gate's log; neither holds the token."""

    def __init__(self, code: str, why: str) -> None:
        self.code = code
        self.why = why
        super().__init__(f"{code}: {why}")


@dataclass(frozen=True)
class VerifiedToken:
    """An access token that passed every check: who it names and what it allows."""

    issuer: str
    subject: str | None
    client_id: str
    scopes: frozenset[str]
    claims: Mapping[str, Any]
    jti_sha256: str | None
    expires_at: int

    def access_token(self, token: str, resource: str) -> AccessToken:
        """As the MCP SDK holds an authenticated token (its session binding compares iss and sub)."""
        return AccessToken(
            token=token,
            client_id=self.client_id,
            scopes=sorted(self.scopes),
            expires_at=self.expires_at,
            resource=resource,
            subject=self.subject,
            claims={"iss": self.issuer},
        )


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """RFC 9068's space-separated `scope`, or the `scp` list some providers (Entra ID, Okta) send."""
    found: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        found.update(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, str):
        found.update(scp.split())
    elif isinstance(scp, list):
        found.update(s for s in scp if isinstance(s, str))
    return frozenset(found)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class TokenVerifier:
    """Checks a JWT access token from `settings.issuer`: an allowed public-key algorithm (never
    `none`, never HS*); a key from the issuer's key set, found through its discovery document
    (which must name this issuer), fetched again every `refresh_seconds` and on an unknown `kid`
    at most every `refetch_every` seconds; `iss` exactly the issuer; `aud` containing the gate's
    resource URI (no `aud`, no entry); `exp` and `nbf` with `leeway`. While the key set cannot be
    fetched, keys already fetched are used until they are `max_key_age` old; then every token is
    refused (fail closed)."""

    def __init__(
        self,
        settings: IdentitySettings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        config_file: str = "gate.toml",
    ) -> None:
        self.settings = settings
        self.config_file = config_file  # named when the introspection secret cannot be read
        self.clock = clock
        self.monotonic = monotonic
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # the last fetch that gave keys
        self._tried_at: float | None = None  # the last attempt, for the rate limit
        self._jwks_uri: str | None = settings.jwks_uri
        self._lock = anyio.Lock()
        self.fetches = 0  # attempts to fetch the key set, for tests and `mcp-gate check`

    # -- the SDK's TokenVerifier protocol ---------------------------------------------------------

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            verified = await self.check(token)
        except TokenRefused as refused:
            log.warning("refused an access token: %s", refused.why)
            return None
        return verified.access_token(token, self.settings.audience)

    # -- checks ---------------------------------------------------------------------------------

    async def check(self, token: str) -> VerifiedToken:
        """The token's verified identity and scopes, or TokenRefused naming why."""
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenRefused("malformed", f"the token is longer than {MAX_TOKEN_CHARS} characters")
        if token.count(".") != 2:
            if self.settings.introspection_url is not None:
                return await self._introspect(token)
            # An opaque token, and no introspection endpoint to ask about it.
            raise TokenRefused("malformed", "the token is not a JWT (three dot-separated parts)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRefused("malformed", f"unreadable token header ({type(exc).__name__})") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            shown = str(alg)[:20]
            raise TokenRefused(
                "algorithm",
                f"algorithm {shown!r} is not allowed (allowed: {', '.join(self.settings.algorithms)})",
            )
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
            raise TokenRefused("malformed", "the token's key id is not a short string")
        key = await self._key(kid, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                # exp and nbf are checked below on the gate's clock, with the configured leeway.
                options={
                    "require": ["exp", "iss", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "strict_aud": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            code = "missing_audience" if exc.claim == "aud" else "missing_claim"
            raise TokenRefused(code, f"the token has no {exc.claim!r} claim") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRefused(
                "wrong_audience",
                f"the token is not for this gate: its aud does not contain {self.settings.audience}",
            ) from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRefused("wrong_issuer", f"the token's issuer is not {self.settings.issuer}") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenRefused("bad_signature", "the token's signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise TokenRefused("malformed", f"the token is not valid ({type(exc).__name__})") from exc
        return self._identity(claims)

    async def _introspect(self, token: str) -> VerifiedToken:
        """RFC 7662: ask the issuer about an opaque token, as the gate's own client there, and hold
        its answer to the same rules as a JWT's claims (active, issuer, audience, exp and nbf)."""
        assert self.settings.introspection_url is not None
        try:
            secret = introspection_secret(self.settings, self.config_file)
        except ConfigError as exc:
            raise TokenRefused("keys_unavailable", f"the introspection secret: {exc.problem}") from exc
        form = {"token": token, "token_type_hint": "access_token"}
        auth = (self.settings.introspection_client_id or "", secret or "")
        try:
            async with httpx2.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as client:
                response = await client.post(
                    self.settings.introspection_url,
                    data=form,
                    auth=auth,
                    headers={"accept": "application/json"},
                )
        except httpx2.HTTPError as exc:
            raise TokenRefused(
                "keys_unavailable", f"cannot reach the introspection endpoint: {type(exc).__name__}"
            ) from exc
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
            raise TokenRefused(
                "keys_unavailable", f"the introspection endpoint answered HTTP {response.status_code}"
            )
        try:
            claims = json.loads(response.content)
        except ValueError as exc:
            raise TokenRefused("keys_unavailable", "the introspection endpoint answered no JSON") from exc
        if not isinstance(claims, dict) or claims.get("active") is not True:
            raise TokenRefused("inactive", "the identity provider says the token is not active")
        issuer = claims.get("iss", self.settings.issuer)  # optional in RFC 7662: the endpoint is the issuer's
        if issuer != self.settings.issuer:
            raise TokenRefused("wrong_issuer", f"the token's issuer is not {self.settings.issuer}")
        audience = claims.get("aud")
        if audience is None:
            raise TokenRefused("missing_audience", "the token has no 'aud' claim")
        if self.settings.audience not in (audience if isinstance(audience, list) else [audience]):
            raise TokenRefused(
                "wrong_audience",
                f"the token is not for this gate: its aud does not contain {self.settings.audience}",
            )
        if "exp" not in claims:
            raise TokenRefused("missing_claim", "the token has no 'exp' claim")
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> VerifiedToken:
        now = self.clock()
        leeway = self.settings.leeway
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise TokenRefused("malformed", "exp is not a number")
        if exp + leeway <= now:
            raise TokenRefused("expired", f"the token expired {int(now - exp)} s ago")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not isinstance(nbf, int | float) or isinstance(nbf, bool):
                raise TokenRefused("malformed", "nbf is not a number")
            if nbf - leeway > now:
                raise TokenRefused("not_yet_valid", f"the token is not valid for another {int(nbf - now)} s")
        client_id = next(
            (claims[c] for c in self.settings.agent_claims if isinstance(claims.get(c), str) and claims[c]),
            None,
        )
        subject = claims.get("sub")
        if subject is not None and (not isinstance(subject, str) or not subject):
            raise TokenRefused("malformed", "sub is not a string")
        if client_id is None:
            raise TokenRefused(
                "no_client", f"the token names no client ({' or '.join(self.settings.agent_claims)})"
            )
        jti = claims.get("jti")
        return VerifiedToken(
            issuer=self.settings.issuer,
            subject=subject,
            client_id=client_id,
            scopes=scopes_of(claims),
            claims=claims,
            jti_sha256=_sha256(jti) if isinstance(jti, str) and jti else None,
            expires_at=int(exp),
        )

    # -- keys -----------------------------------------------------------------------------------

    async def _key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        async with self._lock:
            now = self.monotonic()
            age = None if self._fetched_at is None else now - self._fetched_at
            due = age is None or age > self.settings.refresh_seconds
            if not due and self._find(kid) is None:
                due = True  # the keys may have rolled over
            may_try = self._tried_at is None or now - self._tried_at >= self.settings.refetch_every
            if due and may_try:
                self._tried_at = now
                try:
                    await self._fetch()
                    self._fetched_at = self.monotonic()
                except TokenRefused as exc:
                    log.warning("identity provider: cannot fetch the signing keys: %s", exc.why)
            age = None if self._fetched_at is None else self.monotonic() - self._fetched_at
            if age is None or age > self.settings.max_key_age:
                self._keys = {}
                raise TokenRefused(
                    "keys_unavailable",
                    "the identity provider's signing keys cannot be fetched and none fetched within "
                    f"{self.settings.max_key_age:g} s are held",
                )
            found = self._find(kid)
        if found is None:
            raise TokenRefused("unknown_key", f"key id {str(kid)[:64]!r} is not in the issuer's key set")
        if found.algorithm_name != alg:
            raise TokenRefused("algorithm", f"key {str(kid)[:64]!r} is not a {alg} key")
        return found

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def load_keys(self) -> int:
        """Fetch the key set now (for `mcp-gate check`); how many keys, or TokenRefused."""
        async with self._lock:
            self._tried_at = self.monotonic()
            await self._fetch()
            self._fetched_at = self.monotonic()
            return len(self._keys)

    async def _fetch(self) -> None:
        self.fetches += 1
        async with httpx2.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as client:
            if self._jwks_uri is None:
                document = await _get_json(client, self.settings.discovery)
                named = document.get("issuer")
                if named != self.settings.issuer:
                    raise TokenRefused(
                        "discovery",
                        f"the discovery document names issuer {str(named)[:200]!r}, "
                        f"not {self.settings.issuer!r}",
                    )
                uri = document.get("jwks_uri")
                if not isinstance(uri, str) or not _usable_url(uri):
                    raise TokenRefused("discovery", "the discovery document names no usable jwks_uri")
                self._jwks_uri = uri
            key_set = await _get_json(client, self._jwks_uri)
        keys = _signing_keys(key_set, self.settings.algorithms)
        if not keys:
            raise TokenRefused("keys_unavailable", "the issuer's key set holds no usable signing key")
        self._keys = keys


def _signing_keys(document: Mapping[str, Any], algorithms: tuple[str, ...]) -> dict[str, jwt.PyJWK]:
    """The key set's public signing keys, each bound to one allowed algorithm: its own `alg`, or
    for a key that names none, the first allowed algorithm of its key type."""
    keys: dict[str, jwt.PyJWK] = {}
    entries = document.get("keys")
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict) or entry.get("use") not in (None, "sig"):
            continue
        if any(private in entry for private in ("d", "k")):
            continue  # a private or symmetric key has no business in a public key set
        kty = entry.get("kty")
        alg = entry.get("alg")
        if alg is None:
            alg = next((a for a in algorithms if _KEY_TYPES.get(a[:2]) == kty), None)
        if not isinstance(alg, str) or alg not in algorithms or _KEY_TYPES.get(alg[:2]) != kty:
            continue
        try:
            key = jwt.PyJWK(entry, alg)
        except jwt.PyJWTError:
            continue
        kid = entry.get("kid")
        keys[kid if isinstance(kid, str) and kid else f"#{index}"] = key
    return keys


async def _get_json(client: httpx2.AsyncClient, url: str) -> dict[str, Any]:
    try:
        response = await client.get(url, headers={"accept": "application/json"})
    except httpx2.HTTPError as exc:
        raise TokenRefused("keys_unavailable", f"cannot fetch {url}: {type(exc).__name__}") from exc
    if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
        raise TokenRefused("keys_unavailable", f"{url} answered HTTP {response.status_code}")
    try:
        found = json.loads(response.content)
    except ValueError as exc:
        raise TokenRefused("keys_unavailable", f"{url} is not JSON") from exc
    if not isinstance(found, dict):
        raise TokenRefused("keys_unavailable", f"{url} is not a JSON object")
    return found


def _usable_url(uri: str) -> bool:
    """https anywhere, plain http only to this machine (a local provider), by the parsed host."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return False
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
