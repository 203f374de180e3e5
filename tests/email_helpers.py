"""A real SMTP server for the tests (aiosmtpd on this loop, port 0) and the mails it received."""

from __future__ import annotations

import asyncio
import email
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from aiosmtpd.smtp import SMTP

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


@asynccontextmanager
async def smtp_server() -> AsyncIterator[Inbox]:
    inbox = Inbox(0)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(inbox), "127.0.0.1", 0)
    inbox.port = server.sockets[0].getsockname()[1]
    try:
        yield inbox
    finally:
        server.close()
        await server.wait_closed()
