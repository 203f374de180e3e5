"""A real SMTP server for the tests (aiosmtpd on this loop, port 0) and the mails it received."""

from __future__ import annotations

import asyncio
import email
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LINK = re.compile(r"^(Approve|Deny):\s+(\S+)$", re.M)


@dataclass
class Inbox:
    port: int
    mails: list[Message] = field(default_factory=list)
    rcpts: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook
        self.mails.append(email.message_from_bytes(envelope.content))
        self.rcpts.append(list(envelope.rcpt_tos))
        return "250 OK"

    def to(self, address: str) -> Message:
        found = [m for m in self.mails if m["To"] == address]
        assert len(found) == 1, [m["To"] for m in self.mails]
        return found[0]

    @staticmethod
    def links(mail: Message) -> dict[str, str]:
        body = mail.get_payload(decode=True)
        assert isinstance(body, bytes)
        return {verdict.lower(): url for verdict, url in LINK.findall(body.decode().replace("\r\n", "\n"))}


@dataclass
class Relay:
    """What a relay that takes STARTTLS and AUTH needs, and the logins it saw."""

    tls: ssl.SSLContext
    ca_pem: str  # the CA its certificate chains to
    users: dict[str, str]
    logins: list[tuple[str, bool]] = field(default_factory=list)  # (user, accepted)

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        accepted = self.users.get(user) == password
        self.logins.append((user, accepted))
        return AuthResult(success=accepted)


def relay(users: dict[str, str], *, directory: Path) -> Relay:
    """A CA and a certificate for 127.0.0.1 signed by it (written under `directory`), for a relay
    that requires STARTTLS before AUTH and AUTH before mail."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test SMTP CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "relay.pem").write_bytes(leaf.public_bytes(pem))
    (directory / "relay.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(directory / "relay.pem", directory / "relay.key")
    return Relay(tls, ca.public_bytes(pem).decode(), users)


@asynccontextmanager
async def smtp_server(relay: Relay | None = None) -> AsyncIterator[Inbox]:
    """A real SMTP server on this loop; with `relay`, one that requires STARTTLS and then AUTH."""
    inbox = Inbox(0)
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        if relay is None:
            return SMTP(inbox)
        return SMTP(
            inbox,
            tls_context=relay.tls,
            require_starttls=True,
            authenticator=relay.authenticate,
            auth_required=True,
            auth_require_tls=True,
        )

    server = await loop.create_server(protocol, "127.0.0.1", 0)
    inbox.port = server.sockets[0].getsockname()[1]
    try:
        yield inbox
    finally:
        server.close()
        await server.wait_closed()
