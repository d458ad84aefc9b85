"""Resolve, before anything runs, every lazy ``"module:attr"`` reference a recipe will use.

Plugins register trainers, data-set builders and model classes as lazy strings so that loading plugins never
imports torch.  The price: a typo in such a string used to pass ``rlhfkit validate`` and fail only inside the
cell process, after the SFT and reward-model stages had trained.  ``rlhfkit validate`` and ``rlhfkit run``
call :func:`check_recipe_references` first; it imports what the recipe's cells will import (torch included),
so it runs in the commands that are about to do that anyway, never at plugin load.
"""

from __future__ import annotations

import re

LAZY_REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*:[A-Za-z_]\w*(\.\w+)*$")
"""``package.module:attribute`` (dots allowed on both sides), the form :func:`rlhfkit.registry.resolve` takes."""


def lazy_references(obj) -> list[tuple[str, str]]:
    """``(attribute, reference)`` for every lazy reference held by a registered object's public attributes:
    a string, a list/tuple of strings, or a dict of those (one model family maps model types to class
    tuples)."""
    found = []
    for attribute in dir(obj):
        if attribute.startswith("_"):
            continue
        try:
            value = getattr(obj, attribute)
        except Exception:  # a property that needs a model: not a reference
            continue
        for where, text in _strings(attribute, value):
            if LAZY_REFERENCE.match(text):
                found.append((where, text))
    return found


def _strings(where: str, value):
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield f"{where}[{i}]", item
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (str, list, tuple)):
                yield from _strings(f"{where}[{key!r}]", item)


def check_entry(registry, kind: str, name: str) -> None:
    """Resolve every lazy reference of one registered entry; raise a one-line ``ValueError`` naming it."""
    from rlhfkit.registry import resolve

    entry = registry.entries.get(kind, {}).get(name)
    if entry is None:
        return  # unknown names are the recipe validator's to refuse, with the allowed values
    for attribute, reference in lazy_references(entry.obj):
        try:
            resolve(reference)
        except Exception as exc:  # ImportError, AttributeError, or the plugin module's own error
            raise ValueError(
                f"{kind.replace('_', ' ')} {name!r} (plugin {entry.plugin!r}, distribution {entry.distribution!r}): "
                f"{attribute} = {reference!r} does not resolve: {type(exc).__name__}: {exc}"
            ) from None


def recipe_entries(recipe, registry) -> list[tuple[str, str]]:
    """The ``(kind, name)`` registry entries a recipe's cells and reports will use."""
    from rlhfkit.memory import split_strategy
    from rlhfkit.models import parse_model_spec

    used = [("dataset", recipe.data_name)]
    used += [("algorithm", name) for name in recipe.grid.algorithms]
    from rlhfkit.rewards import components, has_reward_model

    for row in recipe.models.values():
        for reference in dict.fromkeys((row.policy, row.reward) if has_reward_model(row) else (row.policy,)):
            used.append(("model_adapter", parse_model_spec(reference, row.trust_remote_code).family))
        used += [("reward_function", c.function) for c in components(row) if c.function is not None]
    for strategy in recipe.grid.memory:
        used += [("memory_strategy", part) for part in split_strategy(strategy)]
    reporters = recipe.report.reporters or [n for n in registry.names("reporter") if registry.get("reporter", n).default]
    used += [("reporter", name) for name in reporters]
    return list(dict.fromkeys(used))


def check_recipe_references(recipe) -> None:
    from rlhfkit.plugins import get_registry

    registry = get_registry()
    for kind, name in recipe_entries(recipe, registry):
        check_entry(registry, kind, name)
