import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]

SMALL_RECIPE = """
name = "small"
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
algorithms = {algorithms}
memory = ["full"]
seeds = {seeds}
[sft]
epochs = 1
[reward_model]
epochs = 1
[rl]
steps = {steps}
batch_size = 8
response_length = 8
eval_every = 2
eval_batch_size = 16
[algorithms.ppo]
num_epochs = 1
num_minibatches = 2
[algorithms.rloo]
k = 2
[run]
parallel_cells = {parallel}
threads_per_cell = 1
"""


@pytest.fixture
def small_recipe(tmp_path):
    def make(algorithms=("ppo", "rloo"), seeds=(1,), steps=2, parallel=2, extra=""):
        text = SMALL_RECIPE.format(
            algorithms=list(algorithms), seeds=list(seeds), steps=steps, parallel=parallel
        ).replace("'", '"')
        path = tmp_path / "small.toml"
        path.write_text(textwrap.dedent(text) + extra)
        return path

    return make


def run_cli(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO,
    )


def seed_stages(previous: Path, out_dir: Path) -> None:
    """Start ``out_dir`` with the stages (SFT, reward model, tokenizer) of an earlier run of the same data and
    models, when that run got as far as writing them: its cells then skip ~8 s of stage training. For tests
    whose point is the cells, not the stages; each test still passes alone (it then trains them)."""
    out_dir.mkdir(parents=True)
    if (previous / "stages.json").is_file():
        shutil.copytree(previous / "artifacts", out_dir / "artifacts")
        shutil.copy(previous / "stages.json", out_dir / "stages.json")
