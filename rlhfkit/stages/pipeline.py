"""The stage process: tokenizer, SFT policy and reward model for one ``[[models]]`` row.

Run as ``python -m rlhfkit.stages.pipeline SPEC.json`` by the runner, so that torch and TRL live in a
child process and a crash here is reported, not fatal to the grid.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rlhfkit.artifacts import artifact_dirs, publish, read_marker, remove_stale_scratch, reusable, staging_dir
from rlhfkit.recipe import load_recipe


def build_task(recipe, data_seed: int | None = None):
    """The data set drawn with ``data_seed`` (a stratum's; None = ``[run] data_seed``)."""
    from rlhfkit.plugins import get_registry
    from rlhfkit.registry import resolve

    spec = get_registry().get("dataset", recipe.data_name)
    return resolve(spec.build)(recipe.data_options, recipe.run.data_seed if data_seed is None else data_seed)


def load_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def ensure_tokenizer(entry, task, out: Path, notes: list | None = None):
    from rlhfkit.models import parse_model_spec
    from rlhfkit.tokenizer import train_tokenizer

    if reusable(out, notes):
        return load_tokenizer(out)
    spec = parse_model_spec(entry.policy, entry.trust_remote_code)
    tmp = staging_dir(out)
    if spec.is_preset:
        tokenizer = train_tokenizer(task.tokenizer_corpus(), task.tokenizer_kind, task.tokenizer_vocab_size)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec.checkpoint, trust_remote_code=spec.trust_remote_code)
        if tokenizer.pad_token is None:
            # Models that ship no pad token get a new one (never EOS: the reward model reads the last
            # non-pad token, and EOS must stay readable).
            tokenizer.add_special_tokens({"pad_token": "<|rlhfkit_pad|>"})
        tokenizer.padding_side = "left"
    tokenizer.save_pretrained(str(tmp))
    publish(tmp, out, {"kind": "tokenizer", "source": entry.policy})
    return load_tokenizer(out)


def ensure_sft(recipe, entry, task, tokenizer, out: Path, notes: list | None = None) -> dict:
    from rlhfkit.models import build_causal_lm, parse_model_spec
    from rlhfkit.stages.sft import train_sft

    if reusable(out, notes):
        return read_marker(out)["metrics"]
    from transformers import set_seed

    spec = parse_model_spec(entry.policy, entry.trust_remote_code)
    set_seed(recipe.sft.seed)  # a preset's random initialisation is part of the stage's result
    model = build_causal_lm(spec, tokenizer)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    tmp = staging_dir(out)
    metrics = train_sft(model, tokenizer, task, recipe.sft, tmp)
    publish(tmp, out, {"kind": "sft", "source": entry.policy, "metrics": metrics})
    return metrics


def ensure_reward_model(recipe, entry, task, tokenizer, out: Path, notes: list | None = None) -> dict:
    from rlhfkit.models import build_sequence_classifier, parse_model_spec
    from rlhfkit.stages.reward import train_reward_model

    if reusable(out, notes):
        return read_marker(out)["metrics"]
    from transformers import set_seed

    spec = parse_model_spec(entry.reward, entry.trust_remote_code)
    set_seed(recipe.reward_model.seed)
    model = build_sequence_classifier(spec, tokenizer)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    tmp = staging_dir(out)
    metrics = train_reward_model(model, tokenizer, task, recipe.reward_model, tmp)
    publish(tmp, out, {"kind": "reward_model", "source": entry.reward, "metrics": metrics})
    return metrics


def _stratum_seeds(recipe, data_seed: int) -> None:
    """Another stratum than ``[run] data_seed``: its SFT and reward-model seeds are offset by the data seeds'
    difference, so its models differ in initialisation and data order as well as in data (a reward-model "seed",
    not only a resample); the ``[run] data_seed`` stratum keeps the recipe's seeds (the models of a plain grid)."""
    import dataclasses

    offset = data_seed - recipe.run.data_seed
    recipe.sft = dataclasses.replace(recipe.sft, seed=(recipe.sft.seed + offset) % 2**31)
    recipe.reward_model = dataclasses.replace(recipe.reward_model, seed=(recipe.reward_model.seed + offset) % 2**31)


def run_stages(spec: dict) -> dict:
    """Build every missing artifact of one model row and data seed (``spec["data_seed"]``, None = the
    recipe's); return the stage metrics."""
    import torch

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    recipe = load_recipe(spec["recipe"])
    entry = recipe.models[spec["model"]]
    root = Path(spec["artifacts_root"])
    data_seed = spec.get("data_seed")
    dirs = artifact_dirs(recipe, entry, root, data_seed)
    if data_seed is not None:
        _stratum_seeds(recipe, data_seed)
    # A stage killed earlier (timeout, SIGKILL) left its staging directory; its process is gone.
    remove_stale_scratch(root)
    task = build_task(recipe, data_seed)
    started = time.perf_counter()
    notes: list[str] = []
    tokenizer = ensure_tokenizer(entry, task, dirs.tokenizer, notes)
    metrics = {}
    metrics.update(ensure_sft(recipe, entry, task, tokenizer, dirs.sft, notes))
    from rlhfkit.rewards import has_reward_model

    if has_reward_model(entry):  # reward = "fn:NAME": no reward model to train
        metrics.update(ensure_reward_model(recipe, entry, task, tokenizer, dirs.reward_model, notes))
    metrics["stages/seconds"] = time.perf_counter() - started
    metrics["stages/rebuilt"] = notes
    metrics["data/stats"] = task.stats
    return metrics


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    metrics = run_stages(spec)
    out = Path(spec["result"])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
