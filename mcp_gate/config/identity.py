"""[identity]: the identity provider: issuer, resource URI, algorithms, claims, groups, scopes."""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError

from mcp_gate.config.files import Strict, config_error_from
from mcp_gate.config.model import IdentitySettings, SlackSecret
from mcp_gate.errors import ConfigError

__all__ = ["ASYMMETRIC_ALGORITHMS", "identity_settings", "introspection_secret", "known_groups"]

# Only public-key algorithms: a symmetric one (HS*) would let anyone holding the issuer's public
# key sign tokens, and `none` signs nothing.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_TIERS = ("low", "medium", "high", "critical")
MAX_LEEWAY = 300.0


class _AgentOwner(Strict):
    owner: str


class _IdentitySection(Strict):
    issuer: str
    audience: str
    discovery_url: str | None = None
    jwks_uri: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"])
    leeway_seconds: float = Field(default=30.0, ge=0)
    email_claim: str = "email"
    name_claim: str = "name"
    groups_claim: str = "groups"
    agent_claims: list[str] = Field(default_factory=lambda: ["azp", "client_id"], min_length=1)
    owner_claim: str | None = None
    required_scope: str | None = None
    tier_scopes: dict[str, str] = Field(default_factory=dict)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    agents: dict[str, _AgentOwner] = Field(default_factory=dict)
    subjects: dict[str, str] = Field(default_factory=dict)  # Slack user id -> IdP subject
    require_idp: bool = False
    refresh_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400)
    max_key_age_seconds: float = Field(default=86400.0, gt=0, le=30 * 86400)
    refetch_every_seconds: float = Field(default=30.0, ge=1, le=3600)
    cli_client_id: str | None = None
    cli_scopes: list[str] = Field(default_factory=list)
    introspection_url: str | None = None
    introspection_client_id: str | None = None
    introspection_secret_env: str | None = None
    introspection_secret_file: str | None = None


def _https_url(file: str, key: str, value: str, *, path_ok: bool = True) -> str:
    """An https URL (plain http only to this machine, for local providers), no query or fragment."""
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ConfigError(file, key, f"not a URL: {value!r}") from exc
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise ConfigError(file, key, f"expected an https URL (http only to this machine), got {value!r}")
    if not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(file, key, f"expected a URL with a host and no query or fragment, got {value!r}")
    if not path_ok and parts.path not in ("", "/"):
        raise ConfigError(file, key, f"expected no path, got {value!r}")
    return value


def _scope(file: str, key: str, value: str) -> str:
    if not value or any(c.isspace() or c in '"\\' for c in value):
        raise ConfigError(file, key, f"a scope is one token without spaces or quotes, got {value!r}")
    return value


def identity_settings(file: str, data: dict[str, Any] | None, base: Path) -> IdentitySettings | None:
    """gate.toml's [identity] as settings, or None when the section is absent (static tokens only)."""
    if data is None:
        return None
    try:
        section = _IdentitySection.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(file, exc, prefix=("identity",)) from exc
    issuer = _https_url(file, "identity.issuer", section.issuer)
    audience = _https_url(file, "identity.audience", section.audience)
    if audience != audience.rstrip("/") and urlsplit(audience).path != "/":
        raise ConfigError(file, "identity.audience", "give the resource URI without a trailing '/'")
    for key in ("discovery_url", "jwks_uri"):
        given = getattr(section, key)
        if given is not None:
            _https_url(file, f"identity.{key}", given)
    algorithms = tuple(section.algorithms)
    if not algorithms:
        raise ConfigError(file, "identity.algorithms", "name at least one algorithm, such as RS256")
    for index, algorithm in enumerate(algorithms):
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise ConfigError(
                file,
                f"identity.algorithms[{index}]",
                f"{algorithm!r} is not allowed; only public-key algorithms: "
                + ", ".join(ASYMMETRIC_ALGORITHMS),
            )
    if section.leeway_seconds > MAX_LEEWAY:
        raise ConfigError(file, "identity.leeway_seconds", f"at most {MAX_LEEWAY:g} seconds of clock skew")
    if section.refresh_seconds > section.max_key_age_seconds:
        raise ConfigError(
            file, "identity.refresh_seconds", "keys must be refreshed before max_key_age_seconds runs out"
        )
    for claim_key in ("email_claim", "name_claim", "groups_claim"):
        if not getattr(section, claim_key).strip():
            raise ConfigError(file, f"identity.{claim_key}", "must name a claim")
    required = section.required_scope
    if required is not None:
        _scope(file, "identity.required_scope", required)
    tier_scopes: dict[str, str] = {}
    for tier, scope in section.tier_scopes.items():
        if tier not in _TIERS:
            raise ConfigError(file, f"identity.tier_scopes.{tier}", f"not a tier; one of {', '.join(_TIERS)}")
        tier_scopes[tier] = _scope(file, f"identity.tier_scopes.{tier}", scope)
    groups: dict[str, tuple[str, ...]] = {}
    for group, members in section.groups.items():
        if not group.strip():
            raise ConfigError(file, "identity.groups", "an approver group needs a name")
        if not members or any(not m.strip() for m in members):
            raise ConfigError(
                file,
                f"identity.groups.{group}",
                'list the identity provider\'s groups, e.g. ["okta:sre-oncall"]',
            )
        groups[group] = tuple(members)
    if section.cli_client_id is not None and not section.cli_client_id.strip():
        raise ConfigError(file, "identity.cli_client_id", "must not be empty")
    secret = _introspection(file, section, base)
    return IdentitySettings(
        issuer=issuer,  # compared with `iss` exactly, as given
        audience=audience,
        discovery_url=section.discovery_url,
        jwks_uri=section.jwks_uri,
        algorithms=algorithms,
        leeway=section.leeway_seconds,
        email_claim=section.email_claim,
        name_claim=section.name_claim,
        groups_claim=section.groups_claim,
        agent_claims=tuple(section.agent_claims),
        owner_claim=section.owner_claim,
        required_scope=required,
        tier_scopes=MappingProxyType(tier_scopes),
        groups=MappingProxyType(groups),
        agent_owners=MappingProxyType({k: v.owner for k, v in section.agents.items()}),
        slack_subjects=MappingProxyType(dict(section.subjects)),
        require_idp=section.require_idp,
        refresh_seconds=section.refresh_seconds,
        max_key_age=section.max_key_age_seconds,
        refetch_every=section.refetch_every_seconds,
        cli_client_id=section.cli_client_id,
        cli_scopes=tuple(section.cli_scopes),
        introspection_url=section.introspection_url,
        introspection_client_id=section.introspection_client_id,
        introspection_secret=secret,
    )


def _introspection(file: str, section: _IdentitySection, base: Path) -> SlackSecret | None:
    given = [
        section.introspection_client_id,
        section.introspection_secret_env or section.introspection_secret_file,
    ]
    if section.introspection_url is None:
        if any(g is not None for g in given):
            raise ConfigError(
                file, "identity.introspection_url", "the introspection client needs its endpoint"
            )
        return None
    _https_url(file, "identity.introspection_url", section.introspection_url)
    if section.introspection_client_id is None:
        raise ConfigError(file, "identity.introspection_client_id", "name the gate's client at the endpoint")
    if (section.introspection_secret_env is None) == (section.introspection_secret_file is None):
        raise ConfigError(
            file, "identity.introspection_secret_env", "give introspection_secret_env or _file (one of them)"
        )
    path = None if section.introspection_secret_file is None else base / section.introspection_secret_file
    return SlackSecret("introspection_secret", section.introspection_secret_env, path, section="identity")


def introspection_secret(settings: IdentitySettings, config_file: str) -> str | None:
    """The gate's client secret at the introspection endpoint, read now from its variable or file."""
    if settings.introspection_secret is None:
        return None
    return settings.introspection_secret.read(os.environ, config_file)


def known_groups(settings: IdentitySettings | None) -> frozenset[str]:
    """The approver groups [identity.groups] gives members to."""
    return frozenset() if settings is None else frozenset(settings.groups)
