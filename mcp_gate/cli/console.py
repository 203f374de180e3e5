"""`mcp-gate console`: the approval console on its own listener, beside one gate or several replicas."""

from __future__ import annotations

import argparse
import functools
from typing import Any

from mcp_gate.cli._common import (
    EXIT_OK,
    add_config,
    host_port,
    is_loopback,
    load_config_from_args,
    progress,
    subcommand,
)
from mcp_gate.errors import GateError

__all__ = ["add_commands"]

DEFAULT_LISTEN = ("127.0.0.1", 8767)


def cmd_console(args: argparse.Namespace) -> int:
    import anyio

    from mcp_gate import runtime
    from mcp_gate.console import build_console
    from mcp_gate.http import serve_asgi

    config = load_config_from_args(args)
    if config.console is None or not config.console.enabled:
        raise GateError(
            f"{config.path}: console: add a [console] section (enabled = true) to serve the console"
        )
    if args.listen is not None:
        host, port = host_port(args.listen, "--listen")
    else:
        host, port = config.console.listen or DEFAULT_LISTEN
    if not is_loopback(host):
        progress(
            f"warning: the console listens on {host}, which is not a loopback address: put it behind TLS; "
            "requests must name one of [http] allowed_hosts"
        )
    key = runtime.console_key(config)

    async def run() -> None:
        async with runtime.open_engine(config) as engine, anyio.create_task_group() as tg:
            app = build_console(
                engine, config, key, report=functools.partial(runtime.evidence_report, config)
            )
            limits = config.http

            async def serve(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
                await serve_asgi(
                    app,
                    host,
                    port,
                    what="console",
                    limits=limits,
                    max_body_bytes=limits.admin_max_body_bytes,
                    task_status=task_status,
                )

            bound = await tg.start(serve)
            shown = f"[{host}]" if ":" in host else host
            progress(f"mcp-gate {config.name}: console on http://{shown}:{bound}/console")

    anyio.run(run)
    return EXIT_OK


def add_commands(sub: Any) -> None:
    p = subcommand(
        sub,
        "console",
        "serve the approval console in the browser, beside the gate (or several replicas on one database)",
    )
    add_config(p)
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where to listen (default: [console] listen, else 127.0.0.1:8767)",
    )
    p.set_defaults(func=cmd_console)
