"""Checks that need more than the recipe's text, run by ``rlhfkit validate`` and ``rlhfkit run`` before anything
is written: every lazy reference resolves (:mod:`rlhfkit.references`), the data files hold usable rows, and each
memory strategy accepts the models it will hold on this machine, and a checkpoint policy's chat template
renders the data's first prompts.

Each check is the plugin's own, found through the registry (no built-in is named here):
- a data set whose ``build`` module defines ``check(options)`` has it called (it opens the file and reads until
  it has seen enough usable rows, so a good file costs a few rows);
- a memory-strategy part with a ``check_recipe(recipe)`` method has it called (e.g. ``qlora`` on a CPU whose
  bitsandbytes cannot repack a layer of the model);
- a reward function that needs the task's per-prompt metadata or gold reward is checked against the built task.
Each raises ``ValueError`` with one line; the CLI prints it and exits 2.
"""

from __future__ import annotations

import importlib


class PreflightInputs:
    """What several checks read, built once per preflight and only when a check needs it: the task (the recipe's
    data draw) and each checkpoint's tokenizer (a checkpoint row's tokenizer was loaded by three checks, and the
    task built by four, before)."""

    def __init__(self, recipe):
        self.recipe = recipe
        self._task = None
        self._tokenizers: dict = {}

    @property
    def task(self):
        if self._task is None:
            from rlhfkit.stages.pipeline import build_task

            self._task = build_task(self.recipe)
        return self._task

    def sample_prompts(self) -> list[str]:
        """The first ``CHAT_SAMPLE`` training and evaluation prompts of the task, each once."""
        task = self.task
        return list(dict.fromkeys([p["prompt"] for p in task.pairs[:CHAT_SAMPLE]] + task.eval_prompts[:CHAT_SAMPLE]))

    def tokenizer(self, path, trust_remote_code: bool):
        key = (str(path), trust_remote_code)
        if key not in self._tokenizers:
            from transformers import AutoTokenizer

            self._tokenizers[key] = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        return self._tokenizers[key]


def check_dataset(name: str, options, registry=None) -> dict:
    """The data set's own ``check(options)`` (a function beside its registered ``build``): the counts it read,
    ``{}`` when it has none (``synthetic`` has no file; ``hub`` would need the network), or a one-line
    ``ValueError`` naming the file and the reasons counted (empty file, no usable rows, unreadable file)."""
    if registry is None:
        from rlhfkit.plugins import get_registry

        registry = get_registry()
    build = registry.get("dataset", name).build
    module_name = build.split(":")[0] if isinstance(build, str) else getattr(build, "__module__", None)
    check = getattr(importlib.import_module(module_name), "check", None) if module_name else None
    return check(options) if callable(check) else {}


def check_dpo_pairs(recipe, stats: dict, inputs: PreflightInputs | None = None) -> None:
    """A row with ``dpo = true`` needs preference pairs.  A data file's check has already counted usable pairs
    (``clean_pairs``); a data set without a file check (a built-in task, a plugin's) is built once to count them."""
    used = set(recipe.grid.models or recipe.models)
    rows = [i for i, (name, entry) in enumerate(recipe.models.items()) if name in used and entry.dpo]
    if not rows or stats.get("clean_pairs"):
        return
    if not (inputs or PreflightInputs(recipe)).task.pairs:
        raise ValueError(
            f"models[{rows[0]}].dpo: true needs preference pairs, but data set {recipe.data_name!r} has none; set "
            f"dpo = false, or use a data set with prompt/chosen/rejected pairs (synthetic, hh_rlhf, preference_jsonl)"
        )


def _ships_chat_template(path) -> bool:
    """Whether a checkpoint directory's tokenizer carries a chat template (read from its files, no import)."""
    import json
    from pathlib import Path

    path = Path(path)
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((path / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


CHAT_SAMPLE = 64
"""Prompts of the task formatted here per checkpoint policy with a template (the stage formats them all)."""


DPO_SAMPLE = 2048
"""Training pairs tokenized here per DPO row with a checkpoint policy (all of them up to this many)."""


def check_dpo_lengths(recipe, inputs: PreflightInputs | None = None) -> None:
    """A ``dpo = true`` row whose policy is a checkpoint: at least one of the task's training pairs (the first
    ``DPO_SAMPLE``, after ``max_pairs``) keeps an answer token within ``[dpo] max_length``, tokenized as the stage
    does (its chat template included), so a too small ``max_length`` is one line before anything is written,
    not a failed stage.  A preset's tokenizer is trained by the stage, so its rows are checked there."""
    from rlhfkit.given import checkpoint_dir

    inputs = inputs or PreflightInputs(recipe)
    used = set(recipe.grid.models or recipe.models)
    for i, (name, entry) in enumerate(recipe.models.items()):
        path = checkpoint_dir(entry.policy, entry.trust_remote_code) if name in used and entry.dpo else None
        if path is None:
            continue
        from rlhfkit.chat import chat_task
        from rlhfkit.stages.dpo import encode_pairs

        tokenizer = inputs.tokenizer(path, entry.trust_remote_code)
        pairs = list(chat_task(inputs.task, tokenizer, recipe.chat_template).pairs)[: recipe.dpo.max_pairs or None]
        sample = pairs[:DPO_SAMPLE]
        kept, dropped = encode_pairs(tokenizer, sample, recipe.dpo.max_length)
        if sample and not kept:
            raise ValueError(
                f"dpo.max_length: {recipe.dpo.max_length} leaves no answer token in any of the {len(sample)} "
                f"training pairs checked for models[{i}] ({entry.policy!r}: every prompt fills it); allowed: a "
                f"max_length above the prompts' token count"
            )


def check_chat_templates(recipe, inputs: PreflightInputs | None = None) -> None:
    """``[data] chat_template = "auto"`` and a checkpoint policy whose tokenizer ships a template: the template
    renders the first prompts of the task, so a template that refuses them (e.g. one that needs a system turn
    first) is a one-line error before anything is written, not a failed stage after the run began.  Costs one
    tokenizer load and one data set build, only for such rows (a tiny checkpoint: ~0.3 s)."""
    if recipe.chat_template == "off":
        return
    from rlhfkit.given import checkpoint_dir

    inputs = inputs or PreflightInputs(recipe)
    used = set(recipe.grid.models or recipe.models)
    for i, (name, entry) in enumerate(recipe.models.items()):
        path = checkpoint_dir(entry.policy, entry.trust_remote_code) if name in used else None
        if path is None or not _ships_chat_template(path):
            continue
        from rlhfkit.chat import format_prompt

        tokenizer = inputs.tokenizer(path, entry.trust_remote_code)
        for prompt in inputs.sample_prompts():
            try:
                format_prompt(tokenizer, prompt)
            except ValueError as exc:
                raise ValueError(f"models[{i}].policy {entry.policy!r}: {exc}") from None


def check_checkpoint_tokenizers(recipe, inputs: PreflightInputs | None = None) -> None:
    """Every checkpoint tokenizer a used row reads with (the policy's; a reward model's own) turns the task's
    first prompts into tokens.  transformers 5 loads some families' tokenizers by model type, whatever the saved
    tokenizer_config.json says (a word-level vocabulary saved beside a Qwen2 model loads as a byte-level BPE
    without merges and reads "review : the song was " back as ":"): the run would train on prompts without their
    words.  One tokenizer load per such checkpoint (~0.3 s on a tiny one), shared with the other checks."""
    from rlhfkit.given import checkpoint_dir, reward_has_own_tokenizer

    inputs = inputs or PreflightInputs(recipe)
    used = set(recipe.grid.models or recipe.models)
    for i, (name, entry) in enumerate(recipe.models.items()):
        if name not in used:
            continue
        refs = [("policy", entry.policy)] + ([("reward", entry.reward)] if reward_has_own_tokenizer(entry) else [])
        for key, ref in refs:
            path = checkpoint_dir(ref, entry.trust_remote_code)
            if path is None:
                continue
            tokenizer = inputs.tokenizer(path, entry.trust_remote_code)
            lost = _unreadable_prompt(tokenizer, inputs.sample_prompts())
            if lost is not None:
                raise ValueError(
                    f"models[{i}].{key} {ref!r}: its tokenizer ({type(tokenizer).__name__}, as transformers loads it) "
                    f"reads {lost!r} back as {tokenizer.decode(tokenizer(lost, add_special_tokens=False)['input_ids'])!r}; "
                    f"save the tokenizer in the format this model type loads (e.g. a tokenizer.json of its own family)")


def _unreadable_prompt(tokenizer, prompts: list[str]) -> str | None:
    """The first prompt whose characters mostly vanish through encode + decode (fewer than half of its non-space
    characters come back), when that happens to most of the sample; else None.  A tokenizer that knows the
    text's words round-trips it (special and unknown tokens aside)."""
    def kept(text: str) -> float:
        back = tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        return len(back.replace(" ", "")) / max(1, len(text.replace(" ", "")))

    texts = [p for p in prompts if p.strip()]
    lost = [p for p in texts if kept(p) < 0.5]
    return lost[0] if texts and len(lost) * 2 > len(texts) else None


def check_memory_strategies(recipe, registry) -> None:
    from rlhfkit.memory import split_strategy

    parts = dict.fromkeys(part for strategy in recipe.grid.memory for part in split_strategy(strategy))
    for part in parts:
        check = getattr(registry.get("memory_strategy", part), "check_recipe", None)
        if callable(check):
            check(recipe)


def check_reward_functions(recipe, registry, inputs: PreflightInputs | None = None) -> None:
    """Every reward function a row optimises gets what it needs from the task (per-prompt answers, a gold
    reward): the task is built only when a row uses a function that needs one of them."""
    from rlhfkit.rewards import check_task, components

    needy = [(i, row) for i, row in enumerate(recipe.models.values())
             if any(c.function is not None and (registry.get("reward_function", c.function).needs_metadata
                                                or registry.get("reward_function", c.function).needs_gold)
                    for c in components(row))]
    if not needy:
        return
    task = (inputs or PreflightInputs(recipe)).task
    for i, row in needy:
        check_task(row, task, f"models[{i}].reward", registry)


def preflight(recipe) -> None:
    """Everything a run would otherwise find out only after the stages have trained."""
    from rlhfkit.plugins import get_registry
    from rlhfkit.references import check_recipe_references

    registry = get_registry()
    inputs = PreflightInputs(recipe)  # the task and tokenizers, built once, only if a check needs them
    check_recipe_references(recipe)
    stats = check_dataset(recipe.data_name, recipe.data_options, registry)
    check_dpo_pairs(recipe, stats, inputs)
    check_checkpoint_tokenizers(recipe, inputs)
    check_chat_templates(recipe, inputs)
    check_dpo_lengths(recipe, inputs)
    check_memory_strategies(recipe, registry)
    check_reward_functions(recipe, registry, inputs)
