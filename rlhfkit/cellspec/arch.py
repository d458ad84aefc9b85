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


# (id(recipe), artifacts root) -> (recipe, info). The entry holds the recipe itself: an id is reused once its
# object is freed, and a cache keyed on the id alone gave a later recipe an earlier one's vocabulary (seen in
# the test suite: a planned AdamW step 32768 bytes off after another file's recipes in the same process).
_TASK_CACHE: dict = {}


def task_info(recipe, artifacts_root=None) -> dict:
    """Vocabulary size (tiny presets) and the longest prompt in tokens."""
    key = (id(recipe), str(artifacts_root))
    cached = _TASK_CACHE.get(key)
    if cached is not None and cached[0] is recipe:
        return cached[1]
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
        from rlhfkit.chat import chat_task

        chatted = chat_task(task, tokenizer, recipe.chat_template)  # the prompts the cells see
        prompts = list(chatted.rl_prompts) + list(chatted.eval_prompts)
        info["prompt_tokens"] = max(len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts)
        info["vocab_size"] = len(tokenizer)
    elif task.tokenizer_kind == "word":
        info["prompt_tokens"] = max(len(p.split()) for p in prompts)
    else:
        info["prompt_tokens"] = max(int(len(p) / 3.5) + 1 for p in prompts)
    _TASK_CACHE[key] = (recipe, info)
    return info



_READS: dict = {}


def reward_reads_policy_tokens(recipe, model_name: str, artifacts_root=None) -> bool:
    """Whether the row's reward model reads the policy's token ids (the critic's start depends on it).

    True when it is built on the policy's tokenizer (``rlhfkit.given.reward_has_own_tokenizer`` false); False
    without a reward model (``fn:``) or when its own tokenizer's vocabulary differs from the policy's.  The
    vocabularies compared are the stage artifacts' when they exist, else the checkpoints' own with the pad token
    the stages would add, so the planner before a run and the cell after the stages decide alike; a preset
    policy (its tokenizer is trained on the data) never has a checkpoint's vocabulary.
    """
    from rlhfkit.given import checkpoint_dir, reward_has_own_tokenizer
    from rlhfkit.rewards import has_reward_model

    entry = recipe.models[model_name]
    if not has_reward_model(entry):
        return False
    if not reward_has_own_tokenizer(entry):
        return True
    policy_dir = checkpoint_dir(entry.policy, entry.trust_remote_code)
    reward_dir = checkpoint_dir(entry.reward, entry.trust_remote_code)
    if policy_dir is None or reward_dir is None:
        return False  # a preset policy, or a hub id the planner cannot read offline: counted as different
    built = None
    if artifacts_root is not None:
        from rlhfkit.artifacts import DONE_MARKER, artifact_dirs

        dirs = artifact_dirs(recipe, entry, Path(artifacts_root))
        if (dirs.tokenizer / DONE_MARKER).is_file() and (dirs.reward_model / DONE_MARKER).is_file():
            built = (dirs.tokenizer, dirs.reward_tokenizer)
    key = (built, str(policy_dir), str(reward_dir), entry.train_reward)
    if key not in _READS:
        _READS[key] = _same_vocabulary(built, policy_dir, reward_dir, entry)
    return _READS[key]


def _same_vocabulary(built, policy_dir, reward_dir, entry) -> bool:
    from transformers import AutoTokenizer

    from rlhfkit.engine.reward_tokens import same_vocabulary
    from rlhfkit.stages.pipeline import add_pad_token

    if built is not None:
        return same_vocabulary(*(AutoTokenizer.from_pretrained(str(p)) for p in built))
    remote = entry.trust_remote_code
    policy = AutoTokenizer.from_pretrained(str(policy_dir), trust_remote_code=remote)
    reward = AutoTokenizer.from_pretrained(str(reward_dir), trust_remote_code=remote)
    add_pad_token(policy)
    if entry.train_reward:  # the reward stage trains it with a pad token; a given one is read as it is
        add_pad_token(reward)
    return same_vocabulary(policy, reward)


def cell_model_set(recipe, cell, cuda: bool, artifacts_root=None) -> ModelSet:
    """The model set of ``cell``: its memory strategy composed, the algorithm's critic rule, the precision."""
    from rlhfkit.memory import build_memory_plan, strategy_parts
    from rlhfkit.plugins import get_registry

    plan = build_memory_plan(cell.memory)
    from rlhfkit.rewards import has_reward_model

    algorithm = get_registry().get("algorithm", cell.algorithm)
    arch = cell_architecture(recipe, cell.model, "policy", artifacts_root) if plan.zero_stage else None
    entry = recipe.models[cell.model]
    has_rm = has_reward_model(entry)
    reads = reward_reads_policy_tokens(recipe, cell.model, artifacts_root) if has_rm and algorithm.needs_value_model else True
    return derive_model_set(plan, algorithm, recipe.run.precision, cuda, arch, strategy_parts(cell.memory),
                            has_reward_model=has_rm, reward_reads_policy_tokens=reads)


__all__ = ["cell_architecture", "cell_model_set", "reward_reads_policy_tokens", "task_info"]
