"""A small local identity provider for tests: keys made with `cryptography`, a discovery document
and a key set served on 127.0.0.1 (port 0), and a minter for good and hostile access tokens."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "http://127.0.0.1:8765/mcp"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str = "k1") -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str = "e1") -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.algorithms.RSAAlgorithm if self.alg.startswith("RS") else jwt.algorithms.ECAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass
class LocalIdp:
    """Serves `/.well-known/openid-configuration` and `/jwks` on 127.0.0.1; `issuer` is its URL
    unless `named_issuer` says another. `down` makes both answer 503."""

    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.rsa()])
    named_issuer: str | None = None
    down: bool = False
    jwks_requests: int = 0
    _server: ThreadingHTTPServer | None = None

    @contextmanager
    def running(self) -> Iterator[LocalIdp]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def start(self) -> None:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's spelling)
                idp._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def issuer(self) -> str:
        return self.url

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        if self.down:
            body, status = b'{"error":"unavailable"}', 503
        elif handler.path == "/.well-known/openid-configuration":
            document = {"issuer": self.named_issuer or self.issuer, "jwks_uri": f"{self.url}/jwks"}
            body, status = json.dumps(document).encode(), 200
        elif handler.path == "/jwks":
            self.jwks_requests += 1
            body, status = json.dumps({"keys": [k.jwk() for k in self.keys]}).encode(), 200
        else:
            body, status = b"{}", 404
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    # -- minting ------------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "00u-alice",
            "aud": AUDIENCE,
            "azp": "claude-code",
            "exp": now + 300,
            "iat": now,
            "nbf": now - 5,
            "jti": uuid.uuid4().hex,
            "scope": "mcp:tools",
            "email": "alice@example.com",
            "name": "Alice Example",
            "groups": ["okta:sre-oncall"],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self, key: SigningKey | None = None, headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        key = key or self.keys[0]
        return jwt.encode(
            self.claims(**claims), key.private, algorithm=key.alg, headers={"kid": key.kid, **(headers or {})}
        )


def unsigned_token(claims: dict[str, Any], kid: str = "k1") -> str:
    """`alg: none`: a header, the claims and an empty signature."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def hs256_with_public_key(claims: dict[str, Any], key: SigningKey) -> str:
    """The classic confusion attack: HMAC-SHA256 keyed with the issuer's public key (PEM bytes)."""
    import hashlib
    import hmac

    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(key.public_pem(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"
