"""HTTP plumbing shared by the agent front and the approvers' API: bearer tokens and serving on a socket."""

from __future__ import annotations

import socket
from typing import Literal

import anyio
import anyio.abc
import uvicorn
from starlette.types import ASGIApp, Scope

from mcp_gate.errors import GateError

__all__ = ["bearer_token", "serve_asgi"]


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None for anything else."""
    for key, value in scope.get("headers", []):
        if key.lower() != b"authorization":
            continue
        header: str = value.decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()
    return None


async def serve_asgi(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    what: str,
    lifespan: Literal["on", "off"] = "off",
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on host:port with uvicorn; port 0 picks a free port, reported via task_status."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise GateError(f"{what}: cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    bound: int = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan=lifespan))
    task_status.started(bound)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
