"""The report's content, once, as a list of blocks; ``render_markdown`` and ``html.render_html`` print it.

Markdown and HTML therefore say the same thing: same sections, tables, figures and sentences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlhfkit.report import stats as st
from rlhfkit.report.curves import eval_curves, gold_peak

UNFINISHED = ("pending",)
PROBLEM_STATUSES = ("failed", "oom", "diverged", "timeout")


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


@dataclass
class BulletList:
    items: list[str]


@dataclass
class TableCell:
    text: str
    emphasis: str = ""
    """``win`` (the better side of a comparison), ``muted`` (pending/missing) or ``bad`` (failed)."""

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

def analysis(context) -> dict:
    """Statistics, comparisons and gold peaks, computed once per context."""
    cache = context.cache
    if "analysis" not in cache:
        algorithms = list(context.recipe.grid.algorithms)
        curves = eval_curves(context)
        cache["analysis"] = {
            "groups": st.group_stats(context.results),
            "comparisons": st.comparisons(context.results, algorithms),
            "curves": curves,
            "peaks": [p for p in (gold_peak(c) for c in curves) if p is not None],
        }
    return cache["analysis"]


def plots(context) -> list:
    cache = context.cache
    if "plots" not in cache:
        from rlhfkit.report.plots import make_plots

        cache["plots"] = make_plots(context)
    return cache["plots"]


def group_table(groups) -> Table:
    header = ["model", "algorithm", "memory", "seeds (n)"] + [st.METRICS[m][0] for m in st.METRICS]
    header[header.index("peak memory")] = "peak memory (MiB)"
    rows = []
    for g in groups:
        rows.append(
            [g["model"], g["algorithm"], g["memory"], f"{', '.join(map(str, g['seeds']))} (n={g['n']})"]
            + [fmt_estimate(m, g[m]) for m in st.METRICS]
        )
    return Table(header, rows, "Mean over seeds [95% bootstrap CI]; a value without an interval rests on one seed.")


def comparison_table(comparisons) -> Table:
    header = ["model", "memory", "metric", "difference [95% CI]", "better", "verdict"]
    rows = []
    for c in comparisons:
        winner = c["winner"]
        significant = c["difference"] is not None and c["difference"].significant
        rows.append(
            [
                c["model"],
                c["memory"],
                f"{c['label']} ({c['a']} − {c['b']}, {'higher' if c['higher_is_better'] else 'lower'} is better)",
                fmt_difference(c["metric"], c["difference"]),
                TableCell(winner or "-", "win" if significant else ""),
                c["verdict"],
            ]
        )
    return Table(header, rows, "Difference of means, each algorithm's seeds resampled independently (10,000 resamples). "
                 "The better side is highlighted only when its interval excludes 0.")


PHASE_NAMES = ("generation", "scoring", "training")


def memory_savings(results) -> list[dict]:
    """Per (model, memory strategy) and pair of algorithms with ``ok`` cells on both sides: the peak memory of A
    minus that of B, measured (mean over seeds, with its interval) and planned, overall and per phase.

    This is where RLOO's saving over PPO shows: PPO's critic (weights, gradients, AdamW states and its graph in
    the update) is the part RLOO does not have.  Rows: ``{model, memory, a, b, peak_a, peak_b, measured, planned,
    phases}``; the differences are :func:`stats.comparisons` of the memory columns.
    """
    wanted = ["peak_memory_bytes", "planned_memory_bytes"]
    wanted += [f"{kind}{phase}_{suffix}" for phase in PHASE_NAMES
               for kind, suffix in (("", "peak_bytes"), ("planned_", "bytes"))]
    columns = [c for c in wanted if c in results]  # results of older runs may lack the planned columns
    if "peak_memory_bytes" not in columns:
        return []
    peaks = {(g["model"], g["algorithm"], g["memory"]): g["peak_memory_bytes"]
             for g in st.group_stats(results, metrics=("peak_memory_bytes",))}
    pairs: dict[tuple, dict] = {}
    for c in st.comparisons(results, metrics=columns):
        pairs.setdefault((c["model"], c["memory"], c["a"], c["b"]), {})[c["metric"]] = c["difference"]
    rows = []
    for (model, memory, a, b), differences in pairs.items():
        measured, peak_a, peak_b = differences["peak_memory_bytes"], peaks[(model, a, memory)], peaks[(model, b, memory)]
        if measured is None or peak_a is None or peak_b is None:  # no memory measured on one side
            continue

        def diff(column):
            difference = differences.get(column)
            return difference.diff if difference is not None else None

        rows.append(
            {
                "model": model,
                "memory": memory,
                "a": a,
                "b": b,
                "peak_a": peak_a.mean,
                "peak_b": peak_b.mean,
                "measured": measured,
                "planned": diff("planned_memory_bytes"),
                "phases": {phase: (diff(f"{phase}_peak_bytes"), diff(f"planned_{phase}_bytes")) for phase in PHASE_NAMES},
            }
        )
    return rows


def _signed_mib(value) -> str:
    return f"{value / 2**20:+.1f}" if finite(value) else "-"


def memory_saving_table(savings) -> Table:
    header = ["model", "memory", "pair", "peak MiB (a / b)", "measured a − b MiB [95% CI]", "% of a", "planned a − b MiB",
              "generation: measured / planned", "scoring: measured / planned", "training: measured / planned"]
    rows = []
    for s in savings:
        share = f"{100 * s['measured'].diff / s['peak_a']:+.0f}%" if s["peak_a"] else "-"
        rows.append(
            [s["model"], s["memory"], f"{s['a']} − {s['b']}", f"{mib(s['peak_a'])} / {mib(s['peak_b'])}",
             st.format_difference(s["measured"], 1, 2**20), share, _signed_mib(s["planned"])]
            + [f"{_signed_mib(m)} / {_signed_mib(p)}" for m, p in s["phases"].values()]
        )
    return Table(header, rows, "Same model, memory strategy and settings; a positive value is memory the second "
                 "algorithm saves. Measured: per-phase peaks (CPU: resident set above the cell's baseline, which also "
                 "holds allocator and library overhead; CUDA: allocator peak); planned: `rlhfkit plan`'s prediction.")


def memory_saving_sentence(s) -> str:
    measured = s["measured"]
    text = (f"{s['b']} over {s['a']} ({s['model']}, {s['memory']}): measured saving "
            f"{st.format_difference(measured, 1, 2**20)} MiB of peak memory")
    if s["peak_a"]:
        text += f" ({100 * measured.diff / s['peak_a']:+.0f}% of {s['a']}'s peak)"
    if finite(s["planned"]):
        text += f"; planned {s['planned'] / 2**20:+.1f} MiB"
    if measured.has_interval and not measured.significant:
        text += f"; the measured difference is not significant at n={measured.n_a}/{measured.n_b} seeds"
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


def peak_table(peaks) -> Table:
    header = ["group", "seeds", "gold SFT", "KL where gold stops improving", "step", "gold there", "gold peak (step)",
              "KL at peak", "gold final", "gold drop after peak", "proxy change after peak", "KL final"]
    rows = []
    for p in peaks:
        kl = num(p.kl) if p.reached else f"not reached (> {num(p.kl_final)})"
        drop = num(p.gold_drop) if p.gold_drop > 0 else "-"
        change = f"{p.score_change_after:+.3f}" if p.gold_drop > 0 else "-"
        rows.append([p.label, str(p.n), num(p.gold_start), kl, str(p.step) if p.reached else "-", num(p.gold) if p.reached else "-",
                     f"{num(p.gold_peak)} ({p.peak_step})", num(p.peak_kl), num(p.gold_final), drop, change, num(p.kl_final)])
    return Table(header, rows, "Mean over seeds at each evaluation step; tolerance = 5% of the best gain over SFT.")


def peak_sentence(p) -> str:
    if p.reached:
        text = (f"{p.label}: gold stops improving at KL {num(p.kl)} (step {p.step}, gold {num(p.gold)}, n={p.n})")
    else:
        text = f"{p.label}: gold still improving at the last evaluation (KL {num(p.kl_final)}, n={p.n})"
    if p.gold_drop > 0:
        text += (f"; after its peak (KL {num(p.peak_kl)}, step {p.peak_step}) gold falls by {num(p.gold_drop)} while the "
                 f"proxy changes by {p.score_change_after:+.3f}")
    return text + "."


def build_document(context):
    if "document" in context.cache:
        return context.cache["document"]
    recipe = context.recipe
    results = context.results
    a = analysis(context)
    figures = {p.name: p for p in plots(context)}
    doc = Document(f"rlhfkit report: {recipe.name}")
    if recipe.description:
        doc.add(Paragraph(recipe.description))

    counts = results["status"].value_counts().to_dict()
    total = len(results)
    finished = total - counts.get("pending", 0)
    doc.add(Paragraph("Cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" (of {total})."))
    pending = results[results["status"] == "pending"]
    if not pending.empty:
        doc.add(
            Paragraph(
                f"**Partial run**: {finished} of {total} cells have a result; {len(pending)} pending/missing "
                f"(not run yet, interrupted, or result.json missing): "
                + ", ".join(f"`{c}`" for c in pending["cell"])
                + ". Statistics and figures use finished cells only; rerun `rlhfkit run` with the same recipe and "
                "--output to finish them.",
                kind="warning",
            )
        )

    # Key findings: one sentence per comparison of the main metrics.
    doc.add(Heading("Findings"))
    findings = []
    for c in a["comparisons"]:
        if c["metric"] in ("gold_final", "score_final", "kl_final", "peak_memory_bytes", "episodes_per_s"):
            where = f"{c['model']}, {c['memory']}"
            findings.append(
                f"{c['label']} ({where}): {c['a']} − {c['b']} = {fmt_difference(c['metric'], c['difference'])}: {c['verdict']}."
            )
    for p in a["peaks"]:
        findings.append(peak_sentence(p))
    doc.add(BulletList(findings) if findings else Paragraph("No finished cells to compare yet."))

    doc.add(Heading("Results over seeds"))
    if a["groups"]:
        doc.add(group_table(a["groups"]))
    else:
        doc.add(Paragraph("No cell has finished ok yet."))
    if a["comparisons"]:
        doc.add(Heading("Comparisons", 3), comparison_table(a["comparisons"]))

    doc.add(Heading("Reward during training"))
    if "reward_curves" in figures:
        doc.add(Figure(figures["reward_curves"]))
    doc.add(Heading("Reward against KL"))
    if "reward_vs_kl" in figures:
        doc.add(Figure(figures["reward_vs_kl"]))

    doc.add(Heading("Over-optimisation"))
    if a["peaks"]:
        doc.add(
            Paragraph(
                "**Where gold stops improving**: per algorithm, eval/gold and eval/kl are averaged over seeds at each "
                "evaluation step (step 0 = SFT policy). With tolerance = 5% of the best mean gain over SFT, gold stops "
                "improving at the earliest evaluation after which it never gains more than the tolerance; the KL there "
                "is reported. If that is the last evaluation, gold was still improving and it is \"not reached\" "
                "(KL > final KL). The gold peak is the earliest step with the highest mean gold; gold drop = peak gold "
                "− final gold, proxy change = final − peak proxy score (over-optimisation shows as proxy up, gold down)."
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

    if context.stages:
        doc.add(Heading("Stages (SFT and reward model)"))
        doc.add(
            Table(
                ["model", "status", "SFT eval loss", "RM held-out accuracy", "seconds"],
                [
                    [name, info.get("status", "-"), num(info.get("sft/eval_loss")), num(info.get("reward/eval_accuracy")),
                     num(info.get("wall_s"), 0)]
                    for name, info in sorted(context.stages.items())
                ],
            )
        )

    doc.add(Heading("Environment"))
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
        doc.add(BulletList(items))
    else:
        doc.add(Paragraph("run.json is missing: no environment recorded."))

    doc.add(Heading("Recipe"))
    recipe_text = (context.output_dir / "recipe.toml").read_text() if (context.output_dir / "recipe.toml").is_file() else ""
    doc.add(Code(recipe_text, "toml"))

    doc.add(Heading("Methods"))
    doc.add(
        BulletList(
            [
                "Final values are the last evaluation on held-out prompts (eval/gold, eval/score, eval/kl); the same "
                "prompts and sampling random numbers for every cell and checkpoint.",
                f"Intervals: percentile bootstrap of the mean over seeds, {st.RESAMPLES:,} resamples, numpy "
                f"default_rng({st.SEED}), 95%; with one seed the value is shown without an interval.",
                "Differences: each algorithm's seeds resampled independently, difference of resample means; a "
                "difference whose interval contains 0 is reported as not significant at the stated number of seeds.",
                "With 2 seeds a bootstrap interval is exactly the range of the two values (the resampled mean takes "
                "only 3 values), so \"significant\" at n=2 is indicative only; 5 or more seeds give intervals to rely on.",
                "Peak memory: the largest of the generation, scoring and training phase peaks (CUDA: the allocator's "
                "peak; CPU: the resident set above the cell's baseline, with `[run] cpu_memory = \"resident\"` "
                "including memory the allocator keeps after freeing it, with `\"live\"` not, see docs/memory.md); "
                "throughput: episodes per second of training time.",
            ]
        )
    )
    context.cache["document"] = doc
    return doc


# -- Markdown ---------------------------------------------------------------------------------------------------

def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_cell(cell) -> str:
    if isinstance(cell, TableCell):
        text = _md_escape(cell.text)
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
            lines += [("> " if block.kind else "") + block.text, ""]
        elif isinstance(block, BulletList):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            lines += [md_table(block), ""]
        elif isinstance(block, Figure):
            plot = block.plot
            rel = plot.path.relative_to(output_dir).as_posix()
            lines += [f"![{plot.title}]({rel})", "", f"_{plot.caption}_", ""]
        elif isinstance(block, Code):
            lines += [f"```{block.language}", block.text.rstrip("\n"), "```", ""]
    return "\n".join(lines)
