"""Sweeps as grid axes, equal tuning effort, tuning selection, the resolved configuration (no training here,
except the one end-to-end run marked slow)."""

import dataclasses
import json
import textwrap

import pandas as pd
import pytest

from conftest import run_cli
from rlhfkit.recipe import Cell, RecipeError, load_recipe, parse_recipe
from rlhfkit.results import results_table
from rlhfkit.runner import results_fingerprint
from rlhfkit.tuning import TuningError, cell_value, resolved_configs, select_tuning, write_resolved

BASE = """
[[models]]
name = "m"
policy = "llama:tiny"
[grid]
seeds = [1, 2]
"""


def recipe_from(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(BASE + text))
    return path


def load(tmp_path, text):
    return load_recipe(recipe_from(tmp_path, text))


def test_sweep_is_a_grid_axis_with_settings_in_ids(tmp_path):
    recipe = load(tmp_path, "[grid.sweep]\nkl_coef = [0.02, 0.2]\n[grid.sweep.ppo]\nnum_epochs = [1, 2]\n")
    cells = recipe.cells()
    assert len(cells) == (2 * 2 + 2) * 2  # ppo: 2 betas x 2 epochs, rloo: 2 betas; 2 seeds each
    assert {c.phase for c in cells} == {"grid"}
    ids = [c.id for c in cells]
    assert ids[:2] == ["m__ppo__full__kl_coef=0.02,num_epochs=1__s1", "m__ppo__full__kl_coef=0.02,num_epochs=1__s2"]
    assert "m__rloo__full__kl_coef=0.2__s2" in ids and len(set(ids)) == len(ids)
    assert cells[0].settings == (("kl_coef", 0.02), ("num_epochs", 1))
    assert cells[0].settings_text == "kl_coef=0.02,num_epochs=1"
    # no settings: the id of an old run dir is unchanged
    assert Cell("m", "ppo", "zero3+lora", 3).id == "m__ppo__zero3-lora__s3"
    assert Cell("m", "ppo", "full", 3, settings=(("kl_coef", 0.1),), phase="tuning").id == "tune__m__ppo__full__kl_coef=0.1__s3"
    assert Cell("m", "ppo", "full", 3, phase="final").id == "m__ppo__full__default__s3"


def test_cell_round_trips_through_json(tmp_path):
    cell = Cell("m", "ppo", "full", 1, settings=(("num_epochs", 2), ("kl_coef", 0.1)), phase="final")
    again = Cell(**json.loads(json.dumps(cell.as_dict())))
    assert again == cell and hash(again) == hash(cell) and again.id == cell.id
    assert cell.settings == (("kl_coef", 0.1), ("num_epochs", 2))  # sorted by key


def test_config_for_applies_settings_and_validates(tmp_path):
    recipe = load(tmp_path, "[rl]\nkl_coef = 0.05\n[algorithms.ppo]\nnum_epochs = 4\n[grid.sweep.ppo]\nkl_coef = [1, 0.3]\n")
    assert recipe.sweeps["ppo"] == {"kl_coef": [1.0, 0.3]} and recipe.sweeps["rloo"] == {}
    swept = [c for c in recipe.cells() if c.algorithm == "ppo"][0]
    config = recipe.config_for(swept)
    assert config.kl_coef == 1.0 and isinstance(config.kl_coef, float) and config.num_epochs == 4
    plain = [c for c in recipe.cells() if c.algorithm == "rloo"][0]
    assert recipe.config_for(plain) is recipe.algorithms["rloo"] and recipe.config_for(plain).kl_coef == 0.05
    with pytest.raises(RecipeError, match="kl_coef must be >= 0"):
        recipe.config_for(Cell("m", "ppo", "full", 1, settings=(("kl_coef", -1.0),)))


@pytest.mark.parametrize(
    "text, message",
    [
        ("[grid.sweep.ppo]\nnum_epochs = [1, 'x']\n", "grid.sweep.ppo.num_epochs[1]: value 'x' refused: expected an integer, got 'x'"),
        ("[grid.sweep.ppo]\nnum_minibatches = [1, 3]\n",
         "grid.sweep.ppo.num_minibatches[1]: value 3 refused: batch_size (32) must be divisible by num_minibatches (3)"),
        ("[grid.sweep]\nkl_coef = [0.1, -0.2]\n", "grid.sweep.kl_coef[1]: value -0.2 refused for ppo: kl_coef must be >= 0"),
        ("[grid.sweep.ppo]\nnum_epoch = [1, 2]\n", "grid.sweep.ppo: unknown key 'num_epoch' (did you mean 'num_epochs'?); allowed: "),
        ("[grid.sweep]\nkl_coeff = [0.1]\n", "grid.sweep for ppo: unknown key 'kl_coeff' (did you mean 'kl_coef'?); allowed: "),
        ("[grid.sweep]\nk = [2, 4]\n", "grid.sweep.k: ppo has no key 'k' (only rloo); sweep it under [grid.sweep.rloo]"),
        ("[grid.sweep.dpo]\nk = [2, 4]\n", "grid.sweep.dpo: not an algorithm of the grid; allowed: ppo, rloo"),
        ("[grid.sweep]\nkl_coef = 0.1\n", "grid.sweep.kl_coef: expected a non-empty list of values, got 0.1"),
        ("[grid.sweep]\nkl_coef = [0.1, 0.1]\n", "grid.sweep.kl_coef[1]: 0.1 is listed twice"),
        ("[grid.sweep]\nkl_coef = [1, 1.0]\n", "grid.sweep.kl_coef[1]: 1.0 is listed twice"),
        ("[grid.sweep.rloo]\nk = [4, 8]\nnum_minibatches = [1, 8]\n",
         "grid.sweep: rloo setting k=8,num_minibatches=8 refused: each minibatch (batch_size / num_minibatches = 4) must hold whole groups of k = 8 completions"),
        ("[grid.sweep]\nkl_coef = [0.1, 0.2]\n[tuning]\nseeds = [7, 2]\nkl_budget = 1.0\n",
         "tuning.seeds[1]: 2 is also a grid seed; tuning seeds must be disjoint from [grid] seeds"),
        ("[grid.sweep.ppo]\nkl_coef = [0.1, 0.2]\n[tuning]\nseeds = [7]\nkl_budget = 1.0\n",
         "tuning: unequal tuning effort (settings tried: ppo 2, rloo 1); sweep as many settings per algorithm "
         "or set [tuning] allow_unequal = true"),
        ("[grid.sweep]\nkl_coef = [0.1, 0.2]\n[tuning]\nseeds = [7]\n", "tuning: kl_budget is required for metric gold_at_kl"),
        ("[tuning]\nseeds = [7]\nkl_budget = 1.0\n", "tuning: nothing to tune; add [grid.sweep] values"),
        ("[grid.sweep]\nkl_coef = [0.1, 0.2]\n[tuning]\nseeds = [7]\nmetric = 'gold'\n",
         "tuning: metric must be one of: gold_at_kl, gold_final"),
    ],
)
def test_bad_sweeps_are_one_line_exit_2(tmp_path, text, message):
    out = run_cli("validate", recipe_from(tmp_path, text.replace("'", '"')))
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_unequal_tuning_effort_can_be_allowed(tmp_path):
    text = "[grid.sweep.ppo]\nkl_coef = [0.1, 0.2]\n[tuning]\nseeds = [7]\nkl_budget = 1.0\nallow_unequal = true\n"
    recipe = load(tmp_path, text)
    # rloo sweeps nothing: it has no tuning cells; it still gets a final arm once tuning has run
    assert {c.algorithm for c in recipe.tuning_cells()} == {"ppo"}


CONFOUNDED = """
[rl]
learning_rate = 1e-3
[algorithms.ppo]
num_epochs = 4
num_minibatches = 4
[algorithms.rloo]
num_epochs = 1
num_minibatches = 1
"""
UPDATE_WARNING = (
    "warning: arms differ in policy updates per batch (ppo 16, rloo 1) and it is not swept: "
    "a difference may come from the update count, not the algorithm"
)


def test_confounded_arms_warn_in_validate(tmp_path):
    out = run_cli("validate", recipe_from(tmp_path, CONFOUNDED))
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [UPDATE_WARNING]  # the shared learning rate is not a confounder

    text = CONFOUNDED.replace("[algorithms.rloo]\n", "[algorithms.rloo]\nlearning_rate = 3e-4\nkl_coef = 0.1\n")
    out = run_cli("validate", recipe_from(tmp_path, text))
    assert "warning: arms differ in learning rate (ppo 0.001, rloo 0.0003) and it is not swept" in out.stdout
    assert "warning: arms differ in KL coefficient (beta) (ppo 0.05, rloo 0.1)" in out.stdout

    # `rlhfkit run` prints them before starting (here it then stops at an output dir of another recipe)
    out_dir = tmp_path / "taken"
    out_dir.mkdir()
    (out_dir / "run.json").write_text(json.dumps({"results_fingerprint": "another"}))
    out = run_cli("run", recipe_from(tmp_path, CONFOUNDED), "--output", out_dir)
    assert out.returncode == 2 and UPDATE_WARNING in out.stdout.splitlines()

    swept = CONFOUNDED + "[grid.sweep.ppo]\nnum_epochs = [1, 4]\n"
    out = run_cli("validate", recipe_from(tmp_path, swept))
    assert out.returncode == 0 and "warning:" not in out.stdout


TUNED = """
[grid.sweep]
kl_coef = [0.02, 0.05, 0.2]
[tuning]
seeds = [100, 101]
kl_budget = 1.0
"""


def _fake_result(out_dir, cell, checkpoints, status="ok"):
    directory = out_dir / "cells" / cell.id
    directory.mkdir(parents=True, exist_ok=True)
    evaluations = [{"eval/step": i, "eval/kl": kl, "eval/gold": gold} for i, (kl, gold) in enumerate(checkpoints)]
    result = {"cell": cell.as_dict(), "status": status, "evaluations": evaluations, "summary": {}}
    (directory / "result.json").write_text(json.dumps(result))


def test_tuning_picks_best_gold_within_kl_budget_and_says_why(tmp_path):
    recipe = load(tmp_path, TUNED)
    out = tmp_path / "run"
    # ppo: kl_coef 0.02 has the highest gold overall, but past the KL budget; 0.05 wins within it.
    # rloo: 0.02 and 0.05 tie: the first in sweep order wins.  One rloo 0.2 seed failed: n = 1.
    golds = {
        ("ppo", 0.02): [[(0, 1.0), (0.5, 1.5), (3.0, 9.0)], [(0, 1.0), (2.0, 8.0)]],
        ("ppo", 0.05): [[(0, 1.0), (0.9, 2.5)], [(0, 1.0), (0.8, 2.1)]],
        ("ppo", 0.2): [[(0, 1.0), (0.2, 1.2)], [(0, 1.0), (0.3, 1.4)]],
        ("rloo", 0.02): [[(0, 1.0), (0.5, 2.0)], [(0, 1.0), (0.5, 2.0)]],
        ("rloo", 0.05): [[(0, 1.0), (0.5, 2.0)], [(0, 1.0), (0.5, 2.0)]],
        ("rloo", 0.2): [[(0, 1.0), (0.5, 1.0)], None],
    }
    for cell in recipe.tuning_cells():
        checkpoints = golds[(cell.algorithm, dict(cell.settings)["kl_coef"])][cell.seed - 100]
        _fake_result(out, cell, checkpoints or [], status="ok" if checkpoints else "failed")
    info = select_tuning(recipe, out)
    saved = json.loads((out / "tuning.json").read_text())
    assert saved == json.loads(json.dumps(info))
    assert saved["metric"] == "gold_at_kl" and saved["kl_budget"] == 1.0 and saved["tuning_seeds"] == [100, 101]
    assert saved["settings_tried"] == {"ppo": 3, "rloo": 3}
    ppo, rloo = saved["arms"]
    assert (ppo["algorithm"], ppo["winner"], ppo["winner_settings"]) == ("ppo", "kl_coef=0.05", {"kl_coef": 0.05})
    assert ppo["value"] == pytest.approx(2.3) and ppo["settings_tried"] == 3
    assert [c["settings"] for c in ppo["candidates"]] == ["kl_coef=0.02", "kl_coef=0.05", "kl_coef=0.2"]
    assert [c["value"] for c in ppo["candidates"]] == pytest.approx([1.25, 2.3, 1.3])
    assert [c["n"] for c in ppo["candidates"]] == [2, 2, 2]
    assert "highest gold_at_kl (KL budget 1)" in ppo["why"] and "first in sweep order" in ppo["why"]
    assert rloo["winner"] == "kl_coef=0.02"
    assert rloo["candidates"][2]["n"] == 1 and rloo["candidates"][2]["statuses"] == {"100": "ok", "101": "failed"}
    # the final phase runs each arm's tuned setting on the grid seeds, beside the defaults
    finals = recipe.final_cells()
    assert [c.id for c in finals] == [
        "m__ppo__full__kl_coef=0.05__s1", "m__ppo__full__kl_coef=0.05__s2",
        "m__rloo__full__kl_coef=0.02__s1", "m__rloo__full__kl_coef=0.02__s2",
    ]
    assert {c.phase for c in finals} == {"final"} and recipe.config_for(finals[0]).kl_coef == 0.05
    assert [c.phase for c in recipe.cells()].count("grid") == 4


def test_tuning_gold_final_and_missing_gold(tmp_path):
    assert cell_value({"evaluations": [{"eval/kl": 0, "eval/gold": 1.0}, {"eval/kl": 5, "eval/gold": 3.0}]},
                      "gold_final", None) == 3.0
    assert cell_value({"evaluations": [{"eval/kl": 0.5, "eval/gold": 1.0}, {"eval/kl": 5, "eval/gold": 3.0}]},
                      "gold_at_kl", 1.0) == 1.0
    assert cell_value({"evaluations": [{"eval/kl": 2.0, "eval/gold": 1.0}]}, "gold_at_kl", 1.0) is None
    recipe = load(tmp_path, TUNED)
    out = tmp_path / "run"
    for cell in recipe.tuning_cells():  # a data set without gold: evaluations have no eval/gold
        directory = out / "cells" / cell.id
        directory.mkdir(parents=True)
        (directory / "result.json").write_text(json.dumps(
            {"cell": cell.as_dict(), "status": "ok", "evaluations": [{"eval/kl": 0.1, "eval/score": 1.0}]}))
    with pytest.raises(TuningError, match="gold_at_kl needs the gold reward") as info:
        select_tuning(recipe, out)
    assert "\n" not in str(info.value)


def test_resolved_configuration_has_every_field_of_every_cell(tmp_path):
    recipe = load(tmp_path, TUNED + "[algorithms.ppo]\nnum_epochs = 2\n")
    path = write_resolved(recipe, tmp_path)
    resolved = json.loads(path.read_text())
    assert set(resolved["cells"]) == {c.id for c in recipe.cells()}
    entry = resolved["cells"]["tune__m__ppo__full__kl_coef=0.2__s101"]
    fields = {f.name for f in dataclasses.fields(type(recipe.algorithms["ppo"]))}
    assert set(entry["config"]) == fields  # every default, not only what the recipe wrote
    assert entry["config"]["kl_coef"] == 0.2 and entry["config"]["num_epochs"] == 2
    assert entry["config"]["cliprange_value"] == recipe.algorithms["ppo"].cliprange_value
    assert entry["settings"] == {"kl_coef": 0.2} and entry["phase"] == "tuning" and entry["memory"] == "full"
    assert entry["model_row"] == {"name": "m", "policy": "llama:tiny", "reward": "llama:tiny", "trust_remote_code": False,
                                  "train_sft": True, "train_reward": True, "dpo": False, "reward_weights": {}}
    assert resolved == json.loads(json.dumps(resolved_configs(recipe, recipe.cells())))


def test_results_table_has_phase_settings_and_a_column_per_swept_key(tmp_path):
    recipe = load(tmp_path, TUNED)
    write_resolved(recipe, tmp_path)
    table = results_table(tmp_path, recipe.cells())
    columns = list(table.columns)
    assert columns[columns.index("seed") + 1: columns.index("seed") + 4] == ["phase", "settings", "kl_coef"]
    tuning = table[table["phase"] == "tuning"]
    assert sorted(set(tuning["kl_coef"])) == [0.02, 0.05, 0.2]
    grid = table[table["phase"] == "grid"]
    assert (grid["settings"] == "").all() and (grid["kl_coef"] == 0.05).all()  # the default the cell ran with
    assert (table["status"] == "pending").all()


def test_results_fingerprint_ignores_sweeps_and_follows_parallel_cells_when_threads_are_derived():
    raw = {"rl": {"steps": 3}, "grid": {"sweep": {"kl_coef": [0.1]}}, "run": {"parallel_cells": 2}}
    more_values = {**raw, "grid": {"sweep": {"kl_coef": [0.1, 0.2]}}, "tuning": {"seeds": [9]}}
    assert results_fingerprint(raw) == results_fingerprint(more_values)
    assert results_fingerprint(raw) != results_fingerprint({**raw, "run": {"parallel_cells": 1}})
    fixed = {**raw, "run": {"parallel_cells": 2, "threads_per_cell": 1}}
    assert results_fingerprint(fixed) == results_fingerprint({**raw, "run": {"parallel_cells": 1, "threads_per_cell": 1}})


def test_cell_spec_carries_parallel_cells_and_settings(tmp_path, monkeypatch):
    import subprocess

    from rlhfkit import runner as runner_module

    recipe = load(tmp_path, "[grid.sweep]\nkl_coef = [0.1, 0.2]\n[run]\nparallel_cells = 3\n")
    real_popen = subprocess.Popen  # the cell process is replaced by `true`: only the spec is looked at
    monkeypatch.setattr(runner_module.subprocess, "Popen", lambda cmd, **kw: real_popen(["true"]))
    run = runner_module.Runner(recipe, tmp_path)._launch(recipe.cells()[0])
    run.proc.wait()
    run.proc.close()
    spec = json.loads((tmp_path / "cells" / recipe.cells()[0].id / "spec.json").read_text())
    assert spec["parallel_cells"] == 3
    assert Cell(**spec["cell"]) == recipe.cells()[0] and spec["cell"]["settings"] == [["kl_coef", 0.1]]


def test_a_result_of_other_settings_under_the_same_id_is_not_kept(tmp_path):
    recipe = load(tmp_path, "[grid.sweep]\nkl_coef = [0.1, 0.2]\n")
    cell = recipe.cells()[0]
    other = dataclasses.replace(cell, settings=(("kl_coef", 0.3),))
    _fake_result(tmp_path, cell, [(0, 1.0)])
    from rlhfkit.runner import Runner, RunOutcome

    runner = Runner(recipe, tmp_path)
    outcome = RunOutcome(tmp_path)
    assert not runner._pending([cell], {"m": {"status": "ok"}}, outcome) and outcome.kept == [cell]
    (tmp_path / "cells" / cell.id / "result.json").write_text(
        json.dumps({"cell": other.as_dict(), "status": "ok"}))
    assert list(runner._pending([cell], {"m": {"status": "ok"}}, RunOutcome(tmp_path))) == [cell]


@pytest.mark.slow
def test_sweep_and_tuning_run_end_to_end(small_recipe, tmp_path):
    # A beta sweep and an LR sweep in one recipe: one grid, stages trained once, a column per swept key.
    extra = "\n[grid.sweep]\nkl_coef = [0.02, 0.3]\nlearning_rate = [1e-3, 3e-3]\n[tuning]\nseeds = [100]\nkl_budget = 50.0\n"
    recipe = small_recipe(seeds=(1,), steps=2, extra=extra)
    out_dir = tmp_path / "run"
    out = run_cli("run", recipe, "--output", out_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    table = pd.read_csv(out_dir / "results.csv", keep_default_na=False)
    assert (table["status"] == "ok").all()
    assert sorted(table["phase"]) == ["final"] * 2 + ["grid"] * 2 + ["tuning"] * 8  # 2 x 2 settings per algorithm
    assert {"phase", "settings", "kl_coef", "learning_rate"} <= set(table.columns)
    tuned = table[table["phase"] == "tuning"]
    assert sorted(set(zip(tuned["kl_coef"], tuned["learning_rate"]))) == [(0.02, 1e-3), (0.02, 3e-3), (0.3, 1e-3), (0.3, 3e-3)]
    tuning = json.loads((out_dir / "tuning.json").read_text())
    winners = {arm["algorithm"]: arm["winner"] for arm in tuning["arms"]}
    finals = table[table["phase"] == "final"].set_index("algorithm")
    for algorithm in ("ppo", "rloo"):
        assert finals.loc[algorithm, "settings"] == winners[algorithm]
        assert finals.loc[algorithm, "seed"] == 1
    assert set(table[table["phase"] == "tuning"]["seed"]) == {100}
    assert (table[table["phase"] == "grid"]["settings"] == "").all()
    # stages once per model row: every cell trained from the same SFT policy and reward model
    artifacts = {json.dumps(json.loads((out_dir / "cells" / c / "result.json").read_text())["artifacts"], sort_keys=True)
                 for c in table["cell"]}
    assert len(artifacts) == 1 and list(json.loads((out_dir / "stages.json").read_text())) == ["llama-tiny"]
    resolved = json.loads((out_dir / "resolved.json").read_text())
    assert set(resolved["cells"]) == set(table["cell"])
    # The report groups by algorithm, the sweep a within-algorithm axis, and names each tuned setting.
    md = (out_dir / "report.md").read_text()
    for algorithm in ("ppo", "rloo"):
        assert f"{algorithm} ({winners[algorithm]})" in md
