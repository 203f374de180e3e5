"""Pure redaction: the one place that decides what in a value is a secret, for every sink.

Evidence, the approvers' CLI and API, Slack and logs all show values through `redact` (or
`scrub_text` for a single string). A value is hidden when its key names a secret (by words,
so `author` is not `auth`), and any string is scrubbed of what looks like a credential: the
regex detectors of Yelp's `detect-secrets` (AWS, GitHub, GitLab, Slack, Stripe, JWT, private
keys, basic-auth URLs, ...), a few patterns it lacks (Google API keys, `password=...`
assignments, `Basic`/`Bearer` credentials, PEM blocks) and, optionally, a Shannon-entropy check
on long tokens. What is found is replaced by "[redacted]" up to the edges of the token it sits in,
so a detector that matches a prefix still hides the whole key.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import re2  # type: ignore[import-untyped]  # google-re2 ships no type hints

from mcp_gate.secret_patterns import BASE64_CHARSET, HEX_CHARSET, detector_patterns, entropy

__all__ = [
    "CUT_KEY",
    "DEFAULT_RULES",
    "REDACTED",
    "TOO_DEEP",
    "RedactionRules",
    "is_secret_key",
    "redact",
    "safe_repr",
    "scrub",
    "scrub_text",
]

REDACTED = "[redacted]"
TOO_DEEP = "[cut: too deep]"
CUT_KEY = "[cut]"
_MAX_SAFE_INT = 2**53 - 1

# A key is secret when one of its words is one of these (words split at _, -, ., spaces and
# camelCase; a trailing "s" is ignored) ...
_SECRET_KEY_WORDS = frozenset(
    {
        "token", "password", "passwd", "pwd", "pass", "passphrase", "passcode", "secret", "key",
        "apikey", "auth", "authorization", "cookie", "credential", "creds", "otp", "totp", "mfa",
        "jwt", "bearer", "pin", "cvv", "ssn", "signature",
    }
)  # fmt: skip
# ... or when it contains one of these anywhere (keys written as one word: "dbpassword").
_SECRET_KEY_PARTS = (
    "token", "password", "passwd", "passphrase", "secret", "credential", "apikey", "accesskey",
    "privatekey", "signingkey", "authorization", "cookie", "sessionid",
)  # fmt: skip
_KEY_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")

# What detect-secrets leaves out and credentials in agent arguments often look like.
_EXTRA_PATTERNS = (
    re.compile(r"AIza[0-9A-Za-z_-]{35}"),  # Google API key
    re.compile(r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}"),  # Stripe, any length
    re.compile(r"xox[abposre]-[A-Za-z0-9-]{6,}|xapp-[A-Za-z0-9-]{6,}"),  # Slack
    re.compile(r"github_pat_\w{20,}|gh[pousr]_[A-Za-z0-9]{20,}"),  # GitHub, any length
    re.compile(r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"),  # OpenAI, Anthropic
    re.compile(r"npm_[A-Za-z0-9]{30,}|hf_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),  # JWT
)
_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
    r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|$)"
)
# `password=hunter2`, `"pwd": "1234"`, `token: abc` inside a string: the value is hidden. The key's
# parts around the key word are bounded (64 characters each, the one after it possessive), so a long
# run of `-`, `_` or `.`, or of repeated key words, costs linear time rather than quadratic.
_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9])([\w.-]{0,64}?(?:password|passwd|pwd|passphrase|passcode|secret|token|api[_-]?key"
    r"|access[_-]?key|private[_-]?key|authorization|auth|otp|jwt|credentials?)(?:[_-][\w-]{0,64}+)?[\"']?\s*[:=]\s*[\"']?)"
    r"([^\s\"'&;,}\]]+)"
)
# `Authorization: Basic dXNlcjpwYXNz`, `Bearer abc.def`: the credential after the scheme.
_SCHEME = re.compile(r"(?i)\b(basic|bearer|token|digest)\s+([A-Za-z0-9._~+/-]{8,}=*)")
# The characters a credential token is made of: a match is widened to the whole token.
_TOKEN_CHAR = re.compile(r"[A-Za-z0-9_\-+/=.~]")
_TOKEN_START = re.compile(r"[A-Za-z0-9_\-+/.~]")  # not "=": it ends the key in `key=secret`
_B64_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{20,}={0,2}")
_HEX_TOKEN = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{20,}(?![0-9A-Za-z])")
# Strings shorter than this hold no credential any detector here finds (and are most strings).
_MIN_SCAN = 8


@dataclass(frozen=True)
class RedactionRules:
    """What counts as a secret, beyond the built-in detectors (gate.toml `[redaction]`).

    `secret_keys` are more key words that hide their value; `patterns` more regular expressions
    whose matches are hidden in any string; `entropy_limit` the Shannon entropy (bits per
    character, detect-secrets' Base64 measure) above which a token of 20+ characters is taken for
    a secret (None: no entropy check); `hex_entropy_limit` the same for hex tokens (off by default:
    commit ids and digests are hex and approvers need to read them)."""

    secret_keys: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    entropy_limit: float | None = 4.5
    hex_entropy_limit: float | None = None


DEFAULT_RULES = RedactionRules()


def is_secret_key(key: str, rules: RedactionRules = DEFAULT_RULES) -> bool:
    """Whether a value under this key is hidden whatever it looks like."""
    lowered = key.lower()
    if any(part in lowered for part in _SECRET_KEY_PARTS):
        return True
    words = _extra_words(rules.secret_keys) | _SECRET_KEY_WORDS
    for word in _KEY_WORD.findall(key):
        word = word.lower()
        if word in words or (word.endswith("s") and word[:-1] in words):
            return True
    return False


def scrub_text(text: str, rules: RedactionRules = DEFAULT_RULES) -> str:
    """The text with every credential-looking part replaced by "[redacted]"."""
    if len(text) < _MIN_SCAN:
        return text
    spans: list[tuple[int, int]] = []
    for match in _PEM.finditer(text):
        spans.append(match.span())
    for pattern in _detectors(rules.patterns) if _utf8(text) else _backtracking(rules.patterns):
        for match in pattern.finditer(text):
            start, end = _secret_span(match)
            spans.append(_widen(text, start, end))
    for match in _ASSIGNMENT.finditer(text):
        spans.append(_widen(text, *match.span(2)))
    for match in _SCHEME.finditer(text):
        if _looks_encoded(match.group(2)):
            spans.append(match.span(2))
    if rules.entropy_limit is not None:
        for match in _B64_TOKEN.finditer(text):
            if entropy(match.group(), BASE64_CHARSET) > rules.entropy_limit:
                spans.append(match.span())
    if rules.hex_entropy_limit is not None:
        for match in _HEX_TOKEN.finditer(text):
            if entropy(match.group(), HEX_CHARSET) > rules.hex_entropy_limit:
                spans.append(match.span())
    return _replace(text, spans)


def redact(
    value: Any,
    *,
    rules: RedactionRules = DEFAULT_RULES,
    max_string: int = 256,
    max_items: int = 50,
    max_depth: int = 8,
) -> Any:
    """A copy of a value that is safe and small enough to store or show.

    Values under keys that look secret become "[redacted]", and so do credentials found inside
    any string; long strings, lists and objects are then cut with a marker saying how much was
    cut; containers nested deeper than `max_depth` become "[cut: too deep]". Never raises, and
    the result is always accepted by `canonical_json`.
    """
    return _Redactor(rules, max_string, max_items, max_depth).value(value, 0)


def scrub(value: Any, rules: RedactionRules = DEFAULT_RULES) -> Any:
    """A JSON value with secrets hidden as `redact` hides them, but nothing cut: for showing
    values that were stored redacted (perhaps by an older gate) once more, in full."""
    if isinstance(value, str):
        return scrub_text(value, rules)
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if is_secret_key(str(k), rules) else scrub(v, rules) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v, rules) for v in value]
    return value


@dataclass(frozen=True)
class _Redactor:
    rules: RedactionRules
    max_string: int
    max_items: int
    max_depth: int

    def value(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT else self.text(_int_text(value))
        if isinstance(value, float):
            return value if math.isfinite(value) else repr(value)
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping | list | tuple) and depth >= self.max_depth:
            return TOO_DEEP
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            items = list(value.items())
            for key, item in items[: self.max_items]:
                name = self.key(key)
                out[name] = REDACTED if is_secret_key(name, self.rules) else self.value(item, depth + 1)
            if len(items) > self.max_items:
                out[CUT_KEY] = f"{len(items) - self.max_items} more keys"
            return out
        if isinstance(value, list | tuple):
            kept = [self.value(item, depth + 1) for item in value[: self.max_items]]
            if len(value) > self.max_items:
                kept.append(f"[cut {len(value) - self.max_items} items]")
            return kept
        if isinstance(value, bytes | bytearray | memoryview):
            return f"<{len(value)} bytes>"
        return self.text(safe_repr(value))

    def text(self, text: str) -> str:
        # Scrub before cutting, so a secret across the cut is not half shown; but only as much as
        # is kept (plus room for one long credential), so a megabyte argument stays cheap.
        room = self.max_string + 4096
        if len(text) > room:
            text = scrub_text(text[:room], self.rules) + text[room:]
        else:
            text = scrub_text(text, self.rules)
        return _cut_string(text, self.max_string)

    def key(self, key: Any) -> str:
        if isinstance(key, str):
            return _cut_string(key, self.max_string)
        if key is None or isinstance(key, bool | float):
            return _cut_string(json.dumps(key), self.max_string)
        if isinstance(key, int):
            return _cut_string(_int_text(key), self.max_string)
        return _cut_string(safe_repr(key), self.max_string)


@lru_cache(maxsize=16)
def _backtracking(extra: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    """Every detector in Python's engine: detect-secrets' regex plugins (but public IP addresses,
    secret_patterns.py), ours, then `extra`. Compiled on first use: most texts RE2 reads."""
    builtin = tuple(re.compile(pattern, flags) for pattern, flags in detector_patterns())
    return builtin + _EXTRA_PATTERNS + tuple(re.compile(p) for p in extra)


@lru_cache(maxsize=16)
def _detectors(extra: tuple[str, ...]) -> tuple[Any, ...]:
    """The detectors, each compiled by RE2 where RE2 can run it: some of detect-secrets' patterns
    (npm's `//.+/:_authToken=`, OpenAI's `sk-[...]*[...]{20}T3BlbkFJ`) take quadratic time in
    Python's engine on a long run of `/` or `sk-`, RE2 linear time. Those that need lookaround or
    are written verbose stay in Python's engine."""
    ours = ((p.pattern, p.flags) for p in _EXTRA_PATTERNS)
    given = ((p, re.compile(p).flags) for p in extra)
    return tuple(_linear(pattern, flags) for pattern, flags in (*detector_patterns(), *ours, *given))


def _linear(pattern: str, flags: int) -> Any:
    if flags & ~(re.UNICODE | re.IGNORECASE):
        return re.compile(pattern, flags)
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not flags & re.IGNORECASE
    try:
        return re2.compile(pattern, options)
    except re2.error:
        return re.compile(pattern, flags)


def _utf8(text: str) -> bool:
    """Whether RE2 can read `text` (it reads UTF-8; a lone surrogate is not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@lru_cache(maxsize=16)
def _extra_words(words: tuple[str, ...]) -> frozenset[str]:
    return frozenset(w.lower() for w in words)


def _secret_span(match: Any) -> tuple[int, int]:
    """The part of a detector's match (of `re` or RE2) that is the secret: its last group when
    that does not start the match (a password inside a URL), else the whole match (a token's
    prefix group)."""
    for index in range(len(match.groups()), 0, -1):
        start, end = match.span(index)
        if start >= 0 and end > start:
            if start == match.start():
                break
            return start, end
    whole: tuple[int, int] = match.span()
    return whole


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and _TOKEN_START.match(text, start - 1):
        start -= 1
    while end < len(text) and _TOKEN_CHAR.match(text, end):
        end += 1
    return start, end


def _looks_encoded(credential: str) -> bool:
    """`Basic dXNlcjpwYXNz` but not `Basic authentication`: a digit, a symbol or inner capitals."""
    return any(c.isdigit() or c in "+/=_-." for c in credential) or any(c.isupper() for c in credential[1:])


def _replace(text: str, spans: Iterable[tuple[int, int]]) -> str:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    if not merged:
        return text
    out: list[str] = []
    last = 0
    for start, end in merged:
        out.append(text[last:start])
        out.append(REDACTED)
        last = end
    out.append(text[last:])
    return "".join(out)


def _cut_string(text: str, max_string: int) -> str:
    if len(text) > max_string:
        text = f"{text[:max_string]}…[cut {len(text) - max_string} chars]"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800" escape
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _int_text(number: int) -> str:
    try:
        return str(number)
    except ValueError:  # beyond Python's int -> str digit limit
        return f"<int of {number.bit_length()} bits>"


def safe_repr(value: Any) -> str:
    """repr() that never raises."""
    try:
        return repr(value)
    except Exception:  # a foreign __repr__ may raise anything; redaction must not
        return f"<{type(value).__name__}>"
