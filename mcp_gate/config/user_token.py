"""The tokens `mcp-gate login` keeps for its user: where (their config dir), read and written 0600."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcp_gate.config.files import check_private
from mcp_gate.errors import GateError

__all__ = ["read_user_token", "remove_user_token", "user_token_path", "write_user_token"]

TOKEN_FILE = "idp-token.json"


def user_token_path(environ: Mapping[str, str]) -> Path:
    """$XDG_CONFIG_HOME/mcp-gate/idp-token.json, else ~/.config/mcp-gate/idp-token.json."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "mcp-gate" / TOKEN_FILE


def read_user_token(path: Path) -> dict[str, Any] | None:
    """The stored tokens, or None when there are none. A file others can read is refused (one line)."""
    if not path.exists():
        return None
    check_private(path, "login token file")
    try:
        found = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise GateError(f"{path}: cannot read the stored login ({exc}); run `mcp-gate login` again") from exc
    if not isinstance(found, dict) or not isinstance(found.get("access_token"), str):
        raise GateError(f"{path}: not a stored login; run `mcp-gate login` again")
    return found


def write_user_token(path: Path, tokens: Mapping[str, Any]) -> None:
    """Write the tokens readable by their owner only (0600, in a 0700 folder), replacing any before."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(dict(tokens), f)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(partial, 0o600)
    os.replace(partial, path)


def remove_user_token(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
