"""Signed checkpoints: Ed25519 keys, C2SP signed notes and tlog-checkpoint bodies over the evidence chain."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mcp_gate.errors import CheckpointError

__all__ = [
    "Checkpoint",
    "Pruned",
    "Signer",
    "SigningKey",
    "VerifierKey",
    "checkpoint_body",
    "open_note",
    "parse_checkpoint",
    "sign_note",
    "split_notes",
]

_ED25519 = 0x01
_SIG_PREFIX = "\u2014 "  # an em dash and a space start every signature line
_KEY_NAME = re.compile(r"[^\s+]{1,128}")
_TIME_EXT = "time "
_PRUNED_EXT = "pruned "


def _key_hash(name: str, public: bytes) -> int:
    # C2SP signed-note: key hash = SHA-256(name || "\n" || alg byte || public key)[:4]
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([_ED25519]) + public).digest()
    return int.from_bytes(digest[:4], "big")


def _check_name(name: str) -> str:
    if not _KEY_NAME.fullmatch(name):
        raise CheckpointError(f"key name {name!r}: 1-128 characters, no spaces and no '+'")
    return name


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointError(f"{what} is not valid base64") from exc


@dataclass(frozen=True)
class VerifierKey:
    """A public key in signed-note verifier form: `<name>+<hex key hash>+<base64(0x01 || key)>`."""

    name: str
    public: bytes

    @property
    def key_hash(self) -> int:
        return _key_hash(self.name, self.public)

    @property
    def key_id(self) -> str:
        return f"{self.key_hash:08x}"

    def to_text(self) -> str:
        encoded = base64.b64encode(bytes([_ED25519]) + self.public).decode("ascii")
        return f"{self.name}+{self.key_id}+{encoded}"

    @classmethod
    def from_text(cls, text: str) -> VerifierKey:
        parts = text.strip().split("+", 2)  # base64 may hold '+' itself
        if len(parts) != 3:
            raise CheckpointError("a public key reads NAME+KEYHASH+BASE64 (from `mcp-gate keys init`)")
        name, hash_text, encoded = parts
        raw = _b64decode(encoded, "the public key")
        if len(raw) != 33 or raw[0] != _ED25519:
            raise CheckpointError("the public key is not an Ed25519 key")
        key = cls(_check_name(name), raw[1:])
        if hash_text.lower() != key.key_id:
            raise CheckpointError("the public key's key hash does not match its name and key")
        return key

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key with its note name; text form `PRIVATE+KEY+<name>+<hash>+<base64>`."""

    name: str
    seed: bytes

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        seed = private.private_bytes_raw()
        return cls(_check_name(name), seed)

    @property
    def verifier(self) -> VerifierKey:
        private = Ed25519PrivateKey.from_private_bytes(self.seed)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return VerifierKey(self.name, public)

    def to_text(self) -> str:
        encoded = base64.b64encode(bytes([_ED25519]) + self.seed).decode("ascii")
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id}+{encoded}"

    @classmethod
    def from_text(cls, text: str) -> SigningKey:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise CheckpointError("not a signing key (expected PRIVATE+KEY+NAME+KEYHASH+BASE64)")
        raw = _b64decode(parts[4], "the signing key")
        if len(raw) != 33 or raw[0] != _ED25519:
            raise CheckpointError("the signing key is not an Ed25519 key")
        key = cls(_check_name(parts[2]), raw[1:])
        if parts[3].lower() != key.verifier.key_id:
            raise CheckpointError("the signing key's key hash does not match its name and key")
        return key

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)

    def __repr__(self) -> str:  # never show the seed
        return f"SigningKey(name={self.name!r}, key_id={self.verifier.key_id})"


class Signer(Protocol):
    """What signs checkpoints: a key file's `SigningKey`, or a separate signer the gate only asks."""

    @property
    def name(self) -> str: ...

    @property
    def verifier(self) -> VerifierKey: ...

    def sign(self, message: bytes) -> bytes: ...


def sign_note(body: str, key: Signer) -> str:
    """A C2SP signed note: the body (ending in a newline), a blank line, one signature line."""
    if not body.endswith("\n") or "\n\n" in body:
        raise CheckpointError("a note body is non-empty lines, each ending in a newline")
    signature = key.sign(body.encode("utf-8"))
    blob = key.verifier.key_hash.to_bytes(4, "big") + signature
    return f"{body}\n{_SIG_PREFIX}{key.name} {base64.b64encode(blob).decode('ascii')}\n"


def open_note(text: str, verifiers: Iterable[VerifierKey]) -> tuple[str, tuple[VerifierKey, ...]]:
    """The body of a signed note and the known keys that signed it; CheckpointError if none did."""
    body, sep, signatures = text.partition("\n\n")
    if not sep or not body:
        raise CheckpointError("not a signed note: no blank line before the signatures")
    body += "\n"
    known = {(v.name, v.key_hash): v for v in verifiers}
    signers: list[VerifierKey] = []
    lines = signatures.split("\n")
    if lines[-1] != "" or len(lines) < 2:
        raise CheckpointError("not a signed note: signature lines must end in a newline")
    for line in lines[:-1]:
        if not line.startswith(_SIG_PREFIX):
            raise CheckpointError("not a signed note: a signature line must start with an em dash")
        name, _, encoded = line[len(_SIG_PREFIX) :].partition(" ")
        blob = _b64decode(encoded, "a signature")
        if len(blob) < 5:
            raise CheckpointError("a signature is too short")
        key = known.get((name, int.from_bytes(blob[:4], "big")))
        if key is None:
            continue  # signed by a key we were not told to trust: not evidence of anything
        if not key.verify(blob[4:], body.encode("utf-8")):
            raise CheckpointError(f"the signature by {name} does not verify (forged or altered)")
        signers.append(key)
    if not signers:
        raise CheckpointError("no signature by a trusted key (signed by another key?)")
    return body, tuple(signers)


@dataclass(frozen=True)
class Pruned:
    """What a retention checkpoint says was removed: records `first`..`last` whose chain head was `root`."""

    first: int
    last: int
    count: int
    root: str


@dataclass(frozen=True)
class Checkpoint:
    """A tlog-checkpoint body: origin, tree size, root hash (here: the chain head), extension lines.

    `root` is the hex `entry_hash` of record `size` (the chain head after it); every earlier
    record is bound to it through the chain. `pruned` is set for a retention checkpoint.
    """

    origin: str
    size: int
    root: str
    time: str | None = None
    pruned: Pruned | None = None

    @property
    def body(self) -> str:
        return checkpoint_body(self.origin, self.size, self.root, time=self.time, pruned=self.pruned)


def checkpoint_body(
    origin: str, size: int, root: str, *, time: str | None = None, pruned: Pruned | None = None
) -> str:
    if not origin or "\n" in origin or size < 0:
        raise CheckpointError("a checkpoint needs a one-line origin and a size >= 0")
    lines = [origin, str(size), base64.b64encode(bytes.fromhex(root)).decode("ascii")]
    if time is not None:
        lines.append(f"{_TIME_EXT}{time}")
    if pruned is not None:
        lines.append(f"{_PRUNED_EXT}{pruned.first} {pruned.last} {pruned.count} {pruned.root}")
    return "".join(f"{line}\n" for line in lines)


def parse_checkpoint(body: str) -> Checkpoint:
    lines = body.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise CheckpointError("a checkpoint body has an origin, a size and a root hash line")
    origin, size_text, root_text, *extensions = lines[:-1]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise CheckpointError(f"checkpoint size {size_text!r} is not a decimal number")
    root = _b64decode(root_text, "the checkpoint root hash")
    if len(root) != 32:
        raise CheckpointError("the checkpoint root hash is not 32 bytes")
    time: str | None = None
    pruned: Pruned | None = None
    for line in extensions:
        if line.startswith(_TIME_EXT):
            time = line[len(_TIME_EXT) :]
        elif line.startswith(_PRUNED_EXT):
            pruned = _parse_pruned(line[len(_PRUNED_EXT) :])
    return Checkpoint(origin, int(size_text), root.hex(), time=time, pruned=pruned)


def _parse_pruned(text: str) -> Pruned:
    parts = text.split(" ")
    if (
        len(parts) != 4
        or not all(p.isdigit() for p in parts[:3])
        or not re.fullmatch(r"[0-9a-f]{64}", parts[3])
    ):
        raise CheckpointError("a pruned line reads FIRST LAST COUNT ROOT")
    first, last, count = (int(p) for p in parts[:3])
    if not 1 <= first <= last or count != last - first + 1:
        raise CheckpointError("a pruned line's range and count do not agree")
    return Pruned(first, last, count, parts[3])


def split_notes(text: str) -> Iterator[str]:
    """The signed notes in a checkpoint file: each is body lines, a blank line, signature lines."""
    blocks = text.split("\n\n")
    pending: str | None = None
    for block in blocks:
        if not block.strip("\n"):
            continue
        block = block.strip("\n")
        if block.startswith(_SIG_PREFIX):
            if pending is not None:
                yield f"{pending}\n\n{block}\n"
                pending = None
            continue
        pending = block
    if pending is not None:
        yield f"{pending}\n\n"  # a body with no signatures: open_note refuses it


def verifiers_from(texts: Sequence[str] | Mapping[str, str]) -> list[VerifierKey]:
    values = texts.values() if isinstance(texts, Mapping) else texts
    return [VerifierKey.from_text(t) for t in values]
