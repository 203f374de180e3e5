"""Property tests of the sealed elicitation request_state: whatever a client sends back in its
place is refused as a bad state, never raises, and a changed state never vouches for a call."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_gate.approvals import Binding
from mcp_gate.request_state import (
    MAX_STATE_CHARS,
    BadState,
    Claims,
    mismatch,
    new_claims,
    seal,
    unseal,
)

KEY = os.urandom(32)
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
BINDING = Binding("agent", "alice@example.com", "notes", "append_note", "pin1", "args1", "policy1")
STATE = seal(KEY, new_claims("confirm", "c0ffee", BINDING, NOW))
FUZZ = settings(max_examples=150, deadline=None)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def assert_tampered(token: str) -> None:
    outcome = unseal(KEY, token, now=NOW)
    assert isinstance(outcome, BadState) and outcome.code == "tampered"


def test_the_real_state_unseals_so_the_properties_below_can_fail() -> None:
    claims = unseal(KEY, STATE, now=NOW)
    assert isinstance(claims, Claims) and mismatch(claims, BINDING, "confirm") is None


@FUZZ
@given(st.text(max_size=300))
def test_a_random_string_is_refused_as_tampered(token: str) -> None:
    assert_tampered(token)


@FUZZ
@given(st.integers(min_value=0, max_value=len(STATE) * 8 - 1))
def test_a_state_with_one_bit_flipped_is_refused_and_vouches_for_nothing(bit: int) -> None:
    raw = bytearray(STATE.encode("latin-1"))
    raw[bit // 8] ^= 1 << (bit % 8)
    flipped = raw.decode("latin-1")
    outcome = unseal(KEY, flipped, now=NOW)
    # Base64's padding bits may make a flip decode to the same bytes; then it is the same state.
    assert isinstance(outcome, BadState) or outcome == unseal(KEY, STATE, now=NOW)


@FUZZ
@given(st.integers(min_value=0, max_value=len(STATE) - 1))
def test_a_truncated_state_is_refused(length: int) -> None:
    assert_tampered(STATE[:length])


@FUZZ
@given(st.binary(max_size=2000), st.binary(max_size=64))
def test_valid_base64_of_junk_in_either_part_is_refused(payload: bytes, mac: bytes) -> None:
    assert_tampered(f"v1.{b64(payload)}.{b64(mac)}")
    assert_tampered(f"v1.{STATE.split('.')[1]}.{b64(mac)}")


def test_an_oversize_state_is_refused_without_being_read() -> None:
    assert_tampered(STATE + "A" * MAX_STATE_CHARS)


def test_a_deeply_nested_unauthenticated_payload_is_refused_not_raised() -> None:
    """The MAC is checked before the payload is parsed: a payload of 40 000 `[` would raise
    RecursionError in the JSON parser."""
    assert_tampered(f"v1.{b64(b'[' * 40_000)}.{b64(os.urandom(32))}")


@FUZZ
@given(
    st.sampled_from(["agent", "owner", "server", "tool", "args_sha256", "pin", "policy_sha256", "kind"]),
    st.text(min_size=1, max_size=20),
)
def test_a_genuine_state_for_another_request_never_fits_this_one(field: str, value: str) -> None:
    fields = {
        "agent": BINDING.agent,
        "owner": BINDING.owner,
        "server": BINDING.server,
        "tool": BINDING.tool,
        "args_sha256": BINDING.args_sha256,
        "pin": BINDING.pin,
        "policy_sha256": BINDING.policy_sha256,
    }
    kind = "confirm"
    if field == "kind":
        kind = "justification"
    elif value == fields[field]:
        value += "x"
    if field != "kind":
        fields[field] = value
    other = Binding(
        fields["agent"],
        fields["owner"],
        fields["server"],
        fields["tool"],
        fields["pin"],
        fields["args_sha256"],
        fields["policy_sha256"],
    )
    claims = unseal(KEY, seal(KEY, new_claims(kind, "c0ffee", other, NOW)), now=NOW)
    assert isinstance(claims, Claims)
    assert mismatch(claims, BINDING, "confirm") is not None
