"""Reading config files: size and nesting limits, TOML, private secret files, and pydantic
errors as one ConfigError line. The leaf that gate.toml, client JSON and tool manifests share."""

from __future__ import annotations

import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mcp_gate.errors import ConfigError, GateError

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


def read_bytes(path: Path, missing: str, limit: int | None = None) -> bytes:
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


def decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, f"is not UTF-8 text (bad byte at offset {exc.start})") from exc


def read_toml(path: Path, *, missing: str = "no such file") -> tuple[dict[str, Any], bytes]:
    """Parse a TOML file; return its table and its bytes. Every failure is a one-line ConfigError."""
    raw = read_bytes(path, missing, MAX_TOML_BYTES)
    try:
        data = tomllib.loads(decode(path, raw))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), None, f"invalid TOML: {one_line(str(exc))}") from exc
    except RecursionError as exc:
        raise ConfigError(str(path), None, f"invalid TOML: nested deeper than {MAX_NESTING} levels") from exc
    except ValueError as exc:  # Python's limit on digits in an integer
        raise ConfigError(str(path), None, f"invalid TOML: {TOO_MANY_DIGITS}") from exc
    check_tree(str(path), data)
    return data, raw


TOO_MANY_DIGITS = f"a number has more than {sys.get_int_max_str_digits() or 4300} digits"


def check_tree(file: str, data: Any) -> None:
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


def one_line(text: str) -> str:
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


def kind_of(value: Any) -> str:
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
        problem = f"expected {_EXPECTED[kind]}, got {kind_of(value)}"
    elif kind == "literal_error":
        noun = _LITERAL_NOUN.get(str(loc[-1]) if loc else "", "value")
        problem = f"unknown {noun} {value!r}; expected {ctx.get('expected', '?')}"
    elif kind == "value_error":
        problem = str(ctx.get("error", error["msg"]))
    elif kind == "invalid-json-value":
        problem = f"expected a JSON value (string, number, boolean, list or table), got {kind_of(value)}"
    else:
        problem = error["msg"].replace("Input should be", "must be")
    return ConfigError(file, dotted_key(loc), one_line(problem))


class Strict(BaseModel):
    # A model's validator is built when it first validates, not when its module is imported: a
    # gate.toml uses a few of the many sections, and a short command should not build the rest.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)
