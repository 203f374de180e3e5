"""[console]: the approval console in the browser: whether it is served, its public URL, sessions, its key."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError

from mcp_gate.config.files import Strict, config_error_from, decode, read_bytes
from mcp_gate.config.model import ConsoleSettings, EmailSettings, SlackSecret, WebhookSettings
from mcp_gate.config.tiers import duration
from mcp_gate.errors import ConfigError

__all__ = ["CONSOLE_KEY_FILE", "console_settings", "email_settings", "webhook_settings"]

CONSOLE_KEY_FILE = "console.key"  # in data_dir unless [console] secret_file names another
MAX_SESSION_SECONDS = 7 * 24 * 3600.0


class _ConsoleSection(Strict):
    enabled: bool = True
    public_url: str | None = None
    session: str = "8h"
    secret_file: str | None = None
    listen: str | None = None
    login_attempts: int = Field(default=5, ge=1, le=1000)
    operators: list[str] = Field(default_factory=list)


def console_settings(
    file: str, data: dict[str, Any] | None, base: Path, data_dir: Path
) -> ConsoleSettings | None:
    """gate.toml's [console] as settings, or None when the section is absent."""
    if data is None:
        return None
    try:
        section = _ConsoleSection.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(file, exc, prefix=("console",)) from exc
    public_url = section.public_url
    if public_url is not None:
        parts = urlsplit(public_url)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(
                file,
                "console.public_url",
                f"expected an http(s) URL such as https://gate.example.com/console, got {public_url!r}",
            )
        public_url = public_url.rstrip("/")
    seconds = duration(file, "console.session", section.session)
    if not 60 <= seconds <= MAX_SESSION_SECONDS:
        raise ConfigError(file, "console.session", "a session lasts between 1m and 7d")
    listen = None
    if section.listen is not None:
        host, sep, port = section.listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                file, "console.listen", f"expected HOST:PORT such as 127.0.0.1:8767, got {section.listen!r}"
            )
        listen = (host, int(port))
    secret = base / section.secret_file if section.secret_file is not None else data_dir / CONSOLE_KEY_FILE
    return ConsoleSettings(
        enabled=section.enabled,
        public_url=public_url,
        session_seconds=seconds,
        secret_file=secret,
        listen=listen,
        login_attempts=section.login_attempts,
        operators=tuple(section.operators),
    )


MAX_CA_BYTES = 1024 * 1024  # [email] ca_file: a PEM bundle


class _EmailSection(Strict):
    smtp_host: str
    smtp_port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    sender: str = Field(alias="from")
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    link_expires: str = "15m"
    notify: list[str] = Field(default_factory=list)
    ca_file: str | None = None  # a PEM bundle to trust for the SMTP server's certificate


def email_settings(
    file: str, data: dict[str, Any] | None, base: Path, console: ConsoleSettings | None
) -> EmailSettings | None:
    """gate.toml's [email] as settings, or None when the section is absent. Its links lead to the
    console, so it needs [console] public_url."""
    if data is None:
        return None
    try:
        section = _EmailSection.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(file, exc, prefix=("email",)) from exc
    if console is None or console.public_url is None:
        raise ConfigError(file, "email", "email links lead to the console: set [console] public_url")
    if section.password_env is not None and section.password_file is not None:
        raise ConfigError(file, "email.password_file", "give password_env or password_file, not both")
    password = None
    if section.password_env is not None or section.password_file is not None:
        if section.username is None:
            raise ConfigError(file, "email.username", "a password needs the username it belongs to")
        where = None if section.password_file is None else base / section.password_file
        password = SlackSecret("password", section.password_env, where, section="email")
    if password is not None and not section.starttls and not _loopback(section.smtp_host):
        raise ConfigError(
            file, "email.starttls", "the SMTP password would cross the network in clear: set starttls = true"
        )
    ca = None
    if section.ca_file is not None:
        where = base / section.ca_file
        ca = decode(where, read_bytes(where, "no such file (email.ca_file)", limit=MAX_CA_BYTES))
        if "-----BEGIN CERTIFICATE-----" not in ca:
            raise ConfigError(file, "email.ca_file", f"{section.ca_file} holds no PEM certificate")
    seconds = duration(file, "email.link_expires", section.link_expires)
    if not 60 <= seconds <= 24 * 3600:
        raise ConfigError(file, "email.link_expires", "a link lasts between 1m and 24h")
    return EmailSettings(
        smtp_host=section.smtp_host,
        smtp_port=section.smtp_port,
        sender=section.sender,
        starttls=section.starttls,
        username=section.username,
        password=password,
        link_seconds=seconds,
        notify=tuple(section.notify),
        ca_pem=ca,
    )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _WebhookSection(Strict):
    url: str
    secret_env: str | None = None
    secret_file: str | None = None
    attempts: int = Field(default=6, ge=1, le=20)
    backoff: float = Field(default=0.5, gt=0, le=60)


def webhook_settings(file: str, data: dict[str, Any] | None, base: Path) -> WebhookSettings | None:
    """gate.toml's [webhook] as settings, or None when the section is absent."""
    if data is None:
        return None
    try:
        section = _WebhookSection.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(file, exc, prefix=("webhook",)) from exc
    parts = urlsplit(section.url)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not parts.netloc or not (parts.scheme == "https" or (parts.scheme == "http" and local)):
        raise ConfigError(
            file, "webhook.url", f"expected an https URL (http only on loopback), got {section.url!r}"
        )
    if (section.secret_env is None) == (section.secret_file is None):
        raise ConfigError(file, "webhook.secret_env", "give secret_env or secret_file (one of them)")
    where = None if section.secret_file is None else base / section.secret_file
    secret = SlackSecret("secret", section.secret_env, where, section="webhook")
    return WebhookSettings(url=section.url, secret=secret, attempts=section.attempts, backoff=section.backoff)
