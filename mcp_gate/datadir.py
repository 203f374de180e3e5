"""The data directory's files, named here and nowhere else, and the lock and run marker kept in it."""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import time
from pathlib import Path
from typing import IO

import anyio

__all__ = [
    "ARGS_KEY_FILE",
    "DECISION_KEY_FILE",
    "ELICITATION_KEY_FILE",
    "GATE_DB",
    "LOCK_FILE",
    "RUNS_DIR",
    "DataDirLock",
    "RunMarker",
    "gate_db",
]

GATE_DB = "gate.db"  # the evidence log, pins, approvals, grants: the store
LOCK_FILE = "gate.lock"
RUNS_DIR = "runs"  # one marker per running gate
# The deployment's secret keys, each 0600 and made on first use.
ARGS_KEY_FILE = "args.key"  # keys the digests of call arguments
DECISION_KEY_FILE = "decisions.key"  # seals decisions
ELICITATION_KEY_FILE = "elicitation.key"  # seals the request_state of a question asked

log = logging.getLogger(__name__)


def gate_db(data_dir: Path) -> Path:
    """The store's file in `data_dir`."""
    return data_dir / GATE_DB


class DataDirLock:
    """`data_dir/gate.lock`, held by every gate process for its whole life.

    Every gate holds it shared. A gate that starts while no other gate runs gets it exclusively
    first (`exclusive`), and only that gate may treat in-flight markers as left over from a
    crash; it then shares the lock (`share()`). A `check` beside a serving gate never recovers.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self.exclusive = False
        self._handle: IO[str] | None = None

    async def __aenter__(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a")
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.exclusive = True
        except OSError:
            # The wait for another gate's recovery sleeps: in a worker thread, off the event loop.
            await anyio.to_thread.run_sync(functools.partial(self._share, wait=True))
        return self

    def share(self) -> None:
        if self.exclusive:
            self._share(wait=False)
            self.exclusive = False

    def _share(self, *, wait: bool) -> None:
        assert self._handle is not None
        # Another gate holds it exclusively only for its brief recovery: wait for that, but
        # never forever (the lock is advisory; serving matters more than holding it).
        for _ in range(500 if wait else 1):
            try:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except OSError:
                time.sleep(0.01)

    async def __aexit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the lock
            self._handle = None


class RunMarker:
    """`data_dir/runs/<run>`: present while a gate runs, removed once its stop is recorded.

    A marker left by an earlier run means that run ended without a clean stop (killed, crashed,
    power lost). Only a gate holding the data-dir lock exclusively reads the left-over markers,
    so no live gate's marker is taken for a crash."""

    def __init__(self, data_dir: Path, run: str) -> None:
        self.folder = data_dir / RUNS_DIR
        self.path = self.folder / run

    async def __aenter__(self) -> RunMarker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass  # the marker stays unless remove() was called: that is the point

    def left_over(self) -> list[str]:
        """The earlier runs that left a marker."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.is_file() and p != self.path)

    def forget(self, runs: list[str]) -> None:
        """Remove the markers of `runs` once their unclean end is recorded, so it is recorded once."""
        for run in runs:
            (self.folder / run).unlink(missing_ok=True)

    def create(self) -> None:
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path.write_text(f"{os.getpid()}\n", encoding="utf-8")
        except OSError as exc:
            log.warning(
                "cannot write the run marker %s (%s): a crash of this run will go unnoticed", self.path, exc
            )

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
