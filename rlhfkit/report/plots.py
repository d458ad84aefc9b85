"""The report's figures (matplotlib, Agg backend): PNGs under ``DIR/plots/``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhfkit.engine.steps import Phase  # torch-free
from rlhfkit.report.curves import eval_curves, gold_peak, training_series

SMOOTH = 5
"""Per-step training curves are smoothed with a trailing moving average over this many steps."""
DPI = 110


@dataclass
class Plot:
    name: str
    title: str
    caption: str
    path: Path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(labels):
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    tmp.replace(path)
    return path


def _finite(value) -> bool:
    try:
        return value is not None and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def reward_curves(context, directory: Path) -> Plot | None:
    from rlhfkit.rewards import is_plain_model

    plain = all(is_plain_model(e) for e in (getattr(context.recipe, "models", {}) or {}).values())
    panels = [("objective/scores", "proxy reward (reward-model score)" if plain else "proxy reward (optimised reward)")]
    gold = training_series(context, "objective/gold", SMOOTH)
    if gold:
        panels.append(("objective/gold", "gold reward (task's true reward)"))
    series = {m: (gold if m == "objective/gold" else training_series(context, m, SMOOTH)) for m, _ in panels}
    if not any(series.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    labels = list(dict.fromkeys(s.label for ss in series.values() for s in ss))
    colors = _colors(labels)
    for ax, (metric, title) in zip(axes[0], panels):
        for s in series[metric]:
            ax.plot(s.x, s.mean, color=colors[s.label], label=f"{s.label} (n={s.n})")
            if s.n > 1:
                ax.fill_between(s.x, s.low, s.high, color=colors[s.label], alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("episodes")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Training reward against episodes (mean over seeds, band: min–max over seeds)")
    path = _save(fig, directory / "reward_curves.png")
    return Plot(
        "reward_curves",
        "Proxy and gold reward during training",
        f"Per-step rollout means ({'objective/scores' + (', objective/gold' if gold else '')}) against episodes, "
        f"smoothed over {SMOOTH} steps; line = mean over seeds, band = min–max over seeds.",
        path,
    )


def _frontier_on(points, grid: np.ndarray) -> np.ndarray:
    """F(b) of one seed's pooled checkpoints on a grid of budgets (nan where no checkpoint qualifies)."""
    from rlhfkit.report.stats import frontier_steps

    kls, values = frontier_steps(points)
    index = np.searchsorted(kls, grid, side="right") - 1
    return np.where(index >= 0, values[np.clip(index, 0, None)] if len(values) else np.nan, np.nan)


def reward_vs_kl(context, directory: Path) -> Plot | None:
    """One step-function frontier F(b) per algorithm (its settings pooled per seed; mean over seeds, band min–max),
    for the leading arena of each (model, memory): tuned vs tuned when there is one, else the grid."""
    from rlhfkit.report.document import analysis

    matched, seen = [], set()
    for m in analysis(context)["matched"]:
        if (m.arena.model, m.arena.memory) not in seen:
            seen.add((m.arena.model, m.arena.memory))
            matched.append(m)
    if not matched:
        return None
    keys = matched[0].keys
    plt = _plt()
    fig, axes = plt.subplots(len(matched), len(keys), figsize=(6.5 * len(keys), 4.2 * len(matched)), squeeze=False)
    colors = _colors(list(dict.fromkeys(arm.algorithm for m in matched for arm in m.arena.arms)))
    for row, m in zip(axes, matched):
        for ax, key in zip(row, keys):
            for arm in m.arena.arms:
                reach = max(max((k for k, _ in arm.points(s, key)), default=0.0) for s in arm.units)
                grid = np.linspace(0.0, max(reach, 1e-9), 400)
                curves = np.vstack([_frontier_on(arm.points(s, key), grid) for s in arm.units])
                color = colors[arm.algorithm]
                for s in arm.units:
                    pts = arm.points(s, key)
                    ax.scatter([k for k, _ in pts], [v for _, v in pts], color=color, alpha=0.25, s=10)
                ax.step(grid, np.nanmean(curves, 0), where="post", color=color, linewidth=2,
                        label=f"{m.arena.arm_label(arm)} (n={len(arm.units)})")
                if len(arm.units) > 1:
                    ax.fill_between(grid, np.nanmin(curves, 0), np.nanmax(curves, 0), step="post", color=color,
                                    alpha=0.15, linewidth=0)
            ax.axvline(m.b_max, color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"b_max={m.b_max:.3g}", (m.b_max, 0.93), xycoords=("data", "axes fraction"), fontsize=8,
                        xytext=(3, 0), textcoords="offset points")
            ax.set_xlabel("KL budget b (eval/kl of the checkpoints)")
            ax.set_ylabel(f"F(b): best {'gold' if key == 'eval/gold' else 'proxy score'} with KL ≤ b")
            ax.set_title(f"{m.arena.title}: {'gold' if key == 'eval/gold' else 'proxy'} frontier")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    fig.suptitle("Reward–KL frontier per algorithm (step function F(b); line: mean over seeds, band: min–max, dots: checkpoints)")
    fig.tight_layout()
    path = _save(fig, directory / "reward_vs_kl.png")
    return Plot(
        "reward_vs_kl",
        "Reward against KL (frontier)",
        "F(b) = the best reward among an algorithm's checkpoints (SFT point included, all its swept settings pooled per "
        "seed) with KL to the SFT policy ≤ b, as a step function; line = mean over seeds, band = min–max over seeds, "
        "dots = the checkpoints. Compare algorithms left of the dashed line (b_max, the KL every seed of every arm reached).",
        path,
    )


def overoptimisation(context, directory: Path) -> Plot | None:
    curves = [c for c in eval_curves(context) if c.gold is not None]
    if not curves:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False, sharey=True)
    for ax, c in zip(axes[0], curves):
        ax.plot(c.kl, c.score - c.score[0], "-o", color="#ff7f0e", label="proxy score − SFT", markersize=4)
        ax.plot(c.kl, c.gold - c.gold[0], "-o", color="#2ca02c", label="gold − SFT", markersize=4)
        peak = gold_peak(c)
        if peak is not None and peak.reached:
            ax.axvline(peak.kl, color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"gold stops\nimproving\nKL={peak.kl:.2f}", (peak.kl, 0), textcoords="offset points", xytext=(4, 6),
                        fontsize=8)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(f"{c.label} (n={c.n})")
        ax.set_xlabel("eval/kl")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("gain over the SFT policy")
    fig.suptitle("Over-optimisation: proxy and gold as KL grows (mean over seeds)")
    path = _save(fig, directory / "overoptimisation.png")
    return Plot(
        "overoptimisation",
        "Over-optimisation: proxy against gold",
        "Gain over the SFT policy of the proxy (reward-model) score and of the gold reward at each evaluation, "
        "against KL; the dashed line marks where mean gold stops improving (see the definition above), when it does before the last evaluation.",
        path,
    )


def _short(cell_id: str) -> str:
    return cell_id.replace("__", " ")


def memory(context, directory: Path) -> Plot | None:
    frame = context.results
    phases = [(f"{phase.value}_peak_bytes", phase.value) for phase in Phase]
    if not any(_finite(v) for col, _ in phases for v in frame[col]):
        return None
    planned = [v for v in frame["planned_memory_bytes"]]
    has_planned = any(_finite(v) for v in planned)
    has_typical = "planned_typical_memory_bytes" in frame and any(_finite(v) for v in frame["planned_typical_memory_bytes"])
    series = phases + ([("planned_memory_bytes", "planned")] if has_planned else [])
    series += [("planned_typical_memory_bytes", "planned, typical length")] if has_typical else []
    plt = _plt()
    n = len(frame)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * n + 2), 4.5))
    width = 0.8 / len(series)
    x = np.arange(n)
    colors = {"generation": "#1f77b4", "scoring": "#ff7f0e", "training": "#2ca02c", "planned": "#7f7f7f",
              "planned, typical length": "#c7c7c7"}
    for i, (col, label) in enumerate(series):
        values = [float(v) / 2**20 if _finite(v) else 0.0 for v in frame[col]]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=colors[label],
               hatch="//" if label.startswith("planned") else None, alpha=0.6 if label.startswith("planned") else 1.0)
    ax.set_xticks(x, [_short(c) + ("" if s == "ok" else f"\n({s})") for c, s in zip(frame["cell"], frame["status"])],
                  rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("peak memory (MiB)")
    ax.set_title("Measured peak memory per cell and phase" + (" (hatched: planned)" if has_planned else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    path = _save(fig, directory / "memory.png")
    device = "CUDA allocator peaks" if any("cuda" in str(g).lower() for g in (context.run_info.get("hardware") or {}).get("gpus", [])) else "process memory peaks"
    return Plot(
        "memory",
        "Memory per cell and phase",
        f"Peak memory measured in each phase of a step (generation, scoring, training; {device}), one group of bars per "
        "cell" + ("; hatched bars: the memory planner's estimate." if has_planned else "; unfinished cells have no bars.")
        + (" The planned peak is the worst case (every answer reaches response_length, what decides whether a cell "
           "fits); steps whose answers stop early measure below it"
           + (", so the plan at a typical length (light hatched bars) is shown beside it." if has_typical else ".")
           if has_planned else ""),
        path,
    )


def throughput(context, directory: Path) -> Plot | None:
    frame = context.results
    if not any(_finite(v) for v in frame["episodes_per_s"]):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [_short(c) + ("" if s == "ok" else f"\n({s})") for c, s in zip(frame["cell"], frame["status"])]
    algos = list(dict.fromkeys(frame["algorithm"]))
    colors = _colors(algos)
    for ax, (col, title) in zip(axes, [("episodes_per_s", "episodes / s"), ("tokens_per_s", "generated tokens / s")]):
        values = [float(v) if _finite(v) else 0.0 for v in frame[col]]
        ax.bar(range(len(frame)), values, color=[colors[a] for a in frame["algorithm"]])
        ax.set_xticks(range(len(frame)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    axes[1].legend(handles=[Patch(color=colors[a], label=a) for a in algos], fontsize=8, loc="upper left",
                   bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Training throughput per cell (training time only, excluding model loading and SFT evaluation)")
    path = _save(fig, directory / "throughput.png")
    return Plot("throughput", "Throughput per cell", "Episodes and generated tokens per second of training time, per cell.", path)


PLOTTERS = (reward_curves, reward_vs_kl, overoptimisation, memory, throughput)


def make_plots(context) -> list[Plot]:
    directory = context.output_dir / "plots"
    directory.mkdir(parents=True, exist_ok=True)
    plots = []
    for plotter in PLOTTERS:
        plot = plotter(context, directory)
        if plot is not None:
            plots.append(plot)
    return plots
