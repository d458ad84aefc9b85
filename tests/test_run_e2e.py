"""The whole pipeline through the CLI on a tiny budget: results, reproducibility, resume, failures."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import REPO, run_cli, seed_stages

REQUIRED_COLUMNS = [
    "model", "algorithm", "memory", "seed", "status", "gold_sft", "gold_final", "score_final", "kl_final",
    "peak_memory_bytes", "episodes_per_s", "wall_s",
]
NUMBERS = ["gold_sft", "gold_final", "score_final", "kl_final"]


@pytest.fixture(scope="module")
def shared_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.mark.slow
def test_run_writes_results_and_is_reproducible(small_recipe, tmp_path, shared_tmp):
    recipe = small_recipe()
    first, second = shared_tmp / "a", tmp_path / "b"
    out = run_cli("run", recipe, "--output", first)
    assert out.returncode == 0, out.stdout + out.stderr
    table = pd.read_csv(first / "results.csv")
    assert list(table.columns[: len(REQUIRED_COLUMNS)]) != [] and set(REQUIRED_COLUMNS) <= set(table.columns)
    assert sorted(table["algorithm"]) == ["ppo", "rloo"]
    assert (table["status"] == "ok").all()
    assert (table["peak_memory_bytes"] > 0).all() and (table["episodes_per_s"] > 0).all()
    for cell in table["cell"]:
        steps = (first / "cells" / cell / "metrics.jsonl").read_text().splitlines()
        assert len(steps) == 2
        record = json.loads(steps[-1])
        assert {"objective/kl", "objective/scores", "objective/gold", "loss/policy", "perf/episodes_per_s"} <= set(record)
    assert (first / "report.md").read_text().count("llama-tiny__") >= 2
    stages = json.loads((first / "stages.json").read_text())
    assert 0.5 < stages["llama-tiny"]["reward/eval_accuracy"] <= 1.0

    out = run_cli("run", recipe, "--output", second)
    assert out.returncode == 0, out.stdout + out.stderr
    again = pd.read_csv(second / "results.csv")
    pd.testing.assert_frame_equal(table[NUMBERS], again[NUMBERS])


@pytest.mark.slow
def test_rerun_keeps_finished_cells(small_recipe, tmp_path, shared_tmp):
    recipe = small_recipe(algorithms=("rloo",))
    out_dir = tmp_path / "run"
    seed_stages(shared_tmp / "a", out_dir)  # the stages are not what this test is about
    assert run_cli("run", recipe, "--output", out_dir).returncode == 0
    result = out_dir / "cells" / "llama-tiny__rloo__full__s1" / "result.json"
    before = (result.stat().st_mtime_ns, result.read_text())
    out = run_cli("run", recipe, "--output", out_dir)
    assert out.returncode == 0, out.stderr
    assert (result.stat().st_mtime_ns, result.read_text()) == before
    assert "1 kept" in out.stdout


@pytest.mark.slow
def test_sigkill_mid_cell_then_rerun_completes_without_redoing_finished_cells(small_recipe, tmp_path, shared_tmp):
    recipe = small_recipe(algorithms=("rloo",), seeds=(1, 2), steps=12, parallel=1)
    out_dir = tmp_path / "run"
    seed_stages(shared_tmp / "a", out_dir)  # the stages are not what this test is about
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhfkit", "run", str(recipe), "--output", str(out_dir)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    first = out_dir / "cells" / "llama-tiny__rloo__full__s1" / "result.json"
    second_metrics = out_dir / "cells" / "llama-tiny__rloo__full__s2" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (first.exists() and second_metrics.exists() and second_metrics.stat().st_size):
        time.sleep(0.2)
    assert first.exists(), "first cell never finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = (first.stat().st_mtime_ns, first.read_text())
    assert not (out_dir / "cells" / "llama-tiny__rloo__full__s2" / "result.json").exists()
    time.sleep(1)  # the orphaned cell process dies with its parent
    spec = str(out_dir / "cells" / "llama-tiny__rloo__full__s2" / "spec.json")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert spec not in ps

    out = run_cli("run", recipe, "--output", out_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (first.stat().st_mtime_ns, first.read_text()) == finished_before
    table = pd.read_csv(out_dir / "results.csv")
    assert (table["status"] == "ok").all() and len(table) == 2
    assert len((out_dir / "cells" / "llama-tiny__rloo__full__s2" / "metrics.jsonl").read_text().splitlines()) == 12


@pytest.mark.parametrize(
    "edit, message",
    [
        ("[rl]\nstepz = 3\n", "rl: unknown key 'stepz'; allowed:"),
        ('[grid]\nalgorithms = ["ppo", "dpoo"]\n', "grid.algorithms[1]: unknown 'dpoo'; allowed: "),
        ("[rl]\nbatch_size = 0\n", "batch_size must be >= 1"),
        ("[rl]\nkl_coef = \"high\"\n", "expected a number, got 'high'"),
        ('[grid]\nmemory = ["lora+zz"]\n', "unknown part 'zz'; allowed:"),
        ("[algorithms.rloo]\nk = 3\n", "batch_size (32) must be divisible by k (3)"),
        ('[[models]]\nname = "x"\npolicy = "llama:huge"\n', "no preset 'huge'; allowed presets: small, tiny"),
        ('[[models]]\nname = "x"\npolicy = "/no/such/ckpt"\n', "neither 'family:preset' nor an existing checkpoint"),
        ('[run]\ncpu_memory = "exact"\n', "run: cpu_memory must be one of: resident, live"),
    ],
)
def test_bad_recipe_is_one_line_exit_2_and_writes_nothing(tmp_path, edit, message):
    base = '[[models]]\nname = "m"\npolicy = "llama:tiny"\n'
    text = edit if edit.startswith("[[models]]") else base + edit
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    out_dir = tmp_path / "out"
    for command in (["validate", recipe], ["run", recipe, "--output", out_dir]):
        out = run_cli(*command)
        assert out.returncode == 2, out.stderr
        assert message in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not out_dir.exists()


def test_output_of_another_recipe_is_refused(small_recipe, tmp_path):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "run.json").write_text(json.dumps({"results_fingerprint": "something-else"}))
    (out_dir / "results.csv").write_text("keep me")
    out = run_cli("run", small_recipe(), "--output", out_dir)
    assert out.returncode == 2
    assert "holds results of a different recipe" in out.stderr
    assert (out_dir / "results.csv").read_text() == "keep me"
