"""`mcp-gate serve --log-format json`: every stderr line is JSON, each call's line carries the
correlation id of its evidence records, and secrets are redacted; text stays the default."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_gate.logs import configure_logging, correlated
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import NOTES_MANIFEST, eventually, notes_server_table, write_config

pytestmark = pytest.mark.anyio

TOKEN = "tok-logs"
# A GitHub-style token: the redaction's detectors know its shape.
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()
SECRET = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_json_log_lines_parse_and_carry_the_correlation_ids_of_the_evidence(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        extra=f'[agents.bot]\nowner = "bot@example.com"\ntoken_sha256 = "{DIGEST}"\n',
    )
    stderr = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "MCP_GATE_CONFIG"}
    command = [sys.executable, "-m", "mcp_gate", "serve", "--config", str(config)]
    command += ["--http", "127.0.0.1:0", "--log-format", "json"]
    with stderr.open("w") as err:
        # Popen returns at once; the test then waits for the gate without blocking the loop.
        gate = subprocess.Popen(  # noqa: ASYNC220
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env
        )
    try:

        def announced() -> str | None:
            for line in json_lines(stderr):
                if "serving streamable HTTP on " in line["message"]:
                    return str(line["message"].rsplit(" ", 1)[1])
            return None

        url = await eventually(announced, what="the gate to say where it serves", timeout=40)
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as agent:
            for text in ("one", "two"):
                assert not (await agent.call_tool("notes__echo", {"text": text})).is_error
            assert (await agent.call_tool(f"notes__{SECRET}", {})).is_error
    finally:
        gate.send_signal(signal.SIGINT)
        gate.wait(timeout=30)

    lines = json_lines(stderr)  # every line parses, or this raises
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    calls = [line for line in lines if line["logger"] == "mcp_gate.calls"]
    assert [(c["tool"], c["outcome"]) for c in calls[:2]] == [("notes__echo", "run"), ("notes__echo", "run")]
    assert calls[2]["outcome"] == "refused" and calls[2]["server"] == "none"
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        requested = [r.correlation_id for r in await store.records(event_type="call.requested")]
    assert len(requested) == 3
    assert [c["correlation_id"] for c in calls] == requested
    assert SECRET not in stderr.read_text()


def test_text_lines_name_the_call_and_scrub_secrets() -> None:
    out = io.StringIO()
    root, ours = logging.getLogger(), logging.getLogger("mcp_gate")
    kept = (root.handlers[:], root.level, ours.level)
    configure_logging("text", verbose=True, stream=out)
    try:
        with correlated("c0ffee"):
            logging.getLogger("mcp_gate.gateway").warning("downstream said %s", SECRET)
        logging.getLogger("mcp_gate.gateway").warning("not about a call")
    finally:  # the test runner's own handlers back as they were
        root.handlers[:] = kept[0]
        root.setLevel(kept[1])
        ours.setLevel(kept[2])
    first, second = out.getvalue().splitlines()
    assert first.startswith("mcp-gate WARNING mcp_gate.gateway: downstream said ")
    assert first.endswith(" [c0ffee]") and SECRET not in first
    assert second == "mcp-gate WARNING mcp_gate.gateway: not about a call"
