"""What ``[run] checkpoint_every`` costs: the same cell with and without checkpoints, side by side in one run.

A benchmark, not a test.  Run from the repository root with the project's virtualenv:

    python benchmarks/bench_checkpoint.py                  # ~3 min on 2 cores (stages built once, then cached)
    python benchmarks/bench_checkpoint.py --every 1 5 --repeats 5

The cells are those of the default recipe (recipes/ppo_vs_rloo.toml: tiny Llama, 20 steps of 32 completions,
kl_coef 0.1, seed 1), PPO (policy + critic, two optimizers) and RLOO.  The stages are built once by ``rlhfkit run``
into ``benchmarks/.cache/checkpoint/base``; then each cell runs as the real cell process (``python -m rlhfkit.cell
SPEC.json``, one thread, as in the recipe) with ``checkpoint_every`` = 0 (none) and each ``--every`` value, the
variants alternating within every repeat so that load from other processes falls on all of them alike.  Reported
per variant: the median and the minimum over repeats of the training time (``train_s``: the trainer, checkpoint
saves included), of the cell's own wall time (``wall_s``: evaluations and writing included), of the process's wall
time and of the process's CPU time (user + system: on a machine shared with other work the least disturbed
measure), each as a ratio to the run without checkpoints; and whether the final numbers are identical (they must
be: saving reads the RNG states, it never draws from them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache" / "checkpoint"
SOURCE = ROOT / "recipes" / "ppo_vs_rloo.toml"
ALGORITHMS = ("ppo", "rloo")
NUMBERS = ("gold_final", "score_final", "kl_final", "length_final")


def recipe_text(every: int) -> str:
    """The default recipe with one seed and no sweep (its kl_coef default, 0.1), and ``checkpoint_every``."""
    text = SOURCE.read_text()
    text = re.sub(r"seeds = \[[^\]]*\]", "seeds = [1]", text)
    text = re.sub(r"\[grid\.sweep\]\nkl_coef = \[[^\]]*\]\n", "", text)
    assert "[grid.sweep]" not in text, "the default recipe changed shape: update bench_checkpoint.recipe_text"
    return text + (f"checkpoint_every = {every}\n" if every else "")


def build_stages() -> Path:
    """Stages (and one plain run of both cells) of the benchmark recipe, built once."""
    base = CACHE / "base"
    recipe = CACHE / "bench.toml"
    CACHE.mkdir(parents=True, exist_ok=True)
    recipe.write_text(recipe_text(0))
    if not (base / "results.csv").exists():
        print("building the stages with rlhfkit run ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "rlhfkit", "run", str(recipe), "--output", str(base)], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not (base / "results.csv").exists():
            raise RuntimeError(f"rlhfkit run failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return base


def run_cell(base: Path, algorithm: str, every: int, repeat: int) -> dict:
    """One cell process; returns its summary with the process's wall time."""
    name = f"r{repeat}-{algorithm}-every{every}"
    cell_dir = CACHE / "runs" / name
    shutil.rmtree(cell_dir, ignore_errors=True)
    cell_dir.mkdir(parents=True)
    recipe = CACHE / f"bench-every{every}.toml"
    recipe.write_text(recipe_text(every))
    cell = json.loads((base / "cells" / f"llama-tiny__{algorithm}__full__s1" / "spec.json").read_text())["cell"]
    spec = {"recipe": str(recipe), "cell": cell, "cell_dir": str(cell_dir), "artifacts_root": str(base / "artifacts"),
            "threads": 1, "parallel_cells": 1}
    (cell_dir / "spec.json").write_text(json.dumps(spec))
    started = time.perf_counter()
    with open(cell_dir / "log.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rlhfkit.cell", str(cell_dir / "spec.json")], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, env={**_env(), "OMP_NUM_THREADS": "1"})
        _, status, usage = os.wait4(proc.pid, 0)  # the process's own CPU time: what contention does not inflate
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
    process_s = time.perf_counter() - started
    cpu_s = usage.ru_utime + usage.ru_stime
    result = json.loads((cell_dir / "result.json").read_text())
    if rc != 0 or result["status"] != "ok":
        raise RuntimeError(f"{name}: {result.get('error')} (see {cell_dir / 'log.txt'})")
    return {**result["summary"], "process_s": process_s, "cpu_s": cpu_s}


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, nargs="+", default=[1, 5], help="checkpoint_every values (besides 0)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = build_stages()
    variants = [0, *args.every]
    runs: dict[tuple[str, int], list[dict]] = {}
    for repeat in range(args.repeats):
        for algorithm in ALGORITHMS:
            order = variants if repeat % 2 == 0 else variants[::-1]  # alternate which variant goes first
            for every in order:
                runs.setdefault((algorithm, every), []).append(run_cell(base, algorithm, every, repeat))
                last = runs[(algorithm, every)][-1]
                print(f"repeat {repeat} {algorithm:4s} checkpoint_every={every}: train {last['train_s']:.3f} s, "
                      f"cell {last['wall_s']:.2f} s, process {last['process_s']:.2f} s, CPU {last['cpu_s']:.2f} s", flush=True)
    keys = ("train_s", "wall_s", "process_s", "cpu_s")
    print(f"\nmedian and minimum over {args.repeats} repeats; ratio = with checkpoints / without (median, min):")
    print(f"{'algorithm':9s} {'every':>5s} {'saves':>5s} " + " ".join(f"{k:>21s}" for k in keys) + "  numbers")
    for algorithm in ALGORITHMS:
        plain = runs[(algorithm, 0)]
        for every in variants:
            group = runs[(algorithm, every)]
            same = all(r[k] == plain[0][k] for r in group for k in NUMBERS)
            saves = (group[0]["steps_run"] - 1) // every if every else 0
            cols = []
            for key in keys:
                med, low = statistics.median(r[key] for r in group), min(r[key] for r in group)
                ratio_med = med / statistics.median(r[key] for r in plain)
                ratio_min = low / min(r[key] for r in plain)
                cols.append(f"{med:7.2f} {ratio_med:6.3f} {ratio_min:6.3f}")
            print(f"{algorithm:9s} {every:5d} {saves:5d} " + " ".join(cols) + f"  {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
