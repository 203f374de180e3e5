"""A real PostgreSQL for tests: a database of its own per test module, created and dropped, and a
fresh schema in it per test, so every test starts from an empty store.

`MCP_GATE_TEST_POSTGRES` names the server (default: the local one on 127.0.0.1:5432, trust auth).
Under `CI=true` a server that cannot be reached fails the test; elsewhere the test is skipped with
a one-line reason. A suite parametrised over backends uses `postgres_url` as the PostgreSQL
backend's data: `PostgresStore.open(url)` again on the same url is another replica on the same data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER = os.environ.get("MCP_GATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is needed under CI=true: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL for these tests: {reason}")


def with_database(url: str, name: str) -> str:
    return urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()


def with_schema(url: str, schema: str) -> str:
    """The url with `schema` first on the search path, so the store's tables are made there."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query.append(("options", f"-c search_path={schema}"))
    return parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)).geturl()


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """The url of a database made for this test module, dropped (with its connections) at the end."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        _unavailable(f"psycopg is not installed ({exc}); pip install -e '.[test]'")
        raise
    try:
        admin = psycopg.connect(SERVER, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        _unavailable(f"cannot reach {SERVER}: {' '.join(str(exc).split())}")
        raise
    name = f"mcp_gate_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_database(SERVER, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def empty_schema(database_url: str) -> Iterator[str]:
    """The url of a new, empty schema in the database at `database_url`, dropped on exit."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_schema(database_url, schema)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """The url of an empty schema in the module's database, for one test."""
    with empty_schema(postgres_database) as url:
        yield url


class PrivateServer:
    """A PostgreSQL server of one test's own, in a temporary directory on a free port, that the test
    may stop and start again (the shared server on 5432 must never be stopped). Runs as the
    `postgres` user when the tests run as root, as initdb refuses root."""

    def __init__(self, root: Path) -> None:
        self.bin = _postgres_bin()
        self.data = root / "pgdata"
        self.log = root / "postgres.log"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip() or done.stdout.strip()}")

    def init(self) -> None:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data.parent, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


def _postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        _unavailable("no PostgreSQL server binaries under /usr/lib/postgresql")
    return versions[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_postgres() -> Iterator[PrivateServer]:
    """A PostgreSQL server this test owns and may stop; stopped and removed at the end. Its
    directory is not under pytest's tmp_path, which the `postgres` user could not enter."""
    root = Path(tempfile.mkdtemp(prefix="mcp-gate-pg-"))
    server = PrivateServer(root)
    try:
        try:
            server.init()
        except (OSError, RuntimeError) as exc:
            _unavailable(f"cannot start a private PostgreSQL server: {exc}")
        yield server
    finally:
        with contextlib.suppress(RuntimeError, OSError):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
