"""Measured memory per phase (generation, scoring, training).

On CUDA: the caching allocator's peak statistics, reset at each phase start.  On the CPU: the process's
resident set, sampled by a background thread, minus the baseline taken before any model was built (the cell
imports its libraries and loads the task and tokenizer first, then calls :meth:`PhaseMemory.reset_baseline`).

The resident set measures live tensors only if freed memory goes back to the OS.  glibc's malloc raises its
mmap threshold each time a large block is freed (up to 32 MiB), after which activations come from the heap
and stay resident when freed: measured peaks then depend on allocation history (a LoRA cell measured 40%
above its live peak, later phases inherited earlier phases' peaks).  :func:`return_freed_memory_to_os` fixes
the threshold, so blocks of 64 KiB and more are mapped and unmapped per allocation.  That costs page faults
(RLOO steps on the tiny preset ~1.6x slower), so CPU cells call it only with ``[run] cpu_memory = "live"``;
the default ``resident`` measures the allocator as it is (peaks are upper bounds).

With several processes each rank has its own ``PhaseMemory``; the cell writes every rank's peaks to
``memory-rank<r>.json`` and gathers them to rank 0 (``rank_memory`` in result.json).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import psutil
import torch

from rlhfkit.engine.steps import Phase

PHASES = tuple(phase.value for phase in Phase)

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024


def return_freed_memory_to_os() -> bool:
    """Make glibc malloc hand freed memory back: fixed mmap threshold (no dynamic raise), 1 MiB trim threshold.

    Returns False where this is not glibc (macOS, musl): there the resident set keeps what the allocator
    keeps, and measured CPU peaks are upper bounds.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
        libc.malloc_trim(0)
        return ok
    except (OSError, AttributeError):
        return False


class PhaseMemory:
    def __init__(self, device: torch.device, poll_interval_s: float = 0.005):
        self.cuda = device.type == "cuda"
        self.device = device
        self.peaks: dict[str, int] = {}
        self.entered: set[str] = set()
        """Phases entered at least once (a peak is recorded only above the baseline; this says the phase ran)."""
        self._process = psutil.Process()
        self._current: str | None = None
        self._poll = poll_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline = self._now()
        if not self.cuda:
            self._thread = threading.Thread(target=self._sample, name="rlhfkit-rss", daemon=True)
            self._thread.start()

    def _now(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        return self._process.memory_info().rss

    def _record(self, phase: str, absolute: int) -> None:
        above = max(0, absolute - self.baseline)
        if above > self.peaks.get(phase, 0):
            self.peaks[phase] = above

    def _sample(self) -> None:
        while not self._stop.wait(self._poll):
            phase = self._current
            if phase is not None:
                self._record(phase, self._now())

    def reset_baseline(self) -> None:
        """Take the baseline again (after the task and tokenizer are loaded, before any model is built)."""
        import gc

        gc.collect()
        self.baseline = self._now()

    @contextmanager
    def phase(self, name: str):
        previous = self._current
        self.entered.add(name)
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._record(name, self._now())
        self._current = name
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize(self.device)
                self._record(name, torch.cuda.max_memory_allocated(self.device))
            else:
                self._record(name, self._now())
            self._current = previous

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)

    def summary(self) -> dict[str, int]:
        out = {f"memory/{phase}_peak_bytes": self.peaks.get(phase, 0) for phase in PHASES}
        out["memory/peak_bytes"] = self.peak
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
