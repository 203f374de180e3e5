"""The notary: when the gate signs a checkpoint, its signing key file, and the copies sent to sinks."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from mcp_gate.checkpoints import (
    Checkpoint,
    Pruned,
    Signer,
    SigningKey,
    VerifierKey,
    open_note,
    parse_checkpoint,
    sign_note,
)
from mcp_gate.clock import utc_iso
from mcp_gate.config import GateConfig, read_private_text
from mcp_gate.errors import CheckpointError, ConfigError, GateError

__all__ = [
    "CommandSigner",
    "FileSink",
    "Notary",
    "Sink",
    "WebhookSink",
    "create_key_file",
    "head_path",
    "load_key_file",
    "notary_for",
    "read_head",
    "read_head_text",
    "write_head",
]

log = logging.getLogger(__name__)


def create_key_file(path: Path, name: str) -> SigningKey:
    """Write a new Ed25519 signing key to `path` (mode 0600); never overwrites an existing file."""
    key = SigningKey.generate(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise GateError(f"{path}: a signing key is already there; it is never overwritten") from exc
    except OSError as exc:
        raise GateError(f"{path}: cannot create the signing key: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(key.to_text() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


def load_key_file(path: Path) -> SigningKey:
    """Read a signing key; refuse one that other users could read."""
    try:
        text = read_private_text(path, "signing key")
    except FileNotFoundError as exc:
        raise GateError(f"{path}: no signing key here; create one with `mcp-gate keys init`") from exc
    except OSError as exc:
        raise GateError(f"{path}: cannot read the signing key: {exc.strerror or exc}") from exc
    try:
        return SigningKey.from_text(text)
    except CheckpointError as exc:
        raise GateError(f"{path}: {exc}") from exc


def head_path(key_path: Path) -> Path:
    """The signed-head file: the last checkpoint this key signed, kept beside the key (outside the
    database, so deleting checkpoint rows cannot take it back)."""
    return key_path.with_name(key_path.name + ".head")


def read_head_text(path: Path) -> str | None:
    """The signed-head file's note as text, None if there is no file; GateError if unreadable."""
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise GateError(f"{path}: cannot read the signed head: {exc.strerror or exc}") from exc


def read_head(path: Path, verifier: VerifierKey) -> Checkpoint | None:
    """The checkpoint in the signed-head file, None if there is no file; GateError if it is not a
    note `verifier` signed."""
    text = read_head_text(path)
    if text is None:
        return None
    try:
        body, _ = open_note(text, [verifier])
        return parse_checkpoint(body)
    except CheckpointError as exc:
        raise GateError(f"{path}: the signed head is not valid: {exc}") from exc


def write_head(path: Path, note: str) -> None:
    """Replace the signed-head file with `note` (mode 0600), atomically and durably."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(note)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise GateError(f"{path}: cannot write the signed head: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class CommandSigner:
    """A separate signer (an HSM or KMS wrapper, a signing service's client): the gate holds no
    private key. The command reads the exact bytes to sign on stdin and prints the base64 Ed25519
    signature on stdout; the gate checks it against the configured public key before using it."""

    command: tuple[str, ...]
    verifier: VerifierKey
    timeout: float = 10.0

    @property
    def name(self) -> str:
        return self.verifier.name

    def sign(self, message: bytes) -> bytes:
        what = f"the signer {self.command[0]!r}"
        try:
            done = subprocess.run(
                self.command, input=message, capture_output=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise CheckpointError(f"{what} did not answer within {self.timeout:g} s") from exc
        except OSError as exc:
            raise CheckpointError(f"{what} could not be started: {exc.strerror or exc}") from exc
        if done.returncode != 0:
            raise CheckpointError(f"{what} failed with exit status {done.returncode}")
        try:
            signature = base64.b64decode(done.stdout.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CheckpointError(f"{what} printed something other than a base64 signature") from exc
        if not self.verifier.verify(signature, message):
            raise CheckpointError(f"{what} returned a signature that the configured signer_pubkey rejects")
        return signature


class Sink(Protocol):
    """Somewhere outside the gate's database that keeps a copy of every checkpoint."""

    @property
    def name(self) -> str: ...

    def copy(self, note: str) -> None:
        """Store one signed note; raise OSError (or GateError) if it could not be stored."""
        ...


@dataclass(frozen=True)
class FileSink:
    """Appends each note to a file, meant to be on storage the operator cannot rewrite."""

    path: Path

    @property
    def name(self) -> str:
        return f"file {self.path}"

    def copy(self, note: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(note + "\n")
            handle.flush()
            os.fsync(handle.fileno())


@dataclass(frozen=True)
class WebhookSink:
    """POSTs each note as JSON (`text` for Slack incoming webhooks, `checkpoint` for tools).

    The URL and secret are secrets: only the host is ever named. With a secret, the body's
    HMAC-SHA256 is sent in `X-MCP-Gate-Signature: sha256=<hex>`.
    """

    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)
    timeout: float = 5.0

    @property
    def name(self) -> str:
        return f"webhook {urlsplit(self.url).hostname or '?'}"

    def copy(self, note: str) -> None:
        body = json.dumps({"text": f"mcp-gate checkpoint\n```\n{note}```", "checkpoint": note}).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret is not None:
            mac = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-MCP-Gate-Signature"] = f"sha256={mac}"
        import urllib.error  # only a copy sink posting over HTTP needs it
        import urllib.request

        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                status = response.status
        except urllib.error.HTTPError as exc:
            raise GateError(f"answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GateError(f"could not be reached ({type(reason).__name__})") from None
        if not 200 <= status < 300:
            raise GateError(f"answered HTTP {status}")


@dataclass(frozen=True)
class Notary:
    """Signs checkpoints of one gate's log and sends copies to its sinks.

    A checkpoint is due when `every_records` records came since the last one, or `every_seconds`
    passed and new records came, or a record since the last one is an approval decision.
    """

    key: Signer = field(repr=False)
    origin: str
    every_records: int = 1000
    every_seconds: float = 300.0
    sinks: Sequence[Sink] = ()
    head: Path | None = None  # the signed-head file; None only for notaries in tests

    def due(
        self, *, last_size: int, last_time: datetime | None, size: int, decided: bool, now: datetime
    ) -> bool:
        if size <= last_size:
            return False
        if decided or size - last_size >= self.every_records or last_time is None:
            return True
        return (now - last_time).total_seconds() >= self.every_seconds

    def sign(self, size: int, root: str, now: datetime, *, pruned: Pruned | None = None) -> str:
        checkpoint = Checkpoint(self.origin, size, root, time=utc_iso(now), pruned=pruned)
        return sign_note(checkpoint.body, self.key)

    def copy(self, note: str) -> list[str]:
        """Send `note` to every sink; the one-line reasons of those that failed."""
        failed: list[str] = []
        for sink in self.sinks:
            try:
                sink.copy(note)
            except (OSError, GateError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                log.warning("checkpoint copy to %s failed: %s", sink.name, reason)
                failed.append(f"{sink.name}: {reason}")
        return failed


def notary_for(config: GateConfig) -> Notary | None:
    """The gate's notary: on when a separate signer is configured, its key file exists, or
    `[evidence] key` names one."""
    settings = config.evidence
    if settings is None:
        return None
    key: Signer
    if settings.signer is not None and settings.signer_pubkey is not None:
        try:
            key = CommandSigner(settings.signer, VerifierKey.from_text(settings.signer_pubkey))
        except CheckpointError as exc:
            raise ConfigError(str(config.path), "evidence.signer_pubkey", str(exc)) from exc
    elif not settings.key_configured and not settings.key_path.exists():
        return None
    else:
        try:
            key = load_key_file(settings.key_path)
        except GateError as exc:
            raise ConfigError(str(config.path), "evidence.key", str(exc)) from exc
    sinks: list[Sink] = []
    if settings.copy_to_file is not None:
        sinks.append(FileSink(settings.copy_to_file))
    if settings.webhook_url is not None:
        sinks.append(WebhookSink(settings.webhook_url, settings.webhook_secret, settings.webhook_timeout))
    return Notary(
        key,
        settings.origin,
        settings.every_records,
        settings.every_seconds,
        tuple(sinks),
        head=head_path(settings.key_path),
    )
