"""Reports from a fake run directory (no training): files, figures, statistics, partial runs, reporters, trackers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from rlhfkit import plugins
from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import Reporter
from rlhfkit.report import load_context, write_reports

REPO = Path(__file__).resolve().parents[1]

RECIPE = """
name = "fake"
description = "A fake run for report tests."
[data]
name = "synthetic"
[[models]]
name = "tiny"
policy = "llama:tiny"
[grid]
algorithms = ["ppo", "rloo"]
memory = ["full"]
seeds = [1, 2]
[rl]
steps = 6
eval_every = 2
"""

# Final gold per cell (by hand: PPO mean 0.40, CI [0.30, 0.50]; RLOO 0.15 [0.10, 0.20]; PPO − RLOO 0.25 [0.10, 0.40])
GOLD = {("ppo", 1): 0.30, ("ppo", 2): 0.50, ("rloo", 1): 0.10, ("rloo", 2): 0.20}
# KL: PPO [1, 3], RLOO [2, 2.5]: difference −0.25, CI [−1.5, 1.0] crosses 0.
KL = {("ppo", 1): 1.0, ("ppo", 2): 3.0, ("rloo", 1): 2.0, ("rloo", 2): 2.5}


def _evaluations(algorithm, seed):
    """Eval points at steps 0, 2, 4, 6: PPO's gold peaks at step 4 then falls (over-optimisation)."""
    final_gold, final_kl = GOLD[(algorithm, seed)], KL[(algorithm, seed)]
    if algorithm == "ppo":
        golds = [0.0, 0.4, 0.8 + 0.1 * seed, final_gold]
    else:
        golds = [0.0, 0.05, 0.08, final_gold]
    kls = [0.0, final_kl / 3, 2 * final_kl / 3, final_kl]
    scores = [0.0, 0.5, 1.0, 1.5 + 0.1 * seed]
    return [
        {"eval/step": s, "eval/gold": g, "eval/kl": k, "eval/score": sc, "eval/length": 8.0, "eval/eos_rate": 1.0,
         "samples": [{"prompt": "p", "completion": "c"}]}
        for s, g, k, sc in zip([0, 2, 4, 6], golds, kls, scores)
    ]


def make_run(root: Path, finished=None) -> Path:
    """A run directory as `rlhfkit run` leaves it; ``finished`` limits which cells have a result.json."""
    out = root / "run"
    out.mkdir()
    (out / "recipe.toml").write_text(textwrap.dedent(RECIPE))
    (out / "run.json").write_text(json.dumps({
        "recipe": "fake", "first_started": "2026-01-01T00:00:00", "last_started": "2026-01-01T00:00:00",
        "versions": {"python": "3.12", "torch": "2.9.0", "rlhfkit": "0.1.0"},
        "hardware": {"cpu_count": 2, "machine": "x86_64", "memory_bytes": 8 * 2**30, "platform": "Linux"},
        "command": ["rlhfkit", "run", "fake.toml"],
    }))
    (out / "stages.json").write_text(json.dumps({"tiny": {"status": "ok", "sft/eval_loss": 1.5, "reward/eval_accuracy": 0.8, "wall_s": 10}}))
    for algorithm in ("ppo", "rloo"):
        for seed in (1, 2):
            cell_id = f"tiny__{algorithm}__full__s{seed}"
            d = out / "cells" / cell_id
            d.mkdir(parents=True)
            evals = _evaluations(algorithm, seed)
            with open(d / "metrics.jsonl", "w") as f:
                for step in range(6):
                    row = {"step": step, "episode": 8 * (step + 1), "objective/scores": 0.2 * step + 0.01 * seed,
                           "objective/gold": 0.1 * step - 0.01 * seed, "objective/kl": 0.3 * step}
                    if (step + 1) % 2 == 0:
                        row.update({k: v for k, v in evals[(step + 1) // 2].items() if k != "samples"})
                    f.write(json.dumps(row) + "\n")
            if finished is not None and cell_id not in finished:
                continue
            summary = {
                "gold_sft": 0.0, "gold_final": GOLD[(algorithm, seed)], "score_sft": 0.0, "score_final": 1.5 + 0.1 * seed,
                "kl_final": KL[(algorithm, seed)], "length_final": 8.0, "eos_rate_final": 1.0,
                "peak_memory_bytes": (300 if algorithm == "ppo" else 200) * 2**20 + seed * 2**20,
                "generation_peak_bytes": 150 * 2**20, "scoring_peak_bytes": 160 * 2**20,
                "training_peak_bytes": (300 if algorithm == "ppo" else 200) * 2**20 + seed * 2**20,
                "planned_memory_bytes": (280 if algorithm == "ppo" else 190) * 2**20,
                "planned_training_bytes": (280 if algorithm == "ppo" else 190) * 2**20,
                "episodes": 48, "episodes_per_s": (5.0 if algorithm == "ppo" else 9.0) + 0.1 * seed,
                "tokens_per_s": 100.0, "train_s": 10.0, "trainable_parameters": 1000, "wall_s": 12.0,
            }
            (d / "result.json").write_text(json.dumps({"cell": {}, "status": "ok", "error": None, "summary": summary,
                                                       "evaluations": evals}))
    return out


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One fake run with every default reporter already run (read-only for the tests that use it)."""
    from rich.console import Console

    plugins.reset()
    out = make_run(tmp_path_factory.mktemp("built"))
    context = write_reports(out, console=Console(record=True, width=200, force_terminal=False, file=open(os.devnull, "w")))
    plugins.reset()
    return out, context


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset()
    yield
    plugins.reset()


def test_every_report_file_is_written(built):
    run_dir, context = built
    for name in ("results.csv", "report.md", "report.html"):
        assert (run_dir / name).is_file(), name
    pngs = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert len(pngs) >= 4, pngs
    assert {"reward_curves.png", "reward_vs_kl.png", "overoptimisation.png", "memory.png", "throughput.png"} <= set(pngs)
    assert not list((run_dir / "plots").glob("*.tmp*"))
    assert (run_dir / "report.html") in context.written


def test_html_is_self_contained_and_matches_markdown(built):
    run_dir, _ = built
    page = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    assert page.count("data:image/png;base64,") >= 4
    assert not re.search(r'(src|href)="(?!data:)', page), "every resource must be inline"
    assert "<script" not in page
    # same content: every md figure is in the html, recipe and environment in both
    for png in re.findall(r"\]\((plots/[^)]+\.png)\)", md):
        assert png in page
    for text in ('name = "fake"', "torch 2.9.0", "2 CPUs", "Over-optimisation", "Findings", "Reward against KL"):
        assert text in md and text in page, text


def test_statistics_in_the_report_match_hand_computed_values(built):
    from scipy import stats

    run_dir, _ = built
    md = (run_dir / "report.md").read_text()
    # t intervals of a mean at n=2: mean ± t_{0.975, 1} · s/√2 = ± 12.7062 · 0.1 (PPO) and · 0.05 (RLOO)
    assert "0.400 [-0.871, 1.671]" in md  # PPO final gold
    assert "0.150 [-0.485, 0.785]" in md  # RLOO final gold
    # Welch PPO − RLOO gold: se² = 0.02/2 + 0.005/2 = 0.0125, df = 0.0125² / (0.01² + 0.0025²) = 1.4706,
    # t_{0.975, 1.4706} = 6.1881: 0.25 ± 0.6918
    assert "+0.250 [-0.442, 0.942]" in md
    # KL: PPO [1, 3] (var 2), RLOO [2, 2.5] (var 0.125): se² = 1 + 0.0625, df = 1.0625² / (1 + 0.0625²) = 1.12451
    half = stats.t.ppf(0.975, 1.0625**2 / (1 + 0.0625**2)) * 1.0625**0.5
    assert f"-0.250 [{-0.25 - half:.3f}, {-0.25 + half:.3f}]" in md
    # two seeds per arm: no verdict in any direction
    assert "too few seeds to compare: 2 per arm, 4 needed" in md
    assert not re.search(r"\b(ppo|rloo) better\b", md) and "significant" not in md.replace("significance", "")
    assert "1, 2 (n=2)" in md  # how many seeds each figure rests on


def test_report_shows_rloos_memory_saving_over_ppo(built):
    """PPO peaks 301/302 MiB, RLOO 201/202 MiB (by seed); planned 280 vs 190 MiB."""
    run_dir, _ = built
    md = (run_dir / "report.md").read_text()
    assert "Memory saving between algorithms at equal settings" in md
    row = next(line for line in md.splitlines() if line.startswith("| tiny | full | (defaults) | ppo − rloo |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Welch: each side's variance 0.5 MiB², se = √(0.25 + 0.25) = 0.7071, df = 0.5² / (0.25² + 0.25²) = 2,
    # t_{0.975, 2} = 4.3027: 100 ± 3.04 MiB
    assert cells[4:8] == ["302 / 202", "+100.0 [97.0, 103.0]", "+33%", "+90.0"]
    assert cells[8] == "+0.0 / -" and cells[10] == "+100.0 / +90.0"  # generation equal; training is the critic's
    assert ("rloo over ppo (tiny, full, (defaults)): measured saving +100.0 [97.0, 103.0] MiB of peak memory (+33% of ppo's "
            "peak); planned +90.0 MiB; too few seeds to compare: 2 per arm, 4 needed.") in md


def test_gold_peak_is_found(built):
    from rlhfkit.report.curves import eval_curves, gold_peak

    run_dir, _ = built
    context = load_context(run_dir)
    peaks = {c.label: gold_peak(c) for c in eval_curves(context)}
    ppo, rloo = peaks["ppo"], peaks["rloo"]
    # PPO mean gold per eval step (0, 2, 4, 6): 0, 0.4, (0.9+1.0)/2 = 0.95, (0.3+0.5)/2 = 0.4.  Tolerance 5% of
    # 0.95 = 0.0475: from step 4 on gold never gains more -> stops improving at step 4, where the mean KL is
    # (2/3 * 1 + 2/3 * 3) / 2 = 4/3; that is also the peak, and gold then drops by 0.55.
    assert ppo.reached and ppo.step == 4 and ppo.peak_step == 4
    assert ppo.kl == pytest.approx(4 / 3) and ppo.tolerance == pytest.approx(0.0475)
    assert ppo.gold_peak == pytest.approx(0.95) and ppo.gold_drop == pytest.approx(0.55)
    assert ppo.score_change_after == pytest.approx(1.65 - 1.0)
    # RLOO gold: 0, 0.05, 0.08, 0.15 -> still gaining more than 0.0075 at every step: not reached
    assert not rloo.reached and rloo.step == 6
    md = (run_dir / "report.md").read_text()
    assert "| ppo | 2 | 0.000 | 1.333 | 4 | 0.950 | 0.950 (4) | 1.333 | 0.400 | 0.550 | +0.650 | 2.000 |" in md
    assert "not reached (> 2.250)" in md


def test_plateau_counts_as_stopped_improving():
    import numpy as np

    from rlhfkit.report.curves import EvalCurve, gold_peak

    # gold 0, 2.0, 2.95, 3.0 (tolerance 0.15): 2.95 is within 0.05 of everything after it -> stops at step 20
    curve = EvalCurve(key=("m", "ppo", "full"), label="ppo", steps=[0, 10, 20, 30], kl=np.array([0.0, 1.0, 2.0, 3.0]),
                      gold=np.array([0.0, 2.0, 2.95, 3.0]), score=np.array([0.0, 1.0, 2.0, 3.0]), n=2)
    p = gold_peak(curve)
    assert p.reached and p.step == 20 and p.kl == pytest.approx(2.0) and p.peak_step == 30 and p.gold_drop == 0


def test_partial_run_marks_missing_cells(tmp_path):
    out = make_run(tmp_path, finished={"tiny__ppo__full__s1", "tiny__ppo__full__s2", "tiny__rloo__full__s1"})
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    result = subprocess.run([sys.executable, "-m", "rlhfkit", "report", str(out)], capture_output=True, text=True,
                            timeout=120, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    assert "pending" in result.stdout and "tiny__rloo__full__s2" in result.stdout
    frame = pd.read_csv(out / "results.csv")
    assert frame.set_index("cell").loc["tiny__rloo__full__s2", "status"] == "pending"
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "Partial run" in md and "Partial run" in page
    assert "| tiny__rloo__full__s2 | _pending (missing result)_ |" in md
    assert '<td class="muted text">pending (missing result)</td>' in page
    # statistics rest on the finished seeds only: RLOO has n=1, no interval
    assert "| tiny | rloo | full | (defaults) | 1 (n=1) | 0.100 |" in md
    assert "too few seeds to compare: 2 and 1 per arm, 4 needed" in md
    assert len(list((out / "plots").glob("*.png"))) >= 4


def test_report_without_any_finished_cell(tmp_path):
    out = make_run(tmp_path, finished=set())
    context = write_reports(out, only=["csv", "markdown", "html"])
    md = (out / "report.md").read_text()
    assert "No cell has finished ok yet." in md
    assert (out / "report.html").is_file() and context.results["status"].eq("pending").all()


def test_console_summary_gives_no_winner_at_two_seeds(run_dir):
    from rich.console import Console

    console = Console(record=True, width=80, force_terminal=False, file=open("/dev/null", "w"))
    write_reports(run_dir, console=console, only=["console"])
    text = console.export_text(clear=False)
    assert console.width >= 140  # widened: not a terminal
    assert "mean over seeds [95% t interval]" in text
    assert "0.400 [-0.871, 1.671]" in text
    assert "too few seeds to compare: 2 per arm, 4 needed" in text
    assert text.index("matched KL") < text.index("final values")
    styled = console.export_html(inline_styles=True)
    assert not re.search(r'<span style="color: #008000[^"]*font-weight: bold">', styled)  # no green winner at n=2


def test_a_third_party_reporter_registered_inline_runs(run_dir):
    seen = []

    class InlinePlugin:
        @hookimpl
        def register_reporters(self, register):
            register(Reporter("inline-test", lambda context: seen.append(len(context.results)) or [], "test reporter"))

    plugin = InlinePlugin()
    plugins.register_plugin(plugin, name="inline-reporter-test")
    try:
        context = write_reports(run_dir)  # every default reporter, the inline one included
        assert seen == [4]
        assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
        assert context is not None
    finally:
        plugins.unregister_plugin(plugin)
    seen.clear()
    write_reports(run_dir, only=["csv"])
    assert seen == []
    assert "inline-test" not in plugins.get_registry().names("reporter")


def test_builtin_reporters_are_registered():
    names = plugins.get_registry().names("reporter")
    assert {"csv", "markdown", "html", "console"} <= set(names)


# -- trackers -------------------------------------------------------------------------------------------------

def _cell_run(tmp_path, trackers):
    """A cell, its directory and the run context the hooks receive (no spec.json, no sys.argv)."""
    from rlhfkit.recipe import Cell
    from rlhfkit.registry import RunContext

    run = tmp_path / "trk"
    cell = Cell(model="tiny", algorithm="ppo", memory="full", seed=1)
    cell_dir = run / "cells" / cell.id
    cell_dir.mkdir(parents=True)
    context = RunContext(recipe_name="trk", recipe_path=str(run / "recipe.toml"), output_dir=str(run),
                         trackers=tuple(trackers))
    return cell, cell_dir, context


def _log(cell, step, context, cell_dir, kl=1.0):
    plugins.get_plugin_manager().hook.log_metrics(cell=cell, step=step, metrics={"objective/kl": kl}, run=context,
                                                  cell_dir=str(cell_dir))


def test_tracker_plugin_is_builtin_and_idle_without_trackers(tmp_path, monkeypatch):
    from rlhfkit_plugins.reporters import trackers

    assert "rlhfkit_plugins.reporters.trackers" in plugins.builtin_plugin_names()
    assert {"tensorboard", "wandb", "trackio"} <= set(plugins.get_registry().names("tracker"))
    cell, cell_dir, context = _cell_run(tmp_path, [])
    monkeypatch.setattr(trackers, "_state", {"cell": None, "trackers": []})
    opened = []
    monkeypatch.setattr(trackers, "open_trackers", lambda *a: opened.append(a) or [])
    _log(cell, 0, context, cell_dir)
    assert opened == []


def test_tracker_receives_every_step_through_the_hook(tmp_path, monkeypatch):
    from rlhfkit.registry import TrackerSpec
    from rlhfkit.hookspecs import hookimpl
    from rlhfkit_plugins.reporters import trackers

    logged = []

    class Recorder:
        def __init__(self, run, cell, cell_dir):
            self.run = run

        def log(self, step, metrics):
            logged.append((step, metrics["objective/kl"]))

        def close(self):
            logged.append("closed")

    class ThirdParty:  # a tracker a plugin registers: accepted by recipes like a built-in one
        @staticmethod
        @hookimpl
        def register_trackers(register):
            register(TrackerSpec("recorder", Recorder, "test tracker"))

    plugins.register_plugin(ThirdParty, name="third-party-tracker")
    try:
        cell, cell_dir, context = _cell_run(tmp_path, ["recorder"])
        monkeypatch.setattr(trackers, "_state", {"cell": None, "trackers": []})
        for step in range(3):
            _log(cell, step, context, cell_dir, float(step))
        assert logged == [(0, 0.0), (1, 1.0), (2, 2.0)]
        assert trackers._state["trackers"][0].run.recipe_name == "trk"
        trackers._close_all()
        assert logged[-1] == "closed"
        from rlhfkit.recipe import parse_recipe

        assert parse_recipe({"models": [{"name": "m", "policy": "llama:tiny"}],
                             "report": {"trackers": ["recorder"]}}).report.trackers == ["recorder"]
    finally:
        plugins.unregister_plugin(name="third-party-tracker")


def test_missing_tracker_package_is_skipped_with_a_warning(tmp_path, monkeypatch, capsys):
    from rlhfkit.registry import TrackerSpec
    from rlhfkit_plugins.reporters import trackers

    cell, cell_dir, context = _cell_run(tmp_path, ["wandb"])
    monkeypatch.setattr(trackers, "_state", {"cell": None, "trackers": []})
    monkeypatch.setattr(TrackerSpec, "available", lambda self: False)
    _log(cell, 0, context, cell_dir)
    _log(cell, 1, context, cell_dir)
    assert capsys.readouterr().err.count("not installed") == 1


def test_recipe_accepts_trackers_and_refuses_unknown_ones(tmp_path):
    from rlhfkit.recipe import RecipeError, load_recipe

    path = tmp_path / "r.toml"
    path.write_text(textwrap.dedent(RECIPE) + '[report]\ntrackers = ["tensorboard"]\n')
    assert load_recipe(path).report.trackers == ["tensorboard"]
    path.write_text(textwrap.dedent(RECIPE) + '[report]\ntrackers = ["nope"]\n')
    with pytest.raises(RecipeError, match="tracker"):
        load_recipe(path)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("tensorboard"), reason="tensorboard not installed")
def test_tensorboard_writes_event_files(tmp_path, monkeypatch):
    from rlhfkit_plugins.reporters import trackers

    cell, cell_dir, context = _cell_run(tmp_path, ["tensorboard"])
    monkeypatch.setattr(trackers, "_state", {"cell": None, "trackers": []})
    _log(cell, 0, context, cell_dir)
    trackers._close_all()
    assert list((cell_dir.parent.parent / "tensorboard" / cell.id).glob("events.out.tfevents.*"))
