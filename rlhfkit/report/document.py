"""The report's content, once, as a list of blocks; ``render_markdown`` and ``html.render_html`` print it.

Markdown and HTML therefore say the same thing: same sections, tables, figures and sentences.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from rlhfkit.engine.steps import Phase  # torch-free
from rlhfkit.report import matched as mk
from rlhfkit.report import stats as st
from rlhfkit.report.curves import eval_curves, gold_peak

UNFINISHED = ("pending",)
PROBLEM_STATUSES = ("failed", "oom", "diverged", "timeout", "killed")


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str
    """Plain text; `code` and **bold** are the only inline marks."""
    kind: str = ""
    """``note``/``warning`` for a highlighted box in HTML."""
    literal: bool = False
    """User text (the recipe's description): shown as written, with no inline marks; Markdown punctuation is
    backslash-escaped in report.md and HTML escaped in report.html, so it can neither format nor inject."""


@dataclass
class BulletList:
    items: list[str]


@dataclass
class TableCell:
    text: str
    emphasis: str = ""
    """``win`` (the better side of a comparison), ``muted`` (pending/missing) or ``bad`` (failed)."""
    href: str = ""
    """A link target relative to the report (a saved policy's directory), or none."""

    def __str__(self) -> str:
        return self.text


@dataclass
class Table:
    header: list[str]
    rows: list[list]
    """Cells are str or :class:`TableCell`."""
    caption: str = ""


@dataclass
class Figure:
    plot: object
    """A :class:`rlhfkit.report.plots.Plot`."""


@dataclass
class Code:
    text: str
    language: str = ""


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> None:
        self.blocks.extend(blocks)


# -- formatting -----------------------------------------------------------------------------------------------

def finite(value) -> bool:
    try:
        return value is not None and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def num(value, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if finite(value) else "-"


def mib(value) -> str:
    return f"{float(value) / 2**20:.0f}" if finite(value) else "-"


METRIC_FORMAT = {
    # metric -> (digits, scale, unit)
    "gold_final": (3, 1.0, ""),
    "score_final": (3, 1.0, ""),
    "kl_final": (3, 1.0, ""),
    "peak_memory_bytes": (0, 2**20, " MiB"),
    "episodes_per_s": (1, 1.0, ""),
}


def fmt_estimate(metric: str, estimate) -> str:
    digits, scale, _ = METRIC_FORMAT.get(metric, (3, 1.0, ""))
    return st.format_estimate(estimate, digits, scale)


def fmt_difference(metric: str, difference) -> str:
    digits, scale, unit = METRIC_FORMAT.get(metric, (3, 1.0, ""))
    text = st.format_difference(difference, digits, scale)
    return text + unit if difference is not None else text


# -- sections -------------------------------------------------------------------------------------------------

FINAL_METRICS = ("gold_final", "score_final", "kl_final", "peak_memory_bytes", "episodes_per_s", "tokens_per_s",
                 "ledger/cpu_s")
FINAL_LABELS = {**{m: label for m, (label, _) in st.METRICS.items()}, "tokens_per_s": "throughput (tokens/s)",
                "ledger/cpu_s": "training CPU seconds"}
CENSORABLE = ("gold_final", "score_final")
"""Final values that are "censored" when a cell was still improving: its final value is not where it would end."""


def analysis(context) -> dict:
    """Statistics, comparisons and gold peaks, computed once per context."""
    cache = context.cache
    if "analysis" not in cache:
        curves = eval_curves(context)
        arenas = mk.arenas(context)
        matched = [m for m in (mk.matched_kl(arena) for arena in arenas) if m is not None]
        finals = [(arena, final_comparisons(context, arena)) for arena in arenas]
        cache["analysis"] = {
            "groups": st.group_stats(context.results),
            "arenas": arenas,
            "matched": matched,
            "finals": finals,
            "comparisons": [row for _, rows in finals for row in rows],
            "tuning": mk.tuning_summary(context),
            "curves": curves,
            "peaks": [p for p in (peak_info(c) for c in curves) if p is not None],
        }
    return cache["analysis"]


def final_comparisons(context, arena) -> list[dict]:
    """Final-value comparisons of one arena (only when each arm ran a single setting: across a sweep the final
    values mix settings and the frontier is the comparison).  Rows of :func:`stats.comparisons` plus
    ``censored`` (text, "" when no cell was still improving) and ``arena``."""
    if len(arena.arms) < 2 or any(len(arm.settings) > 1 for arm in arena.arms):
        return []
    ids = {r.id for arm in arena.arms for r in arm.records}
    frame = context.results[context.results["cell"].isin(ids)]
    metrics = [m for m in FINAL_METRICS if m in frame and frame[m].notna().any()]
    rows = st.comparisons(frame, [arm.algorithm for arm in arena.arms], metrics)
    improving = {arm.algorithm: arm.improving() for arm in arena.arms}
    for row in rows:
        row["label"] = FINAL_LABELS.get(row["metric"], row["metric"])
        row["arena"] = arena
        flagged = [f"{alg} {k}/{n} seeds" for alg, (k, n) in improving.items() if alg in (row["a"], row["b"]) and k]
        row["censored"] = ("censored: still improving (" + ", ".join(flagged) + ")") if (
            row["metric"] in CENSORABLE and flagged) else ""
    return rows


@dataclass
class PeakInfo:
    peak: object
    """:class:`curves.GoldPeak` of the group's mean curve."""
    improving: int
    """Seeds whose gold was still rising at the end (:func:`stats.still_improving`)."""
    lr_zero: bool
    """The LR had reached 0 (``eval/lr``) at the checkpoint where mean gold stops improving, in some seed."""


def peak_info(curve) -> PeakInfo | None:
    peak = gold_peak(curve)
    if peak is None:
        return None
    improving = sum(1 for points in curve.per_cell if st.still_improving(points))
    lr_zero = any(st.lr_exhausted(points, peak.step) for points in curve.per_cell)
    return PeakInfo(peak, improving, lr_zero)


def plots(context) -> list:
    cache = context.cache
    if "plots" not in cache:
        from rlhfkit.report.plots import make_plots

        cache["plots"] = make_plots(context)
    return cache["plots"]


def setting_label(settings: str, phase: str) -> str:
    """How a group's swept setting reads in a table: "kl_coef=0.1", "(defaults)", with the phase when not grid."""
    label = settings or "(defaults)"
    return label if phase in ("", "grid") else f"{label} [{phase}]"


def group_table(groups) -> Table:
    header = ["model", "algorithm", "memory", "setting", "seeds (n)"] + [st.METRICS[m][0] for m in st.METRICS]
    header[header.index("peak memory")] = "peak memory (MiB)"
    rows = []
    for g in groups:
        rows.append(
            [g["model"], g["algorithm"], g["memory"], setting_label(g["settings"], g["phase"]),
             f"{', '.join(map(str, g['seeds']))} (n={g['n']})"]
            + [fmt_estimate(m, g[m]) for m in st.METRICS]
        )
    strata = (" Rows over several data seeds: the interval is over the strata's means (n = strata), since RL seeds "
              "of one reward model are not independent replicates.") if any(g.get("strata") for g in groups) else ""
    return Table(header, rows, "Mean over seeds [95% t interval: mean ± t(n−1) · s/√n]; a value without an interval "
                 "rests on one seed. One row per algorithm and swept setting: settings are never pooled as seeds." + strata)


def _p(value) -> str:
    return f"{value:.3g}" if finite(value) else "-"


def comparison_table(comparisons) -> Table:
    header = ["model", "memory", "metric", "difference [95% Welch CI]", "P(A better)", "Welch p", "permutation p",
              "Holm p", "better", "verdict"]
    rows = []
    for c in comparisons:
        comp = c["comparison"]
        direction = {True: "higher is better", False: "lower is better", None: "no direction"}[c["higher_is_better"]]
        verdict = c["verdict"] + conditional_text(comp, c["metric"]) + (f"; {c['censored']}" if c.get("censored") else "")
        rows.append([
            c["model"], c["memory"], f"{c['label']} ({c['a']} − {c['b']}, {direction})",
            fmt_difference(c["metric"], c["difference"]), _p(comp.poi),
            _p(c["difference"].p) if c["difference"] is not None else "-",
            _p(comp.p_perm) + (" (exact)" if comp.perm_exact else ""), _p(comp.p_holm),
            TableCell(c["winner"] or "-", "win" if c["winner"] else ""), verdict,
        ])
    return Table(header, rows, "Difference of means A − B with Welch's 95% interval; P(A better): probability that a run "
                 f"of A beats a run of B (ties ½); Holm p: Welch p adjusted over the metrics compared for the pair. A "
                 f"verdict needs ≥ {st.MIN_SEEDS} seeds per arm and Holm p < {st.ALPHA}; speed and memory only under "
                 f"equal run conditions, memory only beyond {st.MEMORY_PRACTICAL:.0%} of the peak."
                 + (BLOCKED_NOTE if any(c["comparison"].strata for c in comparisons) else ""))


PHASE_NAMES = tuple(phase.value for phase in Phase)


def memory_savings(results) -> list[dict]:
    """Per (model, memory strategy) and pair of algorithms with ``ok`` cells on both sides: the peak memory of A
    minus that of B, measured (mean over seeds, with its interval) and planned, overall and per phase.

    This is where an algorithm without a critic shows its saving: the critic (weights, gradients, AdamW states and
    its graph in the update) is the part it does not have.  Rows: ``{model, memory, a, b, peak_a, peak_b, measured, planned,
    phases}``; the differences are :func:`stats.comparisons` of the memory columns.
    """
    wanted = ["peak_memory_bytes", "planned_memory_bytes"]
    wanted += [f"{kind}{phase}_{suffix}" for phase in PHASE_NAMES
               for kind, suffix in (("", "peak_bytes"), ("planned_", "bytes"))]
    columns = [c for c in wanted if c in results]  # results of older runs may lack the planned columns
    if "peak_memory_bytes" not in columns:
        return []
    peaks = {(g["model"], g["algorithm"], g["memory"], "(tuned)" if g["phase"] == "final" else g["settings"], g["phase"]):
             g["peak_memory_bytes"] for g in st.group_stats(results, metrics=("peak_memory_bytes",))}
    pairs: dict[tuple, dict] = {}
    verdicts: dict[tuple, str] = {}
    for c in st.comparisons(results, metrics=columns):
        key = (c["model"], c["memory"], c["settings"], c["phase"], c["a"], c["b"])
        pairs.setdefault(key, {})[c["metric"]] = c["difference"]
        if c["metric"] == "peak_memory_bytes":
            verdicts[key] = c["verdict"]
    rows = []
    for (model, memory, settings, phase, a, b), differences in pairs.items():
        measured = differences["peak_memory_bytes"]
        peak_a, peak_b = peaks[(model, a, memory, settings, phase)], peaks[(model, b, memory, settings, phase)]
        if measured is None or peak_a is None or peak_b is None:  # no memory measured on one side
            continue

        def diff(column):
            difference = differences.get(column)
            return difference.diff if difference is not None else None

        rows.append(
            {
                "model": model,
                "memory": memory,
                "setting": setting_label(settings, phase),
                "a": a,
                "b": b,
                "peak_a": peak_a.mean,
                "peak_b": peak_b.mean,
                "measured": measured,
                "verdict": verdicts.get((model, memory, settings, phase, a, b), ""),
                "planned": diff("planned_memory_bytes"),
                "phases": {phase: (diff(f"{phase}_peak_bytes"), diff(f"planned_{phase}_bytes")) for phase in PHASE_NAMES},
            }
        )
    return rows


def _signed_mib(value) -> str:
    return f"{value / 2**20:+.1f}" if finite(value) else "-"


def memory_saving_table(savings) -> Table:
    header = ["model", "memory", "setting", "pair", "peak MiB (a / b)", "measured a − b MiB [95% CI]", "% of a", "planned a − b MiB",
              "generation: measured / planned", "scoring: measured / planned", "training: measured / planned"]
    rows = []
    for s in savings:
        share = f"{100 * s['measured'].diff / s['peak_a']:+.0f}%" if s["peak_a"] else "-"
        rows.append(
            [s["model"], s["memory"], s["setting"], f"{s['a']} − {s['b']}", f"{mib(s['peak_a'])} / {mib(s['peak_b'])}",
             st.format_difference(s["measured"], 1, 2**20), share, _signed_mib(s["planned"])]
            + [f"{_signed_mib(m)} / {_signed_mib(p)}" for m, p in s["phases"].values()]
        )
    return Table(header, rows, "Same model, memory strategy and settings; a positive value is memory the second "
                 "algorithm saves. Measured: per-phase peaks (CPU: resident set above the cell's baseline, which also "
                 "holds allocator and library overhead; CUDA: allocator peak); planned: `rlhfkit plan`'s prediction "
                 "for the worst case (every answer reaches response_length).")


def memory_saving_sentence(s) -> str:
    measured = s["measured"]
    text = (f"{s['b']} over {s['a']} ({s['model']}, {s['memory']}, {s['setting']}): measured saving "
            f"{st.format_difference(measured, 1, 2**20)} MiB of peak memory")
    if s["peak_a"]:
        text += f" ({100 * measured.diff / s['peak_a']:+.0f}% of {s['a']}'s peak)"
    if finite(s["planned"]):
        text += f"; planned {s['planned'] / 2**20:+.1f} MiB"
    if s.get("verdict"):
        text += f"; {s['verdict']}"
    return text + "."


def cell_table(results) -> Table:
    header = ["cell", "status", "gold SFT", "gold final", "score final", "KL final", "peak MiB",
              "gen MiB", "score MiB", "train MiB", "episodes/s", "tokens/s", "wall s"]
    rows = []
    for _, r in results.iterrows():
        status = r["status"]
        emphasis = "muted" if status in UNFINISHED else ("bad" if status in PROBLEM_STATUSES else "")
        label = "pending (missing result)" if status == "pending" else status
        rows.append(
            [
                r["cell"],
                TableCell(label, emphasis),
                num(r["gold_sft"]),
                num(r["gold_final"]),
                num(r["score_final"]),
                num(r["kl_final"]),
                mib(r["peak_memory_bytes"]),
                mib(r["generation_peak_bytes"]),
                mib(r["scoring_peak_bytes"]),
                mib(r["training_peak_bytes"]),
                num(r["episodes_per_s"], 1),
                num(r["tokens_per_s"], 0),
                num(r["wall_s"], 0),
            ]
        )
    return Table(header, rows)


def policy_blocks(context) -> list:
    """``[run] save_policies``: a link to every saved policy, and how "best" chose."""
    from rlhfkit.policies import report_rows

    mode = context.recipe.run.save_policies
    if mode == "none":
        return []
    policies, summary = report_rows(context.output_dir)
    kept = {entry["cell"]: entry for entry in (summary.get("kept") or {}).values()}

    def kept_as(p) -> str:
        entry = kept.get(p["id"])
        return f"best by {entry['metric']}" if entry else "saved"

    rows = [[p["cell"]["algorithm"], p["id"], kept_as(p), num(p["summary"].get("gold_final")),
             num(p["summary"].get("score_final")), p["kind"] + (" + merged" if p.get("merged") else ""),
             TableCell(p["path"] + "/", href=p["path"] + "/")] for p in policies]
    how = ("Each cell's final policy, saved with `save_pretrained` and its tokenizer: load a full one with "
           "`AutoModelForCausalLM.from_pretrained(path)`, a LoRA adapter with `AutoPeftModelForCausalLM.from_pretrained(path)` "
           "(its base, named in adapter_config.json, is the checkpoint it was trained on), a merged one from `path/merged`.")
    if mode == "best":
        how += (" Kept: per algorithm, the ok cell with the highest final eval gold (the final proxy score when the "
                "task has no gold reward); the other cells' policies were removed (`policies.json`).")
    table = Table(["algorithm", "cell", "kept as", "gold final", "score final", "kind", "policy"], rows)
    return [Heading("Saved policies", 3), Paragraph(how), table if rows else Paragraph("No policy saved yet.")]



# -- matched KL, budgets, tuning ------------------------------------------------------------------------------

def matched_table(m) -> Table:
    """Per arm: F(b) at each budget and the frontier area (mean [t interval], IQM [bootstrap])."""
    names = {"eval/gold": "gold", "eval/score": "proxy"}
    header = ["algorithm", "seeds (n)"]
    header += [f"{names[k]} at KL ≤ {b:.3g}" for k in m.keys for b in m.budgets]
    header += [f"{names[m.primary]} area on [0, {m.b_max:.3g}]", f"IQM of {names[m.primary]} area [bootstrap CI]",
               "still improving"]
    rows = []
    for arm in m.arena.arms:
        values = m.values[arm.algorithm]
        k, n = arm.improving(m.primary)
        strata = [d for d, _ in arm.units]
        row = [m.arena.arm_label(arm), arm.seeds_text]
        row += [st.format_estimate(st.stratified_interval(values[(key, b)], strata)) for key in m.keys for b in m.budgets]
        area = values[(m.primary, "area")]
        row += [st.format_estimate(st.stratified_interval(area, strata)),
                st.format_estimate(st.stratified_iqm(area, strata)), f"{k}/{n} seeds"]
        rows.append(row)
    reach = ", ".join(f"{alg} {r:.3g}" for alg, r in m.reach.items())
    return Table(header, rows, f"F(b) = best {names[m.primary]} among a seed's checkpoints (SFT point included, all the "
                 f"arm's settings pooled) with KL ≤ b; budgets at {', '.join(f'{f:.0%}' for f in mk.FRACTIONS)} of the "
                 f"common KL range [0, b_max = {m.b_max:.3g}], b_max = the smallest of the arms' reach (reach = smallest "
                 f"over seeds of the largest KL reached: {reach}). Mean over seeds [95% t interval]." + _strata_note(m.arena))


def _strata_note(arena) -> str:
    """The caption's extra sentence when an arena's cells come from several data seeds (reward models)."""
    if all(len(arm.strata) < 2 for arm in arena.arms):
        return ""
    return (" Several data seeds: intervals are over the strata's means (RL seeds are nested in each reward model) "
            "and the IQM's bootstrap resamples each stratum on its own.")


def matched_comparison_table(m) -> Table:
    header = ["pair", "metric", "difference [95% Welch CI]", "P(A better)", "permutation p", "Holm p",
              "smallest detectable effect", "verdict"]
    rows = []
    for c in m.comparisons:
        mde = f"{c.mde:.3g} ({c.mde_sd:.2f} SD)" if c.mde is not None else "-"
        rows.append([f"{c.a} − {c.b}", c.label, st.format_difference(c.difference), _p(c.poi),
                     _p(c.p_perm) + (" (exact)" if c.perm_exact else ""), _p(c.p_holm), mde,
                     TableCell(c.verdict + conditional_text(c), "win" if c.winner else "")])
    return Table(header, rows, "Holm's correction over the budgets and the area compared for each pair; the smallest "
                 "detectable effect is the true difference a two-sided test at α = 0.05 finds with power 0.8 at these "
                 "seed counts (in the metric's units and in pooled standard deviations)."
                 + (BLOCKED_NOTE if any(c.strata for c in m.comparisons) else ""))


BLOCKED_NOTE = (" Several data seeds: the difference, its interval, p-values and verdict are blocked by stratum (per "
                "data seed the difference of the arms' means over RL seeds; t over the strata, n = strata), because "
                "every algorithm of a stratum is scored by that stratum's reward model. \"conditional\": the "
                "pooled-within-stratum Welch over all cells, valid only for these reward models (strata held fixed).")


def conditional_text(c, metric: str = "") -> str:
    """The pooled-within-stratum Welch stated beside a blocked verdict ("" for an unblocked comparison, and where
    the cells may not be compared at all, e.g. speed under different run conditions)."""
    if not getattr(c, "strata", 0) or c.blocked:
        return ""
    w = c.conditional
    if w is None:
        return "; conditional on these reward models: needs ≥ 2 RL seeds per arm in every stratum"
    return (f"; conditional on these reward models (pooled-within-stratum Welch, {w.n_a} and {w.n_b} cells): "
            f"{fmt_difference(metric, w)}, p = {_p(w.p)}")


LEDGER_MODELS = ("policy", "reference", "reward", "critic")
LEDGER_ROWS = (
    [("ledger/episodes", "episodes (completions generated)"), ("ledger/prompts", "prompts sampled (distinct within a step, summed over steps)"),
     ("ledger/generated_tokens", "generated tokens")]
    + [(f"ledger/{m}/{q}", f"{m}: {q.replace('_', ' ')}") for m in LEDGER_MODELS
       for q in ("optimizer_steps", "forward_tokens", "backward_tokens")]
    + [("ledger/updates", "policy updates"), ("updates_per_batch", "policy updates per rollout batch"),
       ("ledger/flops", "FLOPs (estimated)"), ("ledger/wall_s", "training wall s"), ("ledger/cpu_s", "training CPU s")]
)
LEGACY_ROWS = (("episodes", "episodes"), ("train_s", "training s"), ("wall_s", "wall s"))


def quantity(value) -> str:
    if not finite(value):
        return "-"
    value = float(value)
    if abs(value) >= 1e6:
        return f"{value:.3g}"
    return f"{value:,.0f}" if value == int(value) else f"{value:.3g}"


def updates_per_batch(context, record) -> float | None:
    """Policy optimizer steps per rollout batch: ledger updates / (ledger episodes / the arm's batch size)."""
    row = record.row
    updates = row.get("ledger/policy/optimizer_steps", row.get("ledger/updates"))
    episodes = row.get("ledger/episodes")
    recipe = context.recipe
    try:
        config = recipe.config_for(record.cell) if hasattr(recipe, "config_for") else recipe.algorithms[record.algorithm]
        batch = float(config.batch_size)
    except (KeyError, AttributeError, TypeError):
        return None
    if not finite(updates) or not finite(episodes) or float(episodes) <= 0:
        return None
    return float(updates) / (float(episodes) / batch)


def budget_table(context, arena) -> Table:
    """What each arm got: the ledger per arm (mean over its cells, min–max when they differ)."""
    records = {arm.algorithm: arm.records for arm in arena.arms}
    columns = set(context.results.columns)
    has_ledger = any(c.startswith("ledger/") for c in columns)
    wanted = LEDGER_ROWS if has_ledger else LEGACY_ROWS
    rows = []
    for key, label in wanted:
        per_arm = []
        for arm in arena.arms:
            if key == "updates_per_batch":
                values = [updates_per_batch(context, r) for r in records[arm.algorithm]]
            else:
                values = [r.row.get(key) for r in records[arm.algorithm]]
            values = [float(v) for v in values if finite(v)]
            text = quantity(sum(values) / len(values)) if values else "-"
            if values and max(values) != min(values):
                text += f" ({quantity(min(values))}–{quantity(max(values))})"
            per_arm.append(text)
        if any(t != "-" for t in per_arm):
            rows.append([label] + per_arm)
    conditions = [", ".join(sorted({str(r.row.get("run_conditions")) for r in records[arm.algorithm]
                                    if isinstance(r.row.get("run_conditions"), str)})) or "-" for arm in arena.arms]
    rows.append(["run conditions"] + conditions)
    caption = ("Compute ledger (engine-counted), mean over the arm's cells (min–max when they differ)." if has_ledger
               else "This run has no compute ledger (older rlhfkit): only episodes and times are known.")
    return Table(["what each arm got"] + [f"{arena.arm_label(a)} (n={len(a.records)} cells)" for a in arena.arms],
                 rows, caption)


def tuning_table(summary) -> Table:
    rows = []
    for t in summary:
        for s in t["settings"]:
            tuned = s["settings"] in t["tuned"]
            rows.append([t["algorithm"], TableCell(s["settings"] or "(defaults)", "win" if tuned else ""), str(s["n"]),
                         st.format_estimate(s["gold"]), st.format_estimate(s["kl"])])
    return Table(["algorithm", "setting (tuned one highlighted)", "tuning seeds", "final gold [95% t]", "final KL [95% t]"],
                 rows, "Tuning cells (phase \"tuning\"): their seeds are not reused for the tuned-vs-tuned comparison.")


def tuning_sentence(t) -> str:
    keys = ", ".join(f"`{k}`" for k in t["keys"]) or "nothing"
    tuned = "; tuned setting: " + " / ".join(f"`{s}`" for s in t["tuned"]) if t["tuned"] else "; no final (tuned) cells yet"
    return (f"{t['algorithm']}: tuned {keys} over {len(t['settings'])} settings on seeds "
            f"{', '.join(map(str, t['seeds']))}{tuned}.")


# -- over-optimisation ----------------------------------------------------------------------------------------

def peak_table(peaks) -> Table:
    header = ["group", "seeds", "gold SFT", "KL where gold stops improving", "step", "gold there", "gold peak (step)",
              "KL at peak", "gold final", "gold drop after peak", "proxy change after peak", "KL final"]
    rows = []
    for info in peaks:
        p = info.peak
        shown = p.reached and not info.improving and not info.lr_zero
        if info.improving:
            kl = f"not reached (> {num(p.kl_final)}): still improving in {info.improving}/{p.n} seeds"
        elif p.reached and info.lr_zero:
            kl = f"not identified: the LR had reached 0 at step {p.step}"
        else:
            kl = num(p.kl) if p.reached else f"not reached (> {num(p.kl_final)})"
        drop = num(p.gold_drop) if p.gold_drop > 0 else "-"
        change = f"{p.score_change_after:+.3f}" if p.gold_drop > 0 else "-"
        rows.append([p.label, str(p.n), num(p.gold_start), kl, str(p.step) if shown else "-", num(p.gold) if shown else "-",
                     f"{num(p.gold_peak)} ({p.peak_step})", num(p.peak_kl), num(p.gold_final), drop, change, num(p.kl_final)])
    return Table(header, rows, "Mean over seeds at each evaluation step; tolerance = 5% of the best gain over SFT. Not "
                 "reported where a seed was still improving (censored) or the LR had reached 0 there.")


def peak_sentence(info) -> str:
    p = info.peak
    if info.improving:
        return (f"{p.label}: gold still improving at the end of training in {info.improving}/{p.n} seeds (censored: "
                f"where gold stops improving is not observed; final KL {num(p.kl_final)}).")
    if p.reached and info.lr_zero:
        return (f"{p.label}: gold levels off at step {p.step}, where the learning rate had reached 0: the end of the "
                f"LR schedule, not a KL limit of the algorithm (n={p.n}).")
    if p.reached:
        text = f"{p.label}: gold stops improving at KL {num(p.kl)} (step {p.step}, gold {num(p.gold)}, n={p.n})"
    else:
        text = f"{p.label}: gold still improving at the last evaluation (KL {num(p.kl_final)}, n={p.n})"
    if p.gold_drop > 0:
        text += (f"; after its peak (KL {num(p.peak_kl)}, step {p.peak_step}) gold falls by {num(p.gold_drop)} while the "
                 f"proxy changes by {p.score_change_after:+.3f}")
    return text + "."


# -- findings -------------------------------------------------------------------------------------------------

def _arm_mean(context, arm, key) -> float | None:
    values = [float(r.row[key]) for r in arm.records if finite(r.row.get(key))]
    return sum(values) / len(values) if values else None


def budget_sentence(context, arena) -> str:
    parts = []
    for arm in arena.arms:
        items = []
        for key, label in (("ledger/policy/optimizer_steps", "policy updates"), ("ledger/critic/optimizer_steps",
                           "critic updates"), ("ledger/episodes", "episodes"), ("ledger/flops", "FLOPs"),
                           ("ledger/cpu_s", "CPU s")):
            value = _arm_mean(context, arm, key)
            if value is not None:
                items.append(f"{quantity(value)} {label}")
        if not items and _arm_mean(context, arm, "episodes") is not None:
            items.append(f"{quantity(_arm_mean(context, arm, 'episodes'))} episodes (no ledger)")
        parts.append(f"{arm.algorithm}: " + ", ".join(items or ["-"]))
    return f"Budget ({arena.title}): " + "; ".join(parts) + "."


def _arm_interval(m, arm, budget):
    return st.stratified_interval(m.values[arm.algorithm][(m.primary, budget)], [d for d, _ in arm.units])


def matched_findings(m) -> list[str]:
    title = m.arena.title
    if m.b_max <= st.KL_ZERO:
        return [f"**Matched KL** ({title}): no arm moved away from the SFT policy; nothing to compare."]
    reach = ", ".join(f"{alg} {r:.3g}" for alg, r in m.reach.items())
    items = [f"**Matched KL** ({title}): common KL range [0, {m.b_max:.3g}], the smallest of the arms' reach ({reach})."]
    for budget in m.budgets + ["area"]:
        label = mk.metric_label(m.primary, budget, m.b_max)
        values = ", ".join(f"{arm.algorithm} {st.format_estimate(_arm_interval(m, arm, budget))} (n={len(arm.units)})"
                           for arm in m.arena.arms)
        verdicts = " ".join(f"{c.a} − {c.b} = {st.format_difference(c.difference)}: {c.verdict}." for c in m.comparisons
                            if c.label == label)
        items.append(f"{label}: {values}. {verdicts}".rstrip())
    return items


def findings(context, a) -> list[str]:
    """Matched-KL results first, then budgets and tuning, then final values (censored marked), then peaks."""
    items = [text for m in a["matched"] for text in matched_findings(m)]
    items += [budget_sentence(context, arena) for arena in a["arenas"] if len(arena.arms) > 1]
    items += [tuning_sentence(t) for t in a["tuning"]]
    for arena, rows in a["finals"]:
        if len(arena.arms) > 1 and not rows:
            items.append(f"Final values ({arena.title}) are not compared: an arm ran several settings, so its final "
                         "values mix them; the frontier above is the comparison.")
        for c in rows:
            if c["metric"] in ("gold_final", "score_final", "kl_final", "peak_memory_bytes", "episodes_per_s"):
                censored = f" ({c['censored']})" if c["censored"] else ""
                items.append(f"{c['label'][0].upper() + c['label'][1:]}{censored} ({arena.title}): {c['a']} − {c['b']} = "
                             f"{fmt_difference(c['metric'], c['difference'])}: {c['verdict']}.")
    items += [peak_sentence(p) for p in a["peaks"]]
    return items


# -- methods: statistics, effective configuration, samples ----------------------------------------------------

METHODS = [
    "Final values are the last evaluation on held-out prompts (eval/gold, eval/score, eval/kl); the same prompts and "
    "sampling random numbers for every cell and checkpoint.",
    "Mean [95% t interval]: mean ± t(n−1)·s/√n over seeds (scipy.stats.t), honest at small n where a bootstrap "
    "interval of 2 seeds is just their range.",
    "Difference A − B: Welch's t test and interval (scipy.stats.ttest_ind, equal_var=False; degrees of freedom by "
    "Welch–Satterthwaite), which does not assume equal spread across algorithms.",
    "Permutation p: scipy.stats.permutation_test of the difference of means over seed labels, exact (every split "
    f"enumerated) when there are at most {st.PERMUTATIONS:,} splits; it assumes nothing about the distribution.",
    "IQM: mean of the middle 50% of runs with fractional weights at the quartile cuts, with a stratified percentile "
    f"bootstrap ({st.IQM_RESAMPLES:,} resamples, strata resampled on their own; rliable's aggregate), robust to one "
    "outlying seed.",
    "P(A better): probability that a run of A beats a run of B, ties counting ½ (Mann–Whitney U / (n_A·n_B), rliable's "
    "probability of improvement), a scale-free effect size.",
    "Holm: the Welch p-values of all metrics compared for one pair of arms are Holm-adjusted, so testing several "
    "metrics or budgets does not inflate false verdicts.",
    f"Verdicts: \"X better\" only with ≥ {st.MIN_SEEDS} seeds per arm and Holm-adjusted Welch p < {st.ALPHA}; speed and "
    f"memory only between cells with the same run conditions; a memory difference under {st.MEMORY_PRACTICAL:.0%} of "
    "the peak is never called better (simulated with no true difference: ≤ 7% false verdicts at 5 seeds, 0 below 4).",
    f"Smallest detectable effect: the true difference a two-sided t test at α = {st.ALPHA} finds with power "
    f"{st.POWER} at the seeds used (noncentral t), so a \"no difference detected\" can be read for what it rules out.",
    "Matched KL: F(b) = best gold among a seed's checkpoints (SFT point included; an algorithm's settings pooled) with "
    "KL ≤ b; compared at 25/50/75% of [0, b_max] and by the area under the step function F on [0, b_max], b_max "
    "being the smallest KL every seed of every arm reached, so no arm is credited for KL it never visited.",
    "Still improving (censored): over a cell's last max(3, ⌈T/4⌉) checkpoints the least-squares slope of gold against "
    "step exceeds its standard error, or its last checkpoint has its best gold; final values are then marked censored.",
    "Gold stops improving: not stated where the LR (eval/lr) had reached 0 (≤ 0.1% of its peak) at that checkpoint, "
    "nor where a seed was still improving.",
    "Peak memory: the largest of the generation, scoring and training phase peaks (CUDA: the allocator's peak; CPU: "
    "the resident set above the cell's baseline, see docs/memory.md); throughput: episodes per second of training time.",
]


def config_blocks(context, a) -> list:
    """The effective configuration of every arm from ``resolved.json`` ({cell id or algorithm: {key: value}})."""
    from rlhfkit.results import read_json

    resolved = read_json(context.output_dir / "resolved.json")
    if not resolved:
        return [Paragraph("No `resolved.json` in the run directory: the effective configuration of each arm was not "
                          "recorded; the recipe below is what was written, defaults not included.")]
    cells = resolved.get("cells") if isinstance(resolved.get("cells"), dict) else resolved

    def config_of(entry):  # the runner writes {"cells": {id: {..., "config": {...}}}}; plain {id: {...}} too
        return entry.get("config", entry) if isinstance(entry, dict) else None

    columns = {}
    for arena in a["arenas"]:
        for arm in arena.arms:
            for record in arm.records:
                config = config_of(cells.get(record.id)) or config_of(cells.get(record.algorithm))
                label = f"{record.algorithm} ({record.settings})" if record.settings else record.algorithm
                if config is not None and label not in columns:
                    columns[label] = config
    if not columns:
        columns = {name: config_of(entry) for name, entry in cells.items() if config_of(entry) is not None}
    keys = sorted({k for config in columns.values() for k in config})
    differs = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in columns.values()}) > 1]
    rows = [[TableCell(k, "win" if k in differs else "")] + [str(c.get(k, "-")) for c in columns.values()]
            for k in differs + [k for k in keys if k not in differs]]
    return [Table(["key (differing keys first, highlighted)"] + list(columns), rows,
                  "Every setting each arm trained with, defaults included (`resolved.json`).")]


def _clip(text, limit: int = 160) -> str:
    text = str(text).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def samples_table(a) -> Table | None:
    """The same held-out prompts answered by each algorithm at the first and the last evaluation (one cell each)."""
    arenas = [arena for arena in a["arenas"] if arena.arms]
    if not arenas:
        return None
    picks = [(arm.algorithm, arm.records[0]) for arm in arenas[0].arms if arm.records and arm.records[0].evals]
    if not picks:
        return None

    def completions(evaluation):
        return {s.get("prompt"): s.get("completion") for s in (evaluation.get("samples") or []) if isinstance(s, dict)}

    prompts = list(completions(picks[0][1].evals[0]))[:3]
    rows = []
    for prompt in prompts:
        for algorithm, record in picks:
            start, end = completions(record.evals[0]), completions(record.evals[-1])
            rows.append([_clip(prompt, 80), f"{algorithm} (`{record.id}`)", _clip(start.get(prompt, "-")),
                         _clip(end.get(prompt, "-"))])
    if not rows:
        return None
    first, last = picks[0][1].evals[0].get("eval/step"), picks[0][1].evals[-1].get("eval/step")
    return Table(["held-out prompt", "algorithm (cell)", f"start (step {first})", f"end (step {last})"], rows,
                 "Samples stored with the first and last evaluation of one seed per algorithm, same prompts.")


# -- the document ---------------------------------------------------------------------------------------------

def header_blocks(context) -> list:
    results = context.results
    counts = results["status"].value_counts().to_dict()
    total = len(results)
    blocks = [Paragraph("Cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" (of {total}).")]
    pending = results[results["status"] == "pending"]
    if not pending.empty:
        blocks.append(Paragraph(
            f"**Partial run**: {total - len(pending)} of {total} cells have a result; {len(pending)} pending/missing "
            "(not run yet, interrupted, or result.json missing): " + ", ".join(f"`{c}`" for c in pending["cell"])
            + ". Statistics and figures use finished cells only; rerun `rlhfkit run` with the same recipe and "
            "--output to finish them.", kind="warning"))
    return blocks


def comparison_blocks(context, a, figures) -> list:
    """Matched KL (with the budget each arm got), then tuning, then final values: the order of the Findings."""
    blocks = [Heading("Matched-KL results")]
    if not a["matched"]:
        blocks.append(Paragraph("No evaluation checkpoints with eval/kl yet: nothing to compare at matched KL."))
    for m in a["matched"]:
        blocks += [Heading(f"Gold at matched KL: {m.arena.title}", 3), matched_table(m)]
        if m.comparisons:
            blocks.append(matched_comparison_table(m))
        blocks += [Heading(f"What each arm got: {m.arena.title}", 4), budget_table(context, m.arena)]
    blocks.append(Heading("Reward against KL"))
    if "reward_vs_kl" in figures:
        blocks.append(Figure(figures["reward_vs_kl"]))
    if a["tuning"]:
        blocks += [Heading("Tuning"), BulletList([tuning_sentence(t) for t in a["tuning"]]), tuning_table(a["tuning"])]
    blocks.append(Heading("Final values"))
    for arena, rows in a["finals"]:
        if rows:
            blocks += [Heading(f"Final values: {arena.title}", 3), budget_table(context, arena), comparison_table(rows)]
    blocks += variance_blocks(a)
    blocks.append(Heading("Results over seeds", 3))
    blocks.append(group_table(a["groups"]) if a["groups"] else Paragraph("No cell has finished ok yet."))
    return blocks


VARIANCE_TITLE = "Variance: reward-model seeds vs RL seeds"


def variance_blocks(a) -> list:
    """With several data seeds: per arm and metric, how much of the spread comes from the stage stratum (its data
    draw, SFT policy and reward model) and how much from the RL seeds inside it ([] with one stratum)."""
    matched = {id(m.arena): m for m in a["matched"]}
    rows = [(arena, r) for arena in a["arenas"] for r in mk.variance_rows(arena, matched.get(id(arena)))]
    if not rows:
        return []
    several = len({id(arena) for arena, _ in rows}) > 1
    table = Table(
        (["arena"] if several else []) + ["arm", "metric", "strata", "cells", "σ² between strata (RM/SFT)",
                                          "σ² within (RL seeds)", "share from the RM/SFT stratum"],
        [([arena.title] if several else []) + [r["arm"], r["metric"], str(r["split"].strata), str(r["split"].cells),
          f"{r['split'].between:.4g}", f"{r['split'].within:.4g}",
          f"{r['split'].share:.0%}" if r["split"].share is not None else "-"] for arena, r in rows],
        "One-way random-effects ANOVA over data seeds (method of moments): σ²_within = MS_within, σ²_between = "
        "max(0, (MS_between − MS_within) / n0), n0 = (N − Σ n_i²/N) / (k − 1); share = σ²_between / (σ²_between + "
        "σ²_within). A large share means more reward models, not more RL seeds, narrow the comparison.")
    return [Heading(VARIANCE_TITLE, 3), table]


STRATA_METHODS = [
    "Data seeds ([grid] data_seeds): each is a stratum with its own data draw, tokenizer, SFT policy and reward model; "
    "RL seeds are nested in it, so algorithms are compared blocked by stratum (per stratum the difference of the "
    "arms' means over RL seeds, t interval and verdict over strata, n = strata) and the pooled-within-stratum Welch "
    "over all cells is shown beside it as the comparison conditional on these reward models.",
    "Variance split: a one-way random-effects ANOVA over strata (method of moments) gives the reward-model/SFT "
    "stratum's variance and the RL seeds' variance within it; IQM intervals resample each stratum on its own "
    "(rliable's stratified bootstrap).",
]


def reward_methods(recipe) -> list[str]:
    """What "proxy score" means per model row, when a row optimises anything but its reward model's score
    (reward functions, ``reward_weights``); nothing for recipes that do not (their report reads as before)."""
    from rlhfkit.rewards import describe, is_plain_model

    rows = getattr(recipe, "models", {}) or {}
    if all(is_plain_model(entry) for entry in rows.values()):
        return []
    each = "; ".join(f"{name}: {describe(entry)}" for name, entry in rows.items())
    return [f"Proxy score (eval/score, \"score final\", \"proxy\"): the reward each model row optimises, read the "
            f"same way at step 0 and at every later evaluation (before the missing-EOS penalty): {each}. Each "
            "component of a weighted sum is logged unweighted beside it (eval/reward/model, eval/reward/fn:NAME)."]


def build_document(context):
    if "document" in context.cache:
        return context.cache["document"]
    recipe = context.recipe
    results = context.results
    a = analysis(context)
    figures = {p.name: p for p in plots(context)}
    doc = Document(f"rlhfkit report: {recipe.name}")
    if recipe.description:
        doc.add(Paragraph(recipe.description, literal=True))
    doc.add(*header_blocks(context))

    doc.add(Heading("Findings"))
    items = findings(context, a)
    doc.add(BulletList(items) if items else Paragraph("No finished cells to compare yet."))
    doc.add(*comparison_blocks(context, a, figures))

    doc.add(Heading("Reward during training"))
    if "reward_curves" in figures:
        doc.add(Figure(figures["reward_curves"]))

    doc.add(Heading("Over-optimisation"))
    if a["peaks"]:
        doc.add(
            Paragraph(
                "**Where gold stops improving**: per algorithm, eval/gold and eval/kl are averaged over seeds at each "
                "evaluation step (step 0 = SFT policy). With tolerance = 5% of the best mean gain over SFT, gold stops "
                "improving at the earliest evaluation after which it never gains more than the tolerance; the KL there "
                "is reported, unless a seed was still improving at the end (censored) or the LR had reached 0 at that "
                "checkpoint (then the plateau is the schedule's end). The gold peak is the earliest step with the highest "
                "mean gold; gold drop = peak gold − final gold, proxy change = final − peak proxy score."
            ),
            peak_table(a["peaks"]),
        )
        if "overoptimisation" in figures:
            doc.add(Figure(figures["overoptimisation"]))
    else:
        doc.add(Paragraph("The task has no gold reward (or no cell has finished): nothing to compare the proxy against."))

    doc.add(Heading("Memory and throughput"))
    savings = memory_savings(results)
    if savings:
        doc.add(Heading("Memory saving between algorithms at equal settings", 3), memory_saving_table(savings),
                BulletList([memory_saving_sentence(s) for s in savings]))
    for name in ("memory", "throughput"):
        if name in figures:
            doc.add(Figure(figures[name]))

    doc.add(Heading("Cells"), cell_table(results))
    problems = results[results["status"].isin(PROBLEM_STATUSES)]
    if not problems.empty:
        doc.add(Heading("Problems", 3), BulletList([f"`{r['cell']}`: {r['status']}: {r['error']}" for _, r in problems.iterrows()]))
    doc.add(*policy_blocks(context))
    doc.add(*context_blocks(context))
    several = "data_seed" in results and results["data_seed"].nunique() > 1
    doc.add(Heading("Methods"), BulletList(METHODS + reward_methods(recipe) + (STRATA_METHODS if several else [])),
            Heading("Effective configuration", 3), *config_blocks(context, a))
    samples = samples_table(a)
    if samples is not None:
        doc.add(Heading("Sample completions at the start and end of training", 3), samples)
    context.cache["document"] = doc
    return doc


STAGE_LABELS = {"tokenizer": "tokenizer", "sft": "SFT", "dpo": "DPO", "reward_model": "RM"}
REWARD_TOKENIZER_NOTES = {
    "own": "the reward model has its own tokenizer (another vocabulary than the policy's): each completion is "
           "decoded with the policy's tokenizer and re-encoded with the reward model's before scoring; PPO's critic "
           "starts from the SFT policy (the DPO policy on a row with a DPO stage) with a fresh one-label head (it must read the policy's tokens, which the "
           "reward model cannot)",
    "same": "the reward model has its own tokenizer with the policy's vocabulary: it reads the policy's token ids",
}


def stages_text(info: dict) -> str:
    """``SFT given, RM given`` from the stage metrics' ``stages`` (stage -> trained | given | cached)."""
    stages = info.get("stages")
    if not isinstance(stages, dict):
        return "-"
    return ", ".join(f"{STAGE_LABELS.get(k, k)} {v}" for k, v in stages.items())
def dpo_blocks(stages: dict) -> list:
    """The DPO stage of the rows that have one (``dpo = true``): DPO's implicit reward on training and held-out
    pairs (chosen ranked above rejected, chosen-minus-rejected margin), its loss, and whether it was trained or
    reused; nothing for a run without one."""
    rows = {name: info for name, info in sorted(stages.items()) if "dpo/eval_reward_accuracy" in info}
    if not rows:
        return []
    return [Heading("DPO stage (the RL start and reference policy of its row)", 3), Table(
        ["model", "stage", "train reward accuracy", "held-out reward accuracy", "held-out margin", "held-out loss",
         "pairs", "seconds"],
        [[name, (info.get("stages") or {}).get("dpo", "-"), num(info.get("dpo/train_reward_accuracy")),
          num(info.get("dpo/eval_reward_accuracy")), num(info.get("dpo/eval_margin")), num(info.get("dpo/eval_loss")),
          str(info.get("dpo/train_pairs", "-")), num(info.get("dpo/seconds"), 0)] for name, info in rows.items()]),
        Paragraph("Reward accuracy and margin are DPO's implicit reward, beta x (log pi - log pi_SFT), of the chosen "
                  "minus the rejected answer. The cells of these rows start from the DPO policy and are held to it by "
                  "the KL penalty; their step-0 evaluation (the \"SFT\" columns) is of the DPO policy.")]


def context_blocks(context) -> list:
    """Stages, environment and the recipe text."""
    blocks = []
    if context.stages:
        blocks += [Heading("Stages (SFT and reward model)"), Table(
            ["model", "status", "stages", "SFT eval loss", "RM held-out accuracy", "seconds"],
            [[name, info.get("status", "-"), stages_text(info), num(info.get("sft/eval_loss")),
              num(info.get("reward/eval_accuracy")), num(info.get("wall_s"), 0)]
             for name, info in sorted(context.stages.items())])]
        notes = [f"`{name}`: {REWARD_TOKENIZER_NOTES[info['reward/tokenizer']]}"
                 for name, info in sorted(context.stages.items()) if info.get("reward/tokenizer") in REWARD_TOKENIZER_NOTES]
        if notes:
            blocks.append(BulletList(notes))
        blocks += dpo_blocks(context.stages)
    blocks.append(Heading("Environment"))
    info = context.run_info
    if info:
        versions = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items() if v)
        hw = info.get("hardware") or {}
        items = [
            f"versions: {versions}",
            f"hardware: {hw.get('cpu_count')} CPUs ({hw.get('machine', '?')}), {mib(hw.get('memory_bytes'))} MiB RAM, "
            f"{', '.join(hw.get('gpus', []) or []) or 'no GPU'}",
            f"platform: {hw.get('platform', '-')}",
            f"first started {info.get('first_started', '-')}, last started {info.get('last_started', '-')}",
        ]
        if info.get("command"):
            items.append("command: `" + " ".join(str(x) for x in info["command"]) + "`")
        blocks.append(BulletList(items))
    else:
        blocks.append(Paragraph("run.json is missing: no environment recorded."))
    recipe_path = context.output_dir / "recipe.toml"
    blocks += [Heading("Recipe"), Code(recipe_path.read_text() if recipe_path.is_file() else "", "toml")]
    return blocks


# -- Markdown ---------------------------------------------------------------------------------------------------

# Every character with a meaning in CommonMark or as raw HTML; a backslash before ASCII punctuation always
# stands for the character itself.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~&])")


def md_literal(text: str) -> str:
    """``text`` as Markdown that renders exactly as written (line breaks kept as lines)."""
    return "\n".join(_MD_SPECIAL.sub(r"\\\1", line.strip()) for line in str(text).splitlines())


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_cell(cell) -> str:
    if isinstance(cell, TableCell):
        text = _md_escape(cell.text)
        if cell.href:
            text = f"[{text}](<{cell.href}>)"
        if cell.emphasis == "win":
            return f"**{text}**"
        if cell.emphasis == "muted":
            return f"_{text}_"
        if cell.emphasis == "bad":
            return f"**{text}**"
        return text
    return _md_escape(cell)


def md_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in table.header) + " |", "|" + "|".join("---" for _ in table.header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", f"_{table.caption}_"]
    return "\n".join(lines)


def render_markdown(doc: Document, output_dir) -> str:
    lines = [f"# {doc.title}", ""]
    for block in doc.blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            text = md_literal(block.text) if block.literal else block.text
            lines += [("> " if block.kind else "") + text, ""]
        elif isinstance(block, BulletList):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            lines += [md_table(block), ""]
        elif isinstance(block, Figure):
            plot = block.plot
            rel = plot.path.relative_to(output_dir).as_posix()
            lines += [f"![{plot.title}]({rel})", "", f"_{plot.caption}_", ""]
        elif isinstance(block, Code):
            # A fence longer than any backtick run inside (the recipe's text may hold one): it cannot be closed early.
            fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", block.text)), default=0))
            lines += [f"{fence}{block.language}", block.text.rstrip("\n"), fence, ""]
    return "\n".join(lines)
