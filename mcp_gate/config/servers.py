"""Downstream server tables: ${VAR} expansion, server names, client mcpServers JSON (JSONC),
and writing [servers.*] back as TOML."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError

from mcp_gate.config.files import (
    MAX_CLIENT_CONFIG_BYTES,
    MAX_NESTING,
    TOO_MANY_DIGITS,
    Strict,
    check_tree,
    config_error_from,
    decode,
    kind_of,
    read_bytes,
)
from mcp_gate.config.model import GateConfig, ProtocolEra, ServerSpec
from mcp_gate.errors import ConfigError

DEFAULT_TIMEOUT = 120.0
_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ServerSection(Strict):
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0)
    protocol: ProtocolEra = "legacy"
    inherit_env: list[str] = Field(default_factory=list)
    disabled: bool = False
    mode: Literal["enforce", "shadow"] | None = None  # over [tiers] mode for this server


class _ClientEntry(Strict):
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


def expand_variables(
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
            if not ENV_NAME.fullmatch(name):
                raise fail(f"${{{inner}}} does not name an environment variable")
            if name not in environ:
                raise fail(f"environment variable {name} is not set (used as ${{{inner}}})")
            return environ[name]
        name, has_default, default = inner.partition(":-")
        if not ENV_NAME.fullmatch(name):
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


def build_server(
    name: str,
    section: ServerSection,
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
        return expand_variables(value, file, f"{key}.{sub}", environ, base, keep_references=keep_references)

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
        if not ENV_NAME.fullmatch(variable):
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


IN_PROCESS_ORIGIN = "in-process"


def serve_in_process(config: GateConfig, names: Iterable[str]) -> GateConfig:
    """`config` with the servers `names` served in the gate's own process (by an embedding program
    or a test) instead of by a command or URL. A server gate.toml names keeps its timeout, protocol
    and `disabled`; a new name gets the defaults. A bad name is a ConfigError, as in gate.toml."""
    servers = dict(config.servers)
    for name in names:
        _check_server_name(name, IN_PROCESS_ORIGIN, f"servers.{name}")
        configured = servers.get(name)
        servers[name] = ServerSpec(
            name=name,
            command=None,
            args=(),
            env=MappingProxyType({}),
            cwd=None,
            url=None,
            headers=MappingProxyType({}),
            timeout=configured.timeout if configured else DEFAULT_TIMEOUT,
            protocol=configured.protocol if configured else "legacy",
            disabled=configured.disabled if configured else False,
            origin=IN_PROCESS_ORIGIN,
        )
    return dataclasses.replace(config, servers=MappingProxyType(servers))


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
    text = decode(path, read_bytes(path, "no such file", MAX_CLIENT_CONFIG_BYTES))
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
        raise ConfigError(file, None, f"invalid JSON: {TOO_MANY_DIGITS}") from exc
    check_tree(file, data)
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
        raise ConfigError(file, prefix, f"expected an object, got {kind_of(entries)}")
    base = path.absolute().parent
    servers: dict[str, ServerSpec] = {}
    for name, raw in entries.items():
        key = f"{prefix}.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(file, key, f"expected an object, got {kind_of(raw)}")
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
        section = ServerSection(
            command=entry.command,
            args=entry.args,
            env=entry.env,
            cwd=entry.cwd,
            url=entry.url,
            headers=entry.headers,
            timeout=DEFAULT_TIMEOUT if entry.timeout is None else entry.timeout / 1000,
            disabled=bool(entry.disabled) or entry.enabled is False,
        )
        servers[name] = build_server(
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
