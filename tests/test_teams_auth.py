"""The Bot Connector JWT checks of the Teams channel, against a local fake's keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mcp_gate.channels.teams_auth import BotFrameworkVerifier, Unverified
from mcp_gate.config import SlackSecret, TeamsSettings
from mcp_gate.fake_teams import FakeTeams

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake() -> Iterator[FakeTeams]:
    with FakeTeams().running() as running:
        yield running


def settings(fake: FakeTeams) -> TeamsSettings:
    return TeamsSettings(
        app_id=fake.app_id,
        tenant_id=fake.tenant_id,
        app_password=SlackSecret("app_password", "TEAMS_PW", None, "channels.teams"),
        service_url=fake.service_url,
        conversation="19:approvals@thread.tacv2",
        listen=("127.0.0.1", 0),
        openid_metadata=fake.metadata_url,
        token_url=fake.token_url,
    )


async def check(fake: FakeTeams, token: str, activity: dict[str, object] | None = None) -> None:
    verifier = BotFrameworkVerifier(settings(fake))
    await verifier.verify(f"Bearer {token}", activity or fake.invoke("u", "approve", {}))


async def test_a_token_the_bot_connector_signed_for_this_bot_passes(fake: FakeTeams) -> None:
    verifier = BotFrameworkVerifier(settings(fake))
    verified = await verifier.verify(f"Bearer {fake.token()}", fake.invoke("u", "approve", {}))
    assert verified.claims["aud"] == fake.app_id


@pytest.mark.parametrize(
    "bad",
    [
        {"audience": "11111111-2222-3333-4444-555555555555"},
        {"issuer": "https://api.botframework.us"},
        {"issuer": "https://evil.example"},
        {"expires_in": -3600},
        {"service_url": "https://smba.evil.example/teams/"},
        {"kid": "rolled-or-forged"},
        {"algorithm": "none"},
        {"algorithm": "HS256", "key": "a-shared-secret-of-thirty-two-bytes!"},
        {"drop": ("exp",)},
        {"drop": ("serviceurl",)},
    ],
    ids=lambda bad: ",".join(f"{k}" for k in bad),
)
async def test_every_wrong_token_is_refused(fake: FakeTeams, bad: dict[str, object]) -> None:
    with pytest.raises(Unverified):
        await check(fake, fake.token(**bad))  # type: ignore[arg-type]


async def test_a_token_signed_by_another_key_with_the_right_kid_is_refused(fake: FakeTeams) -> None:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unverified):
        await check(fake, fake.token(key=forger))


async def test_a_token_just_past_exp_is_still_taken_within_the_leeway(fake: FakeTeams) -> None:
    await check(fake, fake.token(expires_in=-60))


async def test_a_key_not_endorsed_for_the_activitys_channel_is_refused(fake: FakeTeams) -> None:
    activity = {**fake.invoke("u", "approve", {}), "channelId": "webchat"}
    with pytest.raises(Unverified):
        await check(fake, fake.token(), activity)


@pytest.mark.parametrize("header", ["", "Basic abc", "Bearer not-a-jwt", "Bearer " + "a" * 9000])
async def test_a_missing_or_malformed_authorization_header_is_refused(fake: FakeTeams, header: str) -> None:
    verifier = BotFrameworkVerifier(settings(fake))
    with pytest.raises(Unverified):
        await verifier.verify(header, fake.invoke("u", "approve", {}))


async def test_a_rolled_over_key_is_fetched_again_on_its_unknown_kid(fake: FakeTeams) -> None:
    verifier = BotFrameworkVerifier(settings(fake))
    await verifier.verify(f"Bearer {fake.token()}", fake.invoke("u", "approve", {}))
    fake.kid = "fake-kid-2"
    fake.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Within REFETCH_EVERY of the last fetch an unknown kid is refused without a fetch...
    with pytest.raises(Unverified):
        await verifier.verify(f"Bearer {fake.token()}", fake.invoke("u", "approve", {}))
    # ...and after it, fetched again and taken.
    verifier.monotonic = lambda: 1e12
    await verifier.verify(f"Bearer {fake.token()}", fake.invoke("u", "approve", {}))


@pytest.mark.parametrize(
    ("uri", "usable"),
    [
        ("https://login.botframework.com/v1/.well-known/keys", True),
        ("http://127.0.0.1:8123/keys", True),
        ("http://localhost/keys", True),
        ("http://127.0.0.1.example.com/keys", False),  # a name that merely starts like loopback
        ("http://login.botframework.com/keys", False),
        ("ftp://127.0.0.1/keys", False),
        ("https:///keys", False),
        ("http://[::1/keys", False),
    ],
)
def test_the_keys_url_must_be_https_or_loopback_by_its_parsed_host(uri: str, usable: bool) -> None:
    from mcp_gate.channels.teams_auth import _usable_keys_url

    assert _usable_keys_url(uri) is usable
