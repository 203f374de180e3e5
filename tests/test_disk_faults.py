"""Disk faults under the evidence write: a full file system (ENOSPC, a tiny tmpfs) and failing I/O
(EIO, an LD_PRELOAD shim): the call fails closed with a tool error, the gate keeps serving, and
calls work again once the fault clears."""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client

from mcp_gate.storage import verify_file
from mcp_gate.testing import notes_server_table, running_gate, write_config

pytestmark = pytest.mark.anyio

MANIFEST = """
server = "notes"
default = "high"
[[rule]]
tools = ["echo", "append_note"]
tier = "low"
reason = "low in this test"
"""


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a ballast file until the file system is full."""
    ballast = directory / "ballast"
    try:
        with ballast.open("ab") as handle:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
    except OSError as exc:  # also when the file system is already full at open
        assert exc.errno == errno.ENOSPC
    with contextlib.suppress(OSError), ballast.open("ab") as handle:  # a few bytes may still fit
        while True:
            handle.write(b"\0" * 512)
            handle.flush()
    return ballast


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command to make a tiny tmpfs")
async def test_a_full_disk_fails_the_call_closed_and_the_gate_recovers_when_space_returns(
    tmp_path: Path,
) -> None:
    notes = tmp_path / "notes"
    config = write_config(
        tmp_path / "gate", servers={"notes": notes_server_table(notes)}, manifests={"notes": MANIFEST}
    )
    data = config.parent / "data"
    with tiny_tmpfs(data, "4m"):
        (data / "ballast").touch()  # made while there is room, so it can be filled and freed later
        async with running_gate(config) as front, Client(front.server, mode="legacy") as agent:
            assert text_of(await agent.call_tool("notes__echo", {"text": "before"})) == "before"
            ballast = fill(data)
            big = "x" * 200_000  # needs fresh pages in the log
            refused = await agent.call_tool("notes__append_note", {"name": "full", "text": big})
            assert refused.is_error
            assert "was not run: the gate could not write its evidence record" in text_of(refused)
            assert "full" in text_of(refused).lower()  # SQLite's "database or disk is full"
            assert not (notes / "full").exists()  # failed closed: never reached the downstream
            again = await agent.call_tool("notes__append_note", {"name": "full", "text": big})
            assert again.is_error  # still full: still refused, and the gate still answers
            ballast.unlink()
            ok = await agent.call_tool("notes__append_note", {"name": "full", "text": "small"})
            assert text_of(ok) == "appended to full"
        report = await verify_file(data / "gate.db")
        assert report.ok, report.problem


# Fails writes and syncs of gate.db (and its -wal/-journal) with EIO while $EIO_CONTROL exists.
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int failing(int fd) {
    const char *control = getenv("EIO_CONTROL");
    if (!control || access(control, F_OK) != 0) return 0;
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    return strstr(target, "gate.db") != NULL;
}

#define WRAP(ret, name, params, args)                          \
    ret name params {                                          \
        static ret (*real) params;                             \
        if (!real) real = dlsym(RTLD_NEXT, #name);             \
        if (failing(fd)) { errno = EIO; return -1; }           \
        return real args;                                      \
    }

WRAP(ssize_t, write, (int fd, const void *buf, size_t count), (fd, buf, count))
WRAP(ssize_t, pwrite, (int fd, const void *buf, size_t count, off_t offset), (fd, buf, count, offset))
WRAP(ssize_t, pwrite64, (int fd, const void *buf, size_t count, off_t offset), (fd, buf, count, offset))
WRAP(int, fsync, (int fd), (fd))
WRAP(int, fdatasync, (int fd), (fd))
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc to build the EIO shim")
@pytest.mark.timeout(90)  # builds the shim, then a real gate process with a downstream
async def test_failing_disk_io_fails_the_call_closed_and_the_gate_recovers_when_it_clears(
    tmp_path: Path,
) -> None:
    import os
    import sys

    from mcp import StdioServerParameters

    source, shim = tmp_path / "eio.c", tmp_path / "eio.so"
    source.write_text(SHIM)
    built = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-o", str(shim), str(source), "-ldl"],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    notes = tmp_path / "notes"
    config = write_config(
        tmp_path / "gate", servers={"notes": notes_server_table(notes)}, manifests={"notes": MANIFEST}
    )
    control = tmp_path / "fail-now"
    env = {**os.environ, "LD_PRELOAD": str(shim), "EIO_CONTROL": str(control)}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_gate", "serve", "--config", str(config)], env=env
    )
    async with Client(params, mode="legacy") as agent:
        assert text_of(await agent.call_tool("notes__echo", {"text": "before"})) == "before"
        control.touch()
        refused = await agent.call_tool("notes__append_note", {"name": "eio", "text": "x"})
        assert refused.is_error
        assert "was not run: the gate could not write its evidence record" in text_of(refused)
        assert "disk i/o error" in text_of(refused).lower()
        assert not (notes / "eio").exists()
        control.unlink()
        ok = await agent.call_tool("notes__append_note", {"name": "eio", "text": "y"})
        assert text_of(ok) == "appended to eio", text_of(ok)
        assert (notes / "eio").read_text() == "y\n"
    report = await verify_file(config.parent / "data" / "gate.db")
    assert report.ok, report.problem
