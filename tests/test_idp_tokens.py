"""Access tokens from the identity provider: good ones accepted, every hostile one refused with a
clear reason, and an identity provider that goes away (keys kept until their max age, then closed)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from mcp_gate.config import IdentitySettings
from mcp_gate.idp import TokenRefused, TokenVerifier, scopes_of
from tests.idp_helpers import AUDIENCE, LocalIdp, SigningKey, hs256_with_public_key, unsigned_token

pytestmark = pytest.mark.anyio


@pytest.fixture
def idp() -> Iterator[LocalIdp]:
    with LocalIdp().running() as running:
        yield running


def settings(idp: LocalIdp, **changes: object) -> IdentitySettings:
    return replace(IdentitySettings(issuer=idp.issuer, audience=AUDIENCE), **changes)  # type: ignore[arg-type]


class Ticking:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def refused(verifier: TokenVerifier, token: str) -> TokenRefused:
    with pytest.raises(TokenRefused) as caught:
        await verifier.check(token)
    assert token not in str(caught.value)
    return caught.value


async def test_a_good_token_names_issuer_subject_client_scopes_and_a_hashed_jti(idp: LocalIdp) -> None:
    verifier = TokenVerifier(settings(idp))
    token = idp.mint(jti="abc", scope="mcp:tools tools:high")
    verified = await verifier.check(token)
    assert (verified.issuer, verified.subject, verified.client_id) == (idp.issuer, "00u-alice", "claude-code")
    assert verified.scopes == {"mcp:tools", "tools:high"}
    assert verified.jti_sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    access = await verifier.verify_token(token)
    assert access is not None and access.subject == "00u-alice" and access.resource == AUDIENCE


async def test_an_audience_list_containing_the_gate_is_accepted(idp: LocalIdp) -> None:
    verified = await TokenVerifier(settings(idp)).check(idp.mint(aud=["https://other.example", AUDIENCE]))
    assert verified.client_id == "claude-code"


async def test_an_ec_key_and_a_client_id_claim_work_too(idp: LocalIdp) -> None:
    idp.keys.append(SigningKey.ec())
    token = idp.mint(key=idp.keys[1], azp=None, client_id="deploy-bot", sub=None)
    verified = await TokenVerifier(settings(idp)).check(token)
    assert (verified.client_id, verified.subject) == ("deploy-bot", None)


def test_scopes_are_read_from_scope_or_scp() -> None:
    assert scopes_of({"scope": "a b"}) == {"a", "b"}
    assert scopes_of({"scp": ["a", "c"]}) == {"a", "c"}
    assert scopes_of({"scp": "d"}) == {"d"}
    assert scopes_of({}) == frozenset()


# -- bad tokens: each refused with its reason -----------------------------------------------------


async def test_a_token_from_another_issuer_is_refused(idp: LocalIdp) -> None:
    found = await refused(TokenVerifier(settings(idp)), idp.mint(iss="https://evil.example"))
    assert found.code == "wrong_issuer"


async def test_an_issuer_differing_only_by_a_trailing_slash_is_refused(idp: LocalIdp) -> None:
    found = await refused(TokenVerifier(settings(idp)), idp.mint(iss=idp.issuer + "/"))
    assert found.code == "wrong_issuer"


async def test_a_token_for_another_audience_is_refused(idp: LocalIdp) -> None:
    found = await refused(TokenVerifier(settings(idp)), idp.mint(aud="api://default"))
    assert found.code == "wrong_audience"


async def test_a_token_for_another_resource_is_refused(idp: LocalIdp) -> None:
    other = "http://127.0.0.1:8765/other-mcp"
    found = await refused(TokenVerifier(settings(idp)), idp.mint(aud=[other]))
    assert found.code == "wrong_audience"


async def test_a_token_with_no_audience_is_refused(idp: LocalIdp) -> None:
    found = await refused(TokenVerifier(settings(idp)), idp.mint(aud=None))
    assert found.code == "missing_audience"


async def test_an_expired_token_is_refused_after_the_leeway(idp: LocalIdp) -> None:
    verifier = TokenVerifier(settings(idp, leeway=30.0))
    now = int(time.time())
    assert (await verifier.check(idp.mint(exp=now - 10))).client_id == "claude-code"  # within leeway
    found = await refused(verifier, idp.mint(exp=now - 60))
    assert found.code == "expired"


async def test_a_token_not_yet_valid_is_refused(idp: LocalIdp) -> None:
    verifier = TokenVerifier(settings(idp, leeway=30.0))
    found = await refused(verifier, idp.mint(nbf=int(time.time()) + 600))
    assert found.code == "not_yet_valid"


async def test_a_token_with_no_expiry_is_refused(idp: LocalIdp) -> None:
    found = await refused(TokenVerifier(settings(idp)), idp.mint(exp=None))
    assert found.code == "missing_claim"


async def test_alg_none_is_refused_before_any_key_is_fetched(idp: LocalIdp) -> None:
    verifier = TokenVerifier(settings(idp))
    found = await refused(verifier, unsigned_token(idp.claims()))
    assert found.code == "algorithm"
    assert idp.jwks_requests == 0


async def test_hs256_signed_with_the_public_key_is_refused(idp: LocalIdp) -> None:
    verifier = TokenVerifier(settings(idp))
    found = await refused(verifier, hs256_with_public_key(idp.claims(), idp.keys[0]))
    assert found.code == "algorithm"


async def test_an_rs256_token_claiming_an_ec_key_is_refused(idp: LocalIdp) -> None:
    idp.keys.append(SigningKey.ec("e1"))
    token = idp.mint(headers={"kid": "e1"})  # signed RS256 with k1, naming the EC key
    found = await refused(TokenVerifier(settings(idp)), token)
    assert found.code == "algorithm"


async def test_an_unknown_kid_is_refused_after_one_refresh(idp: LocalIdp) -> None:
    verifier = TokenVerifier(settings(idp))
    await verifier.check(idp.mint())
    assert idp.jwks_requests == 1
    stranger = SigningKey.rsa("k-unknown")
    found = await refused(verifier, idp.mint(key=stranger))
    assert found.code == "unknown_key"
    assert idp.jwks_requests == 1  # within refetch_every of the first fetch: rate-limited


async def test_an_unknown_kid_fetches_the_keys_again_so_a_rotated_key_is_found(idp: LocalIdp) -> None:
    ticking = Ticking()
    verifier = TokenVerifier(settings(idp, refetch_every=30.0), monotonic=ticking)
    await verifier.check(idp.mint())
    rotated = SigningKey.rsa("k2")
    idp.keys.append(rotated)
    ticking.now += 31
    assert (await verifier.check(idp.mint(key=rotated))).subject == "00u-alice"
    assert idp.jwks_requests == 2
    forged = SigningKey.rsa("k3")
    ticking.now += 5
    for _ in range(20):  # a flood of unknown kids fetches nothing more within refetch_every
        assert (await refused(verifier, idp.mint(key=forged))).code == "unknown_key"
    assert idp.jwks_requests == 2


async def test_a_token_whose_signature_was_cut_is_refused(idp: LocalIdp) -> None:
    token = idp.mint()
    head, payload, signature = token.split(".")
    verifier = TokenVerifier(settings(idp))
    assert (await refused(verifier, f"{head}.{payload}.")).code in ("bad_signature", "malformed")
    assert (await refused(verifier, f"{head}.{payload}.{signature[:-8]}")).code in (
        "bad_signature",
        "malformed",
    )


async def test_a_token_signed_by_a_stranger_with_a_known_kid_is_refused(idp: LocalIdp) -> None:
    impostor = SigningKey.rsa("k1")
    found = await refused(TokenVerifier(settings(idp)), idp.mint(key=impostor))
    assert found.code == "bad_signature"


async def test_an_opaque_token_is_refused_as_not_a_jwt(idp: LocalIdp) -> None:
    found = await refused(TokenVerifier(settings(idp)), "0a1b2c3d4e5f")
    assert found.code == "malformed"


async def test_a_token_naming_no_client_is_refused(idp: LocalIdp) -> None:
    found = await refused(TokenVerifier(settings(idp)), idp.mint(azp=None))
    assert found.code == "no_client"


async def test_a_discovery_document_naming_another_issuer_is_refused(idp: LocalIdp) -> None:
    idp.named_issuer = "https://evil.example"
    found = await refused(TokenVerifier(settings(idp)), idp.mint())
    assert found.code == "keys_unavailable"
    assert idp.jwks_requests == 0  # its key set was never trusted


async def test_a_key_set_that_is_down_keeps_its_cached_keys_until_their_max_age_then_fails_closed(
    idp: LocalIdp, caplog: pytest.LogCaptureFixture
) -> None:
    ticking = Ticking()
    verifier = TokenVerifier(
        settings(idp, refresh_seconds=60.0, max_key_age=600.0, refetch_every=10.0), monotonic=ticking
    )
    await verifier.check(idp.mint())
    idp.down = True
    ticking.now += 120  # due for a refresh, which fails: the cached keys still serve
    with caplog.at_level(logging.WARNING, logger="mcp_gate.idp"):
        assert (await verifier.check(idp.mint())).subject == "00u-alice"
    assert "cannot fetch the signing keys" in caplog.text
    ticking.now += 600  # past max age: closed
    found = await refused(verifier, idp.mint())
    assert found.code == "keys_unavailable"
    idp.down = False
    ticking.now += 11
    assert (await verifier.check(idp.mint())).subject == "00u-alice"  # back once it answers


async def test_a_key_set_down_from_the_start_refuses_every_token(idp: LocalIdp) -> None:
    idp.down = True
    found = await refused(TokenVerifier(settings(idp)), idp.mint())
    assert found.code == "keys_unavailable"


async def test_the_sdk_protocol_logs_the_reason_and_never_the_token(
    idp: LocalIdp, caplog: pytest.LogCaptureFixture
) -> None:
    token = idp.mint(aud="api://default")
    with caplog.at_level(logging.WARNING, logger="mcp_gate.idp"):
        assert await TokenVerifier(settings(idp)).verify_token(token) is None
    assert "not for this gate" in caplog.text
    assert token not in caplog.text and token.split(".")[2] not in caplog.text
