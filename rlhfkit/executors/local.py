"""The default executor: each cell (and stage) a child process of the runner, ``parallel_cells`` at a time.

This is the runner's process pool as it was, moved behind the executor interface unchanged: the child gets its
own process group (a timeout kills the whole tree) and ``PR_SET_PDEATHSIG`` (a runner killed with SIGKILL takes
its cells with it).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path


def die_with_parent() -> None:
    """Child setup: own process group (so a timeout kills the whole tree), SIGKILL if the parent dies."""
    os.setpgrp()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class LocalCell:
    """A cell or stage process on this machine."""

    def __init__(self, proc: subprocess.Popen, log):
        self.proc = proc
        self.log = log
        self.started = time.monotonic()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    @property
    def pid(self) -> int:
        """The process on this machine (the runner samples its memory: evidence for ``oom``)."""
        return self.proc.pid

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, or None when still running after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def kill(self) -> None:
        kill_tree(self.proc)

    def close(self) -> None:
        self.log.close()


class LocalExecutor:
    name = "local"

    def __init__(self, parallel_cells: int):
        self.slots = parallel_cells

    def open(self, output_dir: Path) -> None:
        """Nothing to start: the output directory is on this machine."""

    def launch(self, command: list[str], env: dict, cwd: str, log_path: Path, attempt_dir: Path | None = None) -> LocalCell:
        log = open(log_path, "w")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent, env=env, cwd=cwd)
        return LocalCell(proc, log)

    def close(self) -> None:
        """The runner has stopped every process it started; nothing else to release."""
