"""Reading a run's files back: the results table and per-step metrics."""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.recipe import Cell

TERMINAL_STATUSES = ("ok", "failed", "oom", "diverged", "timeout")
COLUMNS = [
    "cell",
    "model",
    "algorithm",
    "memory",
    "seed",
    "phase",
    "settings",
    "status",
    "gold_sft",
    "gold_final",
    "gold_gain",
    "score_sft",
    "score_final",
    "kl_final",
    "length_final",
    "eos_rate_final",
    "peak_memory_bytes",
    "generation_peak_bytes",
    "scoring_peak_bytes",
    "training_peak_bytes",
    "planned_memory_bytes",
    "episodes",
    "episodes_per_s",
    "tokens_per_s",
    "train_s",
    "wall_s",
    "trainable_parameters",
    "rm_accuracy",
    "error",
]


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def cell_dir(output_dir: Path, cell: Cell) -> Path:
    return output_dir / "cells" / cell.id


def read_result(output_dir: Path, cell: Cell) -> dict | None:
    result = read_json(cell_dir(output_dir, cell) / "result.json")
    if result is None or result.get("status") not in TERMINAL_STATUSES:
        return None
    return result


def read_metrics(output_dir: Path, cell: Cell) -> list[dict]:
    path = cell_dir(output_dir, cell) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything before it is good
    return rows


def results_table(output_dir: Path, cells: list[Cell], stages: dict | None = None, planned: dict | None = None):
    """One row per cell; cells without a result are ``pending``.

    Each swept key gets a column named as the key (after ``settings``): the cell's swept value, else its
    effective value from ``resolved.json`` (the default an unswept cell ran with), so a sweep's frontier
    includes the default point."""
    import pandas as pd

    stages = stages or {}
    planned = planned or {}
    resolved = (read_json(Path(output_dir) / "resolved.json") or {}).get("cells", {})
    swept = sorted({key for cell in cells for key, _ in cell.settings})
    rows = []
    for cell in cells:
        result = read_result(output_dir, cell)
        row = {"cell": cell.id, **cell.as_dict(), "settings": cell.settings_text}
        config = (resolved.get(cell.id) or {}).get("config") or {}
        own = dict(cell.settings)
        for key in swept:
            row[key] = _cell_value(own[key]) if key in own else config.get(key)
        row["status"] = result["status"] if result else "pending"
        if result:
            row.update(result.get("summary") or {})
            row["error"] = result.get("error")
        if row.get("gold_final") is not None and row.get("gold_sft") is not None:
            row["gold_gain"] = row["gold_final"] - row["gold_sft"]
        row["rm_accuracy"] = (stages.get(cell.model) or {}).get("reward/eval_accuracy")
        if cell.id in planned:
            row["planned_memory_bytes"] = planned[cell.id]
        rows.append(row)
    frame = pd.DataFrame(rows)
    first = COLUMNS[: COLUMNS.index("settings") + 1] + swept
    columns = first + [c for c in COLUMNS if c not in first]
    for column in columns:
        if column not in frame.columns:
            frame[column] = None
    return frame[columns + [c for c in frame.columns if c not in columns]]


def _cell_value(value):
    """Swept list values are tuples inside a cell; a table cell shows them as the recipe wrote them."""
    from rlhfkit.sweeps import thaw

    return thaw(value)
