"""Wall time of one recipe through the local executor and through a run's own local Ray instance, side by side.

Issue 16's target: the Ray executor takes no more than 1.2x the local executor's wall time plus Ray's start-up.
Both runs start from empty output directories (stages included: the same work on both sides), run in turn
(``--repeats`` pairs, alternating which goes first, so drift in the machine's load hits both), and Ray's
start-up (``ray.init`` of a fresh local instance and its shutdown, as the executor does it) is measured in its own
process in between.  The cells' numbers are compared too: they must not depend on the executor.

    python benchmarks/bench_executors.py                       # the default recipe, one pair (~7 minutes, 2 cores)
    python benchmarks/bench_executors.py --seeds 1 --repeats 2   # a 6-cell version of it, two pairs
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTUP = """
import logging, os, time
import ray
t = time.perf_counter()
ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
         num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1")
ray.shutdown()
print(f"STARTUP {time.perf_counter() - t:.3f}")
"""


def _recipe(source: Path, seeds: int | None, out: Path) -> Path:
    text = source.read_text()
    if seeds:
        text = re.sub(r"(?m)^seeds = \[[^\]]*\]", f"seeds = {list(range(1, seeds + 1))}", text, count=1)
    path = out / source.name
    path.write_text(text)
    return path


def _run(recipe: Path, output: Path, executor: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rlhfkit", "run", str(recipe), "--output", str(output), "--executor", executor],
                   check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def _numbers(output: Path) -> list:
    import pandas as pd

    frame = pd.read_csv(output / "results.csv").set_index("cell").sort_index()
    keep = [c for c in frame.columns if c.startswith(("gold", "kl", "score", "eval/", "ledger/episodes", "ledger/flops"))]
    return frame[keep].round(12).values.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "ppo_vs_rloo.toml"))
    parser.add_argument("--seeds", type=int, help="use seeds 1..N instead of the recipe's")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"local": [], "ray": []}
    startups = []
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-executors-") as tmp:
        tmp = Path(tmp)
        recipe = _recipe(Path(args.recipe), args.seeds, tmp)
        outputs = {}
        for i in range(args.repeats):
            order = ("local", "ray") if i % 2 == 0 else ("ray", "local")
            for executor in order:
                outputs[executor] = tmp / f"{executor}-{i}"
                times[executor].append(_run(recipe, outputs[executor], executor))
                print(f"{executor:5} run {i + 1}: {times[executor][-1]:.1f} s", flush=True)
            out = subprocess.run([sys.executable, "-c", STARTUP], check=True, capture_output=True, text=True).stdout
            startups.append(float(out.split("STARTUP")[1]))
        same = _numbers(outputs["local"]) == _numbers(outputs["ray"])
    local, ray_ = statistics.median(times["local"]), statistics.median(times["ray"])
    startup = statistics.median(startups)
    print(f"recipe {Path(args.recipe).name}{f' (seeds 1..{args.seeds})' if args.seeds else ''}, {args.repeats} pair(s), medians:")
    print(f"  local {local:.1f} s; ray {ray_:.1f} s; Ray start-up {startup:.1f} s")
    print(f"  ray / local = {ray_ / local:.3f}; (ray - start-up) / local = {(ray_ - startup) / local:.3f} (target <= 1.2)")
    print(f"  cell numbers identical across executors: {same}")


if __name__ == "__main__":
    main()
