"""Why a cell process died of a signal: ``killed`` (a user's ``kill``, a scheduler) or ``oom`` (the kernel).

The kernel's out-of-memory killer and a user's ``kill -9`` both end a process with SIGKILL, so the signal alone
says nothing about memory.  The runner calls a cell ``oom`` only with evidence, and names it in the error:

- the kernel log (``dmesg``, else /var/log/kern.log) has an out-of-memory line naming one of the cell's pids
  (unreadable without CAP_SYSLOG on most machines: then this evidence is simply missing);
- or the runner's own samples of the cell's process tree (:class:`MemoryWatch`, about once a second) show it
  near the machine's RAM: its resident memory at >= ``OOM_RSS_SHARE`` of the total, or the machine's available
  memory under ``OOM_AVAILABLE_SHARE`` of it at the last sample before the death.

Otherwise the status is ``killed`` with the signal's name.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# The OOM killer acts when RAM (and swap) run out; the last sample is up to SAMPLE_EVERY_S older than the death,
# and a fast allocation can add several GB in that time, so the cell's share is compared at 80%, not 100%.
OOM_RSS_SHARE = 0.80
# With parallel cells the killed one need not be the largest; a machine left with under 5% available memory
# at the last sample is out of memory whoever holds it (the kernel's reserve, vm.min_free_kbytes, is 66 MiB,
# 0.3%, on the 23 GiB development machine).
OOM_AVAILABLE_SHARE = 0.05
SAMPLE_EVERY_S = 1.0
KERNEL_LOGS = (Path("/var/log/kern.log"), Path("/var/log/messages"))
KERNEL_OOM = re.compile(r"out of memory|oom-kill|oom_reaper|killed process", re.IGNORECASE)
# Signals that end a healthy process from outside (a user, a scheduler, the kernel); others are its own crash.
KILL_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


@dataclass
class MemoryWatch:
    """The runner's samples of one cell's process tree: its pids, its resident memory, the machine's."""

    pid: int
    pids: set[int] = field(default_factory=set)
    last_rss: int = 0
    peak_rss: int = 0
    last_available: int | None = None
    total: int = 0
    started: float = field(default_factory=time.time)
    _next: float = 0.0

    def sample(self) -> None:
        """Record the tree's resident memory (throttled to one sample per SAMPLE_EVERY_S); never raises."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + SAMPLE_EVERY_S
        try:
            import psutil

            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
            rss = 0
            for proc in procs:
                try:
                    rss += proc.memory_info().rss
                    self.pids.add(proc.pid)
                except psutil.Error:
                    pass
            memory = psutil.virtual_memory()
        except Exception:  # noqa: BLE001 - the process is gone or psutil is missing: keep the last sample
            return
        self.last_rss, self.peak_rss = rss, max(self.peak_rss, rss)
        self.last_available, self.total = memory.available, memory.total


def kernel_oom_lines(pids: set[int], since: float) -> list[str]:
    """Kernel log lines of an out-of-memory kill of one of ``pids`` (dmesg lines only from ``since`` on, a
    Unix time); an empty list when no log is readable (permissions) or none matches."""
    if not pids:
        return []
    pid_pattern = re.compile(r"(?:pid[=\s]|process\s)(" + "|".join(str(p) for p in sorted(pids)) + r")\b", re.IGNORECASE)
    lines = []
    try:
        import psutil

        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5, errors="replace")
        boot = psutil.boot_time()
        for line in out.stdout.splitlines() if out.returncode == 0 else []:
            stamp = re.match(r"\[\s*(\d+\.\d+)\]", line)
            if stamp and boot + float(stamp.group(1)) < since - 1:
                continue
            lines.append(line)
    except (OSError, subprocess.SubprocessError, ImportError):
        pass
    for path in KERNEL_LOGS:
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 256 * 1024))
                lines += f.read().decode(errors="replace").splitlines()
        except OSError:
            continue
    return [line.strip() for line in lines if KERNEL_OOM.search(line) and pid_pattern.search(line)]


def classify_signal(signum: int, watch: MemoryWatch | None, kernel_lines: list[str]) -> tuple[str, str]:
    """``(status, error)`` of a cell process ended by signal ``signum``, from the evidence given."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if kernel_lines:
        return "oom", f"killed by {name}: the kernel's out-of-memory killer (kernel log: {kernel_lines[-1][:200]})"
    if watch is not None and watch.total:
        gib = 1024**3
        if watch.last_rss >= OOM_RSS_SHARE * watch.total:
            return "oom", (f"killed by {name} with {watch.last_rss / gib:.1f} of the machine's {watch.total / gib:.1f} "
                           f"GiB resident (>= {OOM_RSS_SHARE:.0%}): out of memory")
        if watch.last_available is not None and watch.last_available < OOM_AVAILABLE_SHARE * watch.total:
            return "oom", (f"killed by {name} with {watch.last_available / gib:.2f} of {watch.total / gib:.1f} GiB "
                           f"of the machine's memory available (< {OOM_AVAILABLE_SHARE:.0%}): out of memory")
    if signum in KILL_SIGNALS:
        return "killed", f"killed by {name} (no sign of running out of memory: not in the kernel log, memory well below the machine's)"
    return "failed", f"crashed with {name}"


def classify_exit(signum: int, watch: MemoryWatch | None) -> tuple[str, str]:
    """:func:`classify_signal` with the kernel log read for the watched pids."""
    pids = (watch.pids | {watch.pid}) if watch is not None else set()
    since = watch.started if watch is not None else 0.0
    return classify_signal(signum, watch, kernel_oom_lines(pids, since))
