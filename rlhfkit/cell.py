"""One grid cell, in its own process: build the cell's model set, train, evaluate, write results.

Run as ``python -m rlhfkit.cell SPEC.json``.  The cell writes ``metrics.jsonl`` as it goes and
``result.json`` (atomically) at the end, whatever the outcome: ``ok``, ``diverged``, ``oom`` or ``failed``.
Building the cell and summarising it live in :mod:`rlhfkit.cellspec.build` (shared with the benchmarks and
in-process tests); the keys of ``result.json`` in :mod:`rlhfkit.cellspec.result`.
"""

from __future__ import annotations

import json
import platform
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
    built = build_cell(spec)
    sft_eval, final_eval, train_seconds = train(built)
    result = summarise(built, sft_eval, final_eval, train_seconds)
    return {**result.as_dict(), "is_main": built.accelerator.is_main_process}


def classify_exception(exc: BaseException) -> str:
    from rlhfkit.engine.context import DivergedError

    if isinstance(exc, DivergedError):
        return "diverged"
    if isinstance(exc, MemoryError):
        return "oom"
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return "oom"
    except ImportError:
        pass
    if "out of memory" in str(exc).lower():
        return "oom"
    return "failed"


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
        return 1
    if out.pop("is_main"):
        write_json_atomic(result_path, {**base, "status": "ok", "error": None, **out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
