"""Sweeps as grid axes, the equal-tuning-effort check and the confounded-arms warnings.

A sweep lists values of any field of an algorithm's config dataclass (``[rl]`` or ``[algorithms.X]`` keys):
``[grid.sweep]`` for every algorithm of the grid, ``[grid.sweep.<algorithm>]`` for one (it replaces a
shared key's values for that algorithm).  Every value, and every combination of one algorithm's values, is
validated by building the config, so a bad sweep is one line before anything runs.
"""

from __future__ import annotations

import difflib
import itertools
import re
from typing import Any, Callable

from rlhfkit.registry import config_fields

ID_VALUE = re.compile(r"^[A-Za-z0-9._+-]+$")


def format_value(value: Any) -> str:
    """How a swept value is written in cell ids, the ``settings`` column and tuning.json."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def settings_text(settings: tuple) -> str:
    """``kl_coef=0.1,learning_rate=0.001`` ("" when there are none)."""
    return ",".join(f"{key}={format_value(value)}" for key, value in settings)


def freeze(value: Any) -> Any:
    """Lists become tuples, so settings stay hashable (cells are frozen and used as keys)."""
    return tuple(freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def thaw(value: Any) -> Any:
    return [thaw(v) for v in value] if isinstance(value, tuple) else value


def _unknown_key(key: str, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(sorted(known))}"


def _reason(message: str, where: str) -> str:
    """The part of a RecipeError after its own location prefix ('algorithms.ppo.k: ...' -> '...')."""
    head, sep, tail = message.partition(": ")
    return tail if sep and head.startswith(where) else message


def _check_values(values: Any, where: str, build: Callable[[dict, str], Any], key: str, scope: str = "") -> list:
    """Each value built into the config alone; returns the values as the config holds them (1 -> 1.0)."""
    from rlhfkit.recipe import RecipeError

    if not isinstance(values, list) or not values:
        raise RecipeError(f"{where}: expected a non-empty list of values, got {values!r}")
    checked = []
    for i, value in enumerate(values):
        label = f"{where}[{i}]"
        try:
            config = build({key: value}, label)
        except RecipeError as exc:
            raise RecipeError(f"{label}: value {value!r} refused{scope}: {_reason(str(exc), label)}") from None
        value = freeze(getattr(config, key))
        if value in checked:
            raise RecipeError(f"{label}: {value!r} is listed twice; each swept value must be distinct")
        if not ID_VALUE.match(format_value(value)):
            raise RecipeError(f"{label}: {value!r} cannot name a cell directory; allowed: letters, digits, '.', '_', '+', '-'")
        checked.append(value)
    return checked


def parse_sweeps(table: Any, algorithms: list[str], builders: dict[str, Callable], config_classes: dict[str, type]) -> dict:
    """``[grid.sweep]`` -> {algorithm: {key: [values]}} (keys sorted, values in the recipe's order)."""
    from rlhfkit.recipe import RecipeError

    if table is None:
        return {a: {} for a in algorithms}
    if not isinstance(table, dict):
        raise RecipeError(f"grid.sweep: expected a table, got {table!r}")
    shared = {k: v for k, v in table.items() if not isinstance(v, dict)}
    own = {k: v for k, v in table.items() if isinstance(v, dict)}
    for name in own:
        if name not in algorithms:
            raise RecipeError(f"grid.sweep.{name}: not an algorithm of the grid; allowed: {', '.join(algorithms)}")
    sweeps = {}
    for algo in algorithms:
        known = [f.name for f in config_fields(config_classes[algo])]
        values = {}
        for key, raw in {**shared, **own.get(algo, {})}.items():  # an algorithm's own list replaces a shared one
            mine = key in own.get(algo, {})
            where = f"grid.sweep.{algo}.{key}" if mine else f"grid.sweep.{key}"
            scope = "" if mine else f" for {algo}"
            if key not in known:
                owners = [a for a in algorithms if key in {f.name for f in config_fields(config_classes[a])}]
                if owners and not mine:
                    raise RecipeError(
                        f"{where}: {algo} has no key {key!r} (only {', '.join(owners)}); "
                        f"sweep it under [grid.sweep.{owners[0]}]"
                    )
                raise RecipeError(_unknown_key(key, known, where.rpartition(".")[0] + scope))
            values[key] = _check_values(raw, where, builders[algo], key, scope)
        sweeps[algo] = dict(sorted(values.items()))
    _check_combinations(sweeps, builders)
    return sweeps


def setting_combinations(sweep: dict[str, list]) -> list[tuple]:
    """Every combination of one algorithm's swept values, in sweep order (first key slowest); [()] if none."""
    keys = list(sweep)
    return [tuple(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def _check_combinations(sweeps: dict, builders: dict) -> None:
    """Values valid alone can clash together (num_minibatches with k): build every combination once."""
    from rlhfkit.recipe import RecipeError

    for algo, sweep in sweeps.items():
        if len(sweep) < 2:
            continue
        for settings in setting_combinations(sweep):
            try:
                builders[algo]({k: thaw(v) for k, v in settings}, f"grid.sweep.{algo}")
            except RecipeError as exc:
                reason = _reason(str(exc), f"grid.sweep.{algo}")
                raise RecipeError(f"grid.sweep: {algo} setting {settings_text(settings)} refused: {reason}") from None


def check_tuning_effort(sweeps: dict, tuning) -> None:
    """Equal tuning effort: every algorithm gets the same number of settings tried (unless allowed)."""
    from rlhfkit.recipe import RecipeError

    counts = {algo: len(setting_combinations(sweep)) for algo, sweep in sweeps.items()}
    if all(n == 1 for n in counts.values()):
        raise RecipeError("tuning: nothing to tune; add [grid.sweep] values (e.g. kl_coef = [0.02, 0.05, 0.2])")
    if len(set(counts.values())) > 1 and not tuning.allow_unequal:
        listed = ", ".join(f"{algo} {n}" for algo, n in counts.items())
        raise RecipeError(
            f"tuning: unequal tuning effort (settings tried: {listed}); sweep as many settings per algorithm "
            "or set [tuning] allow_unequal = true"
        )


# What arms may differ in without the difference being the algorithm's: (label, keys, value, cause).
CONFOUNDERS = (
    ("policy updates per batch", ("num_epochs", "num_minibatches"),
     lambda c: c.num_epochs * c.num_minibatches, "the update count"),
    ("learning rate", ("learning_rate",), lambda c: c.learning_rate, "the learning rate"),
    ("LR schedule", ("lr_schedule",), lambda c: c.lr_schedule, "the LR schedule"),
    ("KL coefficient (beta)", ("kl_coef",), lambda c: c.kl_coef, "the KL coefficient"),
    # token_reward and sequence_reward are one placement here: both subtract beta * k1 from the return, whose
    # sum over a completion is the same; spreading it over tokens is how a critic-based algorithm (PPO) must
    # take it, so PPO vs RLOO at their defaults is not a confound.  Reward vs loss vs none changes the gradient.
    ("KL placement", ("kl_placement",), lambda c: "reward" if c.kl_placement.endswith("_reward") else c.kl_placement,
     "where the KL penalty is applied"),
    ("KL estimator", ("kl_estimator",), lambda c: c.kl_estimator, "the KL estimator"),
)


def confounder_warnings(configs: dict[str, Any], sweeps: dict[str, dict]) -> list[str]:
    """One line per setting the arms differ in that no sweep covers."""
    warnings = []
    if len(configs) < 2:
        return warnings
    swept = {key for sweep in sweeps.values() for key in sweep}
    for label, keys, value, cause in CONFOUNDERS:
        if any(not hasattr(c, k) for c in configs.values() for k in keys) or swept & set(keys):
            continue
        values = {algo: value(config) for algo, config in configs.items()}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{algo} {v:g}" if isinstance(v, (int, float)) else f"{algo} {v}" for algo, v in values.items())
            warnings.append(
                f"warning: arms differ in {label} ({listed}) and it is not swept: "
                f"a difference may come from {cause}, not the algorithm"
            )
    return warnings
