from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_gate.evidence import (
    GENESIS_HASH,
    ChainVerifier,
    Record,
    VerifyReport,
    canonical_json,
    chain_hash,
    digest,
    new_event,
    redact,
    render_story,
    sha256_hex,
)
from mcp_gate.redaction import is_secret_key

Row = tuple[Any, str, str, str, str | None, str, str, str]


def test_all_names_are_exported() -> None:
    import mcp_gate.evidence as evidence

    for name in evidence.__all__:
        assert hasattr(evidence, name)


# canonical JSON


def test_canonical_json_sorts_keys_by_utf16_code_units_and_drops_whitespace() -> None:
    value = {"b": 1, "a": {"z": [1, 2], "y": None}, "\u20ac": True, "\U0001f600": False, "\uff41": 0}
    # U+1F600 is a surrogate pair (D83D ...) in UTF-16, so it sorts before U+FF41 (RFC 8785 3.2.3).
    assert canonical_json(value) == (
        '{"a":{"y":null,"z":[1,2]},"b":1,"\u20ac":true,"\U0001f600":false,"\uff41":0}'.encode()
    )


def test_canonical_json_writes_numbers_in_the_ecmascript_form() -> None:
    assert canonical_json([1.0, -0.0, 1e21, 1e-7, 0.1, 123.456e5, 2**53 - 1]) == (
        b"[1,0,1e+21,1e-7,0.1,12345600,9007199254740991]"
    )


def test_canonical_json_escapes_only_what_it_must() -> None:
    assert canonical_json('a\u2028\x00"\\/é') == b'"a\xe2\x80\xa8\\u0000\\"\\\\/\xc3\xa9"'


@pytest.mark.parametrize("value", [2**53, float("nan"), float("inf"), {1: "x"}, b"bytes", "\ud800"])
def test_canonical_json_refuses_values_outside_i_json(value: Any) -> None:
    with pytest.raises(ValueError):
        canonical_json(value)


def test_digest_is_the_sha256_of_the_canonical_form_so_key_order_does_not_matter() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) == sha256_hex(b'{"a":1}')
    assert digest({"a": 1}) != digest({"a": 2})


def test_chain_hash_covers_the_previous_hash_and_the_body() -> None:
    body = b'{"seq":1}'
    assert chain_hash(GENESIS_HASH, body) == sha256_hex(GENESIS_HASH.encode() + body)
    assert chain_hash(GENESIS_HASH, body) != chain_hash("1" * 64, body)


def test_new_event_has_a_fresh_id_and_the_given_fields() -> None:
    first = new_event("call.requested", ts="2026-11-24T16:48:32.123456Z", correlation_id="c1", tool="t")
    second = new_event("call.requested", ts="2026-11-24T16:48:32.123456Z", correlation_id="c1", tool="t")
    assert first["event_id"] != second["event_id"]
    assert first == {**first, "event_type": "call.requested", "correlation_id": "c1", "tool": "t"}
    assert "seq" not in first


# redaction


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "api_token",
        "PASSWORD",
        "db_passwd",
        "client_secret",
        "api_key",
        "Authorization",
        "Set-Cookie",
        "aws_credentials",
    ],
)
def test_redact_hides_values_under_secret_looking_keys(key: str) -> None:
    assert redact({key: "hunter2", "path": "/tmp/x"}) == {key: "[redacted]", "path": "/tmp/x"}


def test_redact_hides_secrets_nested_in_lists_and_objects_even_when_the_value_is_a_container() -> None:
    value = {
        "servers": [{"name": "db", "login": {"password": {"v": 1}, "user": "u"}}],
        "headers": {"Cookie": [1]},
    }
    assert redact(value) == {
        "servers": [{"name": "db", "login": {"password": "[redacted]", "user": "u"}}],
        "headers": {"Cookie": "[redacted]"},
    }


def test_redact_cuts_long_strings_and_says_how_much_was_cut() -> None:
    assert redact("x" * 300) == "x" * 256 + "…[cut 44 chars]"
    assert redact("abcdef", max_string=4) == "abcd…[cut 2 chars]"
    assert redact("abcd", max_string=4) == "abcd"


def test_redact_cuts_long_lists_and_objects_with_a_marker() -> None:
    assert redact(list(range(5)), max_items=3) == [0, 1, 2, "[cut 2 items]"]
    assert redact({f"k{i}": i for i in range(5)}, max_items=2) == {"k0": 0, "k1": 1, "[cut]": "3 more keys"}


def test_redact_replaces_containers_nested_too_deep() -> None:
    value: Any = "bottom"
    for _ in range(5):
        value = [value]
    assert redact(value, max_depth=3) == [[["[cut: too deep]"]]]
    assert redact(value, max_depth=5) == value


def test_redact_turns_non_json_values_into_strings() -> None:
    assert redact({"b": b"abc", "t": (1, 2), "n": float("nan"), "big": 2**64, 3: None}) == {
        "b": "<3 bytes>",
        "t": [1, 2],
        "n": "nan",
        "big": str(2**64),
        "3": None,
    }
    assert redact("lone \ud800 surrogate") == "lone ? surrogate"


def test_redact_survives_self_referencing_values_and_hostile_reprs() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    loop: list[Any] = []
    loop.append(loop)
    assert redact(loop, max_depth=2) == [["[cut: too deep]"]]
    assert redact(Hostile()) == "<Hostile>"


def test_redact_does_not_change_its_input() -> None:
    value = {"token": "t", "items": ["x" * 300]}
    redact(value)
    assert value == {"token": "t", "items": ["x" * 300]}


_text = st.text(max_size=20) | st.sampled_from(["\ud800", "a\udfffb", "x" * 300])
_keys = _text | st.sampled_from(["Token", "api_key", "PASSWORD", "Set-Cookie", "credentials"])
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | _text
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=60) | st.dictionaries(_keys, children, max_size=60),
    max_leaves=200,
)


def _secret_values(value: Any) -> list[Any]:
    """Every value in a redacted tree that sits under a secret-looking key."""
    found: list[Any] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if is_secret_key(key):
                found.append(item)
            else:
                found.extend(_secret_values(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_secret_values(item))
    return found


@settings(max_examples=300, deadline=None)
@given(_json, st.integers(1, 300), st.integers(1, 60), st.integers(1, 10))
def test_redact_never_raises_and_always_gives_canonical_json_with_secrets_hidden(
    value: Any, max_string: int, max_items: int, max_depth: int
) -> None:
    redacted = redact(value, max_string=max_string, max_items=max_items, max_depth=max_depth)
    canonical_json(redacted)  # never refuses what redact produced
    assert all(item == "[redacted]" for item in _secret_values(redacted))


# chain verification over in-memory rows


def _chain(count: int) -> list[Row]:
    rows: list[Row] = []
    prev = GENESIS_HASH
    for seq in range(1, count + 1):
        body = new_event(
            "call.requested",
            ts=f"2026-11-24T16:48:{seq:02d}.000000Z",
            correlation_id=None if seq % 3 == 0 else f"c{seq}",
            args={"n": seq},
        )
        body["seq"] = seq
        text = canonical_json(body)
        entry = chain_hash(prev, text)
        rows.append(
            (
                seq,
                body["event_id"],
                body["ts"],
                body["event_type"],
                body["correlation_id"],
                text.decode(),
                prev,
                entry,
            )
        )
        prev = entry
    return rows


def _verify(rows: list[Row]) -> VerifyReport:
    verifier = ChainVerifier()
    for row in rows:
        verifier.feed(*row)
    return verifier.report()


def _replace(rows: list[Row], index: int, **changes: Any) -> list[Row]:
    names = ("seq", "event_id", "ts", "event_type", "correlation_id", "body", "prev_hash", "entry_hash")
    row = dict(zip(names, rows[index], strict=True))
    row.update(changes)
    out = list(rows)
    out[index] = tuple(row[name] for name in names)
    return out


def test_an_intact_chain_verifies_and_reports_its_head() -> None:
    rows = _chain(10)
    assert _verify(rows) == VerifyReport(
        ok=True, records=10, head_hash=rows[-1][7], first_bad_seq=None, problem=None
    )


def test_an_empty_chain_verifies_with_the_genesis_head() -> None:
    assert _verify([]) == VerifyReport(
        ok=True, records=0, head_hash=GENESIS_HASH, first_bad_seq=None, problem=None
    )


Tamper = Callable[[list[Row]], list[Row]]


@pytest.mark.parametrize(
    ("tamper", "first_bad_seq", "words"),
    [
        pytest.param(
            lambda r: _replace(r, 4, body=r[4][5].replace('"n":5', '"n":6')), 5, "entry_hash", id="edit"
        ),
        pytest.param(lambda r: _replace(r, 4, body=r[4][5][:-1]), 5, "not valid", id="truncate-body"),
        pytest.param(lambda r: _replace(r, 4, body="[1]"), 5, "not a JSON object", id="not-object"),
        pytest.param(
            lambda r: _replace(r, 4, body=json.dumps(json.loads(r[4][5]), indent=1)),
            5,
            "canonical",
            id="reformat",
        ),
        pytest.param(lambda r: _replace(r, 6, event_type="call.executed"), 7, "event_type", id="column"),
        pytest.param(lambda r: _replace(r, 2, correlation_id="other"), 3, "correlation_id", id="null-column"),
        pytest.param(lambda r: r[:3] + r[4:], 4, "seq 4 missing after seq 3", id="delete"),
        pytest.param(lambda r: r[1:], 1, "seq 1 missing at the start", id="delete-first"),
        pytest.param(lambda r: r[:5] + [r[4]] + r[5:], 6, "duplicated", id="duplicate"),
        pytest.param(lambda r: [*r[:2], r[5], *r[3:5], r[2], *r[6:]], 3, "missing", id="swap-rows"),
        pytest.param(lambda r: _replace(r, 3, seq="4"), 4, "not a number", id="seq-text"),
        pytest.param(lambda r: _replace(r, 0, prev_hash="f" * 64), 1, "genesis", id="first-prev"),
    ],
)
def test_each_kind_of_tampering_is_found_at_the_first_affected_seq(
    tamper: Tamper, first_bad_seq: int, words: str
) -> None:
    report = _verify(tamper(_chain(10)))
    assert not report.ok
    assert report.first_bad_seq == first_bad_seq
    assert report.problem is not None and words in report.problem and "\n" not in report.problem


def test_swapped_contents_under_the_original_seq_numbers_are_found() -> None:
    rows = _chain(10)
    swapped = [*rows[:2], (3, *rows[5][1:]), *rows[3:5], (6, *rows[2][1:]), *rows[6:]]
    report = _verify(swapped)
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert report.problem == "seq 3: the body says seq 6 (moved or reordered?)"


def test_a_forged_row_with_its_own_correct_hash_breaks_the_chain_at_the_row_after_it() -> None:
    rows = _chain(10)
    body = new_event(
        "approval.decided", ts="2026-11-24T16:48:04.500000Z", correlation_id="c4", decision="approve"
    )
    body["seq"] = 5
    text = canonical_json(body)
    forged: Row = (
        5,
        body["event_id"],
        body["ts"],
        body["event_type"],
        "c4",
        text.decode(),
        rows[3][7],
        chain_hash(rows[3][7], text),
    )
    renumbered = [(seq + 1, *rest) for seq, *rest in rows[4:]]
    report = _verify([*rows[:4], forged, *renumbered])
    assert (report.ok, report.first_bad_seq) == (False, 6)
    assert report.problem == "seq 6: the body says seq 5 (moved or reordered?)"


def test_a_relinked_prev_hash_is_found_even_when_the_entry_hash_is_recomputed() -> None:
    rows = _chain(10)
    text = rows[4][5].encode()
    report = _verify(_replace(rows, 4, prev_hash="a" * 64, entry_hash=chain_hash("a" * 64, text)))
    assert report.problem == "seq 5: prev_hash does not link to seq 4 (inserted or reordered?)"


def test_verification_stops_at_the_first_problem_but_counts_every_row() -> None:
    rows = _chain(10)
    tampered = _replace(_replace(rows, 7, event_type="x"), 2, event_type="y")
    report = _verify(tampered)
    assert (report.records, report.first_bad_seq, report.head_hash) == (10, 3, rows[1][7])


# render_story


def _record(seq: int, event_type: str, **fields: Any) -> Record:
    body = {**new_event(event_type, ts=f"2026-11-24T16:48:3{seq}.123456Z", correlation_id="corr-1", **fields)}
    body["seq"] = seq
    return Record(seq, body["event_id"], body["ts"], event_type, "corr-1", body, GENESIS_HASH, GENESIS_HASH)


def test_render_story_tells_who_called_what_and_what_happened() -> None:
    who = {"requester": {"agent": "claude-code", "owner": "alice"}, "server": "fs", "tool": "write_file"}
    story = render_story(
        [
            _record(
                1, "call.requested", **who, args={"path": "/etc/x", "token": "[redacted]", "text": "y" * 500}
            ),
            _record(
                2, "policy.decided", **who, tier="high", rule="rule 2", reason="writes files", requirement="x"
            ),
            _record(3, "call.executed", **who, duration_ms=12.5, is_error=False, result={"ok": True}),
            _record(4, "call.failed", **who, error="Connection closed"),
            _record(5, "tool.drifted", **who, pin="ab" * 32),
        ]
    )
    lines = story.splitlines()
    assert lines[0] == "call corr-1  requester claude-code (owner alice)  tool fs__write_file"
    assert "16:48:31.123" in lines[1] and "call.requested" in lines[1] and '"path":"/etc/x"' in lines[1]
    assert len(lines[1]) < 300
    assert "tier=high" in lines[2] and "rule=rule 2" in lines[2] and "(writes files)" in lines[2]
    assert "duration_ms=12.5" in lines[3] and 'result={"ok":true}' in lines[3]
    assert "error=Connection closed" in lines[4]
    assert "pin=abababababab" in lines[5] and "ab" * 32 not in lines[5]


def test_render_story_copes_with_missing_odd_and_unknown_fields() -> None:
    odd = Record(2, "e", "not a time", "policy.decided", None, {"tier": ["?"], "requester": "bob"}, "", "")
    story = render_story([_record(1, "something.new", extra={"a": 1}), odd, _record(3, "call.requested")])
    lines = story.splitlines()
    assert lines[0].startswith("call corr-1  requester ?")
    assert "something.new" in lines[1]
    assert "not a time" in lines[2] and 'tier=["?"]' in lines[2]
    assert "args=null" in lines[3]
    assert render_story([]) == "(no records)"
