"""Console progress without a terminal (CI logs): plain lines with ETA, a readable width."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from rlhfkit.progress import LOG_WIDTH, RichProgress, make_console
from rlhfkit.recipe import Cell


def test_progress_prints_plain_lines_with_eta_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    recipe = SimpleNamespace(algorithms={"ppo": SimpleNamespace(steps=8), "rloo": SimpleNamespace(steps=8)})
    cells = [Cell("m", a, "full", s) for a in ("ppo", "rloo") for s in (1, 2)]
    with RichProgress(console) as progress:
        assert console.width == LOG_WIDTH and not progress.live
        progress.cells_planned(cells, kept=[cells[0]], recipe=recipe)
        progress.cell_started(cells[1])
        for step in range(1, 9):
            progress.cell_step(cells[1], step, {"objective/scores": 0.5, "objective/kl": 0.1, "objective/gold": 1.0})
        progress.cell_finished(cells[1], {"status": "ok", "summary": {"gold_sft": 0.0, "gold_final": 1.0, "kl_final": 0.2}}, 3.0)
        progress.cell_started(cells[2])
        progress.cell_finished(cells[2], {"status": "failed", "error": "boom"}, 1.0)
    text = out.getvalue()
    assert "4 cells: 1 kept from an earlier run, 3 to run (24 steps)" in text
    step_lines = [line for line in text.splitlines() if line.startswith("step")]
    assert len(step_lines) == 3  # 2/8, 4/8, 6/8 (the last step is reported by the finished line)
    assert "cell ETA" in step_lines[0] and "grid ETA" in step_lines[0] and "gold 1.00" in step_lines[0]
    assert "(2/4 cells; grid ETA" in text
    assert "failed" in text and "boom" in text and "(3/4 cells" in text
    assert progress.grid_steps_done == 24  # kept 8 + finished 8 + failed cell counted as done 8


def test_make_console_respects_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert make_console(file=io.StringIO()).width == 100
    monkeypatch.delenv("COLUMNS")
    assert make_console(file=io.StringIO()).width == LOG_WIDTH
