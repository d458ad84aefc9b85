"""Experiment trackers (TensorBoard, Weights & Biases, Trackio): registered as a kind, fed by the lifecycle hooks.

Each tracker is a :class:`rlhfkit.registry.TrackerSpec` (``register_trackers``), so a third-party plugin adds
one the same way and a recipe may name it::

    [report]
    trackers = ["tensorboard"]          # and/or "wandb", "trackio", or a plugin's tracker

``log_metrics`` runs inside the cell's training process and receives the run context (recipe name, the
trackers the recipe lists) and the cell directory, so the trackers are opened from what the hook is told,
once per process and cell:

* ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` writing to ``RUN_DIR/tensorboard/<cell id>``
  (compare cells with ``tensorboard --logdir RUN_DIR/tensorboard``); needs the ``tensorboard`` package.
* ``wandb``: ``wandb.init(project=<recipe name>, name=<cell id>, group=<model/algorithm/memory>)``; runs in
  whatever mode wandb is configured for (``WANDB_MODE=offline`` works without network).
* ``trackio``: ``trackio.init(project=<recipe name>, name=<cell id>)``.

A tracker whose package is not installed is skipped with one warning on stderr (the cell still trains;
``rlhfkit validate`` refuses it beforehand).  Trackers are closed when the cell process exits.
``cell_finished`` (runner process) logs each finished cell's final summary to its TensorBoard directory as
``final/*`` scalars.
"""

from __future__ import annotations

import atexit
import json
import sys
from pathlib import Path

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import TrackerSpec, resolve

_state: dict = {"cell": None, "trackers": []}


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


def open_tensorboard(run, cell, cell_dir):
    return TensorBoardTracker(Path(run.output_dir) / "tensorboard" / cell.id, cell)


def open_wandb(run, cell, cell_dir):
    return WandbTracker(run.recipe_name, cell, Path(cell_dir or run.output_dir))


def open_trackio(run, cell, cell_dir):
    return TrackioTracker(run.recipe_name, cell)


BUILTIN_TRACKERS = (
    TrackerSpec("tensorboard", "rlhfkit_plugins.reporters.trackers:open_tensorboard",
                "TensorBoard scalars per cell under RUN_DIR/tensorboard/<cell id>", requires=("tensorboard",)),
    TrackerSpec("wandb", "rlhfkit_plugins.reporters.trackers:open_wandb",
                "Weights & Biases run per cell (project = recipe name, group = model/algorithm/memory)", requires=("wandb",)),
    TrackerSpec("trackio", "rlhfkit_plugins.reporters.trackers:open_trackio",
                "Trackio run per cell (project = recipe name)", requires=("trackio",)),
)


@hookimpl
def register_trackers(register):
    for spec in BUILTIN_TRACKERS:
        register(spec)


def open_trackers(names, run, cell, cell_dir) -> list:
    """The named trackers opened for one cell; one that is unknown, missing or failing is skipped with a warning."""
    from rlhfkit.plugins import get_registry

    registry = get_registry()
    trackers = []
    for name in names:
        if name not in registry.entries["tracker"]:
            print(f"rlhfkit: unknown tracker {name!r} (known: {', '.join(registry.names('tracker'))}); skipped", file=sys.stderr)
            continue
        spec = registry.get("tracker", name)
        if not spec.available():
            print(f"rlhfkit: tracker {name!r} requested but {', '.join(spec.requires)} is not installed; skipped",
                  file=sys.stderr)
            continue
        try:
            trackers.append(resolve(spec.factory)(run, cell, cell_dir))
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


def _trackers_for(cell, run, cell_dir) -> list:
    if _state["cell"] == cell.id:
        return _state["trackers"]
    _close_all()
    _state["cell"] = cell.id
    if run is not None and run.trackers:
        _state["trackers"] = open_trackers(run.trackers, run, cell, cell_dir)
        atexit.register(_close_all)
    return _state["trackers"]


@hookimpl
def log_metrics(cell, step, metrics, run, cell_dir):
    for tracker in _trackers_for(cell, run, cell_dir):
        try:
            tracker.log(step, metrics)
        except Exception as exc:
            print(f"rlhfkit: tracker {type(tracker).__name__} failed to log: {exc}", file=sys.stderr)


@hookimpl
def cell_finished(cell, cell_dir, result, run):
    """Runner process: the final summary of an ``ok`` cell as ``final/*`` TensorBoard scalars."""
    from rlhfkit.plugins import get_registry

    if result.get("status") != "ok" or "tensorboard" not in run.trackers:
        return
    if not get_registry().get("tracker", "tensorboard").available():
        return
    try:
        tracker = TensorBoardTracker(Path(run.output_dir) / "tensorboard" / cell.id, cell)
        summary = result.get("summary") or {}
        for key, value in summary.items():
            if isinstance(value, (int, float)) and value is not None:
                tracker.writer.add_scalar(f"final/{key}", value, 0)
        tracker.close()
    except Exception as exc:
        print(f"rlhfkit: tensorboard summary failed: {exc}", file=sys.stderr)
