"""Experiment trackers (TensorBoard, Weights & Biases, Trackio) on the lifecycle hooks.

Loaded in every process as a built-in plugin, it does nothing unless the recipe asks for it::

    [report]
    trackers = ["tensorboard"]          # and/or "wandb", "trackio"

``log_metrics`` runs inside the cell's training process and is only given the cell and the metrics, so the
plugin finds the cell's ``spec.json`` (the argument of ``python -m rlhfkit.cell SPEC``), reads the recipe
path and the cell directory from it, and opens the trackers the recipe lists, once per process:

* ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` writing to ``RUN_DIR/tensorboard/<cell id>``
  (compare cells with ``tensorboard --logdir RUN_DIR/tensorboard``); needs the ``tensorboard`` package.
* ``wandb``: ``wandb.init(project=<recipe name>, name=<cell id>, group=<model/algorithm/memory>)``; runs in
  whatever mode wandb is configured for (``WANDB_MODE=offline`` works without network).
* ``trackio``: ``trackio.init(project=<recipe name>, name=<cell id>)``.

A tracker whose package is not installed is skipped with one warning on stderr (the cell still trains).
Trackers are closed when the cell process exits.  ``cell_finished`` (runner process) logs each finished
cell's final summary to its TensorBoard directory as ``final/*`` scalars.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import sys
from pathlib import Path

from rlhfkit.hookspecs import hookimpl

KNOWN = ("tensorboard", "wandb", "trackio")

_state: dict = {"cell": None, "trackers": []}


def _spec_path() -> Path | None:
    for arg in sys.argv[1:]:
        if arg.endswith(".json"):
            path = Path(arg)
            if path.is_file():
                return path
    return None


def _recipe_trackers(recipe_path) -> tuple[list[str], str]:
    import tomllib

    raw = tomllib.loads(Path(recipe_path).read_text())
    trackers = list((raw.get("report") or {}).get("trackers") or [])
    return trackers, raw.get("name", "rlhfkit")


class TensorBoardTracker:
    def __init__(self, logdir: Path, cell):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir))
        self.writer.add_text("cell", json.dumps(cell.as_dict()), 0)

    def log(self, step: int, metrics: dict) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step + 1)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, project: str, cell, directory: Path):
        import wandb

        self.run = wandb.init(project=project, name=cell.id, group=f"{cell.model}/{cell.algorithm}/{cell.memory}",
                              config=cell.as_dict(), dir=str(directory), reinit=True)

    def log(self, step: int, metrics: dict) -> None:
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step + 1)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    def __init__(self, project: str, cell):
        import trackio

        self.trackio = trackio
        trackio.init(project=project, name=cell.id, config=cell.as_dict())

    def log(self, step: int, metrics: dict) -> None:
        self.trackio.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step + 1)

    def close(self) -> None:
        self.trackio.finish()


REQUIRES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def available(name: str) -> bool:
    return importlib.util.find_spec(REQUIRES[name]) is not None


def open_trackers(names: list[str], project: str, cell, cell_dir: Path) -> list:
    trackers = []
    for name in names:
        if name not in KNOWN:
            print(f"rlhfkit: unknown tracker {name!r} (known: {', '.join(KNOWN)}); skipped", file=sys.stderr)
            continue
        if not available(name):
            print(f"rlhfkit: tracker {name!r} requested but the {REQUIRES[name]} package is not installed; skipped",
                  file=sys.stderr)
            continue
        try:
            if name == "tensorboard":
                trackers.append(TensorBoardTracker(cell_dir.parent.parent / "tensorboard" / cell.id, cell))
            elif name == "wandb":
                trackers.append(WandbTracker(project, cell, cell_dir))
            elif name == "trackio":
                trackers.append(TrackioTracker(project, cell))
        except Exception as exc:  # a tracker must never stop training
            print(f"rlhfkit: tracker {name!r} failed to start: {type(exc).__name__}: {exc}", file=sys.stderr)
    return trackers


def _close_all() -> None:
    for tracker in _state["trackers"]:
        try:
            tracker.close()
        except Exception:
            pass
    _state["trackers"] = []


def _trackers_for(cell) -> list:
    if _state["cell"] == cell.id:
        return _state["trackers"]
    _close_all()
    _state["cell"] = cell.id
    spec_path = _spec_path()
    if spec_path is None:
        return []
    try:
        spec = json.loads(spec_path.read_text())
        names, project = _recipe_trackers(spec["recipe"])
    except (OSError, KeyError, ValueError):
        return []
    if names:
        _state["trackers"] = open_trackers(names, project, cell, Path(spec["cell_dir"]))
        atexit.register(_close_all)
    return _state["trackers"]


@hookimpl
def log_metrics(cell, step, metrics):
    for tracker in _trackers_for(cell):
        try:
            tracker.log(step, metrics)
        except Exception as exc:
            print(f"rlhfkit: tracker {type(tracker).__name__} failed to log: {exc}", file=sys.stderr)


@hookimpl
def cell_finished(cell, cell_dir, result):
    """Runner process: the final summary of an ``ok`` cell as ``final/*`` TensorBoard scalars."""
    if result.get("status") != "ok":
        return
    try:
        names, _ = _recipe_trackers(Path(cell_dir).parent.parent / "recipe.toml")
    except (OSError, ValueError):
        return
    if "tensorboard" not in names or not available("tensorboard"):
        return
    try:
        tracker = TensorBoardTracker(Path(cell_dir).parent.parent / "tensorboard" / cell.id, cell)
        summary = result.get("summary") or {}
        for key, value in summary.items():
            if isinstance(value, (int, float)) and value is not None:
                tracker.writer.add_scalar(f"final/{key}", value, 0)
        tracker.close()
    except Exception as exc:
        print(f"rlhfkit: tensorboard summary failed: {exc}", file=sys.stderr)
