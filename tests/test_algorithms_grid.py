"""recipes/algorithms.toml, smaller: every built-in algorithm raises held-out gold above the SFT policy, and the
RLOO KL-placement ablation runs in the same grid with its two cells labelled apart (one subprocess grid)."""

import pandas as pd
import pytest

from conftest import REPO, run_cli

ALGORITHMS = ("ppo", "rloo", "grpo", "reinforce_pp", "remax", "online_dpo", "dpo")


@pytest.mark.slow
def test_every_algorithm_beats_sft_and_the_kl_placement_ablation_is_labelled(tmp_path):
    text = (REPO / "recipes" / "algorithms.toml").read_text()
    # One seed and 12 steps (384 episodes) instead of 2 x 20: about 2 minutes on 2 CPU cores.
    small = text.replace("seeds = [1, 2]", "seeds = [1]").replace("steps = 20", "steps = 12").replace(
        "eval_every = 5", "eval_every = 6")
    assert small.count("seeds = [1]") == 1 and "steps = 12" in small
    recipe = tmp_path / "algorithms_small.toml"
    recipe.write_text(small)
    out_dir = tmp_path / "run"
    out = run_cli("run", recipe, "--output", out_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    table = pd.read_csv(out_dir / "results.csv", keep_default_na=False)
    assert (table["status"] == "ok").all() and set(table["algorithm"]) == set(ALGORITHMS)
    for row in table.itertuples():
        assert row.gold_final > row.gold_sft, f"{row.cell}: gold {row.gold_sft} -> {row.gold_final}"
    dpo = table.set_index("algorithm").loc["dpo"]
    assert dpo["ledger/generated_tokens"] == 0 and dpo["ledger/episodes"] == 12 * 32
    # the ablation: two RLOO cells, told apart by their settings in results.csv and in the report's text
    rloo = table[table["algorithm"] == "rloo"]
    assert sorted(rloo["settings"]) == ["kl_placement=loss", "kl_placement=sequence_reward"]
    assert sorted(rloo["kl_placement"]) == ["loss", "sequence_reward"]
    report = (out_dir / "report.md").read_text()
    assert "rloo (kl_placement=loss)" in report and "rloo (kl_placement=sequence_reward)" in report
