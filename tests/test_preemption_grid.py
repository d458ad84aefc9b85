"""Issue 16 item 4 on a real grid: ``rlhfkit run`` with ``[run] checkpoint_every``, the cell process SIGKILLed after
its first checkpoint, the runner records it ``killed``; rerunning the same command resumes the cell from that
checkpoint (its log says so) and it ends with the numbers of an uninterrupted run without checkpoints, bit for bit
(timings and memory aside)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli
from test_statuses import _child_running

RECIPE = """
name = "preempt"
[data]
name = "synthetic"
num_sft = 300
num_pairs = 300
num_eval_pairs = 100
num_eval_prompts = 16
[[models]]
name = "llama-tiny"
policy = "llama:tiny"
[grid]
algorithms = ["rloo"]
memory = ["full"]
seeds = [1]
[sft]
epochs = 1
[reward_model]
epochs = 1
[rl]
steps = 160
batch_size = 8
response_length = 8
eval_every = 40
eval_batch_size = 16
[algorithms.rloo]
k = 2
num_epochs = 2
num_minibatches = 2
[run]
parallel_cells = 1
threads_per_cell = 1
"""
CELL = "llama-tiny__rloo__full__s1"
TIMINGS = ("perf/", "memory/", "ledger/wall_s", "ledger/cpu_s")


def numbers(record: dict) -> dict:
    """A metrics line or summary without what depends on the machine's speed or memory."""
    return {k: v for k, v in record.items()
            if not k.startswith(TIMINGS) and not k.endswith(("bytes", "per_s", "train_s", "wall_s"))}


def lines(path) -> list[dict]:
    return [numbers(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_a_cell_killed_after_its_checkpoint_resumes_on_rerun_with_uninterrupted_numbers(tmp_path):
    whole_recipe = tmp_path / "whole.toml"
    whole_recipe.write_text(RECIPE)
    recipe = tmp_path / "preempt.toml"
    recipe.write_text(RECIPE + "checkpoint_every = 10\n")
    out = tmp_path / "run"
    cell_dir = out / "cells" / CELL
    command = [sys.executable, "-m", "rlhfkit", "run", str(recipe), "--output", str(out)]
    runner = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cell = None
    deadline = time.monotonic() + 400
    while not (cell_dir / "checkpoint" / "LATEST").exists():
        assert time.monotonic() < deadline and runner.poll() is None, "no checkpoint was written"
        cell = cell or _child_running(runner.pid, str(cell_dir / "spec.json"))
        time.sleep(0.02)
    cell = cell or _child_running(runner.pid, str(cell_dir / "spec.json"))
    os.kill(cell.pid, signal.SIGKILL)  # the cell process: a session of its own, the runner survives it
    assert runner.wait(timeout=120) == 1
    killed = json.loads((cell_dir / "result.json").read_text())
    saved = int((cell_dir / "checkpoint" / "LATEST").read_text().removeprefix("step-"))
    assert killed["status"] == "killed", killed
    assert killed["checkpoint"] == {"resumed_from": 0, "saved": saved} and 0 < saved < 160

    rerun = run_cli("run", recipe, "--output", out)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    log = (cell_dir / "log.txt").read_text()
    assert f"resumed from checkpoint step-{saved}" in log and f"continuing at step {saved}" in log
    assert not (cell_dir / "checkpoint").exists()  # finished ok: removed

    whole_out = tmp_path / "whole"
    # The same stages (their keys do not depend on [run] checkpoint_every): copied, not trained again.
    shutil.copytree(out / "artifacts", whole_out / "artifacts", symlinks=True)
    whole = run_cli("run", whole_recipe, "--output", whole_out)
    assert whole.returncode == 0, whole.stderr[-2000:]
    whole_dir = whole_out / "cells" / CELL
    resumed_lines, whole_lines = lines(cell_dir / "metrics.jsonl"), lines(whole_dir / "metrics.jsonl")
    assert [line["step"] for line in resumed_lines] == list(range(160))
    assert resumed_lines == whole_lines
    resumed, reference = (json.loads((d / "result.json").read_text()) for d in (cell_dir, whole_dir))
    assert resumed["status"] == reference["status"] == "ok"
    assert numbers(resumed["summary"]) == numbers(reference["summary"])
    assert resumed["evaluations"] == reference["evaluations"]
    assert resumed["summary"]["gold_final"] == reference["evaluations"][-1]["eval/gold"]
