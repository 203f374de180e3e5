"""[identity]: the identity provider's settings, and one clear line for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_gate.config import IdentitySettings, load_config
from mcp_gate.errors import ConfigError

BASE = """
[identity]
issuer = "https://example.okta.com/oauth2/default"
audience = "https://gate.example.com/mcp"
"""


def load(tmp_path: Path, text: str) -> IdentitySettings:
    path = tmp_path / "gate.toml"
    path.write_text(text, encoding="utf-8")
    identity = load_config(path, {}).identity
    assert identity is not None
    return identity


def error(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "gate.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_gate_without_identity_keeps_static_tokens_only(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text("", encoding="utf-8")
    assert load_config(path, {}).identity is None


def test_identity_has_safe_defaults_and_every_setting_is_read(tmp_path: Path) -> None:
    assert load(tmp_path, BASE) == IdentitySettings(
        issuer="https://example.okta.com/oauth2/default", audience="https://gate.example.com/mcp"
    )
    text = BASE + (
        'algorithms = ["ES256"]\nleeway_seconds = 5\nemail_claim = "upn"\nname_claim = "given_name"\n'
        'groups_claim = "roles"\nrequired_scope = "mcp:tools"\nrequire_idp = true\nowner_claim = "owner"\n'
        'cli_client_id = "mcp-gate-cli"\n'
        '[identity.tier_scopes]\nhigh = "tools:high"\n'
        '[identity.groups]\nsre = ["okta:sre-oncall"]\n'
        '[identity.agents.deploy-bot]\nowner = "bob@example.com"\n'
        '[tiers.high]\napprovals = 1\ngroups = ["sre"]\n'
    )
    identity = load(tmp_path, text)
    assert identity.algorithms == ("ES256",)
    assert identity.leeway == 5
    claims = (identity.email_claim, identity.name_claim, identity.groups_claim)
    assert claims == ("upn", "given_name", "roles")
    assert identity.required_scope == "mcp:tools"
    assert dict(identity.tier_scopes) == {"high": "tools:high"}
    assert dict(identity.groups) == {"sre": ("okta:sre-oncall",)}
    assert dict(identity.agent_owners) == {"deploy-bot": "bob@example.com"}
    assert identity.require_idp and identity.owner_claim == "owner"
    assert identity.scopes_supported() == ["mcp:tools", "tools:high"]
    assert identity.discovery == "https://example.okta.com/oauth2/default/.well-known/openid-configuration"


def test_an_approver_group_given_only_by_the_identity_provider_is_known_to_the_tiers(tmp_path: Path) -> None:
    text = BASE + '[identity.groups]\nsre = ["okta:sre"]\n[tiers.high]\napprovals = 1\ngroups = ["sre"]\n'
    assert load(tmp_path, text).groups["sre"] == ("okta:sre",)


def test_identity_changes_the_config_hash(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(BASE, encoding="utf-8")
    one = load_config(path, {}).config_sha256
    path.write_text(BASE + '[identity.groups]\nsre = ["okta:sre"]\n', encoding="utf-8")
    assert load_config(path, {}).config_sha256 != one


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ('algorithms = ["HS256"]\n', "identity.algorithms[0]", "only public-key algorithms"),
        ('algorithms = ["none"]\n', "identity.algorithms[0]", "not allowed"),
        ("algorithms = []\n", "identity.algorithms", "at least one"),
        ("leeway_seconds = 3600\n", "identity.leeway_seconds", "at most 300"),
        ('required_scope = "a b"\n', "identity.required_scope", "one token"),
        ('[identity.tier_scopes]\nhuge = "x"\n', "identity.tier_scopes.huge", "not a tier"),
        ("[identity.groups]\nsre = []\n", "identity.groups.sre", "okta:sre-oncall"),
        ('color = "blue"\n', "identity.color", ""),
        ('discovery_url = "ftp://idp/x"\n', "identity.discovery_url", "https"),
    ],
)
def test_a_bad_identity_setting_is_one_line_naming_the_key(
    tmp_path: Path, extra: str, key: str, problem: str
) -> None:
    found = error(tmp_path, BASE + extra)
    assert found.key == key
    assert problem in found.problem


@pytest.mark.parametrize(
    ("issuer", "audience", "key"),
    [
        ("http://idp.example.com", "https://gate.example.com/mcp", "identity.issuer"),
        ("https://idp.example.com", "http://gate.example.com/mcp", "identity.audience"),
        ("https://idp.example.com", "https://gate.example.com/mcp?x=1", "identity.audience"),
        ("https://idp.example.com", "https://gate.example.com/mcp/", "identity.audience"),
    ],
)
def test_issuer_and_audience_are_https_urls(tmp_path: Path, issuer: str, audience: str, key: str) -> None:
    found = error(tmp_path, f'[identity]\nissuer = "{issuer}"\naudience = "{audience}"\n')
    assert found.key == key


def test_plain_http_is_allowed_to_this_machine_for_a_local_provider(tmp_path: Path) -> None:
    identity = load(
        tmp_path, '[identity]\nissuer = "http://127.0.0.1:9000"\naudience = "http://127.0.0.1:8765/mcp"\n'
    )
    assert identity.issuer == "http://127.0.0.1:9000"


def test_identity_without_its_issuer_names_the_missing_key(tmp_path: Path) -> None:
    found = error(tmp_path, '[identity]\naudience = "https://gate.example.com/mcp"\n')
    assert found.key == "identity.issuer"


def test_an_approvers_subject_needs_identity(tmp_path: Path) -> None:
    found = error(tmp_path, '[approvers.alice]\nemail = "a@x"\nsubject = "00u1"\n')
    assert found.key == "approvers.alice.subject"


def test_an_approvers_subject_is_one_of_their_identities(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(BASE + '[approvers.alice]\nemail = "a@x"\nsubject = "00u1"\n', encoding="utf-8")
    alice = load_config(path, {}).approvers["alice"]
    assert "https://example.okta.com/oauth2/default#00u1" in alice.identities()


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('introspection_client_id = "gate"\n', "identity.introspection_url"),
        ('introspection_url = "https://idp.example/introspect"\n', "identity.introspection_client_id"),
        (
            'introspection_url = "https://idp.example/introspect"\nintrospection_client_id = "gate"\n',
            "identity.introspection_secret_env",
        ),
    ],
)
def test_introspection_needs_its_endpoint_client_and_one_secret(tmp_path: Path, extra: str, key: str) -> None:
    assert error(tmp_path, BASE + extra).key == key


def test_introspection_settings_are_read_and_the_secret_only_when_used(tmp_path: Path) -> None:
    text = BASE + (
        'introspection_url = "https://idp.example/introspect"\nintrospection_client_id = "gate"\n'
        'introspection_secret_env = "GATE_INTROSPECTION_SECRET"\n'
    )
    identity = load(tmp_path, text)
    assert identity.introspection_url == "https://idp.example/introspect"
    assert identity.introspection_secret is not None and "SECRET" in identity.introspection_secret.where()
