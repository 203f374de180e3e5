"""The suite itself: a hung test fails at its timeout with every stack, and leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HANGING = """
import subprocess, sys, threading
from pathlib import Path

import anyio
import pytest


def blocked_worker() -> None:
    threading.Event().wait()


@pytest.mark.anyio
async def test_a_shielded_wait_that_never_ends(tmp_path: Path) -> None:
    threading.Thread(target=blocked_worker, daemon=True).start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    Path({pid_file!r}).write_text(str(child.pid))
    with anyio.CancelScope(shield=True):
        await anyio.sleep_forever()


def test_the_next_test_still_runs() -> None:
    assert True
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_suite_gives_every_test_a_timeout_and_runs_on_two_workers_in_random_order() -> None:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["timeout"] == 60 and options["timeout_method"] == "signal"
    assert options["addopts"][:2] == ["-n", "2"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"pytest-timeout", "pytest-xdist", "pytest-randomly"} <= {d.split(">")[0] for d in extras["test"]}


def test_a_hung_test_fails_at_its_timeout_names_itself_dumps_its_stacks_and_its_child_is_reaped(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "child.pid"
    (tmp_path / "test_hang.py").write_text(HANGING.format(pid_file=str(pid_file)))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    anyio_backend = "import pytest\n\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n"
    (tmp_path / "conftest.py").write_text(anyio_backend)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            "--timeout",
            "3",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_hang.py"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=50,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "Timeout" in out and "test_a_shielded_wait_that_never_ends" in out, out
    assert out.count("Thread 0x") >= 2 and "in blocked_worker" in out, out  # every thread's stack
    assert "reaped 1 process(es)" in out, out
    assert not alive(int(pid_file.read_text()))
