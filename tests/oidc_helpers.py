"""A real OpenID provider for the tests: panva's certified `oidc-provider` (tests/oidc/, its lock
file committed), started with node on a free 127.0.0.1 port, `npm ci` run first when its
node_modules is missing. Without node the tests skip, except under CI=true, where they fail."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

HERE = Path(__file__).resolve().parent / "oidc"
SCOPES = "mcp:tools tools:high"
PERSON_SCOPES = f"openid email profile offline_access {SCOPES}"
CLI_CLIENT = "mcp-gate-cli"


def _needed(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the OpenID provider is needed under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        _needed("node is not installed")
    assert node is not None
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            _needed("npm is not installed")
        assert npm is not None
        # Two test workers may both find node_modules missing: one runs npm ci, the other waits.
        with (HERE / ".npm-ci.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (HERE / "node_modules" / "oidc-provider").is_dir():
                done = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund"],
                    cwd=HERE,
                    capture_output=True,
                    text=True,
                    timeout=240,
                )
                if done.returncode != 0:
                    _needed(f"npm ci failed in {HERE}: {done.stderr.strip()[-500:]}")
    return node


@dataclass
class OidcProvider:
    issuer: str
    resource: str

    def document(self) -> dict[str, Any]:
        found: dict[str, Any] = httpx2.get(f"{self.issuer}/.well-known/openid-configuration").json()
        return found

    def client_credentials(self, client_id: str = "deploy-bot", secret: str = "deploy-bot-secret") -> str:
        response = httpx2.post(
            self.document()["token_endpoint"],
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
                "resource": self.resource,
                "scope": SCOPES,
            },
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    def complete_device(self, user_code: str, sub: str) -> None:
        """The person's step of the device grant, as the provider's pages would do it after login."""
        response = httpx2.post(
            f"{self.issuer}/test/device", content=json.dumps({"user_code": user_code, "sub": sub})
        )
        assert response.status_code == 204, response.text

    def person_token(self, sub: str) -> dict[str, Any]:
        """A person's tokens through the device grant (RFC 8628), as a public client gets them."""
        document = self.document()
        started = httpx2.post(
            document["device_authorization_endpoint"],
            data={"client_id": CLI_CLIENT, "scope": PERSON_SCOPES, "resource": self.resource},
        )
        assert started.status_code == 200, started.text
        self.complete_device(started.json()["user_code"], sub)
        response = httpx2.post(
            document["token_endpoint"],
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": started.json()["device_code"],
                "client_id": CLI_CLIENT,
                "resource": self.resource,
            },
        )
        assert response.status_code == 200, response.text
        tokens: dict[str, Any] = response.json()
        return tokens


@contextmanager
def oidc_provider(resource: str, *, opaque: bool = False) -> Iterator[OidcProvider]:
    """The provider, issuing JWT access tokens for `resource` (or opaque ones, to introspect)."""
    node = _node()
    process = subprocess.Popen(
        [node, str(HERE / "provider.mjs"), resource, *(["opaque"] if opaque else [])],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the OpenID provider did not start (exit {process.wait(10)})")
        yield OidcProvider(json.loads(line)["issuer"], resource)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
