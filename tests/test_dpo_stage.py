"""Issue 15 item 5: an optional DPO stage after SFT (``dpo = true`` in a ``[[models]]`` row, settings in ``[dpo]``).

- a SFT -> DPO -> RLOO row runs; the DPO stage ran (metrics, artifact); the RL policy and its reference start
  from the DPO weights, not the SFT ones; a rerun reuses the stage (stage metrics say cached, mtime unchanged);
- DPO moves the policy toward the chosen answers (implicit reward accuracy > 0.5, margin > 0 on train pairs),
  checked against a plain per-pair recomputation of the log-ratios;
- bad input: ``dpo = true`` on a data set without preference pairs, bad ``[dpo]`` values: one line, exit 2.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_cli
from rlhfkit import plugins
from rlhfkit.artifacts import DONE_MARKER, artifact_dirs, is_complete
from rlhfkit.recipe import RecipeError, load_recipe, parse_recipe

RECIPE = """
name = "dpo"
[data]
name = "synthetic"
num_sft = 300
num_pairs = 300
num_eval_pairs = 100
num_eval_prompts = 16
[[models]]
name = "llama-tiny"
policy = "llama:tiny"
dpo = true
[grid]
algorithms = ["rloo"]
memory = ["full"]
seeds = [1]
[sft]
epochs = 1
[reward_model]
epochs = 1
[dpo]
epochs = 2
[rl]
steps = 2
batch_size = 8
response_length = 8
eval_every = 2
eval_batch_size = 16
[algorithms.rloo]
k = 2
[run]
threads_per_cell = 1
"""


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset()
    yield
    plugins.reset()


def _weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _same(state: dict, weights: dict) -> bool:
    import torch

    return all(torch.equal(state[name].detach().cpu(), tensor) for name, tensor in weights.items() if name in state)


@pytest.mark.slow
def test_sft_dpo_rloo_row_runs_starts_from_dpo_and_is_cached(tmp_path):
    from rlhfkit.cellspec.build import build_cell

    recipe_path = tmp_path / "dpo.toml"
    recipe_path.write_text(textwrap.dedent(RECIPE))
    out_dir = tmp_path / "out"
    first = run_cli("run", recipe_path, "--output", out_dir)
    assert first.returncode == 0, first.stderr[-3000:]

    # the DPO stage ran: its metrics, its artifact
    stages = json.loads((out_dir / "stages.json").read_text())["llama-tiny"]
    assert stages["status"] == "ok"
    assert stages["stages"] == {"tokenizer": "trained", "sft": "trained", "dpo": "trained", "reward_model": "trained"}
    assert stages["dpo/train_reward_accuracy"] > 0.5 and stages["dpo/train_margin"] > 0, stages
    assert stages["dpo/eval_pairs"] == 100 and stages["dpo/train_pairs"] == 300 and stages["dpo/steps"] == 20
    recipe = load_recipe(out_dir / "recipe.toml")
    dirs = artifact_dirs(recipe, recipe.models["llama-tiny"], out_dir / "artifacts")
    assert dirs.dpo is not None and is_complete(dirs.dpo)
    marker = json.loads((dirs.dpo / DONE_MARKER).read_text())
    assert marker["kind"] == "dpo" and marker["source"] == str(dirs.sft)
    cell_dir = next((out_dir / "cells").iterdir())
    result = json.loads((cell_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["artifacts"]["dpo"] == str(dirs.dpo)
    assert "DPO stage (the RL start and reference policy of its row)" in (out_dir / "report.md").read_text()

    # the RL policy and its reference start from the DPO weights, not the SFT ones
    dpo_weights, sft_weights = _weights(dirs.dpo), _weights(dirs.sft)
    assert not _same(dpo_weights, sft_weights)
    cell = recipe.cells()[0]
    built = build_cell({"recipe": str(out_dir / "recipe.toml"), "cell": cell.as_dict(),
                        "artifacts_root": str(out_dir / "artifacts"), "threads": 1})
    for model in (built.ctx.policy, built.ctx.reference):
        state = model.state_dict()
        assert _same(state, dpo_weights) and not _same(state, sft_weights)

    # a rerun into the same directory keeps the stages and the cell
    mtimes = {p: p.stat().st_mtime_ns for p in (dirs.dpo, dirs.dpo / "model.safetensors", dirs.sft / "model.safetensors")}
    second = run_cli("run", recipe_path, "--output", out_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    # the stage process itself, run again (stages.json lost), reuses the DPO artifact and says so
    (out_dir / "stages.json").unlink()
    third = run_cli("run", recipe_path, "--output", out_dir)
    assert third.returncode == 0, third.stderr[-3000:]
    again = json.loads((out_dir / "stages.json").read_text())["llama-tiny"]
    assert again["stages"] == {"tokenizer": "cached", "sft": "cached", "dpo": "cached", "reward_model": "cached"}
    assert again["dpo/train_reward_accuracy"] == stages["dpo/train_reward_accuracy"]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_dpo_moves_the_policy_toward_chosen(tmp_path):
    """train_dpo on a tiny model: the implicit reward ranks chosen above rejected on most training pairs, and the
    stage's log-probabilities match a plain per-sequence recomputation."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest on a loaded machine (53 s -> 6 s here)
    try:
        _check_dpo_moves(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check_dpo_moves(tmp_path):
    import copy

    import torch
    from transformers import LlamaForCausalLM, set_seed

    from rlhfkit.stages.dpo import DPOStageConfig, answer_logps, encode_pairs, train_dpo
    from rlhfkit.stages.pipeline import build_task
    from rlhfkit.testing import tiny_llama_config
    from rlhfkit.tokenizer import train_tokenizer

    recipe = parse_recipe({"data": {"name": "synthetic", "num_sft": 50, "num_pairs": 128, "num_eval_pairs": 32},
                           "models": [{"name": "m", "policy": "llama:tiny"}]})
    task = build_task(recipe)
    tokenizer = train_tokenizer(task.tokenizer_corpus(), "word", 256)
    set_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    reference = copy.deepcopy(model)
    config = DPOStageConfig(epochs=2, batch_size=16, learning_rate=2e-3)
    metrics = train_dpo(model, reference, tokenizer, task, config, tmp_path / "dpo")
    assert metrics["dpo/train_reward_accuracy"] > 0.5 and metrics["dpo/train_margin"] > 0, metrics
    assert metrics["dpo/steps"] == 16 and metrics["dpo/train_pairs"] == 128 and metrics["dpo/dropped_pairs"] == 0
    assert (tmp_path / "dpo" / "model.safetensors").is_file()

    # the margin again, computed naively: one sequence at a time, sum of the answer tokens' log-probs
    encoded, _ = encode_pairs(tokenizer, task.pairs, config.max_length)

    def logp(m, prompt_ids, answer_ids):
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.no_grad():
            logits = m(input_ids=ids).logits[0, :-1].float()
        token = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
        return float(token[len(prompt_ids) - 1 :].sum())

    margins = []
    for e in encoded[:16]:
        chosen = logp(model, e["prompt_ids"], e["chosen_ids"]) - logp(reference, e["prompt_ids"], e["chosen_ids"])
        rejected = logp(model, e["prompt_ids"], e["rejected_ids"]) - logp(reference, e["prompt_ids"], e["rejected_ids"])
        margins.append(config.beta * (chosen - rejected))
    batched = answer_logps(model, encoded[:16], tokenizer.pad_token_id) - answer_logps(reference, encoded[:16],
                                                                                       tokenizer.pad_token_id)
    assert torch.allclose(config.beta * (batched[:, 0] - batched[:, 1]), torch.tensor(margins), atol=1e-4)
    assert sum(m > 0 for m in margins) > len(margins) / 2


@pytest.mark.parametrize("table, message", [
    ("beta = 0.0", "dpo: beta must be > 0"),
    ("learning_rate = -1.0", "dpo.learning_rate: -1.0 is out of range; allowed: learning_rate > 0"),
    ("epochs = 0", "dpo: epochs must be >= 1"),
    ('lr_scheduler = "step"', "dpo: lr_scheduler must be one of"),
    ("betta = 0.2", "dpo: unknown key 'betta'; allowed: "),
    ("seed = -1", "dpo.seed: -1 is out of range"),
])
def test_bad_dpo_values_are_one_line_exit_2(tmp_path, table, message):
    path = tmp_path / "r.toml"
    path.write_text(f'[[models]]\nname = "m"\npolicy = "llama:tiny"\ndpo = true\n[dpo]\n{table}\n')
    out = run_cli("validate", path)
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_dpo_row_flag_must_be_a_bool():
    with pytest.raises(RecipeError, match=r"models\[0\]\.dpo: expected true or false, got 'yes'"):
        parse_recipe({"models": [{"name": "m", "policy": "llama:tiny", "dpo": "yes"}]})


@dataclass
class NoPairsOptions:
    """A data set with prompts and demonstrations but no preference pairs."""


def _no_pairs_build(options, seed):
    from rlhfkit.data import PreferenceTask

    prompts = ["say something :", "say more :"]
    return PreferenceTask(name="no_pairs", sft=[{"prompt": p, "completion": " ok"} for p in prompts], pairs=[],
                          eval_pairs=[], rl_prompts=prompts, eval_prompts=prompts, tokenizer_kind="word")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_dpo_without_preference_pairs_is_one_line_exit_2(tmp_path, capsys, command):
    from rlhfkit.cli import main
    from rlhfkit.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def register_datasets(self, register):
            from rlhfkit.registry import DatasetSpec

            register(DatasetSpec(name="no_pairs", options_class=NoPairsOptions, build=_no_pairs_build))

    plugins.register_plugin(Plugin(), name="no-pairs-test")
    path = tmp_path / "r.toml"
    text = '[data]\nname = "no_pairs"\n[[models]]\nname = "m"\npolicy = "llama:tiny"\n{dpo}'
    path.write_text(text.format(dpo="dpo = true\n"))
    out_dir = tmp_path / "out"
    argv = [command, str(path)] + (["--output", str(out_dir)] if command == "run" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models[0].dpo: true needs preference pairs, but data set 'no_pairs' has none" in err[0]
    assert not out_dir.exists()
    path.write_text(text.format(dpo=""))  # the same data set without DPO passes this check
    assert main(["validate", str(path)]) == 0


def test_a_dpo_table_without_a_dpo_row_is_warned_about():
    unused = parse_recipe({"models": [{"name": "m", "policy": "llama:tiny"}], "dpo": {"beta": 0.2}})
    assert "[dpo] is set but no [[models]] row has dpo = true: no DPO stage runs" in unused.warnings()
    used = parse_recipe({"models": [{"name": "m", "policy": "llama:tiny", "dpo": True}], "dpo": {"beta": 0.2}})
    assert used.dpo.beta == 0.2 and not any("[dpo]" in w for w in used.warnings())
    plain = parse_recipe({"models": [{"name": "m", "policy": "llama:tiny"}]})
    assert not any("[dpo]" in w for w in plain.warnings())


def test_dpo_artifact_key_covers_its_settings_and_the_sft_stage(tmp_path):
    """The DPO artifact's hash changes with [dpo] (seed included), the SFT stage and the data; the other stages'
    keys do not change when a row turns DPO on (they are shared with the row without it)."""
    def dirs(dpo=True, dpo_table=None, sft=None, data_seed=None):
        raw = {"models": [{"name": "m", "policy": "llama:tiny", "dpo": dpo}], "dpo": dpo_table or {}, "sft": sft or {}}
        recipe = parse_recipe(raw)
        return artifact_dirs(recipe, recipe.models["m"], tmp_path, data_seed)

    base, off = dirs(), dirs(dpo=False)
    assert off.dpo is None and off.policy_start == off.sft and "dpo" not in off.as_dict()
    assert base.policy_start == base.dpo and base.dpo.name.startswith("dpo-")
    assert (base.tokenizer, base.sft, base.reward_model) == (off.tokenizer, off.sft, off.reward_model)
    others = [dirs(dpo_table={"beta": 0.2}), dirs(dpo_table={"seed": 1}), dirs(sft={"epochs": 2}), dirs(data_seed=7)]
    assert len({base.dpo, *(d.dpo for d in others)}) == 5
    assert dirs(dpo_table={"beta": 0.2}).sft == base.sft
