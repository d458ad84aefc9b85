"""Reading a run's files back: the results table and per-step metrics.

Every reader here tolerates a damaged run directory (files missing, not UTF-8, not JSON, JSON of the wrong
shape, numbers written as strings): a cell whose result.json is damaged has status ``damaged`` and a one-line
reason in the ``error`` column; ``rlhfkit run`` treats it as unfinished and runs it again."""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.recipe import Cell

TERMINAL_STATUSES = ("ok", "failed", "oom", "diverged", "timeout", "killed")
DAMAGED = "damaged"
"""Status of a cell whose result.json cannot be read back (never written by a cell; see :func:`inspect_result`)."""
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
    "planned_typical_memory_bytes",
    "episodes",
    "episodes_per_s",
    "tokens_per_s",
    "train_s",
    "wall_s",
    "trainable_parameters",
    "data_seed",
    "rm_accuracy",
    "error",
]


def read_json(path: Path) -> dict | None:
    """A JSON object from a file; None when it is missing, unreadable, not UTF-8, not JSON or not an object."""
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # ValueError: UnicodeDecodeError and JSONDecodeError
        return None
    return value if isinstance(value, dict) else None


def read_stages(output_dir: Path) -> dict:
    """``stages.json``: stage key (``<model>``, or ``<model>@d<data seed>`` for another data seed than
    ``[run] data_seed``) -> its stage metrics (entries that are not objects are left out)."""
    stages = read_json(Path(output_dir) / "stages.json") or {}
    return {name: entry for name, entry in stages.items() if isinstance(entry, dict)}


def _looks_numeric(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _result_damage(value) -> str | None:
    """Why a parsed result.json cannot be used (None when it can)."""
    if not isinstance(value, dict):
        return f"result.json holds {type(value).__name__} {json.dumps(value)[:40]}, not an object"
    status = value.get("status")
    if status not in TERMINAL_STATUSES:
        return f"result.json status {status!r} is not one of: {', '.join(TERMINAL_STATUSES)}"
    summary = value.get("summary")
    if summary is not None and not isinstance(summary, dict):
        return f"result.json summary is {type(summary).__name__}, not an object"
    for key, item in (summary or {}).items():
        if _looks_numeric(item) or (item is not None and key in NUMERIC_COLUMNS and not _is_number(item)):
            return f"result.json summary.{key} is {item!r}, not a number"
    evaluations = value.get("evaluations")
    if evaluations is not None and not (isinstance(evaluations, list) and all(isinstance(e, dict) for e in evaluations)):
        return "result.json evaluations is not a list of objects"
    for i, entry in enumerate(evaluations or []):
        for key, item in entry.items():
            if key.startswith("eval/") and item is not None and not _is_number(item):
                return f"result.json evaluations[{i}].{key} is {item!r}, not a number"
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cell_dir(output_dir: Path, cell: Cell) -> Path:
    return output_dir / "cells" / cell.id


def inspect_result(output_dir: Path, cell: Cell) -> tuple[dict | None, str | None]:
    """``(result, None)`` for a finished cell, ``(None, None)`` for one without a result.json, and
    ``(None, reason)`` for a damaged one (a one-line reason)."""
    path = cell_dir(output_dir, cell) / "result.json"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"result.json cannot be read ({exc.strerror or exc})"
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "result.json is not UTF-8 text"
    except ValueError:
        return None, "result.json is not valid JSON"
    reason = _result_damage(value)
    return (None, reason) if reason else (value, None)


def read_result(output_dir: Path, cell: Cell) -> dict | None:
    """A finished cell's result; None when it has none or it is damaged (both mean: not finished)."""
    return inspect_result(output_dir, cell)[0]


def read_metrics(output_dir: Path, cell: Cell) -> list[dict]:
    """Per-step metrics: the JSON objects of ``metrics.jsonl`` up to its first line that is not one (a line cut
    short by a kill, not UTF-8, not JSON, not an object); see :func:`metrics_damage`."""
    return _metrics(output_dir, cell)[0]


def metrics_damage(output_dir: Path, cell: Cell) -> str | None:
    """Why a cell's metrics.jsonl stops early (a one-line reason), or None."""
    return _metrics(output_dir, cell)[1]


def _metrics(output_dir: Path, cell: Cell) -> tuple[list[dict], str | None]:
    path = cell_dir(output_dir, cell) / "metrics.jsonl"
    rows: list[dict] = []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError:
        return rows, None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            return rows, f"metrics.jsonl line {number} is not UTF-8; later steps ignored"
        except ValueError:
            last = number == len(lines) or (number == len(lines) - 1 and not lines[-1].strip())
            return rows, None if last else f"metrics.jsonl line {number} is not JSON; later steps ignored"
        bad = _metric_damage(row)
        if bad:
            return rows, f"metrics.jsonl line {number} {bad}; later steps ignored"
        rows.append(row)
    return rows, None


def _metric_damage(row) -> str | None:
    if not isinstance(row, dict):
        return f"is {type(row).__name__}, not an object"
    for key, value in row.items():
        if _looks_numeric(value):
            return f"has {key} = {value!r}, a number written as a string"
    return None


def results_table(output_dir: Path, cells: list[Cell], stages: dict | None = None, planned: dict | None = None,
                  data_seed: int | None = None):
    """One row per cell; cells without a result are ``pending``.  ``data_seed`` (the recipe's ``[run]
    data_seed``) fills the column for cells of that stratum; ``rm_accuracy`` is the cell's own reward model's.

    Each swept key gets a column named as the key (after ``settings``): the cell's swept value, else its
    effective value from ``resolved.json`` (the default an unswept cell ran with), so a sweep's frontier
    includes the default point."""
    import pandas as pd

    stages = {k: v for k, v in (stages or {}).items() if isinstance(v, dict)}
    planned = planned or {}
    resolved = (read_json(Path(output_dir) / "resolved.json") or {}).get("cells")
    resolved = {k: v for k, v in resolved.items() if isinstance(v, dict)} if isinstance(resolved, dict) else {}
    swept = sorted({key for cell in cells for key, _ in cell.settings})
    rows = []
    for cell in cells:
        result, damage = inspect_result(output_dir, cell)
        row = {"cell": cell.id, **cell.as_dict(), "settings": cell.settings_text}
        row["data_seed"] = data_seed if cell.data_seed is None else cell.data_seed
        config = (resolved.get(cell.id) or {}).get("config")
        config = config if isinstance(config, dict) else {}
        own = dict(cell.settings)
        for key in swept:
            row[key] = _cell_value(own[key]) if key in own else config.get(key)
        row["status"] = result["status"] if result else (DAMAGED if damage else "pending")
        if damage:
            row["error"] = damage
        if result:
            row.update(result.get("summary") or {})
            row["error"] = result.get("error")
        if row.get("gold_final") is not None and row.get("gold_sft") is not None:
            row["gold_gain"] = row["gold_final"] - row["gold_sft"]
        row["rm_accuracy"] = (stages.get(cell.stage) or {}).get("reward/eval_accuracy")
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


NUMERIC_COLUMNS = frozenset(COLUMNS) - {"cell", "model", "algorithm", "memory", "seed", "data_seed", "phase", "settings", "status", "error"}


def _cell_value(value):
    """Swept list values are tuples inside a cell; a table cell shows them as the recipe wrote them."""
    from rlhfkit.sweeps import thaw

    return thaw(value)
