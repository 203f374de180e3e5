"""gate.toml's [store]: where the gate keeps its state when it is not the SQLite file in data_dir.

`url = "postgresql://gate@db.internal:5432/gate"` names a PostgreSQL database; its password comes
from `password_env` or `password_file` (or the whole url from `url_env`), never from gate.toml
itself. libpq's own query parameters (`sslmode`, `sslrootcert`, ...) pass through unchanged."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from mcp_gate.config.files import Strict, config_error_from, read_private_text
from mcp_gate.config.model import StoreSettings
from mcp_gate.config.servers import ENV_NAME
from mcp_gate.errors import ConfigError

__all__ = ["redact_url", "store_settings"]

_SCHEMES = ("postgresql", "postgres")


class _StoreSection(Strict):
    url: str | None = None
    url_env: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    pool_size: int = Field(default=4, ge=1, le=100)
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    lease_seconds: float = Field(default=15.0, ge=1, le=3600)


def redact_url(url: str) -> str:
    """The url as it may be shown: scheme, user, host, port and database, never a password (nor
    the query, which may carry one too)."""
    try:
        parts = urllib.parse.urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://(unreadable url)"
    return f"{parts.scheme or 'postgresql'}://{user}{host}{port}{parts.path}"


def store_settings(
    file: str, data: dict[str, Any] | None, base: Path, environ: Mapping[str, str]
) -> StoreSettings | None:
    """The [store] section, or None (the SQLite file in data_dir) when there is none."""
    if data is None:
        return None
    try:
        section = _StoreSection.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(file, exc, prefix=("store",)) from exc
    if (section.url is None) == (section.url_env is None):
        raise ConfigError(file, "store.url", "give url, or url_env naming a variable that holds it")
    if section.password_env is not None and section.password_file is not None:
        raise ConfigError(file, "store.password_file", "give password_env or password_file, not both")
    for key in ("url_env", "password_env"):
        name = getattr(section, key)
        if name is not None and not ENV_NAME.fullmatch(name):
            raise ConfigError(file, f"store.{key}", f"{name!r} is not an environment variable name")
    if section.url is not None:
        key, url = "store.url", section.url
        if _password(file, key, url) is not None:
            raise ConfigError(
                file, key, "has a password; passwords come from password_env, password_file or url_env"
            )
    else:
        assert section.url_env is not None
        key, url = "store.url_env", environ.get(section.url_env, "").strip()
        if not url:
            raise ConfigError(
                file,
                key,
                f"environment variable {section.url_env} is not set (it should hold the url)",
            )
    _password(file, key, url)  # a url from the environment is checked for shape too
    password = _read_password(file, section, base, environ)
    if password is not None:
        if _password(file, key, url) is not None:
            raise ConfigError(file, key, "the url already has a password; drop password_env/password_file")
        url = _with_password(url, password)
    return StoreSettings(
        url=url,
        where=redact_url(url),
        pool_size=section.pool_size,
        connect_timeout=section.connect_timeout,
        lease_seconds=section.lease_seconds,
    )


def _password(file: str, key: str, url: str) -> str | None:
    """The url's password (None without one); ConfigError, never showing the url, if it is not a
    PostgreSQL url."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        # The parser's message may quote a misread password: say nothing of the url itself.
        raise ConfigError(
            file, key, "is not a URL (a password with special characters must be percent-encoded)"
        ) from exc
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ConfigError(
            file, key, f"expected postgresql://USER@HOST:PORT/DATABASE, got {redact_url(url)!r}"
        )
    if any(name.lower() == "password" for name, _ in urllib.parse.parse_qsl(parts.query)):
        return "(in the query)"
    return parts.password


def _read_password(file: str, section: _StoreSection, base: Path, environ: Mapping[str, str]) -> str | None:
    if section.password_env is not None:
        value = environ.get(section.password_env, "")
        if not value:
            raise ConfigError(
                file,
                "store.password_env",
                f"environment variable {section.password_env} is not set (it should hold the password)",
            )
        return value
    if section.password_file is not None:
        path = base / section.password_file
        try:
            value = read_private_text(path, "the store's password file").strip()
        except OSError as exc:
            raise ConfigError(file, "store.password_file", f"cannot read {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(str(path), None, "the password file is not UTF-8") from exc
        if not value:
            raise ConfigError(str(path), None, "the store's password file is empty")
        return value
    return None


def _with_password(url: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    user = urllib.parse.quote(parts.username or "", safe="")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:{urllib.parse.quote(password, safe='')}@{host}{port}"
    return parts._replace(netloc=netloc).geturl()
