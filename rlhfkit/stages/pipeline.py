"""The stage process: tokenizer, SFT policy, DPO policy (rows with ``dpo = true``) and reward model for one
``[[models]]`` row.

Run as ``python -m rlhfkit.stages.pipeline SPEC.json`` by the runner, so that torch and TRL live in a
child process and a crash here is reported, not fatal to the grid.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rlhfkit.artifacts import artifact_dirs, is_complete, publish, read_marker, remove_stale_scratch, reusable, staging_dir
from rlhfkit.chat import chat_task
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


PAD_TOKEN = "<|rlhfkit_pad|>"


def checkpoint_tokenizer(spec):
    """A checkpoint's own tokenizer, with a pad token added when it ships none (:func:`add_pad_token`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.checkpoint, trust_remote_code=spec.trust_remote_code)
    add_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    return tokenizer


def add_pad_token(tokenizer) -> None:
    """Models that ship no pad token get a new one (never EOS: the reward model reads the last non-pad token,
    and EOS must stay readable).  The new token's id is ``len(vocabulary)``: a model whose embedding matrix
    has no spare row for it gets one more row (``resize_token_embeddings``, initialised by transformers to the
    mean of the others; for a causal LM the LM head grows too, so the new token has a logit like an average
    token).  Pad positions are masked everywhere, so the row's value matters only if the policy samples it."""
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})


def ensure_tokenizer(entry, task, out: Path, notes: list | None = None, stages: dict | None = None):
    from rlhfkit.models import parse_model_spec
    from rlhfkit.tokenizer import train_tokenizer

    spec = parse_model_spec(entry.policy, entry.trust_remote_code)
    if stages is not None:  # a checkpoint's tokenizer is given (a pad token may be added), a preset's trained
        stages["tokenizer"] = "trained" if spec.is_preset else "given"
    if reusable(out, notes):
        if stages is not None and spec.is_preset:
            stages["tokenizer"] = "cached"
        return load_tokenizer(out)
    tmp = staging_dir(out)
    if spec.is_preset:
        tokenizer = train_tokenizer(task.tokenizer_corpus(), task.tokenizer_kind, task.tokenizer_vocab_size)
    else:
        tokenizer = checkpoint_tokenizer(spec)
    tokenizer.save_pretrained(str(tmp))
    publish(tmp, out, {"kind": "tokenizer", "source": entry.policy})
    return load_tokenizer(out)


def _link_checkpoint(source: Path, tmp: Path) -> None:
    """The artifact of a given checkpoint: a link to each of its files (weights are not copied; the done
    marker records their sizes and hashes, so a checkpoint changed in place reads as damaged and is relinked)."""
    import os

    source = source.resolve()
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        target = tmp / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(file, target)


def ensure_given_sft(entry, tokenizer, out: Path, notes: list | None = None) -> dict:
    """``train_sft = false``: the policy checkpoint used as is.  Only when the tokenizer stage had to add a pad
    token and the embedding matrix has no spare row is a copy written, with that one row added
    (:func:`add_pad_token`); otherwise the artifact links the checkpoint's files."""
    from rlhfkit.given import checkpoint_dir
    from rlhfkit.modelspec import read_checkpoint_config

    if reusable(out, notes):
        return read_marker(out)["metrics"]
    source = checkpoint_dir(entry.policy, entry.trust_remote_code)
    rows = int(read_checkpoint_config(str(source)).get("vocab_size") or 0)
    tmp = staging_dir(out)
    metrics = {"sft/given": str(source.resolve()), "sft/embedding_rows": rows}
    if rows and rows < len(tokenizer):
        from rlhfkit.models import build_causal_lm, parse_model_spec

        model = build_causal_lm(parse_model_spec(entry.policy, entry.trust_remote_code), tokenizer)
        model.resize_token_embeddings(len(tokenizer))
        model.save_pretrained(str(tmp))
        metrics["sft/embedding_rows_added"] = len(tokenizer) - rows
    else:
        _link_checkpoint(source, tmp)
    publish(tmp, out, {"kind": "sft", "source": entry.policy, "given": True, "metrics": metrics})
    return metrics


def ensure_given_reward_model(entry, out: Path, notes: list | None = None) -> dict:
    """``train_reward = false``: the reward checkpoint (one label, checked before any stage ran) linked as is,
    with its own tokenizer: never retrained, never resized."""
    from rlhfkit.given import checkpoint_dir

    if reusable(out, notes):
        return read_marker(out)["metrics"]
    source = checkpoint_dir(entry.reward, entry.trust_remote_code)
    tmp = staging_dir(out)
    _link_checkpoint(source, tmp)
    metrics = {"reward/given": str(source.resolve())}
    publish(tmp, out, {"kind": "reward_model", "source": entry.reward, "given": True, "metrics": metrics})
    return metrics


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


def _sft_stage(recipe, entry, task, tokenizer, dirs, notes, stages) -> dict:
    if not entry.train_sft:
        stages["sft"] = "given"
        return ensure_given_sft(entry, tokenizer, dirs.sft, notes)
    stages["sft"] = "cached" if is_complete(dirs.sft) else "trained"
    return ensure_sft(recipe, entry, task, tokenizer, dirs.sft, notes)


def _reward_stage(recipe, entry, task, tokenizer, dirs, notes, stages) -> dict:
    """The reward model: given as is, trained on its own tokenizer (a checkpoint of another model), or trained
    on the policy's; and which tokens it reads (``reward/tokenizer``, for the report)."""
    if not entry.train_reward:
        stages["reward_model"] = "given"
        metrics = ensure_given_reward_model(entry, dirs.reward_model, notes)
    else:
        stages["reward_model"] = "cached" if is_complete(dirs.reward_model) else "trained"
        reward_tokenizer = tokenizer
        if dirs.reward_tokenizer is not None:  # trained from a checkpoint, on that checkpoint's own tokenizer
            from rlhfkit.models import parse_model_spec

            reward_tokenizer = checkpoint_tokenizer(parse_model_spec(entry.reward, entry.trust_remote_code))
        metrics = ensure_reward_model(recipe, entry, task, reward_tokenizer, dirs.reward_model, notes)
    return {**metrics, "reward/tokenizer": reward_tokenizer_kind(dirs, tokenizer)}


def reward_tokenizer_kind(dirs, tokenizer) -> str:
    """``policy``: the reward model was built on the policy's tokenizer; ``same``: its own tokenizer has the
    policy's vocabulary (ids are read as they are); ``own``: another vocabulary (completions are decoded and
    re-encoded for it, and PPO's critic starts from the SFT policy)."""
    if dirs.reward_tokenizer is None:
        return "policy"
    from rlhfkit.engine.reward_tokens import same_vocabulary

    return "same" if same_vocabulary(tokenizer, load_tokenizer(dirs.reward_tokenizer)) else "own"


def _stratum_seeds(recipe, data_seed: int) -> None:
    """Another stratum than ``[run] data_seed``: its SFT and reward-model seeds are offset by the data seeds'
    difference, so its models differ in initialisation and data order as well as in data (a reward-model "seed",
    not only a resample); the ``[run] data_seed`` stratum keeps the recipe's seeds (the models of a plain grid)."""
    import dataclasses

    offset = data_seed - recipe.run.data_seed
    recipe.sft = dataclasses.replace(recipe.sft, seed=(recipe.sft.seed + offset) % 2**31)
    recipe.reward_model = dataclasses.replace(recipe.reward_model, seed=(recipe.reward_model.seed + offset) % 2**31)
    if recipe.dpo is not None:
        recipe.dpo = dataclasses.replace(recipe.dpo, seed=(recipe.dpo.seed + offset) % 2**31)


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
    stages: dict[str, str] = {}  # stage -> "trained" | "given" | "cached" (the report's per-row stages)
    tokenizer = ensure_tokenizer(entry, task, dirs.tokenizer, notes, stages)
    task = chat_task(task, tokenizer, recipe.chat_template)  # unchanged without a template (presets)
    metrics = {}
    metrics.update(_sft_stage(recipe, entry, task, tokenizer, dirs, notes, stages))
    if dirs.dpo is not None:
        from rlhfkit.stages.dpo import ensure_dpo

        metrics.update(ensure_dpo(recipe, task, tokenizer, dirs, notes, stages, entry.trust_remote_code))
    from rlhfkit.rewards import has_reward_model

    if has_reward_model(entry):  # reward = "fn:NAME": no reward model to train
        metrics.update(_reward_stage(recipe, entry, task, tokenizer, dirs, notes, stages))
    metrics["stages"] = stages
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
