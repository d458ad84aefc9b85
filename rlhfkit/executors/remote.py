"""What a remote executor (a Ray task, a Slurm job) runs on its node: the runner's command as a child process.

The child is started exactly as the local executor starts it (own process group, killed with its parent), with
the node's own Python in place of the driver's and the runner's environment overrides on top of the node's
environment, so the cell process, its files and its numbers are the same as with the local executor.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rlhfkit.fileio import atomic_write_json

PYTHON = "{python}"
"""Stands for the interpreter in a remote command: the node runs the cell with the Python running its worker."""
# Set by the runner for every cell; always sent, since a Ray worker may carry its own values (Ray sets
# OMP_NUM_THREADS for its workers) and the thread count changes the numbers.
RUNNER_KEYS = ("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "PYTHONUNBUFFERED", "HF_HUB_OFFLINE")
LOST_RC = 1
"""Exit status recorded for a process the executor lost (worker, node or job gone): a failure, not a signal,
so its cell is ``failed`` with the reason the executor appended to its log."""


def remote_command(command: list[str]) -> list[str]:
    return [PYTHON if i == 0 and part == sys.executable else part for i, part in enumerate(command)]


def env_overrides(env: dict) -> dict:
    """What the runner changed in its environment: sent to the node instead of the driver's whole environment
    (PATH, CUDA_VISIBLE_DEVICES and the like belong to the node)."""
    return {k: v for k, v in env.items() if os.environ.get(k) != v or k in RUNNER_KEYS}


def info_path(log_path: Path) -> Path:
    """Where the node records where the process ran (``log.txt`` -> ``log.worker.json``)."""
    return log_path.with_name(log_path.stem + ".worker.json")


def clean_attempt(attempt_dir: str | None) -> None:
    """A retried cell starts from a clean directory (metrics.jsonl is appended to), keeping its spec, and a
    training checkpoint (``[run] checkpoint_every``) with the metric lines it continues, as the runner's
    ``clear_attempt`` does: without that, a cell preempted on a cluster could never resume."""
    if not attempt_dir:
        return
    resumable = ("checkpoint", "metrics.jsonl") if (Path(attempt_dir) / "checkpoint").is_dir() else ()
    for path in Path(attempt_dir).iterdir():
        if path.name == "spec.json" or path.name.endswith(".worker.json"):  # the attempt counter lives there
            continue
        if path.name in resumable:
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def write_info(log_path: str, where: dict) -> None:
    path = info_path(Path(log_path))
    previous = {}
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    info = {**where, "hostname": platform.node(), "pid": os.getpid(), "started": time.time(),
            "attempt": previous.get("attempt", 0) + 1}
    atomic_write_json(path, info)


def run_process(command: list[str], env: dict, cwd: str, log_path: str, attempt_dir: str | None, where: dict) -> int:
    """Run the command to its end and return its exit status (negative: killed by that signal)."""
    from rlhfkit.executors.local import die_with_parent, kill_tree

    clean_attempt(attempt_dir)
    write_info(log_path, where)
    command = [sys.executable if part == PYTHON else part for part in command]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            env={**os.environ, **env}, cwd=cwd if os.path.isdir(cwd) else None,
        )
        try:
            while True:  # short waits: a cancellation (KeyboardInterrupt) is raised between them
                try:
                    return proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if proc.poll() is None:
                kill_tree(proc)


def record_lost(log_path: Path, reason: str) -> int:
    """Append why the executor lost the process to its log (the runner reports a failed cell's last log line)."""
    with open(log_path, "a") as log:
        log.write(f"\nrlhfkit: {reason}\n")
    return LOST_RC


def started_elapsed(log_path: Path, seen: dict) -> float:
    """Seconds since the driver first saw the node start the process (its worker.json); 0 while queued."""
    if "t" not in seen:
        if not info_path(log_path).exists():
            return 0.0
        seen["t"] = time.monotonic()
    return time.monotonic() - seen["t"]
