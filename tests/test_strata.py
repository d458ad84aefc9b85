"""Data seeds as an outer stratum ([grid] data_seeds): cells, stage keys, the blocked comparison, the variance
split and the report's table, from hand-computed numbers and a hand-written run directory (no training, except
the one end-to-end run marked slow)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli
from rlhfkit import plugins
from rlhfkit.artifacts import artifact_dirs
from rlhfkit.recipe import Cell, RecipeError, load_recipe
from rlhfkit.report import stats as st
from rlhfkit.runner import results_fingerprint

BASE = """
name = "strata"
[[models]]
name = "m"
policy = "llama:tiny"
[grid]
algorithms = ["ppo", "rloo"]
seeds = [1, 2]
"""


def recipe_at(tmp_path, extra="", name="r.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(BASE + extra))
    return load_recipe(path)


def test_data_seeds_are_strata_with_stable_ids_for_the_run_data_seed(tmp_path):
    plain = recipe_at(tmp_path)
    strata = recipe_at(tmp_path, "data_seeds = [0, 1]\n", "s.toml")
    plain_ids = [c.id for c in plain.cells()]
    ids = [c.id for c in strata.cells()]
    assert plain_ids == ["m__ppo__full__s1", "m__ppo__full__s2", "m__rloo__full__s1", "m__rloo__full__s2"]
    assert ids == ["m__ppo__full__s1", "m__ppo__full__s2", "m__ppo__full__d1__s1", "m__ppo__full__d1__s2",
                   "m__rloo__full__s1", "m__rloo__full__s2", "m__rloo__full__d1__s1", "m__rloo__full__d1__s2"]
    assert set(plain_ids) <= set(ids)  # adding a data seed keeps (and reuses) the finished cells
    assert results_fingerprint(plain.raw) == results_fingerprint(strata.raw)
    assert {c.stage for c in strata.cells()} == {"m", "m@d1"}
    # a cell of the [run] data_seed stratum writes the same spec/result as before: no data_seed key
    assert "data_seed" not in Cell("m", "ppo", "full", 1).as_dict()
    cell = Cell("m", "ppo", "full", 1, data_seed=3)
    assert Cell(**json.loads(json.dumps(cell.as_dict()))) == cell and cell.id == "m__ppo__full__d3__s1"
    # the [run] data_seed stratum's stage key is the plain grid's; another data seed gets its own artifacts
    root = Path("/a")
    entry = strata.models["m"]
    assert artifact_dirs(strata, entry, root) == artifact_dirs(plain, entry, root) == artifact_dirs(strata, entry, root, None)
    other = artifact_dirs(strata, entry, root, 1)
    assert other.sft != artifact_dirs(plain, entry, root).sft and other.reward_model != artifact_dirs(plain, entry, root).reward_model
    moved = recipe_at(tmp_path, "data_seeds = [2, 5]\n[run]\ndata_seed = 2\n", "t.toml")
    assert [c.id for c in moved.cells()][:4] == ["m__ppo__full__s1", "m__ppo__full__s2", "m__ppo__full__d5__s1",
                                                 "m__ppo__full__d5__s2"]


@pytest.mark.parametrize("value, message", [
    ("[0, 1, 0]", "grid: data_seeds[2]: 0 is listed twice (also data_seeds[0]); each value must be distinct"),
    ("[-1]", "grid.data_seeds[0]: -1 is out of range; allowed: data_seed >= 0"),
    ("[1.5]", "grid.data_seeds[0]: expected an integer, got 1.5"),
    ("3", "grid.data_seeds: expected a list, got 3"),
])
def test_data_seeds_validation_is_one_line(tmp_path, value, message):
    with pytest.raises(RecipeError) as info:
        recipe_at(tmp_path, f"data_seeds = {value}\n")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_variance_split_by_hand():
    # strata A = [1, 3] (mean 2), B = [4, 6, 8] (mean 6); N = 5, k = 2, grand mean 22/5 = 4.4
    # SS_between = 2(2 - 4.4)^2 + 3(6 - 4.4)^2 = 11.52 + 7.68 = 19.2 -> MS_between = 19.2 / (k - 1) = 19.2
    # SS_within = (1 + 1) + (4 + 0 + 4) = 10 -> MS_within = 10 / (N - k) = 10/3
    # n0 = (N - sum n_i^2 / N) / (k - 1) = (5 - 13/5) / 1 = 2.4
    # sigma2_between = (19.2 - 10/3) / 2.4 = 6.6111; share = 6.6111 / (6.6111 + 3.3333) = 0.66480
    split = st.variance_split([1, 3, 4, 6, 8], ["A", "A", "B", "B", "B"])
    assert (split.strata, split.cells) == (2, 5)
    assert split.ms_between == pytest.approx(19.2) and split.ms_within == pytest.approx(10 / 3)
    assert split.n0 == pytest.approx(2.4)
    assert split.between == pytest.approx((19.2 - 10 / 3) / 2.4) and split.within == pytest.approx(10 / 3)
    assert split.share == pytest.approx(6.611111 / (6.611111 + 3.333333), abs=1e-5)
    # equal stratum means: MS_between = 0 < MS_within, so sigma2_between is clamped at 0
    flat = st.variance_split([1, 5, 2, 4], [0, 0, 1, 1])
    assert flat.between == 0.0 and flat.within == pytest.approx((8 + 2) / 2) and flat.share == 0.0
    assert st.variance_split([1, 2, 3], [0, 0, 0]) is None  # one stratum: nothing to split
    assert st.variance_split([1, 2], [0, 1]) is None  # no stratum with 2 cells: no within part


def test_blocked_difference_by_hand():
    # per stratum A: d0 [3, 5] -> 4, d1 [6, 8] -> 7, d2 [1, 3] -> 2; B: d0 [1, 3] -> 2, d1 [5, 5] -> 5, d2 [1, 1] -> 1
    # differences 2, 2, 1: mean 5/3, sd sqrt(1/3), se = sqrt(1/3)/sqrt(3) = 1/3; t(0.975, 2) = 4.302653
    a, sa = [3, 5, 6, 8, 1, 3], [0, 0, 1, 1, 2, 2]
    b, sb = [1, 3, 5, 5, 1, 1], [0, 0, 1, 1, 2, 2]
    blocked = st.blocked_welch(a, b, sa, sb)
    assert (blocked.n_a, blocked.n_b, blocked.df) == (3, 3, 2.0)
    assert blocked.diff == pytest.approx(5 / 3)
    assert blocked.low == pytest.approx(5 / 3 - 4.302653 / 3, abs=1e-5)
    assert blocked.high == pytest.approx(5 / 3 + 4.302653 / 3, abs=1e-5)
    # conditional on these reward models: var = (1 + 1 + 1 + 1 + 0 + 0) / 3^2 = 4/9 (s^2/n of each stratum x arm)
    # df = (4/9)^2 / (4 x (1/9)^2 / 1) = 4; t(0.975, 4) = 2.776445; half width = 2.776445 x 2/3
    conditional = st.conditional_welch(a, b, sa, sb)
    assert conditional.diff == pytest.approx(5 / 3) and conditional.df == pytest.approx(4.0)
    assert conditional.low == pytest.approx(5 / 3 - 2.776445 * 2 / 3, abs=1e-5)
    assert conditional.p == pytest.approx(0.066767, abs=1e-5)  # 2 x P(t_4 > 2.5)
    assert (conditional.n_a, conditional.n_b) == (6, 6)
    c = st.decide([st.compare(a, b, "gold_final", "A", "B", strata_a=sa, strata_b=sb)])[0]
    assert c.strata == 3 and c.difference == blocked and c.conditional == conditional
    assert c.verdict == "too few data seeds to compare: 3 reward-model strata, 4 needed" and c.winner is None
    assert c.perm_exact and c.p_perm == pytest.approx(0.25)  # 2 of the 2^3 sign flips reach |mean| >= 5/3
    # P(A better) = mean over strata of the within-stratum probability (ties 1/2):
    # d0 [3, 5] vs [1, 3]: (1 + 0.5 + 1 + 1)/4 = 0.875; d1 [6, 8] vs [5, 5]: 1; d2 [1, 3] vs [1, 1]: (0.5 + 0.5 + 1 + 1)/4
    assert c.poi == pytest.approx((0.875 + 1.0 + 0.75) / 3)


def test_one_stratum_compares_exactly_as_before():
    a, b = [1.0, 2.0, 3.5, 4.0], [0.5, 1.0, 1.2, 2.0]
    plain = st.compare(a, b, "gold_final", "A", "B")
    same = st.compare(a, b, "gold_final", "A", "B", strata_a=[0] * 4, strata_b=[0] * 4)
    assert same == plain and same.strata == 0 and same.conditional is None
    assert st.stratified_interval(a, [0] * 4) == st.t_interval(a)
    assert st.stratified_iqm(a, [0] * 4) == st.iqm_ci([a])


def test_blocked_verdict_at_four_strata():
    strata = [d for d in range(4) for _ in range(2)]
    a = [3.0 + 0.1 * d + 0.01 * s for d in range(4) for s in range(2)]
    b = [1.0 + 0.1 * d + 0.02 * s + 0.05 * (d % 2) for d in range(4) for s in range(2)]
    c = st.decide([st.compare(a, b, "gold_final", "A", "B", strata_a=strata, strata_b=strata)])[0]
    assert c.strata == 4 and c.winner == "A" and "n=4 reward-model strata" in c.verdict


STRATA_RECIPE = """
name = "strata"
[data]
name = "synthetic"
[[models]]
name = "tiny"
policy = "llama:tiny"
[grid]
algorithms = ["ppo", "rloo"]
memory = ["full"]
seeds = [1, 2]
data_seeds = [0, 1]
[rl]
steps = 8
eval_every = 2
"""


def _strata_evals(cell, data_seed):
    """Gold per stratum shifted by its reward model (+0.5 for data seed 1), RL seeds jittered a little."""
    top = (3.0 if cell.algorithm == "ppo" else 1.5) + 0.5 * data_seed + 0.02 * cell.seed
    return [{"eval/step": s, "eval/kl": 0.25 * s, "eval/score": 2 * top * s / 8, "eval/gold": 0.2 + (top - 0.2) * s / 8,
             "eval/lr": 1e-3} for s in (0, 2, 4, 6, 8)]


def test_report_has_blocked_comparisons_and_the_variance_table(tmp_path):
    from test_report_fair import _summary

    from rlhfkit.report import write_reports

    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.toml").write_text(textwrap.dedent(STRATA_RECIPE))
    (out / "run.json").write_text(json.dumps({"versions": {"python": "3.12"}}))
    recipe = load_recipe(out / "recipe.toml")
    stages = {"tiny": {"status": "ok", "reward/eval_accuracy": 0.8}, "tiny@d1": {"status": "ok", "reward/eval_accuracy": 0.9,
                                                                                "data_seed": 1}}
    (out / "stages.json").write_text(json.dumps(stages))
    for cell in recipe.cells():
        evals = _strata_evals(cell, recipe.data_seed_of(cell))
        summary = {**_summary(cell, evals), "gold_final": evals[-1]["eval/gold"], "kl_final": evals[-1]["eval/kl"]}
        (out / "cells" / cell.id).mkdir(parents=True)
        (out / "cells" / cell.id / "result.json").write_text(json.dumps(
            {"cell": cell.as_dict(), "status": "ok", "error": None, "summary": summary, "evaluations": evals}))
    plugins.reset()
    context = write_reports(out)
    table = pd.read_csv(out / "results.csv")
    assert list(table["data_seed"]) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert list(table["rm_accuracy"]) == [0.8, 0.8, 0.9, 0.9, 0.8, 0.8, 0.9, 0.9]
    md = (out / "report.md").read_text()
    assert "### Variance: reward-model seeds vs RL seeds" in md
    # final gold per stratum: ppo d0 {3.02, 3.04}, d1 {3.52, 3.54}: MS_within = 0.0002, MS_between = 2 x 2 x 0.25^2
    # = 0.25, n0 = 2 -> sigma2_between = (0.25 - 0.0002) / 2 = 0.1249, share 0.1249 / 0.1251 = 100%
    row = next(line for line in md.splitlines() if line.startswith("| ppo | final gold |"))
    assert "| 2 | 4 | 0.1249 | 0.0002 | 100% |" in row
    assert "too few data seeds to compare: 2 reward-model strata, 4 needed" in md
    assert "conditional on these reward models (pooled-within-stratum Welch, 4 and 4 cells)" in md
    assert "d0: 1, 2; d1: 1, 2 (n=4 in 2 strata)" in md
    assert "Data seeds ([grid] data_seeds)" in md  # the methods say what blocked means
    assert context.stages["tiny@d1"]["reward/eval_accuracy"] == 0.9
    plugins.reset()


@pytest.mark.slow
def test_run_trains_stages_per_data_seed_and_cells_use_their_own(small_recipe, tmp_path):
    path = small_recipe(algorithms=("rloo",), seeds=(1, 2), steps=2)
    path.write_text(path.read_text().replace("seeds = [1, 2]\n", "seeds = [1, 2]\ndata_seeds = [0, 1]\n"))
    out = tmp_path / "run"
    done = run_cli("run", path, "--output", out)
    assert done.returncode == 0, done.stdout + done.stderr
    stages = json.loads((out / "stages.json").read_text())
    assert set(stages) == {"llama-tiny", "llama-tiny@d1"} and all(s["status"] == "ok" for s in stages.values())
    root = out / "artifacts"
    assert len(list(root.glob("sft-*"))) == 2 and len(list(root.glob("reward-*"))) == 2
    recipe = load_recipe(out / "recipe.toml")
    for cell in recipe.cells():
        result = json.loads((out / "cells" / cell.id / "result.json").read_text())
        assert result["status"] == "ok"
        own = artifact_dirs(recipe, recipe.models["llama-tiny"], root, cell.data_seed).as_dict()
        assert {k: Path(v).name for k, v in result["artifacts"].items()} == {k: Path(v).name for k, v in own.items()}
    table = pd.read_csv(out / "results.csv")
    assert list(table["cell"]) == ["llama-tiny__rloo__full__s1", "llama-tiny__rloo__full__s2",
                                   "llama-tiny__rloo__full__d1__s1", "llama-tiny__rloo__full__d1__s2"]
    assert list(table["data_seed"]) == [0, 0, 1, 1]
    accuracy = [stages["llama-tiny"]["reward/eval_accuracy"]] * 2 + [stages["llama-tiny@d1"]["reward/eval_accuracy"]] * 2
    assert list(table["rm_accuracy"]) == pytest.approx(accuracy)
    assert "### Variance: reward-model seeds vs RL seeds" in (out / "report.md").read_text()
