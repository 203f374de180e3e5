"""The deployment recipe in deploy/ and the Dockerfile: the files parse, say what they promise, and
name only series a live /metrics serves; the image answers /healthz where Docker runs."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mcp_gate.config import load_config
from mcp_gate.health import Probes, serve_admin
from mcp_gate.testing import eventually, running_gate
from tests.test_api import make_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\bmcp_gate_[a-z_]+\b")


def exprs_of_dashboard() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def exprs_of_alerts() -> list[str]:
    return [
        r["expr"] for g in yaml.safe_load((DEPLOY / "alerts.yaml").read_text())["groups"] for r in g["rules"]
    ]


def test_the_compose_file_runs_postgresql_two_replicas_a_proxy_and_prometheus_scraping_both() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "gate-1", "gate-2", "proxy", "prometheus"} <= services.keys()
    assert services["gate-2"]["build"] == services["gate-1"]["build"]  # the YAML merge took
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["gate-1:8766", "gate-2:8766"]
    assert prometheus["scrape_configs"][0]["authorization"]["credentials_file"]
    caddy = (DEPLOY / "Caddyfile").read_text()
    assert "gate-1:8765" in caddy and "gate-2:8765" in caddy


def test_the_deploy_gate_toml_loads_and_knows_the_scrape_token_and_the_replicas_names() -> None:
    import hashlib

    dotenv = dict(
        line.split("=", 1) for line in (DEPLOY / ".env").read_text().splitlines() if line and line[0] != "#"
    )
    config = load_config(DEPLOY / "gate.toml", dotenv)
    # Both replicas keep their state in the compose file's database, its password from the .env.
    assert config.store is not None and "@postgres:5432/mcp_gate" in config.store.url
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for name in ("gate-1", "gate-2"):
        assert "MCP_GATE_DB_PASSWORD" in services[name]["environment"]
    assert "MCP_GATE_DB_PASSWORD" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert config.admin is not None and config.admin.allow_remote
    token = (DEPLOY / "scrape-token").read_text().strip()
    assert config.admin.scrape_token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert {"gate-1", "gate-2"} <= set(config.http.allowed_hosts)


def test_the_alert_rules_are_the_four_the_gate_promises() -> None:
    rules = [r for g in yaml.safe_load((DEPLOY / "alerts.yaml").read_text())["groups"] for r in g["rules"]]
    assert [r["alert"] for r in rules] == [
        "McpGateHeldRequestNearExpiry",
        "McpGateEvidenceWritesFailing",
        "McpGateCheckpointStale",
        "McpGateDownstreamFlapping",
    ]
    assert all(r["expr"] and r["annotations"]["summary"] for r in rules)


def test_the_systemd_unit_runs_as_a_dynamic_user_with_the_system_read_only() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string((DEPLOY / "mcp-gate.service").read_text())
    service = unit["Service"]
    assert service["DynamicUser"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["StateDirectory"] == "mcp-gate"
    assert " serve " in service["ExecStart"] and "--log-format json" in service["ExecStart"]


def test_the_dockerfile_is_slim_non_root_with_a_data_volume_and_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:[0-9.]+-slim$", text, re.M)
    assert re.search(r"^USER gate$", text, re.M)
    assert 'VOLUME ["/data"]' in text
    assert "HEALTHCHECK" in text and "/healthz" in text


@pytest.mark.anyio
async def test_every_series_the_dashboard_and_the_alerts_name_is_served_by_a_live_gate(
    tmp_path: Path,
) -> None:
    async with running_gate(make_config(tmp_path)) as front, anyio.create_task_group() as tg:
        port = await tg.start(serve_admin, Probes(front.gateway), "127.0.0.1", 0)
        async with httpx2.AsyncClient(timeout=30) as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        tg.cancel_scope.cancel()
    served: set[str] = set()
    for family in text_string_to_metric_families(text):
        match family.type:
            case "counter":
                served.add(f"{family.name}_total")
            case "histogram":
                served |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
            case _:
                served.add(family.name)
    named = {m for expr in exprs_of_dashboard() + exprs_of_alerts() for m in METRIC.findall(expr)}
    assert named, "the dashboard names no series"
    assert named <= served, f"not served: {sorted(named - served)}"


def _docker_available() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command on this machine"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return "no Docker daemon answers here (`docker info` failed)"
    return None


@pytest.mark.timeout(900)  # building the image installs the package and its dependencies
@pytest.mark.anyio
async def test_the_image_builds_and_answers_healthz() -> None:
    missing = _docker_available()
    if missing is not None:
        pytest.skip(missing)
    tag = f"mcp-gate-test:{uuid.uuid4().hex[:8]}"
    name = f"mcp-gate-test-{uuid.uuid4().hex[:8]}"
    build = await anyio.run_process(["docker", "build", "-t", tag, str(ROOT)], check=False)
    assert build.returncode == 0, build.stderr.decode()[-2000:]
    try:
        await anyio.run_process(
            ["docker", "run", "-d", "--name", name, "-p", "127.0.0.1::8766", tag], check=True
        )
        mapped = await anyio.run_process(["docker", "port", name, "8766/tcp"], check=True)
        port = mapped.stdout.decode().split(":")[-1].strip()

        async def healthy() -> Any:
            try:
                async with httpx2.AsyncClient(timeout=5) as http:
                    response = await http.get(f"http://127.0.0.1:{port}/healthz")
            except httpx2.HTTPError:
                return None
            return response.status_code == 200 and response.json() == {"status": "up"}

        assert await eventually(healthy, what="the container to answer /healthz", timeout=120)
    finally:
        await anyio.run_process(["docker", "rm", "-f", name], check=False)
        await anyio.run_process(["docker", "rmi", "-f", tag], check=False)
