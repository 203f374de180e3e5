"""Load and validate gate.toml and client mcpServers JSON (the only reader of files and env for settings)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

import rfc8785
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from mcp_gate.approvals import Approver, parse_duration
from mcp_gate.errors import ConfigError, GateError
from mcp_gate.policy import DEFAULT_REQUIREMENTS, Approvals, Block, Confirm, Requirement, Run, Tier
from mcp_gate.redaction import RedactionRules

__all__ = [
    "AdminSettings",
    "Agent",
    "ApprovalSettings",
    "ElicitationSettings",
    "EvidenceSettings",
    "GateConfig",
    "MAX_CLIENT_CONFIG_BYTES",
    "MAX_NESTING",
    "MAX_TOML_BYTES",
    "HttpSettings",
    "PinSettings",
    "Protocol",
    "Requester",
    "ServerSpec",
    "SlackSecret",
    "SlackSettings",
    "config_error_from",
    "load_config",
    "read_client_config",
    "check_private",
    "read_private_text",
    "read_toml",
    "resolve_config_path",
    "servers_to_toml",
]

Protocol = Literal["legacy", "auto", "2026-07-28"]

DEFAULT_TIMEOUT = 120.0
_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_AGENT_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CONFIGURABLE = ("low", "medium", "high", "critical")
_MISSING_CONFIG = "no such file; pass --config or set MCP_GATE_CONFIG"


@dataclass(frozen=True)
class Requester:
    """Who calls: the agent principal and the human it acts for. `hold_seconds` is this
    requester's own hold budget (None: `[approvals] hold_seconds`), set below its client's timeout."""

    agent: str
    owner: str
    hold_seconds: float | None = None


@dataclass(frozen=True)
class Agent:
    """An HTTP requester, identified by the SHA-256 of its bearer token."""

    name: str
    token_sha256: str
    owner: str
    hold_seconds: float | None = None

    def requester(self) -> Requester:
        return Requester(agent=self.name, owner=self.owner, hold_seconds=self.hold_seconds)


@dataclass(frozen=True)
class ServerSpec:
    """One downstream server, variables expanded and paths absolute."""

    name: str
    command: str | None
    args: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path | None
    url: str | None
    headers: Mapping[str, str]
    timeout: float
    protocol: Protocol
    disabled: bool
    origin: str

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"


@dataclass(frozen=True)
class ApprovalSettings:
    """How held calls behave: hold budget, progress interval, default expiry, pending limit."""

    hold_seconds: float = 45.0
    progress_seconds: float = 5.0
    expires_after: float = 15 * 60.0
    max_pending: int = 10


@dataclass(frozen=True)
class AdminSettings:
    """The approvers' HTTP API: where it listens."""

    host: str
    port: int
    allow_remote: bool = False


@dataclass(frozen=True)
class HttpSettings:
    """Limits of every HTTP listener (the agent front and the approvers' API): how long a client
    may take to send its headers and its body, how many connections are served at once, how big
    a body may be, and which Host names (besides loopback ones) requests may address."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 256
    max_body_bytes: int = 1024 * 1024
    admin_max_body_bytes: int = 64 * 1024
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class PinSettings:
    """Pinned tool definitions: whether a tool a server adds after its tools were first pinned is
    quarantined until accepted (`quarantine`) or pinned as seen (`trust`), and how long the re-list
    before a held or high call may take."""

    new_tools: Literal["quarantine", "trust"] = "quarantine"
    recheck_timeout: float = 10.0


@dataclass(frozen=True)
class ElicitationSettings:
    """Asking the person at the agent: what a confirm tier does when their client cannot be asked
    (`approve`: hold for one approver; `deny`: refuse), and which tiers ask why before approvers see it."""

    medium_fallback: Literal["approve", "deny"] = "approve"
    ask_justification: frozenset[str] = frozenset()


@dataclass(frozen=True)
class GateConfig:
    """The validated gate.toml with every server it registers."""

    path: Path
    name: str
    data_dir: Path
    manifests_dir: Path
    manifests_required: bool
    requester: Requester
    agents: Mapping[str, Agent]
    servers: Mapping[str, ServerSpec]
    requirements: Mapping[Tier, Requirement]
    config_sha256: str
    approvers: Mapping[str, Approver] = field(default_factory=lambda: MappingProxyType({}))
    approval_settings: ApprovalSettings = field(default_factory=ApprovalSettings)
    admin: AdminSettings | None = None
    http: HttpSettings = field(default_factory=HttpSettings)
    elicitation: ElicitationSettings = field(default_factory=ElicitationSettings)
    evidence: EvidenceSettings | None = None
    slack: SlackSettings | None = None
    redaction: RedactionRules = field(default_factory=RedactionRules)
    pins: PinSettings = field(default_factory=PinSettings)
    # The gate's own files (data dir, config, manifests, signing key): a downstream call whose
    # arguments name a path inside them is blocked. Empty when [gate] protect_own_files = false.
    protected_paths: tuple[Path, ...] = ()

    def approver_by_token(self, token: str) -> Approver | None:
        """The approver whose token this is, compared by SHA-256 in constant time."""
        presented = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for approver in self.approvers.values():
            if approver.token_sha256 is not None and hmac.compare_digest(approver.token_sha256, presented):
                found = approver
        return found


# --- reading files ------------------------------------------------------------------------------


def check_private(path: Path, what: str) -> None:
    """Refuse a secret file (a key, a bearer token) that other users could read, in one line.
    OSError is left to the caller, who knows what the file is for."""
    info = path.stat()
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise GateError(
            f"{path}: the {what} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run chmod 600 {path}"
        )


def read_private_text(path: Path, what: str) -> str:
    """Read a secret file that only its owner may read (see `check_private`). OSError and
    UnicodeDecodeError are left to the caller."""
    check_private(path, what)
    return path.read_text("utf-8")


# The stated limits of the files the gate reads (docs/limits.md lists every parser's limits).
MAX_TOML_BYTES = 1024 * 1024  # gate.toml and each tool manifest
MAX_CLIENT_CONFIG_BYTES = 4 * 1024 * 1024  # a client's mcpServers / VS Code JSON
MAX_NESTING = 64  # tables and lists inside one another, in TOML and client JSON


def _read_bytes(path: Path, missing: str, limit: int | None = None) -> bytes:
    file = str(path)
    try:
        if limit is None:
            return path.read_bytes()
        with path.open("rb") as f:
            raw = f.read(limit + 1)
        if len(raw) > limit:
            raise ConfigError(file, None, f"is larger than the limit of {limit} bytes")
        return raw
    except FileNotFoundError as exc:
        raise ConfigError(file, None, missing) from exc
    except IsADirectoryError as exc:
        raise ConfigError(file, None, "is a directory, not a file") from exc
    except PermissionError as exc:
        raise ConfigError(file, None, "cannot be read: permission denied") from exc
    except OSError as exc:
        raise ConfigError(file, None, f"cannot be read: {exc.strerror or exc}") from exc


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, f"is not UTF-8 text (bad byte at offset {exc.start})") from exc


def read_toml(path: Path, *, missing: str = "no such file") -> tuple[dict[str, Any], bytes]:
    """Parse a TOML file; return its table and its bytes. Every failure is a one-line ConfigError."""
    raw = _read_bytes(path, missing, MAX_TOML_BYTES)
    try:
        data = tomllib.loads(_decode(path, raw))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), None, f"invalid TOML: {_one_line(str(exc))}") from exc
    except RecursionError as exc:
        raise ConfigError(str(path), None, f"invalid TOML: nested deeper than {MAX_NESTING} levels") from exc
    except ValueError as exc:  # Python's limit on digits in an integer
        raise ConfigError(str(path), None, f"invalid TOML: {_TOO_MANY_DIGITS}") from exc
    _check_tree(str(path), data)
    return data, raw


_TOO_MANY_DIGITS = f"a number has more than {sys.get_int_max_str_digits() or 4300} digits"


def _check_tree(file: str, data: Any) -> None:
    """Refuse nesting deeper than MAX_NESTING and strings that are not Unicode text (lone
    surrogates from JSON escapes), without recursion."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ConfigError(
                    file, None, "a string holds a lone surrogate (an invalid \\u escape)"
                ) from exc
            continue
        if isinstance(value, dict | list):
            if depth >= MAX_NESTING:
                raise ConfigError(file, None, f"nested deeper than {MAX_NESTING} levels")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- pydantic errors as one line ------------------------------------------------------------------

_EXPECTED = {
    "string_type": "a string",
    "bool_type": "true or false",
    "int_type": "an integer",
    "float_type": "a number",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}
_LITERAL_NOUN = {"tier": "tier", "default": "tier", "protocol": "protocol"}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def dotted_key(loc: tuple[str | int, ...]) -> str | None:
    """A pydantic location as a dotted key, list positions 1-based: ("rule", 1, "tier") -> rule[2].tier."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            out += f".{part}" if out else part
    return out or None


def config_error_from(file: str, exc: ValidationError, *, prefix: tuple[str | int, ...] = ()) -> ConfigError:
    """The first error of a pydantic ValidationError as one ConfigError line: file, dotted key, problem."""
    error = exc.errors(include_url=False)[0]
    loc = (*prefix, *error["loc"])
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        problem = "unknown key"
    elif kind == "missing":
        problem = "required key is missing"
    elif kind in _EXPECTED:
        problem = f"expected {_EXPECTED[kind]}, got {_kind(value)}"
    elif kind == "literal_error":
        noun = _LITERAL_NOUN.get(str(loc[-1]) if loc else "", "value")
        problem = f"unknown {noun} {value!r}; expected {ctx.get('expected', '?')}"
    elif kind == "value_error":
        problem = str(ctx.get("error", error["msg"]))
    elif kind == "invalid-json-value":
        problem = f"expected a JSON value (string, number, boolean, list or table), got {_kind(value)}"
    else:
        problem = error["msg"].replace("Input should be", "must be")
    return ConfigError(file, dotted_key(loc), _one_line(problem))


# --- the gate.toml and client JSON shapes -----------------------------------------------------------


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _sha256_hex(value: str) -> str:
    if not _SHA256_HEX.fullmatch(value):
        raise ValueError("must be 64 lowercase hex characters: the SHA-256 of the bearer token")
    return value


NonEmpty = Annotated[str, AfterValidator(_non_empty)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _GateSection(_Strict):
    name: NonEmpty = "mcp-gate"
    data_dir: NonEmpty = ".mcp-gate"
    manifests: NonEmpty | None = None
    protect_own_files: bool = True


# A hold longer than this is not a hold but an outage; the same bound as [approvals] hold_seconds.
_MAX_HOLD_SECONDS = 3600
_HoldSeconds = Annotated[float, Field(gt=0, le=_MAX_HOLD_SECONDS)]


class _RequesterSection(_Strict):
    agent: NonEmpty = "local-agent"
    owner: NonEmpty = "unknown"
    hold_seconds: _HoldSeconds | None = None


class _AgentSection(_Strict):
    token_sha256: Annotated[str, AfterValidator(_sha256_hex)]
    owner: NonEmpty
    hold_seconds: _HoldSeconds | None = None


class _ServerSection(_Strict):
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0)
    protocol: Protocol = "legacy"
    inherit_env: list[str] = Field(default_factory=list)
    disabled: bool = False


class _ApproverSection(_Strict):
    email: NonEmpty
    groups: list[NonEmpty] = Field(default_factory=list)
    token_sha256: Annotated[str, AfterValidator(_sha256_hex)] | None = None
    aliases: list[NonEmpty] = Field(default_factory=list)
    slack_user: NonEmpty | list[NonEmpty] | None = None


class _ApprovalsSection(_Strict):
    hold_seconds: _HoldSeconds = 45.0
    progress_seconds: float = Field(default=5.0, gt=0, le=300)
    expires: NonEmpty = "15m"
    max_pending: int = Field(default=10, ge=1, le=10_000)


class _PinsSection(_Strict):
    new_tools: Literal["quarantine", "trust"] = "quarantine"
    recheck_timeout: float = Field(default=10.0, gt=0, le=120)


class _AdminSection(_Strict):
    listen: NonEmpty
    allow_remote: bool = False


class _HttpSection(_Strict):
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    max_connections: int = Field(default=256, ge=1, le=100_000)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=1024**3)
    admin_max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=1024**3)
    allowed_hosts: list[NonEmpty] = Field(default_factory=list)


class _GateFile(_Strict):
    servers_from: list[NonEmpty] = Field(default_factory=list)
    gate: _GateSection = Field(default_factory=_GateSection)
    requester: _RequesterSection = Field(default_factory=_RequesterSection)
    agents: dict[str, _AgentSection] = Field(default_factory=dict)
    servers: dict[str, _ServerSection] = Field(default_factory=dict)
    tiers: dict[str, Any] = Field(default_factory=dict)
    approvers: dict[str, _ApproverSection] = Field(default_factory=dict)
    approvals: _ApprovalsSection = Field(default_factory=_ApprovalsSection)
    admin: _AdminSection | None = None
    http: _HttpSection = Field(default_factory=_HttpSection)
    pins: _PinsSection = Field(default_factory=_PinsSection)
    evidence: _EvidenceSection = Field(default_factory=lambda: _EvidenceSection())
    slack: dict[str, Any] | None = None
    redaction: _RedactionSection = Field(default_factory=lambda: _RedactionSection())


class _ClientEntry(_Strict):
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    type: str | None = None
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # milliseconds
    disabled: bool | None = None
    enabled: bool | None = None
    # Written by clients for their own use; nothing the gate can act on.
    oauth: Any = None
    headersHelper: Any = None  # the clients' own spellings
    sandbox: Any = None
    sandboxEnabled: Any = None
    dev: Any = None
    alwaysLoad: Any = None
    icon: Any = None


# --- variables ---------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$\{|\$\{([^}]*)\}")


def _expand(
    value: str,
    file: str,
    key: str,
    environ: Mapping[str, str],
    workspace: Path,
    *,
    keep_references: bool = False,
) -> str:
    """Expand ${VAR}, ${VAR:-default}, ${env:VAR}, ${userHome}, ${workspaceFolder}; `$${` is literal `${`."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(file, key, problem)

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "$${" if keep_references else "${"
        inner = match.group(1)
        if inner == "workspaceFolder":
            return str(workspace)
        if keep_references and not inner.startswith("input:"):
            # `mcp-gate import`: the reference stays, so gate.toml resolves it when it loads and a
            # secret in the environment is never copied into the printed file.
            return match.group(0)
        if inner == "userHome":
            home = environ.get("HOME") or environ.get("USERPROFILE")
            if not home:
                raise fail("uses ${userHome} but HOME is not set")
            return home
        if inner.startswith("input:"):
            raise fail(
                f"uses ${{{inner}}}, a VS Code prompt the gate cannot answer; "
                "set the value in an environment variable and write ${env:NAME}"
            )
        if inner.startswith("env:"):
            name = inner[4:]
            if not _ENV_NAME.fullmatch(name):
                raise fail(f"${{{inner}}} does not name an environment variable")
            if name not in environ:
                raise fail(f"environment variable {name} is not set (used as ${{{inner}}})")
            return environ[name]
        name, has_default, default = inner.partition(":-")
        if not _ENV_NAME.fullmatch(name):
            raise fail(
                f"unsupported variable ${{{inner}}}; use ${{NAME}}, ${{NAME:-default}}, ${{env:NAME}}, "
                "${userHome} or ${workspaceFolder}"
            )
        if has_default:
            return environ.get(name) or default
        if name not in environ:
            raise fail(
                f"environment variable {name} is not set (used as ${{{name}}}); "
                f"set it or write ${{{name}:-default}}"
            )
        return environ[name]

    return _VARIABLE.sub(replace, value)


# --- servers -------------------------------------------------------------------------------------------


def _check_server_name(name: str, file: str, key: str) -> None:
    # Tools are named <server>__<tool> and split at the first "__": a server name holding "__" or
    # ending in "_" could be read as another server's ("n_" + "x" and "n" + "_x" are both n___x).
    if not _SERVER_NAME.fullmatch(name) or "__" in name or name.endswith("_"):
        raise ConfigError(
            file,
            key,
            f"server name {name!r} must be 1-64 letters, digits, '_' or '-', must not contain '__' "
            "and must not end in '_' (the gate names tools <server>__<tool>, which must split one way)",
        )


def _build_server(
    name: str,
    section: _ServerSection,
    *,
    file: str,
    key: str,
    base: Path,
    environ: Mapping[str, str],
    keep_references: bool = False,
    default_cwd: bool = True,
) -> ServerSpec:
    """One server from its validated table: variables expanded, paths absolute, transport checked."""
    command, url, args, env, cwd, headers = (
        section.command,
        section.url,
        section.args,
        section.env,
        section.cwd,
        section.headers,
    )
    _check_server_name(name, file, key)

    def expand(value: str, sub: str) -> str:
        return _expand(value, file, f"{key}.{sub}", environ, base, keep_references=keep_references)

    if command is None and url is None:
        raise ConfigError(file, key, "a server needs command (stdio) or url (streamable HTTP)")
    if command is not None and url is not None:
        raise ConfigError(file, key, "a server has command (stdio) or url (streamable HTTP), not both")
    if url is not None:
        for field, present in (
            ("args", args),
            ("env", env),
            ("cwd", cwd is not None),
            ("inherit_env", section.inherit_env),
        ):
            if present:
                raise ConfigError(file, f"{key}.{field}", "only applies to stdio servers; this one has a url")
        expanded_url = expand(url, "url")
        parts = urlsplit(expanded_url)
        if (parts.scheme not in ("http", "https") or not parts.netloc) and not (
            keep_references and "${" in expanded_url
        ):
            raise ConfigError(file, f"{key}.url", f"{expanded_url!r} is not an http:// or https:// URL")
        return ServerSpec(
            name=name,
            command=None,
            args=(),
            env=MappingProxyType({}),
            cwd=None,
            url=expanded_url,
            headers=MappingProxyType({h: expand(v, f"headers.{h}") for h, v in headers.items()}),
            timeout=section.timeout,
            protocol=section.protocol,
            disabled=section.disabled,
            origin=file,
        )
    assert command is not None
    if headers:
        raise ConfigError(file, f"{key}.headers", "only applies to HTTP servers; this one has a command")
    expanded_command = expand(command, "command")
    if not expanded_command.strip():
        raise ConfigError(file, f"{key}.command", "must not be empty")
    merged: dict[str, str] = {}
    for i, variable in enumerate(section.inherit_env, start=1):
        if not _ENV_NAME.fullmatch(variable):
            raise ConfigError(
                file, f"{key}.inherit_env[{i}]", f"{variable!r} is not an environment variable name"
            )
        if variable in environ:
            merged[variable] = environ[variable]
    merged.update({k: expand(v, f"env.{k}") for k, v in env.items()})
    return ServerSpec(
        name=name,
        command=expanded_command,
        args=tuple(expand(a, f"args[{i}]") for i, a in enumerate(args, start=1)),
        env=MappingProxyType(merged),
        cwd=(base if default_cwd else None) if cwd is None else base / expand(cwd, "cwd"),
        url=None,
        headers=MappingProxyType({}),
        timeout=section.timeout,
        protocol=section.protocol,
        disabled=section.disabled,
        origin=file,
    )


# --- client JSON (Claude Desktop, Claude Code, Cursor, VS Code) -------------------------------------


def _strip_jsonc(text: str) -> str:
    """Blank out // and /* */ comments and trailing commas, keeping every line and column in place."""
    chars = list(text)
    n = len(text)

    def blank(start: int, end: int) -> None:
        for k in range(start, end):
            if chars[k] != "\n":
                chars[k] = " "

    i = 0
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            in_string = c != '"'
            i += 1
        elif c == '"':
            in_string = True
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end == -1 else end
            blank(i, end)
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end == -1 else end + 2
            blank(i, end)
            i = end
        else:
            i += 1
    stripped = "".join(chars)
    in_string = False
    i = 0
    while i < n:
        c = stripped[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            in_string = c != '"'
        elif c == '"':
            in_string = True
        elif c == ",":
            j = i + 1
            while j < n and stripped[j] in " \t\r\n":
                j += 1
            if j < n and stripped[j] in "}]":
                chars[i] = " "
        i += 1
    return "".join(chars)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key[:100])
        out[key] = value
    return out


def read_client_config(
    path: Path, environ: Mapping[str, str], *, keep_references: bool = False
) -> dict[str, ServerSpec]:
    """The servers of a client config: {"mcpServers": ...} (Claude, Cursor) or {"servers": ...} (VS Code)."""
    file = str(path)
    text = _decode(path, _read_bytes(path, "no such file", MAX_CLIENT_CONFIG_BYTES))
    try:
        data = json.loads(_strip_jsonc(text), object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            file, None, f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    except _DuplicateKey as exc:
        raise ConfigError(
            file, None, f"invalid JSON: the key {exc.key!r} appears twice in one object"
        ) from exc
    except RecursionError as exc:
        raise ConfigError(file, None, f"invalid JSON: nested deeper than {MAX_NESTING} levels") from exc
    except ValueError as exc:  # Python's limit on digits in an integer
        raise ConfigError(file, None, f"invalid JSON: {_TOO_MANY_DIGITS}") from exc
    _check_tree(file, data)
    if not isinstance(data, dict):
        raise ConfigError(file, None, "expected a JSON object with mcpServers or servers")
    prefix: str
    if "mcpServers" in data and "servers" in data:
        raise ConfigError(file, None, "has both mcpServers and servers; keep one")
    if "mcpServers" in data:
        prefix, entries = "mcpServers", data["mcpServers"]
    elif "servers" in data:
        prefix, entries = "servers", data["servers"]
    elif isinstance(data.get("mcp"), dict) and "servers" in data["mcp"]:  # VS Code settings.json
        prefix, entries = "mcp.servers", data["mcp"]["servers"]
    else:
        raise ConfigError(file, None, "no mcpServers or servers object found")
    if not isinstance(entries, dict):
        raise ConfigError(file, prefix, f"expected an object, got {_kind(entries)}")
    base = path.absolute().parent
    servers: dict[str, ServerSpec] = {}
    for name, raw in entries.items():
        key = f"{prefix}.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(file, key, f"expected an object, got {_kind(raw)}")
        if "envFile" in raw:
            raise ConfigError(
                file,
                f"{key}.envFile",
                'envFile is not supported; put the variables in env, e.g. "TOKEN": "${env:TOKEN}"',
            )
        try:
            entry = _ClientEntry.model_validate(raw)
        except ValidationError as exc:
            raise config_error_from(file, exc, prefix=(*prefix.split("."), name)) from exc
        if entry.type in ("sse", "ws"):
            raise ConfigError(
                file, f"{key}.type", f"transport {entry.type!r} is not supported; use streamable HTTP"
            )
        if entry.type not in (None, "stdio", "http", "streamable-http"):
            raise ConfigError(
                file, f"{key}.type", f"unknown type {entry.type!r}; expected stdio, http or streamable-http"
            )
        if entry.type == "stdio" and entry.command is None:
            raise ConfigError(file, f"{key}.type", "type stdio needs a command")
        if entry.type in ("http", "streamable-http") and entry.url is None:
            raise ConfigError(file, f"{key}.type", f"type {entry.type} needs a url")
        if entry.disabled is not None and entry.enabled is not None and entry.disabled == entry.enabled:
            raise ConfigError(file, f"{key}.enabled", "disabled and enabled contradict each other")
        section = _ServerSection(
            command=entry.command,
            args=entry.args,
            env=entry.env,
            cwd=entry.cwd,
            url=entry.url,
            headers=entry.headers,
            timeout=DEFAULT_TIMEOUT if entry.timeout is None else entry.timeout / 1000,
            disabled=bool(entry.disabled) or entry.enabled is False,
        )
        servers[name] = _build_server(
            name,
            section,
            file=file,
            key=key,
            base=base,
            environ=environ,
            keep_references=keep_references,
            default_cwd=False,  # clients start servers without a set folder; so does the gate
        )
    return servers


# --- gate.toml ---------------------------------------------------------------------------------------


def resolve_config_path(arg: str | None, environ: Mapping[str, str], cwd: Path) -> Path:
    """Which gate.toml to read: the --config argument, else $MCP_GATE_CONFIG, else ./gate.toml."""
    chosen = arg or environ.get("MCP_GATE_CONFIG") or "gate.toml"
    return cwd / chosen


def _requirements(file: str, tiers: Mapping[str, Any]) -> dict[Tier, Requirement]:
    requirements: dict[Tier, Requirement] = dict(DEFAULT_REQUIREMENTS)
    for tier, value in tiers.items():
        key = f"tiers.{tier}"
        if tier == "blocked":
            raise ConfigError(file, key, "the blocked tier always blocks and cannot be configured")
        if tier not in _CONFIGURABLE:
            raise ConfigError(file, key, "unknown tier; expected low, medium, high or critical")
        requirement: Requirement
        if value == "run":
            requirement = Run()
        elif value == "confirm":
            requirement = Confirm()
        elif value == "block":
            requirement = Block()
        elif isinstance(value, dict):
            extra = sorted(set(value) - {"approvals", "groups", "expires"})
            if extra:
                raise ConfigError(file, f"{key}.{extra[0]}", "unknown key")
            if "approvals" not in value:
                raise ConfigError(file, f"{key}.approvals", "required key is missing")
            count = value["approvals"]
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10:
                raise ConfigError(file, f"{key}.approvals", f"must be an integer from 1 to 10, got {count!r}")
            groups = value.get("groups", [])
            if not isinstance(groups, list) or not all(isinstance(g, str) and g.strip() for g in groups):
                raise ConfigError(file, f"{key}.groups", f"must be a list of group names, got {groups!r}")
            expires_after = None
            if "expires" in value:
                expires_after = _duration(file, f"{key}.expires", value["expires"])
            requirement = Approvals(count, groups=tuple(groups), expires_after=expires_after)
        else:
            raise ConfigError(
                file, key, f'expected "run", "confirm", "block" or {{ approvals = N }}, got {value!r}'
            )
        requirements[cast(Tier, tier)] = requirement
    return requirements


def _elicitation_settings(file: str, tiers: Mapping[str, Any]) -> tuple[dict[str, Any], ElicitationSettings]:
    """Take the elicitation keys out of [tiers]: `medium_fallback` beside the tiers, and
    `ask_justification` inside a tier's table; the rest are requirements."""
    rest: dict[str, Any] = {}
    fallback: Literal["approve", "deny"] = "approve"
    justify: set[str] = set()
    for tier, value in tiers.items():
        if tier == "medium_fallback":
            if value not in ("approve", "deny"):
                raise ConfigError(
                    file, "tiers.medium_fallback", f'expected "approve" or "deny", got {value!r}'
                )
            fallback = value
            continue
        if isinstance(value, dict) and "ask_justification" in value:
            flag = value["ask_justification"]
            if not isinstance(flag, bool):
                raise ConfigError(
                    file, f"tiers.{tier}.ask_justification", f"expected true or false, got {flag!r}"
                )
            if flag:
                justify.add(tier)
            value = {k: v for k, v in value.items() if k != "ask_justification"}
        rest[tier] = value
    return rest, ElicitationSettings(medium_fallback=fallback, ask_justification=frozenset(justify))


def _duration(file: str, key: str, value: Any) -> float:
    if not isinstance(value, str):
        raise ConfigError(file, key, f'expected a duration like "15m", got {value!r}')
    try:
        return parse_duration(value).total_seconds()
    except ValueError as exc:
        raise ConfigError(file, key, str(exc)) from exc


def _approvers(file: str, model: _GateFile, agents: Mapping[str, Agent]) -> dict[str, Approver]:
    approvers: dict[str, Approver] = {}
    tokens = {a.token_sha256: f"agent {a.name!r}" for a in agents.values()}
    identities: dict[str, str] = {}
    for name, section in model.approvers.items():
        key = f"approvers.{name}"
        if not _AGENT_NAME.fullmatch(name):
            raise ConfigError(file, key, "approver name must be 1-64 letters, digits, '_', '.', '@' or '-'")
        if section.token_sha256 is not None:
            if section.token_sha256 in tokens:
                raise ConfigError(
                    file,
                    f"{key}.token_sha256",
                    f"the same token is already given to {tokens[section.token_sha256]}",
                )
            tokens[section.token_sha256] = f"approver {name!r}"
        approver = Approver(
            name=name,
            email=section.email,
            groups=frozenset(section.groups),
            token_sha256=section.token_sha256,
            aliases=frozenset(section.aliases),
        )
        # One person, one approver: two entries sharing an identity would let one person count
        # twice towards a quorum.
        for identity in sorted(approver.identities()):
            if identity in identities and identities[identity] != name:
                raise ConfigError(
                    file,
                    key,
                    f"identity {identity!r} already belongs to approver {identities[identity]!r}; "
                    "one person is one approver (use aliases for their other identities)",
                )
            identities[identity] = name
        approvers[name] = approver
    return approvers


def _check_groups(
    file: str, requirements: Mapping[Tier, Requirement], approvers: Mapping[str, Approver]
) -> None:
    known = {g for a in approvers.values() for g in a.groups}
    for tier, requirement in requirements.items():
        if isinstance(requirement, Approvals):
            for group in requirement.groups:
                if group not in known:
                    raise ConfigError(
                        file,
                        f"tiers.{tier}.groups",
                        f"no approver is in group {group!r} (known: {sorted(known)})",
                    )


def _admin(file: str, section: _AdminSection | None) -> AdminSettings | None:
    if section is None:
        return None
    host, sep, port = section.listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            file, "admin.listen", f"expected HOST:PORT such as 127.0.0.1:8766, got {section.listen!r}"
        )
    if not section.allow_remote and host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(
            file, "admin.listen", f"{host} is not a loopback address; set allow_remote = true to listen on it"
        )
    return AdminSettings(host=host, port=int(port), allow_remote=section.allow_remote)


def load_config(path: Path, environ: Mapping[str, str]) -> GateConfig:
    """Read and validate gate.toml and the client configs it names; raise one-line ConfigErrors."""
    file = str(path)
    data, _ = read_toml(path, missing=_MISSING_CONFIG)
    try:
        model = _GateFile.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(file, exc) from exc
    base = path.absolute().parent

    servers: dict[str, ServerSpec] = {}
    for name, section in model.servers.items():
        servers[name] = _build_server(
            name, section, file=file, key=f"servers.{name}", base=base, environ=environ
        )
    for i, entry in enumerate(model.servers_from, start=1):
        key = f"servers_from[{i}]"
        client_path = base / _expand(entry, file, key, environ, base)
        if not client_path.exists():
            raise ConfigError(file, key, f"no such file: {client_path}")
        for name, spec in read_client_config(client_path, environ).items():
            if name in servers:
                raise ConfigError(
                    file,
                    key,
                    f"server {name!r} from {client_path} is already defined in {servers[name].origin}; "
                    "a server name may appear only once",
                )
            servers[name] = spec

    agents: dict[str, Agent] = {}
    seen_tokens: dict[str, str] = {}
    for name, agent in model.agents.items():
        if not _AGENT_NAME.fullmatch(name):
            raise ConfigError(
                file, f"agents.{name}", "agent name must be 1-64 letters, digits, '_', '.', '@' or '-'"
            )
        if agent.token_sha256 in seen_tokens:
            raise ConfigError(
                file,
                f"agents.{name}.token_sha256",
                f"the same token is already given to agent {seen_tokens[agent.token_sha256]!r}",
            )
        seen_tokens[agent.token_sha256] = name
        agents[name] = Agent(
            name=name, token_sha256=agent.token_sha256, owner=agent.owner, hold_seconds=agent.hold_seconds
        )

    approvers = _approvers(file, model, agents)
    tiers, elicitation = _elicitation_settings(file, model.tiers)
    requirements = _requirements(file, tiers)
    _check_groups(file, requirements, approvers)
    settings = ApprovalSettings(
        hold_seconds=model.approvals.hold_seconds,
        progress_seconds=model.approvals.progress_seconds,
        expires_after=_duration(file, "approvals.expires", model.approvals.expires),
        max_pending=model.approvals.max_pending,
    )
    manifests = model.gate.manifests
    fields: dict[str, Any] = {
        "path": path.absolute(),
        "name": model.gate.name,
        "data_dir": base / model.gate.data_dir,
        "manifests_dir": base / (manifests if manifests is not None else "tool_manifests"),
        "manifests_required": manifests is not None,
        "requester": Requester(
            agent=model.requester.agent,
            owner=model.requester.owner,
            hold_seconds=model.requester.hold_seconds,
        ),
        "agents": MappingProxyType(agents),
        "servers": MappingProxyType(servers),
        "requirements": MappingProxyType(requirements),
        "approvers": MappingProxyType(approvers),
        "approval_settings": settings,
        "admin": _admin(file, model.admin),
        "http": HttpSettings(**{**model.http.model_dump(), "allowed_hosts": tuple(model.http.allowed_hosts)}),
        "elicitation": elicitation,
        "slack": _slack(file, model.slack, base, model.approvers, approvers, servers),
        "pins": PinSettings(new_tools=model.pins.new_tools, recheck_timeout=model.pins.recheck_timeout),
    }
    evidence = _evidence(file, model.evidence, base / model.gate.data_dir, model.gate.name, environ)
    redaction = _redaction(file, model.redaction)
    protected: tuple[Path, ...] = ()
    if model.gate.protect_own_files:
        own = [fields["path"], fields["data_dir"], fields["manifests_dir"]]
        if evidence is not None:
            own.append(evidence.key_path)
        protected = tuple(dict.fromkeys(p.resolve() for p in own))
    fields["protected_paths"] = protected
    return GateConfig(**fields, evidence=evidence, redaction=redaction, config_sha256=_config_sha256(fields))


# --- [redaction]: what counts as a secret beyond the built-in detectors ------------------------------


class _RedactionSection(_Strict):
    secret_keys: list[NonEmpty] = Field(default_factory=list)
    patterns: list[NonEmpty] = Field(default_factory=list)
    entropy: bool = True
    entropy_limit: float = Field(default=4.5, ge=3.0, le=8.0)
    hex_entropy_limit: float | None = Field(default=None, ge=2.0, le=8.0)


def _redaction(file: str, section: _RedactionSection) -> RedactionRules:
    for index, pattern in enumerate(section.patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                file, f"redaction.patterns[{index}]", f"not a regular expression: {exc}"
            ) from exc
    return RedactionRules(
        secret_keys=tuple(section.secret_keys),
        patterns=tuple(section.patterns),
        entropy_limit=section.entropy_limit if section.entropy else None,
        hex_entropy_limit=section.hex_entropy_limit,
    )


# --- [evidence]: signed checkpoints, their copies, retention -------------------------------------------


@dataclass(frozen=True)
class EvidenceSettings:
    """How the gate signs checkpoints of its evidence log, where copies go, how long records stay.

    Checkpoints are on when the key file exists (`mcp-gate keys init`) or `key` is set."""

    key_path: Path
    key_configured: bool
    key_name: str
    origin: str
    every_records: int = 1000
    every_seconds: float = 300.0
    copy_to_file: Path | None = None
    webhook_url: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_timeout: float = 5.0
    retention_seconds: float | None = None
    signer: tuple[str, ...] | None = None
    signer_pubkey: str | None = None


class _EvidenceSection(_Strict):
    key: NonEmpty | None = None
    key_name: NonEmpty | None = None
    origin: NonEmpty | None = None
    checkpoint_every_records: int = Field(default=1000, ge=1, le=10_000_000)
    checkpoint_every: NonEmpty = "5m"
    copy_to_file: NonEmpty | None = None
    webhook_url_env: NonEmpty | None = None
    webhook_secret_env: NonEmpty | None = None
    webhook_timeout: float = Field(default=5.0, gt=0, le=60)
    retention: NonEmpty | None = None
    signer: list[NonEmpty] | None = Field(default=None, min_length=1)
    signer_pubkey: NonEmpty | None = None


def _evidence(
    file: str, section: _EvidenceSection, data_dir: Path, gate_name: str, environ: Mapping[str, str]
) -> EvidenceSettings:
    def from_env(key: str, name: str | None) -> str | None:
        if name is None:
            return None
        value = environ.get(name)
        if not value:
            raise ConfigError(file, key, f"environment variable {name} is not set")
        return value

    url = from_env("evidence.webhook_url_env", section.webhook_url_env)
    if url is not None and not url.startswith(("https://", "http://")):
        raise ConfigError(
            file, "evidence.webhook_url_env", f"{section.webhook_url_env} is not an http(s) URL"
        )
    secret = from_env("evidence.webhook_secret_env", section.webhook_secret_env)
    if secret is not None and url is None:
        raise ConfigError(file, "evidence.webhook_secret_env", "needs evidence.webhook_url_env")
    every = _duration(file, "evidence.checkpoint_every", section.checkpoint_every)
    if every <= 0:
        raise ConfigError(file, "evidence.checkpoint_every", "must be longer than zero")
    retention = (
        None if section.retention is None else _duration(file, "evidence.retention", section.retention)
    )
    if retention is not None and retention < 86400:
        raise ConfigError(file, "evidence.retention", "must be at least 1d")
    if (section.signer is None) != (section.signer_pubkey is None):
        missing = "evidence.signer_pubkey" if section.signer is not None else "evidence.signer"
        raise ConfigError(file, missing, "a separate signer needs both signer and signer_pubkey")
    if section.signer is not None and section.key is not None:
        raise ConfigError(file, "evidence.signer", "give either key or signer, not both")
    name = section.key_name or _note_name(gate_name)
    if not re.fullmatch(r"[^\s+]{1,128}", name):
        raise ConfigError(file, "evidence.key_name", "1-128 characters, no spaces and no '+'")
    origin = section.origin or f"mcp-gate/{gate_name}"
    if "\n" in origin:
        raise ConfigError(file, "evidence.origin", "must be one line")
    base = data_dir.parent if section.key is None else Path(file).absolute().parent
    return EvidenceSettings(
        key_path=data_dir / "signing.key" if section.key is None else base / section.key,
        key_configured=section.key is not None,
        key_name=name,
        origin=origin,
        every_records=section.checkpoint_every_records,
        every_seconds=every,
        copy_to_file=None
        if section.copy_to_file is None
        else Path(file).absolute().parent / section.copy_to_file,
        webhook_url=url,
        webhook_secret=secret,
        webhook_timeout=section.webhook_timeout,
        retention_seconds=retention,
        signer=None if section.signer is None else _signer_command(file, section.signer),
        signer_pubkey=section.signer_pubkey,
    )


def _signer_command(file: str, command: list[str]) -> tuple[str, ...]:
    """A relative path to the signer program is taken from gate.toml's folder, like other paths."""
    program = command[0]
    if "/" in program and not Path(program).is_absolute():
        program = str(Path(file).absolute().parent / program)
    return (program, *command[1:])


def _note_name(gate_name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in gate_name).strip("-") or "gate"
    return f"mcp-gate-{cleaned}"[:128]


# --- [slack] -----------------------------------------------------------------------------------------

_SLACK_ID = re.compile(r"[A-Z0-9][A-Z0-9_-]{1,40}")
_TOKEN_SHAPE = re.compile(r"^\s*(xox[abposr]-|xapp-)")
_LITERAL_SECRETS = ("bot_token", "app_token", "signing_secret")


@dataclass(frozen=True)
class SlackSecret:
    """Where a Slack token lives: an environment variable or a file. The value is read when used,
    never stored in the config object, and `repr` shows only where it comes from."""

    what: str
    env: str | None
    file: Path | None

    def read(self, environ: Mapping[str, str], config_file: str) -> str:
        if self.file is not None:
            raw = _read_bytes(self.file, f"no such file (named by slack.{self.what}_file)")
            value = _decode(self.file, raw).strip()
            if not value:
                raise ConfigError(str(self.file), None, f"the {self.what} file is empty")
            return value
        assert self.env is not None
        value = environ.get(self.env, "").strip()
        if not value:
            raise ConfigError(
                config_file,
                f"slack.{self.what}_env",
                f"environment variable {self.env} is not set (it should hold the Slack {self.what})",
            )
        return value

    def where(self) -> str:
        return f"file {self.file}" if self.file is not None else f"${self.env}"


@dataclass(frozen=True)
class SlackSettings:
    """Slack as an approval channel: where requests are posted, how clicks arrive, who is who."""

    team_id: str
    channel: str
    mode: Literal["socket", "http"]
    bot_token: SlackSecret
    app_token: SlackSecret | None
    signing_secret: SlackSecret | None
    api_url: str = "https://slack.com/api/"
    listen: tuple[str, int] | None = None
    tier_channels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    server_channels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    users: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # Slack id -> approver

    def channel_for(self, server: str, tier: str) -> str:
        """A server's own channel, else the tier's, else the default channel."""
        return self.server_channels.get(server) or self.tier_channels.get(tier) or self.channel


class _SlackSection(_Strict):
    team_id: NonEmpty
    channel: NonEmpty
    mode: Literal["socket", "http"] = "socket"
    bot_token_env: NonEmpty | None = None
    bot_token_file: NonEmpty | None = None
    app_token_env: NonEmpty | None = None
    app_token_file: NonEmpty | None = None
    signing_secret_env: NonEmpty | None = None
    signing_secret_file: NonEmpty | None = None
    api_url: NonEmpty = "https://slack.com/api/"
    listen: NonEmpty | None = None
    tiers: dict[str, NonEmpty] = Field(default_factory=dict)
    servers: dict[str, NonEmpty] = Field(default_factory=dict)


def _slack_secret(
    file: str, section: _SlackSection, what: str, default_env: str, base: Path, *, needed: bool
) -> SlackSecret | None:
    env: str | None = getattr(section, f"{what}_env")
    path: str | None = getattr(section, f"{what}_file")
    if env is not None and path is not None:
        raise ConfigError(file, f"slack.{what}_file", f"give {what}_env or {what}_file, not both")
    if path is not None:
        return SlackSecret(what, None, base / path)
    if env is None and not needed:
        return None
    env = env or default_env
    if not _ENV_NAME.fullmatch(env):
        raise ConfigError(file, f"slack.{what}_env", f"{env!r} is not an environment variable name")
    return SlackSecret(what, env, None)


def _slack(
    file: str,
    data: dict[str, Any] | None,
    base: Path,
    sections: Mapping[str, _ApproverSection],
    approvers: Mapping[str, Approver],
    servers: Mapping[str, ServerSpec],
) -> SlackSettings | None:
    if data is None:
        return None
    for key in _LITERAL_SECRETS:
        if key in data:
            raise ConfigError(
                file,
                f"slack.{key}",
                f"a Slack secret must not be written in gate.toml; name an environment variable "
                f"({key}_env) or a file ({key}_file) that holds it",
            )
    for key, value in data.items():
        if isinstance(value, str) and _TOKEN_SHAPE.match(value):
            raise ConfigError(
                file, f"slack.{key}", "looks like a Slack token; tokens come from the environment or a file"
            )
    try:
        section = _SlackSection.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(file, exc, prefix=("slack",)) from exc
    if not _SLACK_ID.fullmatch(section.team_id):
        raise ConfigError(
            file, "slack.team_id", f"expected a Slack team id such as T0123ABCD, got {section.team_id!r}"
        )
    for tier in section.tiers:
        if tier not in _CONFIGURABLE:
            raise ConfigError(
                file, f"slack.tiers.{tier}", "unknown tier; expected low, medium, high or critical"
            )
    for server in section.servers:
        if server not in servers:
            raise ConfigError(file, f"slack.servers.{server}", f"no server {server!r} is configured")
    scheme = urlsplit(section.api_url).scheme
    if scheme not in ("http", "https"):
        raise ConfigError(file, "slack.api_url", f"expected an http(s) URL, got {section.api_url!r}")
    listen: tuple[str, int] | None = None
    if section.listen is not None:
        host, sep, port = section.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                file, "slack.listen", f"expected HOST:PORT such as 0.0.0.0:8767, got {section.listen!r}"
            )
        listen = (host.strip("[]"), int(port))
    if section.mode == "http" and listen is None:
        raise ConfigError(
            file, "slack.listen", 'mode = "http" needs listen = "HOST:PORT" for /slack/interactions'
        )
    users: dict[str, str] = {}
    for name, approver_section in sections.items():
        ids = approver_section.slack_user
        for user in [ids] if isinstance(ids, str) else ids or []:
            key = f"approvers.{name}.slack_user"
            if not _SLACK_ID.fullmatch(user):
                raise ConfigError(file, key, f"expected a Slack user id such as U0123ABCD, got {user!r}")
            if user in users and users[user] != name:
                raise ConfigError(file, key, f"Slack user {user} is already approver {users[user]!r}")
            users[user] = name
    assert set(users.values()) <= set(approvers)
    bot = _slack_secret(file, section, "bot_token", "SLACK_BOT_TOKEN", base, needed=True)
    assert bot is not None
    return SlackSettings(
        team_id=section.team_id,
        channel=section.channel,
        mode=section.mode,
        bot_token=bot,
        app_token=_slack_secret(
            file, section, "app_token", "SLACK_APP_TOKEN", base, needed=section.mode == "socket"
        ),
        signing_secret=_slack_secret(
            file, section, "signing_secret", "SLACK_SIGNING_SECRET", base, needed=section.mode == "http"
        ),
        api_url=section.api_url,
        listen=listen,
        tier_channels=MappingProxyType(dict(section.tiers)),
        server_channels=MappingProxyType(dict(section.servers)),
        users=MappingProxyType(users),
    )


def _secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _requirement_json(requirement: Requirement) -> dict[str, Any]:
    if isinstance(requirement, Approvals):
        return {
            "approvals": requirement.count,
            "groups": list(requirement.groups),
            "expires_after": requirement.expires_after,
        }
    return {"kind": type(requirement).__name__.lower()}


def _hold(hold_seconds: float | None) -> dict[str, float]:
    # Only when set, so a config without per-requester holds keeps the digest it had.
    return {} if hold_seconds is None else {"hold_seconds": hold_seconds}


def _config_sha256(fields: Mapping[str, Any]) -> str:
    requester: Requester = fields["requester"]
    agents: Mapping[str, Agent] = fields["agents"]
    servers: Mapping[str, ServerSpec] = fields["servers"]
    requirements: Mapping[Tier, Requirement] = fields["requirements"]
    document = {
        "path": str(fields["path"]),
        "name": fields["name"],
        "data_dir": str(fields["data_dir"]),
        "manifests_dir": str(fields["manifests_dir"]),
        "manifests_required": fields["manifests_required"],
        "requester": {"agent": requester.agent, "owner": requester.owner} | _hold(requester.hold_seconds),
        "agents": {
            n: {"token_sha256": a.token_sha256, "owner": a.owner} | _hold(a.hold_seconds)
            for n, a in agents.items()
        },
        "servers": {
            n: {
                "command": s.command,
                "args": list(s.args),
                "env": {k: _secret(v) for k, v in s.env.items()},
                "cwd": None if s.cwd is None else str(s.cwd),
                "url": s.url,
                "headers": {k: _secret(v) for k, v in s.headers.items()},
                "timeout": s.timeout,
                "protocol": s.protocol,
                "disabled": s.disabled,
                "origin": s.origin,
            }
            for n, s in servers.items()
        },
        "requirements": {t: _requirement_json(r) for t, r in requirements.items()},
        "approvers": {
            n: {
                "email": a.email,
                "groups": sorted(a.groups),
                "token_sha256": a.token_sha256,
                "aliases": sorted(a.aliases),
            }
            for n, a in fields["approvers"].items()
        },
        "approvals": {
            "hold_seconds": fields["approval_settings"].hold_seconds,
            "progress_seconds": fields["approval_settings"].progress_seconds,
            "expires_after": fields["approval_settings"].expires_after,
            "max_pending": fields["approval_settings"].max_pending,
        },
        "elicitation": {
            "medium_fallback": fields["elicitation"].medium_fallback,
            "ask_justification": sorted(fields["elicitation"].ask_justification),
        },
    }
    if fields["pins"] != PinSettings():  # only when set, so older configs keep their digest
        document["pins"] = asdict(fields["pins"])
    if not fields["protected_paths"]:  # protection off: a policy of its own; on, the default, adds nothing
        document["protect_own_files"] = False
    return hashlib.sha256(rfc8785.dumps(document)).hexdigest()


# --- writing [servers.*] -----------------------------------------------------------------------------


def _toml_string(value: str, *, literal_dollar: bool = True) -> str:
    """A TOML basic string; `${` becomes `$${` so loading it back does not expand anything."""
    if literal_dollar:
        value = value.replace("${", "$${")
    out = ['"']
    for c in value:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def servers_to_toml(servers: Mapping[str, ServerSpec], *, references: bool = False) -> str:
    """The [servers.*] tables of gate.toml for these servers (what `mcp-gate import` writes).

    By default values are taken literally (`${` is written as `$${`), so loading the text back
    gives equal specs. `references=True` writes values read with `keep_references`, whose `${...}`
    are meant to be expanded when gate.toml loads.
    """
    literal = not references

    def string(value: str) -> str:
        return _toml_string(value, literal_dollar=literal)

    def table(values: Mapping[str, str]) -> str:
        items = ", ".join(f"{_toml_string(k, literal_dollar=False)} = {string(v)}" for k, v in values.items())
        return f"{{ {items} }}" if items else "{}"

    blocks: list[str] = []
    for name, spec in servers.items():
        lines = [f"[servers.{name}]"]
        if spec.command is not None:
            lines.append(f"command = {string(spec.command)}")
            if spec.args:
                lines.append(f"args = [{', '.join(string(a) for a in spec.args)}]")
            if spec.env:
                lines.append(f"env = {table(spec.env)}")
            if spec.cwd is not None:
                lines.append(f"cwd = {string(str(spec.cwd))}")
        if spec.url is not None:
            lines.append(f"url = {string(spec.url)}")
            if spec.headers:
                lines.append(f"headers = {table(spec.headers)}")
        if spec.timeout != DEFAULT_TIMEOUT:
            lines.append(f"timeout = {int(spec.timeout) if spec.timeout.is_integer() else spec.timeout!r}")
        if spec.protocol != "legacy":
            lines.append(f'protocol = "{spec.protocol}"')
        if spec.disabled:
            lines.append("disabled = true")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
