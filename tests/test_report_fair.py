"""The fair-comparison report from a hand-written run directory in the shapes of /work/wt/CONTRACT.md: cells with
swept ``settings`` and a ``phase``, the compute ledger in each summary, ``run_conditions``, and evaluations with
eval/kl, eval/gold, eval/gold_se, eval/lr and samples.  No training."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest

from rlhfkit import plugins
from rlhfkit.recipe import Cell, Recipe
from rlhfkit.report import write_reports

RECIPE = """
name = "fair"
[data]
name = "synthetic"
[[models]]
name = "tiny"
policy = "llama:tiny"
[grid]
algorithms = ["ppo", "rloo"]
memory = ["full"]
seeds = [1, 2, 3]
[rl]
steps = 8
eval_every = 2
"""


SweepCell = Cell  # settings and phase (CONTRACT §1): ids with the settings and a tune__ prefix


TUNED = {"ppo": (("kl_coef", 0.05),), "rloo": (("kl_coef", 0.1),)}
CELLS = (
    [SweepCell("tiny", a, "full", s) for a in ("ppo", "rloo") for s in (1, 2, 3)]  # defaults, n=3
    + [SweepCell("tiny", a, "full", s, (("kl_coef", k),), "tuning") for a in ("ppo", "rloo") for k in (0.05, 0.1)
       for s in (1, 2)]
    + [SweepCell("tiny", a, "full", s, TUNED[a], "final") for a in ("ppo", "rloo") for s in range(11, 17)]  # n=6
)
STEPS = [0, 2, 4, 6, 8]
SFT_GOLD = 0.2


def _evaluations(cell):
    """PPO: gold rises to ~3 by step 4 and stays flat; its LR reaches 0 at step 4 (a plateau the schedule made).
    RLOO: gold still rising linearly at the last checkpoint (censored)."""
    jitter = 0.01 * (cell.seed % 7)
    if cell.algorithm == "ppo":
        gold = [SFT_GOLD, 1.5, 3.0, 3.05, 3.0]
        kl = [0.0, 0.5, 1.0, 1.5, 2.0]
        lr = [max(0.0, 1e-3 * (1 - s / 4)) for s in STEPS]
    else:
        gold = [SFT_GOLD, 0.5, 0.8, 1.1, 1.4]
        kl = [0.0, 0.4, 0.8, 1.2, 1.6]
        lr = [1e-3 * (1 - s / 8) for s in STEPS]
    out = []
    for i, step in enumerate(STEPS):
        g = gold[i] + (jitter if i else 0.0)  # the SFT point is the same policy in every cell
        out.append({"eval/step": step, "eval/episodes": 16 * step, "eval/fraction": step / 8, "eval/lr": lr[i],
                    "eval/kl": kl[i] + (jitter if i else 0.0), "eval/kl_se": 0.01, "eval/score": 2 * g,
                    "eval/score_se": 0.02, "eval/gold": g, "eval/gold_se": 0.02, "eval/length": 8.0,
                    "eval/eos_rate": 1.0,
                    "samples": [{"prompt": f"held-out prompt {j}", "completion": f"{cell.algorithm} step {step} answer {j}"}
                                for j in range(4)]})
    return out


def _summary(cell, evals):
    ppo = cell.algorithm == "ppo"
    updates = 640 if ppo else 40  # PPO 4 epochs x 4 minibatches x 40 batches, RLOO 1 x 40
    ledger = {
        "ledger/episodes": 1280, "ledger/prompts": 320 if ppo else 1280, "ledger/generated_tokens": 10240,
        "ledger/policy/forward_tokens": 50_000 * (5 if ppo else 1), "ledger/policy/backward_tokens": 40_000 * (4 if ppo else 1),
        "ledger/policy/optimizer_steps": updates, "ledger/reference/forward_tokens": 10240,
        "ledger/reference/backward_tokens": 0, "ledger/reference/optimizer_steps": 0,
        "ledger/flops": 3.2e12 if ppo else 0.6e12, "ledger/wall_s": 30.0 if ppo else 5.0,
        "ledger/cpu_s": (58.0 if ppo else 9.0) + cell.seed * 0.1, "ledger/updates": updates,
    }
    if ppo:
        ledger.update({"ledger/critic/forward_tokens": 40_000, "ledger/critic/backward_tokens": 40_000,
                       "ledger/critic/optimizer_steps": 640})
    parallel = 2 if ppo else 1  # PPO cells ran two at a time: their speed is not comparable
    return {
        "gold_sft": SFT_GOLD, "gold_final": evals[-1]["eval/gold"], "score_sft": 2 * SFT_GOLD,
        "score_final": evals[-1]["eval/score"], "kl_final": evals[-1]["eval/kl"], "length_final": 8.0,
        "eos_rate_final": 1.0, "peak_memory_bytes": (300 if ppo else 200) * 2**20 + cell.seed * 2**16,
        "generation_peak_bytes": 150 * 2**20, "scoring_peak_bytes": 160 * 2**20,
        "training_peak_bytes": (300 if ppo else 200) * 2**20, "episodes": 1280,
        "episodes_per_s": (5.0 if ppo else 40.0) + 0.1 * (cell.seed % 5), "tokens_per_s": 100.0 + cell.seed,
        "train_s": 30.0, "wall_s": 35.0, "trainable_parameters": 1000,
        "run_conditions": f"cpu/threads=1/parallel={parallel}/procs=1", **ledger,
    }


def make_fair_run(root: Path) -> Path:
    out = root / "fair"
    out.mkdir()
    (out / "recipe.toml").write_text(textwrap.dedent(RECIPE))
    (out / "run.json").write_text(json.dumps({"versions": {"python": "3.12"}, "hardware": {"cpu_count": 2}}))
    resolved = {c.id: {"learning_rate": 1e-3, "kl_coef": dict(c.settings).get("kl_coef", 0.05),
                       "num_epochs": 4 if c.algorithm == "ppo" else 1, "batch_size": 32} for c in CELLS}
    (out / "resolved.json").write_text(json.dumps(resolved))
    for cell in CELLS:
        d = out / "cells" / cell.id
        d.mkdir(parents=True)
        evals = _evaluations(cell)
        summary = _summary(cell, evals)
        with open(d / "metrics.jsonl", "w") as f:
            for step in range(8):
                row = {"step": step, "episode": 160 * (step + 1), "objective/scores": 0.1 * step, "objective/gold": 0.1 * step,
                       "objective/kl": 0.2 * step, **{k: v for k, v in summary.items() if k.startswith("ledger/")}}
                f.write(json.dumps(row) + "\n")
        (d / "result.json").write_text(json.dumps({"cell": cell.as_dict(), "status": "ok", "error": None,
                                                   "summary": summary, "evaluations": evals}))
    return out


@pytest.fixture(scope="module")
def fair(tmp_path_factory):
    from rich.console import Console

    patch = pytest.MonkeyPatch()
    patch.setattr(Recipe, "cells", lambda self: list(CELLS))
    plugins.reset()
    out = make_fair_run(tmp_path_factory.mktemp("fair"))
    console = Console(record=True, width=200, force_terminal=False, file=open(os.devnull, "w"))
    context = write_reports(out, console=console)
    yield out, context, console
    patch.undo()
    plugins.reset()


def _findings(md: str) -> list[str]:
    block = md[md.index("## Findings"):md.index("## Matched-KL results")]
    return [line for line in block.splitlines() if line.startswith("- ")]


def test_matched_kl_leads_and_budget_table_is_beside_it(fair):
    out, _, _ = fair
    md = (out / "report.md").read_text()
    findings = _findings(md)
    assert findings[0].startswith("- **Matched KL** (tuned vs tuned")
    first_final = next(i for i, line in enumerate(findings) if line.startswith("- Final gold reward"))
    assert first_final > max(i for i, line in enumerate(findings) if "at KL ≤" in line or "frontier area" in line)
    assert md.index("### Gold at matched KL: tuned vs tuned") < md.index("## Final values")
    # common range: ppo reaches 2.0+jitter, rloo 1.6 + smallest jitter (seed 14: 0.0) -> b_max = 1.6; budgets 0.4/0.8/1.2
    assert "common KL range [0, 1.6]" in md and "gold at KL ≤ 0.4" in md and "gold at KL ≤ 1.2" in md
    assert "| what each arm got | ppo (kl_coef=0.05) (n=6 cells) | rloo (kl_coef=0.1) (n=6 cells) |" in md
    assert "| policy: optimizer steps | 640 | 40 |" in md
    assert "| critic: optimizer steps | 640 | - |" in md
    assert "| policy updates per rollout batch | 16 | 1 |" in md  # 640 / (1280 / 32)
    assert "| FLOPs (estimated) | 3.2e+12 | 6e+11 |" in md


def test_verdicts_follow_the_seed_count(fair):
    out, _, _ = fair
    md = (out / "report.md").read_text()
    findings = _findings(md)
    default = [line for line in findings if "(default vs default)" in line or line.startswith("- gold") and "n=3" in line]
    assert default and not any(re.search(r"\b(ppo|rloo) better\b", line) for line in default)
    assert "too few seeds to compare: 3 per arm, 4 needed" in md
    # n=6 with a big true difference: at KL <= 1.2 PPO's frontier is ~3.0, RLOO's ~0.9
    tuned = next(line for line in findings if line.startswith("- gold at KL ≤ 1.2") and "(n=6)" in line)
    assert "ppo − rloo" in tuned and "ppo better (Holm-adjusted Welch p = " in tuned and "permutation p = " in tuned
    assert "exact" in tuned  # C(12, 6) = 924 splits


def test_no_speed_verdict_across_run_conditions(fair):
    out, _, console = fair
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if "throughput (episodes/s) (ppo − rloo" in line)
    assert "no verdict: different run conditions (cpu/threads=1/parallel=1/procs=1 vs cpu/threads=1/parallel=2/procs=1)" in row
    assert not re.search(r"\| \*\*(ppo|rloo)\*\* \|", row)
    cpu = next(line for line in md.splitlines() if "training CPU seconds (ppo − rloo" in line)
    assert "rloo better" in cpu  # CPU seconds are compared instead
    styled = console.export_html(inline_styles=True)
    assert re.search(r'<span style="color: #008000[^"]*font-weight: bold">rloo</span>', styled)


def test_censoring_and_lr_at_zero(fair):
    out, _, _ = fair
    md = (out / "report.md").read_text()
    assert "censored: still improving (rloo 6/6 seeds)" in md
    assert "rloo (kl_coef=0.1, final): gold still improving at the end of training in 6/6 seeds (censored" in md
    # PPO's gold levels off exactly where its LR reached 0: never "stops improving at KL x"
    assert "gold stops improving at KL" not in md
    assert "ppo (kl_coef=0.05, final): gold levels off at step 4, where the learning rate had reached 0" in md


def test_tuning_methods_and_samples(fair):
    out, _, _ = fair
    md = (out / "report.md").read_text()
    assert "ppo: tuned `kl_coef` over 2 settings on seeds 1, 2; tuned setting: `kl_coef=0.05`." in md
    assert "## Tuning" in md and md.index("## Tuning") < md.index("## Final values")
    assert "### Gold at matched KL: default vs default" in md  # apart from tuned vs tuned
    assert "| **num_epochs** |" in md  # differs between arms, listed first
    assert "| held-out prompt 0 | ppo (`tiny__ppo__full__kl_coef=0.05__s11`) | ppo step 0 answer 0 | ppo step 8 answer 0 |" in md
    assert "Welch" in md and "Holm" in md and "IQM" in md and "P(A better)" in md
    page = (out / "report.html").read_text()
    assert "Gold at matched KL" in page and "What each arm got" in page
