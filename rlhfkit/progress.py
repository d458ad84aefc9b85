"""Console progress while a grid runs (rich): stages, cells, steps, ETA; one line per finished cell."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

STATUS_STYLE = {"ok": "green", "failed": "red", "oom": "magenta", "diverged": "yellow", "timeout": "yellow"}


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class RichProgress:
    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.grid_task = None
        self.cell_tasks = {}
        self.steps = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def stage_started(self, model: str) -> None:
        self.console.print(f"[cyan]stages[/] {model}: tokenizer, SFT, reward model ...")

    def stage_finished(self, model: str, info: dict) -> None:
        if info.get("status") == "ok":
            self.console.print(
                f"[cyan]stages[/] {model}: [green]ok[/] in {info['wall_s']:.0f} s; "
                f"reward-model held-out accuracy {_fmt(info.get('reward/eval_accuracy'), 3)}"
            )
        else:
            self.console.print(f"[cyan]stages[/] {model}: [red]failed[/]: {info.get('error')}")

    def cells_planned(self, cells, kept, recipe) -> None:
        self.steps = {a: cfg.steps for a, cfg in recipe.algorithms.items()}
        self.grid_task = self.progress.add_task("grid", total=len(cells), info=f"{len(kept)} kept from an earlier run" if kept else "")
        self.progress.update(self.grid_task, completed=len(kept))

    def cell_started(self, cell) -> None:
        self.cell_tasks[cell.id] = self.progress.add_task(cell.id, total=self.steps.get(cell.algorithm), info="starting")

    def cell_step(self, cell, steps_done: int, last: dict) -> None:
        task = self.cell_tasks.get(cell.id)
        if task is None:
            return
        info = f"score {_fmt(last.get('objective/scores'))} kl {_fmt(last.get('objective/kl'))}"
        if "objective/gold" in last:
            info += f" gold {_fmt(last.get('objective/gold'))}"
        self.progress.update(task, completed=steps_done, info=info)

    def cell_finished(self, cell, result: dict, seconds: float) -> None:
        task = self.cell_tasks.pop(cell.id, None)
        if task is not None:
            self.progress.remove_task(task)
        status = result["status"]
        summary = result.get("summary") or {}
        detail = (
            f"gold {_fmt(summary.get('gold_sft'))} -> {_fmt(summary.get('gold_final'))}, "
            f"kl {_fmt(summary.get('kl_final'))}"
            if status == "ok"
            else str(result.get("error"))
        )
        style = STATUS_STYLE.get(status, "white")
        self.console.print(f"[{style}]{status:8}[/] {cell.id} ({seconds:.0f} s): {detail}")
        if self.grid_task is not None:
            self.progress.advance(self.grid_task)
