"""The admin listener's /healthz and /readyz over a real gate: readiness follows the store and the
downstreams, and a remote listener tells a stranger only up or ready."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from mcp_gate.config import load_config
from mcp_gate.health import Probes, serve_admin
from mcp_gate.server import FrontServer
from mcp_gate.storage.memory import MemoryStore
from mcp_gate.testing import NOTES_MANIFEST, eventually, notes_server_table, running_gate, write_config
from tests.pg_helpers import PrivateServer, postgres_database, postgres_url, private_postgres  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio


def make_config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        extra=extra,
    )


@asynccontextmanager
async def admin(front: FrontServer, host: str = "127.0.0.1") -> AsyncIterator[httpx2.AsyncClient]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_admin, Probes(front.gateway), host, 0)
        base = f"http://127.0.0.1:{port}"  # listening everywhere, reached on this machine
        async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
            yield http
        tg.cancel_scope.cancel()


async def test_healthz_answers_up_and_readyz_names_each_dependency(tmp_path: Path) -> None:
    async with running_gate(make_config(tmp_path)) as front, admin(front) as http:
        live = await http.get("/healthz")
        assert live.status_code == 200 and live.json() == {"status": "up"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready" and body["degraded"] == []
        assert body["checks"]["store"]["state"] == "up"
        assert body["checks"]["store"]["schema"] == "current"
        assert body["checks"]["downstreams"] == {"notes": "up"}
        assert body["checks"]["signing_key"] == "off"
        # The approvers' API still answers on the same listener, behind its tokens.
        assert (await http.get("/v1/requests")).status_code == 401


async def test_readyz_is_degraded_naming_a_killed_downstream_and_ready_again_once_it_restarts(
    tmp_path: Path,
) -> None:
    async with (
        running_gate(make_config(tmp_path)) as front,
        admin(front) as http,
        Client(front.server, mode="legacy") as agent,
    ):
        ds = front.gateway.downstreams["notes"]
        connects = ds.connects
        seen: list[dict[str, object]] = []

        async def degraded() -> bool:
            response = await http.get("/readyz")
            seen.append(response.json())
            return response.status_code == 200 and response.json()["status"] == "degraded"

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.call_tool, "notes__crash", {})
            await eventually(degraded, what="/readyz to say degraded after the downstream died")
        body = next(b for b in seen if b["status"] == "degraded")
        assert body["degraded"] == ["notes"]
        assert body["checks"]["downstreams"]["notes"] in ("down", "starting")  # type: ignore[index]

        async def ready_again() -> bool:
            response = await http.get("/readyz")
            return response.json()["status"] == "ready" and ds.connects > connects

        await eventually(ready_again, what="/readyz to be ready once the downstream restarted")


async def test_readyz_is_503_while_the_store_cannot_be_read(tmp_path: Path) -> None:
    store = MemoryStore()
    config = load_config(make_config(tmp_path), {})
    async with running_gate(config, store=store) as front, admin(front) as http:
        assert (await http.get("/readyz")).status_code == 200
        await store.close()
        response = await http.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "not_ready"
        assert body["checks"]["store"]["state"] == "down"
        assert "closed" in body["checks"]["store"]["error"]
        assert (await http.get("/healthz")).status_code == 200  # alive, only not ready


async def test_readyz_flips_with_an_unreachable_postgresql_and_comes_back(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811
    postgres_database: str,  # noqa: F811
) -> None:
    import psycopg

    from mcp_gate.storage.postgres import PostgresStore

    database = postgres_database.rsplit("/", 1)[1]
    config = load_config(make_config(tmp_path), {})
    store = await PostgresStore.open(postgres_url, connect_timeout=2)
    try:
        async with running_gate(config, store=store) as front, admin(front) as http:
            assert (await http.get("/readyz")).json()["status"] == "ready"
            with psycopg.connect(postgres_database.rsplit("/", 1)[0] + "/postgres", autocommit=True) as pg:
                pg.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
                pg.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                )
                try:

                    async def not_ready() -> bool:
                        return (await http.get("/readyz")).status_code == 503

                    await eventually(not_ready, what="/readyz to be 503 with PostgreSQL unreachable")
                finally:
                    pg.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

            async def ready() -> bool:
                response = await http.get("/readyz")
                return response.status_code == 200 and response.json()["status"] == "ready"

            await eventually(ready, what="/readyz to be ready again with PostgreSQL back", timeout=40)
    finally:
        await store.close()


async def test_a_remote_listener_says_only_ready_and_wants_the_scrape_token_for_metrics(
    tmp_path: Path,
) -> None:
    digest = hashlib.sha256(b"scrape-me").hexdigest()
    extra = f'[admin]\nlisten = "0.0.0.0:0"\nallow_remote = true\nscrape_token_sha256 = "{digest}"\n'
    async with running_gate(make_config(tmp_path, extra)) as front, admin(front, host="0.0.0.0") as http:
        assert (await http.get("/healthz")).json() == {"status": "up"}
        assert (await http.get("/readyz")).json() == {"status": "ready"}
        refused = await http.get("/metrics")
        assert refused.status_code == 401
        assert (await http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        scraper = {"Authorization": "Bearer scrape-me"}
        scraped = await http.get("/metrics", headers=scraper)
        assert scraped.status_code == 200
        assert "# TYPE mcp_gate_tool_calls_total counter" in scraped.text
        assert 'mcp_gate_refused_tokens_total{listener="metrics",reason="missing"} 1.0' in scraped.text
        assert 'mcp_gate_refused_tokens_total{listener="metrics",reason="unknown"} 1.0' in scraped.text
        assert "checks" in (await http.get("/readyz", headers=scraper)).json()  # the scraper sees details


def test_check_json_reports_the_same_readiness_offline(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "mcp_gate", "check", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    ready = json.loads(out.stdout)["readiness"]
    assert ready["status"] == "ready"
    assert ready["checks"]["store"]["state"] == "up"
    assert ready["checks"]["downstreams"] == {"notes": "up"}
    assert ready["checks"]["signing_key"] == "off"


@pytest.mark.timeout(120)  # a private PostgreSQL server is made, stopped and started again
async def test_readyz_flips_with_a_stopped_postgresql_server_and_comes_back_when_it_starts(
    tmp_path: Path,
    private_postgres: PrivateServer,  # noqa: F811
) -> None:
    from mcp_gate.storage.postgres import PostgresStore

    config = load_config(make_config(tmp_path), {})
    store = await PostgresStore.open(private_postgres.url, connect_timeout=2)
    try:
        async with running_gate(config, store=store) as front, admin(front) as http:
            assert (await http.get("/readyz")).json()["status"] == "ready"
            await anyio.to_thread.run_sync(private_postgres.stop)

            async def not_ready() -> bool:
                response = await http.get("/readyz")
                return response.status_code == 503 and response.json()["checks"]["store"]["state"] == "down"

            await eventually(not_ready, what="/readyz to be 503 with the PostgreSQL server stopped")
            assert (await http.get("/healthz")).status_code == 200  # alive, only not ready
            await anyio.to_thread.run_sync(private_postgres.start)

            async def ready() -> bool:
                response = await http.get("/readyz")
                return response.status_code == 200 and response.json()["status"] == "ready"

            await eventually(ready, what="/readyz to be ready again with the server started", timeout=40)
    finally:
        await store.close()
