"""Architecture numbers of a recipe row's models, and the model set of a cell (recipe + cell -> ModelSet).

Both the cell process and the planner call :func:`cell_model_set`; neither asks the other for model rules.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.cellspec.modelset import ModelSet, derive_model_set


def _model_ref(recipe, model_name: str, which: str) -> str:
    entry = recipe.models[model_name]
    return entry.policy if which == "policy" else entry.reward


def _artifact_config(recipe, model_name: str, which: str, artifacts_root) -> dict | None:
    """The config.json the stages wrote (exact vocabulary), when they have run."""
    if artifacts_root is None:
        return None
    from rlhfkit.artifacts import artifact_dirs

    dirs = artifact_dirs(recipe, recipe.models[model_name], Path(artifacts_root))
    path = Path(dirs.sft if which == "policy" else dirs.reward_model) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def cell_architecture(recipe, model_name: str, which: str = "policy", artifacts_root=None) -> dict:
    """Architecture numbers of a recipe row's policy or reward model (see ``ModelAdapter.architecture``)."""
    from rlhfkit.models import adapter_for, parse_model_spec

    entry = recipe.models[model_name]
    spec = parse_model_spec(_model_ref(recipe, model_name, which), entry.trust_remote_code)
    adapter = adapter_for(spec)
    written = _artifact_config(recipe, model_name, which, artifacts_root)
    if written is not None:
        return adapter.architecture(written)
    if getattr(spec, "is_reference", False):
        # Published config numbers: computed straight from the dict (no transformers import needed).
        return adapter.architecture_numbers(dict(adapter.known_checkpoints[spec.reference]))
    if spec.is_preset:
        vocab = task_info(recipe)["vocab_size"]
        return adapter.architecture(adapter.preset_config(spec.preset, vocab_size=vocab))
    return adapter.architecture(spec)


_TASK_CACHE: dict = {}


def task_info(recipe, artifacts_root=None) -> dict:
    """Vocabulary size (tiny presets) and the longest prompt in tokens."""
    key = (id(recipe), str(artifacts_root))
    if key in _TASK_CACHE:
        return _TASK_CACHE[key]
    from rlhfkit.stages.pipeline import build_task

    task = build_task(recipe)
    prompts = list(task.rl_prompts) + list(task.eval_prompts)
    info = {"vocab_size": task.tokenizer_vocab_size}
    tokenizer = None
    if artifacts_root is not None:
        from rlhfkit.artifacts import artifact_dirs

        entry = next(iter(recipe.models.values()))
        path = artifact_dirs(recipe, entry, Path(artifacts_root)).tokenizer
        if Path(path).is_dir():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer is not None:
        info["prompt_tokens"] = max(len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts)
        info["vocab_size"] = len(tokenizer)
    elif task.tokenizer_kind == "word":
        info["prompt_tokens"] = max(len(p.split()) for p in prompts)
    else:
        info["prompt_tokens"] = max(int(len(p) / 3.5) + 1 for p in prompts)
    _TASK_CACHE[key] = info
    return info



def cell_model_set(recipe, cell, cuda: bool, artifacts_root=None) -> ModelSet:
    """The model set of ``cell``: its memory strategy composed, the algorithm's critic rule, the precision."""
    from rlhfkit.memory import build_memory_plan, strategy_parts
    from rlhfkit.plugins import get_registry

    plan = build_memory_plan(cell.memory)
    from rlhfkit.rewards import has_reward_model

    algorithm = get_registry().get("algorithm", cell.algorithm)
    arch = cell_architecture(recipe, cell.model, "policy", artifacts_root) if plan.zero_stage else None
    return derive_model_set(plan, algorithm, recipe.run.precision, cuda, arch, strategy_parts(cell.memory),
                            has_reward_model=has_reward_model(recipe.models[cell.model]))


__all__ = ["cell_architecture", "cell_model_set", "task_info"]
