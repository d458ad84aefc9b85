"""A NaN, a crash or a timeout in one cell is that cell's status; the grid goes on."""

import json
import os
import textwrap

import pandas as pd
import pytest

from conftest import run_cli, seed_stages

PLUGIN = '''
from rlhfkit.engine.config import RLConfig
from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import AlgorithmSpec


def train_nan(ctx):
    ctx.check_finite(0, loss=float("nan"))


def train_crash(ctx):
    raise RuntimeError("boom in the trainer")


def train_sleep(ctx):
    import time
    time.sleep(600)


@hookimpl
def register_algorithms(register):
    register(AlgorithmSpec("nan-algo", RLConfig, "failing_algos:train_nan"))
    register(AlgorithmSpec("crash-algo", RLConfig, "failing_algos:train_crash"))
    register(AlgorithmSpec("sleep-algo", RLConfig, "failing_algos:train_sleep"))
'''


def install_fake_distribution(root):
    (root / "failing_algos.py").write_text(PLUGIN)
    dist = root / "failing_algos-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: failing-algos\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlhfkit]\nfailing = failing_algos\n")
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def shared_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("failing-cells")


@pytest.mark.slow
def test_failing_cells_get_their_status_and_the_grid_goes_on(small_recipe, tmp_path, shared_tmp):
    plugin_root = tmp_path / "site"
    plugin_root.mkdir()
    env = install_fake_distribution(plugin_root)
    recipe = small_recipe(algorithms=("nan-algo", "crash-algo", "rloo"), parallel=2)
    out_dir = shared_tmp / "failing"
    out = run_cli("run", recipe, "--output", out_dir, env=env)
    assert out.returncode == 1  # some cells did not finish ok
    table = pd.read_csv(out_dir / "results.csv").set_index("algorithm")
    assert table.loc["nan-algo", "status"] == "diverged"
    assert "loss is nan at step 0" in table.loc["nan-algo", "error"]
    assert table.loc["crash-algo", "status"] == "failed"
    assert "boom in the trainer" in table.loc["crash-algo", "error"]
    assert table.loc["rloo", "status"] == "ok"
    assert "boom in the trainer" in (out_dir / "cells" / "llama-tiny__crash-algo__full__s1" / "error.txt").read_text()

    # A rerun keeps failed cells unless asked to retry them.
    failed_result = out_dir / "cells" / "llama-tiny__crash-algo__full__s1" / "result.json"
    stamp = failed_result.stat().st_mtime_ns
    assert run_cli("run", recipe, "--output", out_dir, env=env).returncode == 1
    assert failed_result.stat().st_mtime_ns == stamp
    assert run_cli("run", recipe, "--output", out_dir, "--retry-failed", env=env).returncode == 1
    assert failed_result.stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_a_cell_past_its_timeout_is_stopped(small_recipe, tmp_path, shared_tmp):
    plugin_root = tmp_path / "site"
    plugin_root.mkdir()
    env = install_fake_distribution(plugin_root)
    recipe = small_recipe(algorithms=("sleep-algo",))
    # 8 s, not 20: the sleeping cell (imports ~3.5 s idle) is stopped either way; 12 s less of a 37 s test.
    recipe.write_text(recipe.read_text().replace("[run]\n", "[run]\ncell_timeout_s = 8\n"))
    out_dir = tmp_path / "run"
    seed_stages(shared_tmp / "failing", out_dir)  # the test above's stages (same data and model)
    out = run_cli("run", recipe, "--output", out_dir, env=env)
    assert out.returncode == 1
    result = json.loads((out_dir / "cells" / "llama-tiny__sleep-algo__full__s1" / "result.json").read_text())
    assert result["status"] == "timeout"
    assert "after 8 s" in result["error"]
