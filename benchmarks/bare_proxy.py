"""A bare proxy in front of the example notes server: FastMCP's `create_proxy`, no policy, no evidence.

What a user would run instead of the gate, for `overhead.py`'s baseline: a stdio MCP server whose
tools are the notes server's, each call passed through FastMCP's proxy to one notes server
process it keeps alive. Needs the `bench` extra (`pip install -e '.[bench]'`).

    python benchmarks/bare_proxy.py        # NOTES_DIR names the notes server's folder
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fastmcp.client.transports import StdioTransport
from fastmcp.server import create_proxy

NOTES_SERVER = Path(__file__).resolve().parents[1] / "examples" / "notes_server.py"


def main() -> None:
    notes = StdioTransport(
        command=sys.executable,
        args=[str(NOTES_SERVER)],
        env={"NOTES_DIR": os.environ["NOTES_DIR"]},
        keep_alive=True,
    )
    create_proxy(notes, name="bare-proxy").run(transport="stdio", show_banner=False)


if __name__ == "__main__":
    main()
