"""Reports: a results table plus whatever each registered reporter writes from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.fileio import atomic_write_text  # noqa: F401  (reporters import it from here)
from rlhfkit.recipe import Cell, Recipe, load_recipe
from rlhfkit.results import read_json, read_metrics, read_stages, results_table

GROUP_KEYS = ["model", "algorithm", "memory"]
SUMMARY_METRICS = ["gold_sft", "gold_final", "score_final", "kl_final", "peak_memory_bytes", "episodes_per_s", "wall_s"]


@dataclass
class ReportContext:
    """What a reporter gets."""

    output_dir: Path
    recipe: Recipe
    results: Any
    """pandas DataFrame, one row per cell (``rlhfkit.results.COLUMNS``); unfinished cells are ``pending``."""
    stages: dict
    """Per model row: SFT and reward-model metrics (``reward/eval_accuracy``...)."""
    run_info: dict
    """Versions, hardware, command (``run.json``)."""
    console: Any = None
    written: list[Path] = field(default_factory=list)
    cache: dict = field(default_factory=dict)
    """Computed once, shared by reporters (statistics, figures, the report document)."""

    def metrics(self, cell: Cell) -> list[dict]:
        """Per-step metrics of a cell (``metrics.jsonl``)."""
        return read_metrics(self.output_dir, cell)

    def cells(self) -> list[Cell]:
        return self.recipe.cells()

    def summary(self):
        """Mean and standard deviation over seeds per (model, algorithm, memory), ``ok`` cells only."""
        frame = self.results
        ok = frame[frame["status"] == "ok"]
        if ok.empty:
            return ok
        grouped = ok.groupby(GROUP_KEYS, sort=False)
        out = grouped.size().rename("n").to_frame()
        for metric in SUMMARY_METRICS:
            values = grouped[metric].agg(["mean", "std"])
            out[f"{metric}_mean"] = values["mean"]
            out[f"{metric}_std"] = values["std"]
        return out.reset_index()


def load_context(output_dir: Path, console=None) -> ReportContext:
    recipe_path = output_dir / "recipe.toml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{output_dir} is not an rlhfkit run directory (no recipe.toml)")
    recipe = load_recipe(recipe_path)
    stages = read_stages(output_dir)
    results = results_table(output_dir, recipe.cells(), stages, data_seed=recipe.run.data_seed)
    return ReportContext(
        output_dir=output_dir,
        recipe=recipe,
        results=results,
        stages=stages,
        run_info=read_json(output_dir / "run.json") or {},
        console=console,
    )


def write_reports(output_dir: Path, console=None, only: list[str] | None = None) -> ReportContext:
    """Run every selected reporter (the recipe's ``[report] reporters``, else every default one)."""
    from rlhfkit.plugins import get_registry
    from rlhfkit.registry import resolve

    context = load_context(output_dir, console)
    registry = get_registry()
    names = only or context.recipe.report.reporters or [
        e.name for e in registry.all() if e.kind == "reporter" and getattr(e.obj, "default", True)
    ]
    for name in names:
        reporter = registry.get("reporter", name)
        written = resolve(reporter.write)(context)
        if written:
            context.written.extend(Path(p) for p in (written if isinstance(written, (list, tuple)) else [written]))
    return context


