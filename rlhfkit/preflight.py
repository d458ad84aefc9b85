"""Checks that need more than the recipe's text, run by ``rlhfkit validate`` and ``rlhfkit run`` before anything
is written: every lazy reference resolves (:mod:`rlhfkit.references`), the data files hold usable rows, and each
memory strategy accepts the models it will hold on this machine.

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


def check_dpo_pairs(recipe, stats: dict) -> None:
    """A row with ``dpo = true`` needs preference pairs.  A data file's check has already counted usable pairs
    (``clean_pairs``); a data set without a file check (a built-in task, a plugin's) is built once to count them."""
    used = set(recipe.grid.models or recipe.models)
    rows = [i for i, (name, entry) in enumerate(recipe.models.items()) if name in used and entry.dpo]
    if not rows or stats.get("clean_pairs"):
        return
    from rlhfkit.stages.pipeline import build_task

    if not build_task(recipe).pairs:
        raise ValueError(
            f"models[{rows[0]}].dpo: true needs preference pairs, but data set {recipe.data_name!r} has none; set "
            f"dpo = false, or use a data set with prompt/chosen/rejected pairs (synthetic, hh_rlhf, preference_jsonl)"
        )


def check_memory_strategies(recipe, registry) -> None:
    from rlhfkit.memory import split_strategy

    parts = dict.fromkeys(part for strategy in recipe.grid.memory for part in split_strategy(strategy))
    for part in parts:
        check = getattr(registry.get("memory_strategy", part), "check_recipe", None)
        if callable(check):
            check(recipe)


def check_reward_functions(recipe, registry) -> None:
    """Every reward function a row optimises gets what it needs from the task (per-prompt answers, a gold
    reward): the task is built only when a row uses a function that needs one of them."""
    from rlhfkit.rewards import check_task, components

    needy = [(i, row) for i, row in enumerate(recipe.models.values())
             if any(c.function is not None and (registry.get("reward_function", c.function).needs_metadata
                                                or registry.get("reward_function", c.function).needs_gold)
                    for c in components(row))]
    if not needy:
        return
    from rlhfkit.stages.pipeline import build_task

    task = build_task(recipe)
    for i, row in needy:
        check_task(row, task, f"models[{i}].reward", registry)


def preflight(recipe) -> None:
    """Everything a run would otherwise find out only after the stages have trained."""
    from rlhfkit.plugins import get_registry
    from rlhfkit.references import check_recipe_references

    registry = get_registry()
    check_recipe_references(recipe)
    stats = check_dataset(recipe.data_name, recipe.data_options, registry)
    check_dpo_pairs(recipe, stats)
    check_memory_strategies(recipe, registry)
    check_reward_functions(recipe, registry)
