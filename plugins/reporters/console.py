"""The console reporter: rich tables at the end of a run (and of ``rlhfkit report``)."""

from __future__ import annotations

SHORT = {"gold_final": "gold final", "score_final": "proxy final", "kl_final": "KL final",
         "peak_memory_bytes": "peak MiB", "episodes_per_s": "episodes/s"}
STATUS_STYLE = {"ok": "green", "failed": "red", "oom": "magenta", "diverged": "yellow", "timeout": "yellow", "pending": "dim"}


def print_console(context):
    from rlhfkit.progress import make_console, widen_for_logs
    from rlhfkit.report.document import analysis, matched_findings, peak_sentence

    console = widen_for_logs(context.console) if context.console is not None else make_console()
    a = analysis(context)
    if a["groups"]:
        console.print(_group_table(context, a["groups"]))
    # Matched-KL results lead, as in report.md (one line per budget and pair).
    for m in a["matched"]:
        for line in matched_findings(m):
            console.print(f"[cyan]matched KL[/] {line.replace('**', '')}")
    if a["comparisons"]:
        console.print(_comparison_table(a["comparisons"]))
    for p in a["peaks"]:
        console.print(f"[cyan]over-optimisation[/] {peak_sentence(p)}")
    console.print(_cell_table(context.results))
    pending = int((context.results["status"] == "pending").sum())
    if pending:
        console.print(f"[yellow]partial run: {pending} of {len(context.results)} cells have no result yet[/]")
    return None


def _best_means(groups) -> dict:
    """Best mean per metric among groups of the same model, memory and setting (shown in bold; not a verdict)."""
    from rlhfkit.report import stats as st

    best = {}
    for metric, (_, higher) in st.METRICS.items():
        for g in groups:
            e = g[metric]
            if e is None:
                continue
            key = (g["model"], g["memory"], g["settings"], g["phase"], metric)
            if key not in best or (e.mean > best[key] if higher else e.mean < best[key]):
                best[key] = e.mean
    return best


def _group_table(context, groups):
    from rich.table import Table

    from rlhfkit.report import stats as st
    from rlhfkit.report.document import fmt_estimate, setting_label

    models = {g["model"] for g in groups}
    memories = {g["memory"] for g in groups}
    settings = {(g["settings"], g["phase"]) for g in groups}
    for g in groups:
        g["setting"] = setting_label(g["settings"], g["phase"])
    # Columns that hold one value for every row go into the title instead (tables stay within 140 columns).
    keys = [k for k, values in (("model", models), ("algorithm", None), ("memory", memories), ("setting", settings))
            if values is None or len(values) > 1]
    constant = [next(iter(v)) for k, v in (("model", models), ("memory", memories)) if len(v) == 1]
    title = f"{context.recipe.name}" + (f" ({', '.join(constant)})" if constant else "") + ": mean over seeds [95% t interval]"
    table = Table(title=title, title_justify="left")
    for column in keys + ["n"]:
        table.add_column(column, justify="left" if column != "n" else "right", no_wrap=True)
    for metric in st.METRICS:
        table.add_column(SHORT[metric], justify="right", no_wrap=True)
    best = _best_means(groups)
    for g in groups:
        cells = []
        for metric in st.METRICS:
            text, e = fmt_estimate(metric, g[metric]), g[metric]
            if len(groups) > 1 and e is not None and best.get((g["model"], g["memory"], g["settings"], g["phase"], metric)) == e.mean:
                text = f"[bold]{text}[/]"
            cells.append(text)
        table.add_row(*[g[k] for k in keys], str(g["n"]), *cells)
    return table


def _comparison_table(comparisons):
    from rich.table import Table

    from rlhfkit.report import stats as st
    from rlhfkit.report.document import fmt_difference, setting_label

    for c in comparisons:
        c.setdefault("setting", setting_label(c.get("settings", ""), c.get("phase", "grid")))
    several = {k: len({c[k] for c in comparisons}) > 1 for k in ("model", "memory", "setting")}
    columns = [k for k in ("model", "memory", "setting") if several[k]] + ["metric", "difference", "winner", "verdict"]
    table = Table(title="final values: difference of means [95% Welch CI]; winner green only with a verdict "
                  f"(>= {st.MIN_SEEDS} seeds per arm, Holm p < {st.ALPHA})", title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column == "difference" else "left", no_wrap=column != "verdict")
    for c in comparisons:
        winner = f"[bold green]{c['winner']}[/]" if c["winner"] else "-"
        direction = {True: "higher", False: "lower", None: "no"}[c["higher_is_better"]]
        verdict = c["verdict"] + (f"; [yellow]{c['censored']}[/]" if c.get("censored") else "")
        values = {"model": c["model"], "memory": c["memory"], "setting": c["setting"],
                  "difference": fmt_difference(c["metric"], c["difference"]),
                  "metric": f"{c['label']}, {c['a']} − {c['b']} ({direction} is better)", "winner": winner,
                  "verdict": verdict}
        table.add_row(*[values[k] for k in columns])
    return table


def _cell_table(results):
    from rich.table import Table

    from rlhfkit.report.document import mib, num

    table = Table(title="cells", title_justify="left")
    for column in ("cell", "status", "gold SFT", "gold final", "score final", "KL final", "peak MiB", "episodes/s", "wall s"):
        table.add_column(column, justify="left" if column in ("cell", "status") else "right")
    for _, r in results.iterrows():
        status = r["status"]
        label = "pending (missing)" if status == "pending" else status
        table.add_row(
            r["cell"], f"[{STATUS_STYLE.get(status, 'white')}]{label}[/]", num(r["gold_sft"]), num(r["gold_final"]),
            num(r["score_final"]), num(r["kl_final"]), mib(r["peak_memory_bytes"]), num(r["episodes_per_s"], 1),
            num(r["wall_s"], 0), style="dim" if status == "pending" else None,
        )
    return table
