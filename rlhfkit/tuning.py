"""Equal tuning effort: pick each arm's best swept setting on the tuning seeds, and say why (``tuning.json``).

Also the resolved configuration of every cell (``resolved.json``): what a reviewer asks to see, every default
included, not only what the recipe wrote.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rlhfkit.recipe import TUNING_FILE, Cell, Recipe
from rlhfkit.results import read_result
from rlhfkit.sweeps import settings_text, thaw

RESOLVED_FILE = "resolved.json"


class TuningError(Exception):
    """Tuning cannot pick a setting (the data set has no gold reward): one line."""


def cell_value(result: dict, metric: str, kl_budget: float | None) -> float | None:
    """One tuning cell's score: ``gold_at_kl`` = best eval gold among checkpoints with eval KL <= kl_budget
    (the SFT checkpoint, step 0, is one of them); ``gold_final`` = the last evaluation's gold."""
    evaluations = [e for e in result.get("evaluations") or [] if e.get("eval/gold") is not None]
    if metric == "gold_final":
        if evaluations:
            return float(evaluations[-1]["eval/gold"])
        final = (result.get("summary") or {}).get("gold_final")
        return None if final is None else float(final)
    within = [e["eval/gold"] for e in evaluations if e.get("eval/kl") is not None and e["eval/kl"] <= kl_budget]
    return float(max(within)) if within else None


def _has_gold(result: dict) -> bool:
    return any(e.get("eval/gold") is not None for e in result.get("evaluations") or []) or (
        (result.get("summary") or {}).get("gold_final") is not None
    )


def _candidate(recipe: Recipe, output_dir: Path, arm: tuple, settings: tuple) -> tuple[dict, bool]:
    """Mean of the metric over one setting's tuning seeds; also whether any finished cell had a gold value."""
    tuning = recipe.tuning
    per_seed, gold_seen, statuses = {}, False, {}
    for seed in tuning.seeds:
        cell = Cell(*arm, seed, settings=settings, phase="tuning")
        result = read_result(output_dir, cell)
        statuses[str(seed)] = result["status"] if result else "pending"
        if result is None or result["status"] != "ok":
            continue
        gold_seen = gold_seen or _has_gold(result)
        value = cell_value(result, tuning.metric, tuning.kl_budget)
        if value is not None:
            per_seed[str(seed)] = value
    values = list(per_seed.values())
    return {
        "settings": settings_text(settings),
        "values": {k: thaw(v) for k, v in settings},
        "value": sum(values) / len(values) if values else None,
        "n": len(values),
        "per_seed": per_seed,
        "statuses": statuses,
    }, gold_seen


def _select_arm(recipe: Recipe, output_dir: Path, arm: tuple) -> tuple[dict, bool]:
    tuning = recipe.tuning
    options = recipe.settings_for(arm[1])
    model, algorithm, memory = arm
    entry = {"model": model, "algorithm": algorithm, "memory": memory, "settings_tried": len(options)}
    if len(options) == 1:  # nothing swept for this algorithm (allow_unequal): its only setting wins
        return {**entry, "winner": settings_text(options[0]), "winner_settings": dict(options[0]), "value": None,
                "why": "only one setting: nothing to tune", "candidates": []}, True
    candidates, gold_seen = [], False
    for settings in options:
        candidate, seen = _candidate(recipe, output_dir, arm, settings)
        candidates.append(candidate)
        gold_seen = gold_seen or seen
    scored = [(i, c) for i, c in enumerate(candidates) if c["value"] is not None]
    if not scored:
        return {**entry, "winner": None, "winner_settings": None, "value": None,
                "why": "no tuning cell finished ok with a value of the metric", "candidates": candidates}, gold_seen
    best_i, best = max(scored, key=lambda ic: (ic[1]["value"], -ic[0]))  # ties: first in sweep order
    budget = f" (KL budget {tuning.kl_budget:g})" if tuning.metric == "gold_at_kl" else ""
    why = (f"highest {tuning.metric}{budget}, mean over {best['n']} tuning seed(s), of {len(options)} settings; "
           "ties go to the first in sweep order")
    return {**entry, "winner": best["settings"], "winner_settings": {k: thaw(v) for k, v in options[best_i]},
            "value": best["value"], "why": why, "candidates": candidates}, gold_seen


def select_tuning(recipe: Recipe, output_dir: Path) -> dict:
    """Pick every arm's setting from its tuning cells, write ``tuning.json``, set ``recipe.tuned``."""
    from rlhfkit.fileio import atomic_write_json as write_json_atomic

    tuning = recipe.tuning
    arms, any_ok, gold_seen = [], False, False
    for arm in recipe.arms():
        entry, seen = _select_arm(recipe, output_dir, arm)
        arms.append(entry)
        gold_seen = gold_seen or seen
        any_ok = any_ok or any(s == "ok" for c in entry["candidates"] for s in c["statuses"].values())
    if any_ok and not gold_seen:
        raise TuningError(
            f"tuning.metric: {tuning.metric} needs the gold reward, and data set {recipe.data_name!r} has none "
            "(eval/gold is missing); use a task with a gold reward (synthetic) or drop [tuning]"
        )
    info = {
        "metric": tuning.metric,
        "kl_budget": tuning.kl_budget,
        "tuning_seeds": list(tuning.seeds),
        "grid_seeds": list(recipe.grid.seeds),
        "allow_unequal": tuning.allow_unequal,
        "settings_tried": {algo: len(recipe.settings_for(algo)) for algo in recipe.grid.algorithms},
        "arms": arms,
    }
    write_json_atomic(Path(output_dir) / TUNING_FILE, info)
    recipe.load_tuned(output_dir)
    return info


def resolved_configs(recipe: Recipe, cells: list[Cell]) -> dict:
    """Every cell's effective configuration: the model row, memory strategy and every config field."""
    return {
        "recipe": recipe.name,
        "cells": {
            cell.id: {
                "model": cell.model,
                "model_row": dataclasses.asdict(recipe.models[cell.model]),
                "algorithm": cell.algorithm,
                "memory": cell.memory,
                "seed": cell.seed,
                "phase": cell.phase,
                "settings": {k: thaw(v) for k, v in cell.settings},
                "config": dataclasses.asdict(recipe.config_for(cell)),
            }
            for cell in cells
        },
    }


def write_resolved(recipe: Recipe, output_dir: Path) -> Path:
    from rlhfkit.fileio import atomic_write_json as write_json_atomic

    path = Path(output_dir) / RESOLVED_FILE
    write_json_atomic(path, resolved_configs(recipe, recipe.cells()))
    return path
