"""One grid cell, in its own process: build the cell's model set, train, evaluate, write results.

Run as ``python -m rlhfkit.cell SPEC.json``.  The cell writes ``metrics.jsonl`` as it goes and
``result.json`` (atomically) at the end, whatever the outcome: ``ok``, ``diverged``, ``oom`` or ``failed``.
Building the cell and summarising it live in :mod:`rlhfkit.cellspec.build` (shared with the benchmarks and
in-process tests); the keys of ``result.json`` in :mod:`rlhfkit.cellspec.result`.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import traceback
from pathlib import Path

# The cell's building blocks, importable from here as before (the runner, tuning and tests use these names).
from rlhfkit.cellspec.build import (  # noqa: F401
    _preimport,
    build_cell,
    build_context,
    build_models,
    deepspeed_config,
    seed_everything,
    summarise,
    train,
)
from rlhfkit.fileio import atomic_write_json as write_json_atomic  # noqa: F401


def run_cell(spec: dict) -> dict:
    """Build the cell from its spec, train and evaluate it; returns ``result.json``'s content and ``is_main``
    (only the main process writes the file)."""
    from rlhfkit.policies import save_policy

    built = build_cell(spec)
    sft_eval, final_eval, train_seconds = train(built)
    result = summarise(built, sft_eval, final_eval, train_seconds)
    save_policy(built)  # [run] save_policies: after the result is complete, so nothing measured changes
    return {**result.as_dict(), "is_main": built.accelerator.is_main_process}


# Messages of allocation failures that do not arrive as MemoryError / torch.OutOfMemoryError: torch's CPU
# allocator raises a plain RuntimeError ("[enforce fail at alloc_cpu.cpp] ... DefaultCPUAllocator: can't allocate
# memory: you tried to allocate 59 GB. Error code 12 (Cannot allocate memory)"), C++ extensions surface
# std::bad_alloc as RuntimeError("std::bad_alloc"), CUDA as "CUDA out of memory".
_OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "std::bad_alloc",
    "failed to allocate memory",
)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):  # numpy's _ArrayMemoryError is a MemoryError
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    text = str(exc).lower()
    return any(m in text for m in _OOM_MESSAGES)


def classify_exception(exc: BaseException) -> str:
    """``diverged``, ``oom`` (CPU or CUDA allocation failure) or ``failed``.

    Libraries often re-raise an allocation failure wrapped in their own exception (``raise X from exc``), so
    the cause/context chain is searched too (a few links: a cycle cannot loop).
    """
    from rlhfkit.engine.context import DivergedError

    if isinstance(exc, DivergedError):
        return "diverged"
    seen, link = 0, exc
    while link is not None and seen < 8:
        if _is_oom(link):
            return "oom"
        link = link.__cause__ or link.__context__
        seen += 1
    return "failed"


# How long a finished rank waits at the final barrier for the others (they are at most writing their last
# files; a peer that died is reported by torchrun, so waiting longer would only delay that report).
FINAL_BARRIER_TIMEOUT_S = 300


def leave_process_group(wait_for_peers: bool) -> None:
    """Leave torch.distributed in step with the other ranks, before the interpreter tears down.

    Without this each rank left whenever it returned: rank 0 still writing result.json (and planning) while
    rank 1 had already exited, and the gloo process group and DeepSpeed's communication objects were destroyed
    by interpreter finalization in whatever order it chose, with the peer's sockets open or already closed.
    An abort at that point (rank 1 SIGABRT after status ok, then torchrun SIGTERMs rank 0) is the CI failure
    of issue 14.  Here every rank first meets the others (a monitored barrier on gloo names a rank that never
    arrives), then destroys the group explicitly while everything it uses is still alive.
    """
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait_for_peers and dist.get_world_size() > 1:
            if dist.get_backend() == "gloo":
                from datetime import timedelta

                dist.monitored_barrier(timeout=timedelta(seconds=FINAL_BARRIER_TIMEOUT_S))
            else:
                dist.barrier()
    except Exception as exc:  # a peer that failed: its own status says why; leave anyway
        print(f"final barrier: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    cell_dir = Path(spec["cell_dir"])
    result_path = cell_dir / "result.json"
    base = {
        "cell": spec["cell"],
        "python": platform.python_version(),
        "hostname": platform.node(),
    }
    try:
        out = run_cell(spec)
    except Exception as exc:  # the cell's status records it; the grid goes on
        status = classify_exception(exc)
        (cell_dir / "error.txt").write_text(traceback.format_exc())
        write_json_atomic(result_path, {**base, "status": status, "error": f"{type(exc).__name__}: {exc}"})
        print(f"cell {spec['cell']} {status}: {type(exc).__name__}: {exc}", file=sys.stderr)
        leave_process_group(wait_for_peers=False)  # a peer may be stuck in a collective this rank left
        return 1
    if out.pop("is_main"):
        write_json_atomic(result_path, {**base, "status": "ok", "error": None, **out})
        shutil.rmtree(cell_dir / "checkpoint", ignore_errors=True)  # finished: a resume has nothing left to do
    sys.stdout.flush()
    sys.stderr.flush()
    leave_process_group(wait_for_peers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
