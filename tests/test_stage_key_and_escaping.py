"""Issue 14: the stages' thread count in their cache key; the recipe's description escaped in the report."""

from __future__ import annotations

import dataclasses
import os

from rlhfkit import artifacts
from rlhfkit.recipe import fingerprint, load_recipe

RECIPE = """
name = "keys"
description = "{description}"
[data]
name = "synthetic"
[[models]]
name = "llama-tiny"
policy = "llama:tiny"
[grid]
algorithms = ["ppo"]
memory = ["full"]
seeds = [1]
[run]
{run}
"""


def _recipe(tmp_path, run="", description="d"):
    path = tmp_path / f"r{abs(hash((run, description)))}.toml"
    path.write_text(RECIPE.format(run=run, description=description))
    return load_recipe(path)


def _keys_before_threads(recipe, entry, root):
    """The keys as computed before the thread count entered them (what existing run directories hold)."""
    data = {"data": recipe.stage_fingerprint()["data"], "data_seed": recipe.run.data_seed}
    tok = fingerprint({**data, "tokenizer_from": entry.policy})
    return (root / f"tokenizer-{tok}",
            root / f"sft-{fingerprint({**data, 'tokenizer': tok, 'policy': entry.policy, 'sft': dataclasses.asdict(recipe.sft)})}",
            root / f"reward-{fingerprint({**data, 'tokenizer': tok, 'reward': entry.reward, 'reward_model': dataclasses.asdict(recipe.reward_model)})}")


def test_stage_keys_follow_the_thread_count_and_keep_the_default(tmp_path):
    root = tmp_path / "artifacts"
    default = _recipe(tmp_path)
    entry = default.models["llama-tiny"]
    dirs = artifacts.artifact_dirs(default, entry, root)
    assert (dirs.tokenizer, dirs.sft, dirs.reward_model) == _keys_before_threads(default, entry, root)
    cores = os.cpu_count() or 1
    same = _recipe(tmp_path, run=f"threads_per_cell = {cores}")  # the default's thread count, spelt out
    assert artifacts.artifact_dirs(same, same.models["llama-tiny"], root) == dirs
    other = _recipe(tmp_path, run=f"threads_per_cell = {cores + 1}")
    moved = artifacts.artifact_dirs(other, other.models["llama-tiny"], root)
    assert moved.tokenizer == dirs.tokenizer  # no torch arithmetic in the tokenizer
    assert moved.sft != dirs.sft and moved.reward_model != dirs.reward_model
    assert artifacts.stage_threads(other) == cores + 1 and artifacts.stage_threads(default) == cores
