"""The run directory: created with a clear error, locked while a run uses it, and not left behind half-made.

The lock is an exclusive `flock` on `<run>/.lock`; the file also records the holder (pid, host, start
time and the signals that make it checkpoint and stop, which `ssl-distill signal RUN` sends). The
operating system drops the lock when the process ends however it ends, so a crashed or killed run never
blocks the next one; a second run on the same directory while the first is alive stops with one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ssl_distill.checkpoints import list_checkpoints
from ssl_distill.errors import ConfigError, RunError

LOCK_NAME = ".lock"


def create_run_dir(run_dir: Path) -> bool:
    """mkdir -p `run_dir`; returns whether it is new. An impossible `run.out_dir` is one ConfigError."""
    existed = run_dir.is_dir()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"run.out_dir: cannot write the run directory {run_dir}: {reason}") from None
    return not existed


class RunLock:
    """An exclusive lock on a run directory for as long as the object holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._handle = None

    def acquire(self, signals: Sequence[int] = ()) -> None:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = describe(read_holder(self.path))
            handle.close()
            raise RunError(
                f"run directory {self.path.parent} is in use by {holder}; wait for that run to end or choose "
                "another run.name"
            ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "signals": [signal.Signals(s).name for s in signals],
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def read_holder(path: Path) -> dict[str, Any] | None:
    """The record a lock file holds, or None when no process holds the lock now (or there is no file)."""
    if not path.is_file():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held: the record is the holder's
            try:
                return json.loads(handle.read() or "{}")
            except ValueError:
                return {}
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


@contextlib.contextmanager
def run_directory(run_dir: Path, main: bool = True, signals: Sequence[int] = ()) -> Iterator[None]:
    """Create and lock `run_dir` (the main rank only) for the block, recording the stop `signals`. If the
    block fails before the run wrote any checkpoint or metrics row in a directory it created, the directory
    is removed again."""
    if not main:
        yield
        return
    created = create_run_dir(run_dir)
    lock = RunLock(run_dir)
    lock.acquire(signals)
    try:
        yield
    except BaseException:
        lock.release()
        started = list_checkpoints(run_dir / "checkpoints") or (run_dir / "metrics.csv").is_file()
        if created and not started:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    lock.release()
