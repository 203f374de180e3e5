"""The one redaction every sink uses: secrets found by key words, by provider shapes and by entropy."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcp_gate.approvals import ApprovalRequest, Binding
from mcp_gate.channels.slack_blocks import render_request
from mcp_gate.config import load_config
from mcp_gate.desk import request_view
from mcp_gate.errors import ConfigError
from mcp_gate.redaction import DEFAULT_RULES, RedactionRules, is_secret_key, redact, scrub, scrub_text
from mcp_gate.secret_patterns import (
    BASE64_CHARSET,
    HEX_CHARSET,
    PATTERNS,
    detector_patterns,
    entropy,
    read_patterns,
)
from mcp_gate.testing import write_config

# Real-looking (but made-up) credentials of the kinds agents pass in arguments. Each is checked
# in an ordinary sentence under an ordinary key, where no key-name rule can help.
CORPUS = {
    "stripe live secret": "sk_live_51HcY3bKj2XGq8Zz0aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789abcdefABCDEFgh",
    "stripe restricted": "rk_live_4eC39HqLyjWDarjtT1zdp7dcXYZabcdefghij",
    "google api key": "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "aws access key id": "AKIAIOSFODNN7EXAMPLF",
    "github classic": "ghp_R2d2C3poBb8ZyXwVuTsRqPoNmLkJiHgFeDcB",
    "github fine-grained": "github_pat_11ABCDEFG0abcdefghijkl_"
    "MNOPQRSTUVWXyz0123456789abcdefghijklmnopqrstuvwx",
    "gitlab": "glpat-Zx9Qm3Lp8Rt2Vw6Ky1Bn",
    "slack bot": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "slack webhook": "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdEFGHijklMNOPqrstUVWX",
    "openai project": "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90",
    "anthropic": "sk-ant-api03-Zx9Qm3Lp8Rt2Vw6Ky1Bn5Hj7Gf4Ds0AaBbCcDdEe",
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "sendgrid": "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",
    "npm": "npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "twilio": "SK0123456789abcdef0123456789abcdef",
    "basic auth url": "https://deploy:Tr0ub4dor3@db.internal.example.com/prod",
    "authorization basic": "Authorization: Basic ZGVwbG95OlRyMHViNGRvcjM=",
    "bearer": "Bearer 7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e",
    "password assignment": "password=Tr0ub4dor3",
    "env style": "DB_PASSWORD=Tr0ub4dor3",
    "json in a string": '{"pwd": "Tr0ub4dor3"}',
    "pem": "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "-----END RSA PRIVATE KEY-----",
    "openssh": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
    "-----END OPENSSH PRIVATE KEY-----",
    "random high-entropy": "Zx9Qm3Lp8Rt2Vw6Ky1Bn5Hj7Gf4Ds0AaPoIu",
}
# The part of each secret that must never be shown.
SECRET_PART = {
    "basic auth url": "Tr0ub4dor3",
    "authorization basic": "ZGVwbG95OlRyMHViNGRvcjM",
    "bearer": "7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e",
    "password assignment": "Tr0ub4dor3",
    "env style": "Tr0ub4dor3",
    "json in a string": "Tr0ub4dor3",
    "pem": "MIIEowIBAAKCAQEAu1SU1",
    "openssh": "b3BlbnNzaC1rZXktdjE",
}

# Ordinary values approvers must still be able to read.
NOT_SECRETS = [
    "the quick brown fox jumps over the lazy dog",
    "/home/alice/projects/mcp-gate/docs/controls.md",
    "3f786850e387550fdab836ed7e6dc881de23001b",  # a commit id
    "550e8400-e29b-41d4-a716-446655440000",
    "Basic authentication is configured in nginx.conf",
    "author=Jane Doe <jane@example.com>",
    "SELECT id, name FROM users WHERE created_at > now() - interval '1 day'",
    "https://example.com/docs/getting-started?page=2",
]


def _secret(name: str) -> str:
    return SECRET_PART.get(name, CORPUS[name])


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_a_secret_in_an_ordinary_argument_is_hidden(name: str) -> None:
    args = {"message": f"deploy using {CORPUS[name]} then report back", "count": 3}
    hidden = redact(args, max_string=10_000)
    assert _secret(name) not in json.dumps(hidden)
    assert "[redacted]" in hidden["message"] and hidden["message"].startswith("deploy using ")
    assert hidden["count"] == 3
    assert _secret(name) not in json.dumps(scrub(args))


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_ordinary_text_is_left_as_it_is(text: str) -> None:
    assert scrub_text(text) == text
    assert redact({"text": text}) == {"text": text}


@pytest.mark.parametrize(
    "key",
    ["pwd", "auth", "passphrase", "otp", "jwt", "authToken", "X-Api-Key", "db_pass", "pin", "mfa_code"],
)
def test_values_under_more_secret_key_names_are_hidden(key: str) -> None:
    assert redact({key: "1234", "path": "/tmp/x"}) == {key: "[redacted]", "path": "/tmp/x"}


@pytest.mark.parametrize("key", ["author", "monkey", "keyboard_layout", "private", "passenger", "name"])
def test_key_names_are_matched_by_words_not_letters(key: str) -> None:
    assert not is_secret_key(key)


def test_a_secret_across_the_cut_is_hidden_before_the_string_is_cut() -> None:
    secret = CORPUS["stripe live secret"]
    value = "x" * 250 + " " + secret
    hidden = redact(value)
    assert "sk_live" not in hidden and hidden.startswith("x" * 250 + " [reda")


def test_a_detector_that_matches_a_prefix_still_hides_the_whole_token() -> None:
    # detect-secrets' Stripe pattern stops after 24 characters; today's keys are longer.
    secret = "sk_live_" + "aB3" * 30
    assert scrub_text(f"key {secret} end") == "key [redacted] end"


def test_rules_add_key_words_and_patterns_and_turn_entropy_off() -> None:
    rules = RedactionRules(secret_keys=("ticket",), patterns=(r"ACME-[0-9]{6}",), entropy_limit=None)
    value = {"ticket": "T-1", "note": "badge ACME-123456 and Zx9Qm3Lp8Rt2Vw6Ky1Bn5Hj7Gf4Ds0AaPoIu"}
    assert redact(value, rules=rules) == {
        "ticket": "[redacted]",
        "note": "badge [redacted] and Zx9Qm3Lp8Rt2Vw6Ky1Bn5Hj7Gf4Ds0AaPoIu",
    }
    assert redact(value)["ticket"] == "T-1"
    hex_rules = RedactionRules(hex_entropy_limit=3.0)
    assert scrub_text("commit 3f786850e387550fdab836ed7e6dc881de23001b", hex_rules) == "commit [redacted]"


def test_slack_shows_arguments_through_the_same_redaction() -> None:
    args = {"name": "plan", "text": " ".join(CORPUS[n] for n in ("stripe live secret", "google api key"))}
    args |= {"note": CORPUS["password assignment"] + " " + CORPUS["authorization basic"]}
    view: dict[str, Any] = {
        "id": "K7Q2M9XA",
        "state": "pending",
        "name": "notes__write_note",
        "server": "notes",
        "tool": "write_note",
        "requester": {"agent": "a", "owner": "alice@example.com"},
        "tier": "high",
        "rule": "rule[1]",
        "reason": "r",
        "args": args,  # as an older gate may have stored them
        "args_sha256": "ab" * 32,
        "pin": "cd" * 32,
        "policy_sha256": "ef" * 32,
        "required": 1,
        "groups": [],
        "approvals": 0,
        "quorum": "0 of 1 approvals",
        "votes": [],
        "created_at": "2026-11-24T12:00:00.000000Z",
        "expires_at": "2026-11-24T12:15:00.000000Z",
        "expires_in_seconds": 900,
        "correlation_id": "c0ffee",
        "closed_by": None,
    }
    text = json.dumps(render_request(view, gate="g", recent_calls=[{"name": "x", "args": args, "ts": ""}]))
    for name in ("stripe live secret", "google api key", "password assignment", "authorization basic"):
        assert _secret(name) not in text


def test_the_redaction_section_of_gate_toml_is_read_and_checked(tmp_path: Path) -> None:
    extra = '[redaction]\nsecret_keys = ["ticket"]\npatterns = ["ACME-[0-9]+"]\nentropy = false\n'
    path = write_config(tmp_path / "gate", servers={}, extra=extra)
    rules = load_config(path, {}).redaction
    assert rules == RedactionRules(secret_keys=("ticket",), patterns=("ACME-[0-9]+",), entropy_limit=None)
    assert load_config(write_config(tmp_path / "plain", servers={}), {}).redaction == DEFAULT_RULES
    bad = write_config(tmp_path / "bad", servers={}, extra='[redaction]\npatterns = ["(unclosed"]\n')
    with pytest.raises(ConfigError, match=r"redaction\.patterns\[0\]"):
        load_config(bad, {})


def test_the_approvers_view_scrubs_arguments_an_older_gate_stored_with_the_configured_rules() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    stored = {"note": f"badge ACME-123456 key {CORPUS['google api key']}", "pwd": "4821"}
    request = ApprovalRequest(
        id="K7Q2M9XA",
        binding=Binding("a", "alice@example.com", "notes", "write_note", "p", "d", "pol"),
        correlation_id="c1",
        tier="high",
        required=1,
        groups=(),
        rule="r",
        reason="r",
        args=stored,
        created_at=now,
        expires_at=now + timedelta(minutes=15),
    )
    rules = RedactionRules(patterns=(r"ACME-[0-9]{6}",))
    shown = request_view(request, now, rules)["args"]
    assert shown == {"note": "badge [redacted] key [redacted]", "pwd": "[redacted]"}
    assert request_view(request, now)["args"]["note"] == "badge ACME-123456 key [redacted]"


# -- the detectors without detect-secrets' import ------------------------------------------------


def test_the_detectors_are_those_the_installed_detect_secrets_has() -> None:
    """secret_patterns.PATTERNS is read from detect-secrets DETECT_SECRETS; another installed
    version is read live. Either way the detectors are the installed detect-secrets' own."""
    assert detector_patterns() == read_patterns()
    assert len(PATTERNS) > 40  # every regex plugin, not an empty list that would hide nothing


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([BASE64_CHARSET, HEX_CHARSET]).flatmap(
        lambda charset: st.tuples(st.just(charset), st.text(alphabet=charset, min_size=1, max_size=80))
    )
)
@example((HEX_CHARSET, "0123456789012345678901"))  # digits alone count less over the hex alphabet
@example((HEX_CHARSET, "7"))
def test_entropy_is_detect_secrets_own(case: tuple[str, str]) -> None:
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString

    charset, text = case
    theirs = Base64HighEntropyString() if charset == BASE64_CHARSET else HexHighEntropyString()
    assert entropy(text, charset) == theirs.calculate_shannon_entropy(text)


def test_scrubbing_hides_secrets_without_importing_detect_secrets() -> None:
    code = (
        "import sys; from mcp_gate.redaction import scrub_text; "
        f"print(scrub_text({CORPUS['aws access key id']!r} + ' and ' + {CORPUS['gitlab']!r})); "
        "print('detect_secrets' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["[redacted] and [redacted]", "False"]
