"""Pure policy: a manifest's rules as values, the tier a call gets from them, and what each tier requires."""

from __future__ import annotations

import enum
import fnmatch
import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, assert_never

import re2  # type: ignore[import-untyped]  # google-re2 ships no type hints
import rfc8785

__all__ = [
    "CASES_DIR",
    "DEFAULT_REQUIREMENTS",
    "SEPARATOR",
    "UNSET",
    "protected_path",
    "TIERS",
    "Approvals",
    "Block",
    "Escalation",
    "Condition",
    "Confirm",
    "Decision",
    "Manifest",
    "Regex",
    "Requirement",
    "Rule",
    "Run",
    "Tier",
    "classify",
    "compile_glob",
    "condition_holds",
    "describe_requirement",
    "json_equal",
    "policy_sha256",
    "resolve_pointer",
    "shadow_outcome",
    "split_name",
]

Tier = Literal["low", "medium", "high", "critical", "blocked"]
TIERS: tuple[Tier, ...] = ("low", "medium", "high", "critical", "blocked")

# A manifest directory keeps its policy test cases (policy_tests.py) in this folder.
CASES_DIR = "tests"
# An offered tool's name is `<server>__<tool>`: the server's manifest holds the tool's rules.
SEPARATOR = "__"


def split_name(name: str) -> tuple[str, str] | None:
    """(server, tool) of an offered tool's name, or None when it names no server."""
    server, sep, tool = name.partition(SEPARATOR)
    if not sep or not server or not tool:
        return None
    return server, tool


@dataclass(frozen=True)
class Run:
    """The call runs at once."""


@dataclass(frozen=True)
class Confirm:
    """The requesting side confirms the call in its own client."""


@dataclass(frozen=True)
class Approvals:
    """`count` distinct approvers, none of them the requester's owner, approve the exact call.

    `groups`: approver groups that may decide (empty: any configured approver). `expires_after`:
    how long a request stays open, in seconds (None: the gate's default)."""

    count: int
    groups: tuple[str, ...] = ()
    expires_after: float | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"Approvals.count must be at least 1, not {self.count}")


@dataclass(frozen=True)
class Block:
    """The call never runs."""


Requirement = Run | Confirm | Approvals | Block

DEFAULT_REQUIREMENTS: Mapping[Tier, Requirement] = MappingProxyType(
    {
        "low": Run(),
        "medium": Confirm(),
        "high": Approvals(1),
        "critical": Approvals(2),
        "blocked": Block(),
    }
)


def describe_requirement(requirement: Requirement) -> str:
    """What a requirement asks for, as words that fit after "requires"."""
    match requirement:
        case Run():
            return "run"
        case Confirm():
            return "a confirmation by the requester"
        case Approvals(count=1):
            return "1 approval"
        case Approvals(count=count):
            return f"{count} approvals"
        case Block():
            return "never runs"
        case _:
            assert_never(requirement)


def shadow_outcome(
    requirement: Requirement, groups: tuple[str, ...], *, can_confirm: bool, confirm_fallback: str
) -> dict[str, Any]:
    """What an enforcing gate would have done with a call that shadow mode let run: its `action`
    (run, confirm, hold, refuse), the approvals and groups a hold would have needed, and a `line`
    for people ("would have held for 1 approval from sre")."""
    if isinstance(requirement, Confirm) and not can_confirm:
        if confirm_fallback == "deny":
            line = "would have refused it: it needs a confirmation and this client cannot be asked"
            return {"action": "refuse", "approvals": 0, "groups": [], "line": line}
        requirement, groups = Approvals(1), ()
    match requirement:
        case Run():
            return {"action": "run", "approvals": 0, "groups": [], "line": "would have run it"}
        case Confirm():
            line = "would have asked the person at the agent to confirm it"
            return {"action": "confirm", "approvals": 0, "groups": [], "line": line}
        case Approvals(count=count):
            who = " or ".join(groups) if groups else "any approver"
            line = f"would have held for {describe_requirement(requirement)} from {who}"
            return {"action": "hold", "approvals": count, "groups": list(groups), "line": line}
        case Block():
            line = "would have refused it: its tier never runs"
            return {"action": "refuse", "approvals": 0, "groups": [], "line": line}
        case _:
            assert_never(requirement)


# -- a manifest's values: the inputs of classify ---------------------------------------------------


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET = _Unset.UNSET
"""`Condition.equals` when the condition has no `equals` check (TOML has no null to stand for it)."""


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print parse errors to stderr itself; we raise them
    return options


_RE2_OPTIONS = _re2_options()


@dataclass(frozen=True)
class Regex:
    """A manifest's regex, compiled by RE2: matching is linear in the subject's length whatever
    the pattern, so an agent's argument cannot make a check run for minutes (ReDoS). RE2 refuses
    what it cannot do in linear time (backreferences, lookaround) when the manifest is loaded."""

    pattern: str
    _compiled: Any = field(compare=False, repr=False)

    @classmethod
    def compile(cls, pattern: str) -> Regex:
        try:
            return cls(pattern, re2.compile(pattern, _RE2_OPTIONS))
        except re2.error as exc:
            raw = exc.args[0] if exc.args else b"cannot be compiled"
            why = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            raise ValueError(f"invalid regex: {why} (RE2 syntax: no backreferences or lookaround)") from exc

    def fullmatch(self, text: str) -> bool:
        """Whether the whole of `text` matches; a lone surrogate (from a JSON "\\ud800" escape)
        is matched as U+FFFD, since RE2 reads UTF-8."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
        return self._compiled.fullmatch(text) is not None


@dataclass(frozen=True)
class Condition:
    """Checks on one argument value; every check that is set must hold."""

    glob: str | None = None
    regex: Regex | None = None
    equals: Any = UNSET
    min: float | None = None
    max: float | None = None

    @property
    def checks_equals(self) -> bool:
        return self.equals is not UNSET


@dataclass(frozen=True)
class Escalation:
    """One step of an escalation (a tier's, or a manifest rule's): when nobody has decided `after`
    seconds into a request, the members of `groups` may decide it too and are told (also in the
    Slack `channel`, when given)."""

    after: float
    groups: tuple[str, ...]
    channel: str | None = None


@dataclass(frozen=True)
class Rule:
    """One manifest rule: tool-name globs, argument conditions (JSON pointer -> Condition), tier, reason."""

    index: int
    tools: tuple[str, ...]
    when: tuple[tuple[str, Condition], ...]
    tier: Tier
    reason: str
    approvers: tuple[str, ...] = ()  # approver groups for this rule's calls; empty: the tier's groups
    escalation: tuple[Escalation, ...] = ()  # this rule's escalation steps; empty: the tier's


@dataclass(frozen=True)
class Manifest:
    """The rules of one downstream server, in order; the first match wins."""

    server: str
    default: Tier
    trust_annotations: bool
    rules: tuple[Rule, ...]
    path: Path
    sha256: str
    packages: tuple[str, ...] = ()  # npm / PyPI packages this manifest is written for


@dataclass(frozen=True)
class Decision:
    """The tier of one tool (or one call) and what decided it."""

    tier: Tier
    rule: str
    reason: str
    source: Literal["rule", "default", "annotation", "no-manifest"]
    # Only meaningful when listing (no arguments): a rule with `when` conditions that names
    # this tool was skipped, so specific arguments may get a different tier.
    conditional: bool = False
    # Approver groups named by the matching rule; they replace the tier's groups for this call.
    approvers: tuple[str, ...] = ()
    # The matching rule's escalation steps; they replace the tier's for this call's request.
    escalation: tuple[Escalation, ...] = ()


def classify(
    tool: str,
    annotations: Mapping[str, Any] | None,
    arguments: Mapping[str, Any] | None,
    manifest: Manifest | None,
    *,
    server: str | None = None,
) -> Decision:
    """Decide the tier of `tool` called with `arguments` (None: for listing, without arguments).

    First matching rule wins. Unmatched tools get the manifest default, lowered to `low` only
    when the manifest trusts annotations and the server marks the tool read-only and not
    destructive. A server without a manifest gets `high` for every tool (fail closed).
    """
    if manifest is None:
        return Decision(
            tier="high",
            rule=f"no manifest for server {server!r}" if server is not None else "no manifest",
            reason="every tool of a server without a manifest is high (fail closed)",
            source="no-manifest",
        )
    file = manifest.path.name
    skipped_conditional = False
    for rule in manifest.rules:
        if not _names(rule, tool):
            continue
        if rule.when and arguments is None:
            skipped_conditional = True
            continue
        if arguments is not None and not all(
            condition_holds(condition, pointer, arguments) for pointer, condition in rule.when
        ):
            continue
        return Decision(
            tier=rule.tier,
            rule=f"{file} rule {rule.index}",
            reason=rule.reason,
            source="rule",
            conditional=skipped_conditional,
            approvers=rule.approvers,
            escalation=rule.escalation,
        )
    if manifest.trust_annotations and manifest.default != "low" and _read_only(annotations):
        return Decision(
            tier="low",
            rule=f"{file} default lowered by readOnlyHint",
            reason="no rule matched and the server marks the tool read-only, which this manifest trusts",
            source="annotation",
            conditional=skipped_conditional,
        )
    return Decision(
        tier=manifest.default,
        rule=f"{file} default",
        reason="no rule matched; manifest default",
        source="default",
        conditional=skipped_conditional,
    )


def _names(rule: Rule, tool: str) -> bool:
    return any(fnmatch.fnmatchcase(tool, pattern) for pattern in rule.tools)


def _read_only(annotations: Mapping[str, Any] | None) -> bool:
    if annotations is None:
        return False
    return annotations.get("readOnlyHint") is True and annotations.get("destructiveHint") is not True


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at an RFC 6901 JSON pointer, or raise LookupError when it does not resolve."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise LookupError(f"JSON pointer {pointer!r} does not start with '/'")
    value = document
    for token in pointer[1:].split("/"):
        part = token.replace("~1", "/").replace("~0", "~")
        if isinstance(value, Mapping):
            if part not in value:
                raise LookupError(f"no key {part!r}")
            value = value[part]
        elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
            if not re.fullmatch(r"0|[1-9][0-9]*", part) or int(part) >= len(value):
                raise LookupError(f"no index {part!r}")
            value = value[int(part)]
        else:
            raise LookupError(f"cannot step into a {type(value).__name__} with {part!r}")
    return value


def condition_holds(condition: Condition, pointer: str, arguments: Mapping[str, Any]) -> bool:
    """Whether every check of `condition` holds for the value at `pointer` in `arguments`.

    A pointer that does not resolve, or a value of the wrong type for a check, does not hold.
    """
    try:
        value = resolve_pointer(arguments, pointer)
    except LookupError:
        return False
    if condition.glob is not None and not (
        isinstance(value, str) and compile_glob(condition.glob).fullmatch(value)
    ):
        return False
    if condition.regex is not None and not (isinstance(value, str) and condition.regex.fullmatch(value)):
        return False
    if condition.checks_equals and not json_equal(value, condition.equals):
        return False
    if condition.min is not None or condition.max is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if condition.min is not None and value < condition.min:
            return False
        if condition.max is not None and value > condition.max:
            return False
    return True


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: `true` is not `1`, `1` is `1.0`, objects compare by keys."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) or isinstance(b, int | float):
        return isinstance(a, int | float) and isinstance(b, int | float) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, Sequence) and isinstance(b, Sequence):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return False


@functools.lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """A path glob as a regex for fullmatch: `*`, `?` and `[...]` stay within one `/` segment, `**` crosses.

    `**/` also matches no directory at all, so `**/.ssh` matches `.ssh`. Raises ValueError for an
    empty pattern or an unbalanced `[`.
    """
    if pattern == "":
        raise ValueError("empty glob")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
            else:
                out.append("[^/]*")
                i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "!"
            if negate:
                j += 1
            start = j
            if j < n and pattern[j] == "]":  # a leading "]" is a literal member
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                raise ValueError(f"unbalanced '[' at position {i}")
            members = pattern[start:j].replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[")
            out.append(f"[^/{members}]" if negate else f"(?!/)[{members}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as exc:  # e.g. a reversed range like [z-a]
        raise ValueError(f"bad character class: {exc}") from exc


def policy_sha256(config_sha256: str, manifests: Mapping[str, Manifest]) -> str:
    """The policy version: SHA-256 over the config hash and every manifest's file hash."""
    document: dict[str, str | dict[str, str]] = {
        "config": config_sha256,
        "manifests": {server: manifest.sha256 for server, manifest in manifests.items()},
    }
    return hashlib.sha256(rfc8785.dumps(document)).hexdigest()


# -- the gate's own files -------------------------------------------------------------------------

_PATH_TOKEN = re.compile(r"[^\s'\"`;|&<>(),=]+")
_PATH_SCAN_LIMIT = 10_000  # string values looked at per call; past it the call is refused
_PATH_DEPTH_LIMIT = 64


def protected_path(arguments: Any, roots: Sequence[Path], cwd: Path) -> str | None:
    """The first protected file or folder that a string in `arguments` names, or None.

    Every string value (and every key), whole and split into path-like words, is read as a path
    (`~` expanded, `file://` stripped, relative ones taken from `cwd`, `..` and symlinks resolved)
    and compared with the gate's own files. Arguments too big to read through are refused too."""
    if not roots:
        return None
    seen = 0
    stack: list[tuple[Any, int]] = [(arguments, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > _PATH_DEPTH_LIMIT:
            return "arguments nested too deep to check for the gate's own files"
        if isinstance(value, Mapping):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            seen += 1
            if seen > _PATH_SCAN_LIMIT:
                return "arguments with too many strings to check for the gate's own files"
            hit = _names_protected(value, roots, cwd)
            if hit is not None:
                return hit
    return None


def _names_protected(text: str, roots: Sequence[Path], cwd: Path) -> str | None:
    if (
        "/" not in text
        and "\\" not in text
        and not text.startswith(("~", "."))
        and not any(r.name and r.name in text for r in roots)
    ):
        return None
    for word in {text.strip(), *_PATH_TOKEN.findall(text)}:
        if word.startswith("file://"):
            word = word[len("file://") :]
        if not word or "\x00" in word or len(word) > 4096:
            continue
        try:
            path = Path(word).expanduser()
            resolved = (path if path.is_absolute() else cwd / path).resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        for root in roots:
            if resolved == root or root in resolved.parents:
                return str(root)
    return None
