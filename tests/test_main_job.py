"""The default recipe, as the README runs it: both algorithms beat the SFT policy on the gold reward."""

import json

import pandas as pd
import pytest

from conftest import REPO, run_cli


@pytest.mark.slow
def test_default_recipe_learns(tmp_path):
    out_dir = tmp_path / "main"
    out = run_cli("run", REPO / "recipes" / "ppo_vs_rloo.toml", "--output", out_dir, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = pd.read_csv(out_dir / "results.csv")
    assert (table["status"] == "ok").all()
    assert set(table["algorithm"]) == {"ppo", "rloo"} and set(table["seed"]) == {1, 2, 3, 4, 5}
    assert sorted(set(table["kl_coef"])) == [0.02, 0.1, 0.5] and len(table) == 30  # the beta sweep, every seed
    means = table.groupby("algorithm")[["gold_sft", "gold_final", "score_final", "kl_final"]].mean()
    for algorithm in ("ppo", "rloo"):
        assert means.loc[algorithm, "gold_final"] > means.loc[algorithm, "gold_sft"] + 0.5, means
    stages = json.loads((out_dir / "stages.json").read_text())
    assert stages["llama-tiny"]["reward/eval_accuracy"] >= 0.75
