"""What a ``[[models]]`` row optimises: its reward model, registered reward functions, or a weighted sum.

A row's ``reward`` is a model (``family:preset`` or a checkpoint: the reward model, trained by the RM stage) or
``"fn:NAME"`` (a registered :class:`rlhfkit.registry.RewardFunctionSpec`: no reward model, no RM stage).  The
optional ``reward_weights`` table combines components:

    reward = "llama:tiny"
    reward_weights = { model = 1.0, "fn:arith_exact" = 0.5 }

The optimised reward of a completion is ``sum(weight * component)``, where the component ``model`` is the
reward model's score and ``fn:NAME`` the function's value.  Without ``reward_weights`` the row optimises its
``reward`` alone with weight 1.  Rules (checked when the recipe is validated, one line each):

- keys are ``model`` or ``fn:<registered name>`` (unknown names get a "did you mean");
- ``model`` only where ``reward`` is a model, and then it must be listed (a reward model trained and read for
  weight 0 is refused: leave it out by writing ``reward = "fn:..."``); where ``reward = "fn:X"``, ``fn:X`` must
  be listed;
- weights are finite numbers, at least one of them non-zero (a zero weight logs the component, unoptimised).

This module is plain Python (no torch): recipes are validated with it; :class:`RewardMix` runs the functions in
the cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FN_PREFIX = "fn:"
MODEL = "model"
"""The ``reward_weights`` key of the row's reward model."""


def function_name(reference: str) -> str | None:
    """``"fn:NAME"`` -> ``"NAME"``; a model reference -> None."""
    return reference[len(FN_PREFIX):] if isinstance(reference, str) and reference.startswith(FN_PREFIX) else None


def has_reward_model(entry) -> bool:
    """Whether the row has a reward model (its ``reward`` is a model, not ``fn:NAME``)."""
    return function_name(entry.reward) is None


@dataclass(frozen=True)
class RewardComponent:
    key: str
    """``model`` or ``fn:NAME``."""
    weight: float

    @property
    def function(self) -> str | None:
        return function_name(self.key)


def components(entry) -> tuple[RewardComponent, ...]:
    """The weighted components a row optimises, in the order written (``model`` first by default)."""
    weights = getattr(entry, "reward_weights", None) or {}
    if not weights:
        return (RewardComponent(MODEL if has_reward_model(entry) else entry.reward, 1.0),)
    return tuple(RewardComponent(str(k), float(v)) for k, v in weights.items())


def is_plain_model(entry) -> bool:
    """The row optimises its reward model's score alone, weight 1: the path every number was pinned on."""
    return components(entry) == (RewardComponent(MODEL, 1.0),)


def describe(entry) -> str:
    """The optimised reward in words: ``reward model``, ``fn:arith_exact``, ``1*model + 0.5*fn:arith_exact``."""
    parts = components(entry)
    if len(parts) == 1 and parts[0].weight == 1.0:
        return "reward model" if parts[0].key == MODEL else parts[0].key
    return " + ".join(f"{c.weight:g}*{c.key}" for c in parts)


def check_entry(entry, where: str, registry) -> None:
    """Raise ``ValueError`` (one line, ``where`` = ``models[i]``) when the row's reward is not usable."""
    from rlhfkit.validation import hint

    known = registry.names("reward_function")
    allowed = ", ".join(FN_PREFIX + n for n in known) or "(none registered)"

    def check_name(key: str, at: str) -> None:
        name = function_name(key)
        if name not in known:
            raise ValueError(f"{at}: unknown reward function {key!r}; allowed: {allowed}"
                             f"{hint(key, [FN_PREFIX + n for n in known])}")

    if function_name(entry.reward) is not None:
        check_name(entry.reward, f"{where}.reward")
    weights = getattr(entry, "reward_weights", None) or {}
    if not weights:
        return
    at = f"{where}.reward_weights"
    keys = [MODEL] + [FN_PREFIX + n for n in known] if has_reward_model(entry) else [FN_PREFIX + n for n in known]
    for key, value in weights.items():
        if key != MODEL and function_name(key) is None:
            raise ValueError(f"{at}: unknown key {key!r}; allowed: {', '.join(keys)}{hint(key, keys)}")
        if key == MODEL and not has_reward_model(entry):
            raise ValueError(f"{at}: 'model' given but reward = {entry.reward!r} has no reward model; "
                             f"allowed keys: {', '.join(keys)}")
        if key != MODEL:
            check_name(key, f"{at}.{key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{at}.{key!r}: weight must be a finite number, got {value!r}")
    if has_reward_model(entry) and MODEL not in weights:
        raise ValueError(f"{at}: 'model' missing; the row's reward model {entry.reward!r} would be trained and "
                         "never optimised (give it a weight, or write reward = \"fn:NAME\" for no reward model)")
    if not has_reward_model(entry) and entry.reward not in weights:
        raise ValueError(f"{at}: {entry.reward!r} (the row's reward) missing; list it with its weight")
    if not any(float(v) != 0.0 for v in weights.values()):
        raise ValueError(f"{at}: every weight is 0; at least one component must be optimised")


def check_task(entry, task, where: str, registry) -> None:
    """The row's functions against the built task: metadata for every prompt, or a gold reward, where they
    need them.  ``ValueError`` naming the function and the data set."""
    for component in components(entry):
        if component.function is None:
            continue
        spec = registry.get("reward_function", component.function)
        if spec.needs_gold and task.gold_reward is None:
            raise ValueError(f"{where}: reward function {component.key!r} needs the task's gold reward; data set "
                             f"{task.name!r} has none")
        if spec.needs_metadata:
            missing = [p for p in list(task.rl_prompts) + list(task.eval_prompts) if p not in task.prompt_metadata]
            if missing:
                raise ValueError(f"{where}: reward function {component.key!r} needs per-prompt metadata (answers); "
                                 f"data set {task.name!r} has none for {len(missing)} prompt(s), e.g. {missing[0]!r}")


class RewardMix:
    """The row's reward functions, resolved in the cell: ``scores(prompts, completions)`` -> component -> floats.

    The reward model's component is read by the rollout (rlhfkit/engine/rollout.py) and weighted there."""

    def __init__(self, entry, task, registry=None):
        from rlhfkit.registry import resolve

        if registry is None:
            from rlhfkit.plugins import get_registry

            registry = get_registry()
        self.components = components(entry)
        self.task = task
        self.description = describe(entry)
        self.model_weight = next((c.weight for c in self.components if c.key == MODEL), None)
        self.functions = {c.key: resolve(registry.get("reward_function", c.function).fn)
                          for c in self.components if c.function is not None}

    def function_scores(self, prompts: list[str], completions: list[str]) -> dict[str, list[float]]:
        """Every function's value of every completion (checked: one finite float per row)."""
        metadata = [self.task.prompt_metadata.get(p, {}) for p in prompts]
        out = {}
        for key, fn in self.functions.items():
            values = fn(prompts, completions, metadata, self.task)
            values = [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
            if len(values) != len(completions):
                raise ValueError(f"reward function {key!r} returned {len(values)} values for {len(completions)} "
                                 "completions")
            bad = next((v for v in values if not math.isfinite(v)), None)
            if bad is not None:
                raise ValueError(f"reward function {key!r} returned a non-finite value {bad!r}")
            out[key] = values
        return out


__all__ = ["FN_PREFIX", "MODEL", "RewardComponent", "RewardMix", "check_entry", "check_task", "components",
           "describe", "function_name", "has_reward_model", "is_plain_model"]
