"""Console progress while a grid runs (rich): stages, cells, steps, ETA; one line per finished cell.

On a terminal: a live grid bar (steps of every cell, with ETA) and one bar per running cell.  When stdout is
not a terminal (CI logs, ``| tee``) live bars are off; instead a plain line is printed per cell every
quarter of its steps, with the grid's ETA, and the console is widened to ``LOG_WIDTH`` columns so tables
are not squashed to 80.
"""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

STATUS_STYLE = {"ok": "green", "failed": "red", "oom": "magenta", "diverged": "yellow", "timeout": "yellow", "killed": "red"}
LOG_WIDTH = 140
"""Console width when stdout is not a terminal (unless ``COLUMNS`` is set)."""
LOG_EVERY = 4
"""Without a terminal, print a progress line per cell this many times over its steps."""


def widen_for_logs(console: Console) -> Console:
    """Give a non-terminal console a readable width (``COLUMNS`` wins when set)."""
    if not console.is_terminal and not os.environ.get("COLUMNS") and console.width < LOG_WIDTH:
        console.width = LOG_WIDTH
    return console


def make_console(**kwargs) -> Console:
    return widen_for_logs(Console(**kwargs))


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _given_text(info: dict) -> str:
    """``; given: SFT, RM`` for stages a row brought ready (``train_sft``/``train_reward = false``)."""
    stages = info.get("stages") if isinstance(info.get("stages"), dict) else {}
    given = [{"sft": "SFT", "reward_model": "RM"}.get(k, k) for k, v in stages.items() if v == "given" and k != "tokenizer"]
    return f"; given: {', '.join(given)}" if given else ""


class RichProgress:
    def __init__(self, console: Console | None = None):
        self.console = widen_for_logs(console or Console())
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self.live,
        )
        self.grid_task = None
        self.cell_tasks = {}
        self.steps = {}
        self.cell_steps: dict[str, int] = {}
        self.cells_total = 0
        self.cells_done = 0
        self.grid_total_steps = 0
        self.grid_steps_done = 0
        self.started = time.monotonic()
        self.steps_at_start = 0
        self.cell_started_at: dict[str, float] = {}
        self.logged_quarter: dict[str, int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    # -- stages ---------------------------------------------------------------------------------------
    def stage_started(self, model: str) -> None:
        self.console.print(f"[cyan]stages[/] {model}: tokenizer, SFT, reward model ...")

    def stage_finished(self, model: str, info: dict) -> None:
        if info.get("status") == "ok":
            self.console.print(
                f"[cyan]stages[/] {model}: [green]ok[/] in {info['wall_s']:.0f} s; "
                f"reward-model held-out accuracy {_fmt(info.get('reward/eval_accuracy'), 3)}"
                + _given_text(info)
                + (f"; DPO held-out reward accuracy {_fmt(info['dpo/eval_reward_accuracy'], 3)}"
                   if "dpo/eval_reward_accuracy" in info else "")
            )
        else:
            self.console.print(f"[cyan]stages[/] {model}: [red]failed[/]: {escape(str(info.get('error')))}")

    # -- grid -----------------------------------------------------------------------------------------
    def _grid_info(self) -> str:
        return f"cells {self.cells_done}/{self.cells_total} done, {len(self.cell_tasks)} running"

    def grid_eta(self) -> float | None:
        """Seconds left for the whole grid, from the step rate since the first cell started."""
        done = self.grid_steps_done - self.steps_at_start
        if done <= 0:
            return None
        rate = done / max(1e-9, time.monotonic() - self.started)
        return (self.grid_total_steps - self.grid_steps_done) / rate

    def cells_planned(self, cells, kept, recipe) -> None:
        self.steps = {a: cfg.steps for a, cfg in recipe.algorithms.items()}
        self.cells_total = len(cells)
        self.cells_done = len(kept)
        self.grid_total_steps = sum(self.steps.get(c.algorithm, 0) for c in cells)
        self.grid_steps_done = sum(self.steps.get(c.algorithm, 0) for c in kept)
        self.steps_at_start = self.grid_steps_done
        self.started = time.monotonic()
        self.grid_task = self.progress.add_task("grid (steps)", total=self.grid_total_steps, info=self._grid_info())
        self.progress.update(self.grid_task, completed=self.grid_steps_done)
        kept_text = f"{len(kept)} kept from an earlier run, " if kept else ""
        self.console.print(
            f"[cyan]grid[/] {len(cells)} cells: {kept_text}{len(cells) - len(kept)} to run "
            f"({self.grid_total_steps - self.grid_steps_done} steps)"
        )

    def cell_started(self, cell) -> None:
        self.cell_steps[cell.id] = 0
        self.cell_started_at[cell.id] = time.monotonic()
        self.cell_tasks[cell.id] = self.progress.add_task(cell.id, total=self.steps.get(cell.algorithm), info="starting")
        if self.grid_task is not None:
            self.progress.update(self.grid_task, info=self._grid_info())
        if not self.live:
            self.console.print(f"[cyan]started [/] {cell.id}")

    def cell_step(self, cell, steps_done: int, last: dict) -> None:
        previous = self.cell_steps.get(cell.id, 0)
        self.cell_steps[cell.id] = steps_done
        self.grid_steps_done += max(0, steps_done - previous)
        if self.grid_task is not None:
            self.progress.update(self.grid_task, completed=self.grid_steps_done)
        task = self.cell_tasks.get(cell.id)
        info = f"score {_fmt(last.get('objective/scores'))} kl {_fmt(last.get('objective/kl'))}"
        if "objective/gold" in last:
            info += f" gold {_fmt(last.get('objective/gold'))}"
        if task is not None:
            self.progress.update(task, completed=steps_done, info=info)
        if not self.live:
            total = self.steps.get(cell.algorithm) or 0
            quarter = (steps_done * LOG_EVERY) // total if total else 0
            if quarter > self.logged_quarter.get(cell.id, 0) and steps_done < total:
                self.logged_quarter[cell.id] = quarter
                elapsed = time.monotonic() - self.cell_started_at.get(cell.id, self.started)
                cell_eta = elapsed / steps_done * (total - steps_done) if steps_done else None
                self.console.print(
                    f"[dim]step    [/] {cell.id} {steps_done}/{total}: {info}; cell ETA {_duration(cell_eta)}, "
                    f"grid ETA {_duration(self.grid_eta())}"
                )

    def cell_finished(self, cell, result: dict, seconds: float) -> None:
        task = self.cell_tasks.pop(cell.id, None)
        if task is not None:
            self.progress.remove_task(task)
        # A cell that ended early (failed, oom) still counts its steps as done for the grid's ETA.
        total = self.steps.get(cell.algorithm, 0)
        self.grid_steps_done += max(0, total - self.cell_steps.pop(cell.id, 0))
        self.cells_done += 1
        status = result["status"]
        summary = result.get("summary") or {}
        detail = (
            f"gold {_fmt(summary.get('gold_sft'))} -> {_fmt(summary.get('gold_final'))}, "
            f"kl {_fmt(summary.get('kl_final'))}"
            if status == "ok"
            else escape(str(result.get("error")))
        )
        style = STATUS_STYLE.get(status, "white")
        eta = "" if self.cells_done >= self.cells_total else f"; grid ETA {_duration(self.grid_eta())}"
        self.console.print(
            f"[{style}]{status:8}[/] {cell.id} ({seconds:.0f} s): {detail} "
            f"[dim]({self.cells_done}/{self.cells_total} cells{eta})[/]"
        )
        if self.grid_task is not None:
            self.progress.update(self.grid_task, completed=self.grid_steps_done, info=self._grid_info())
