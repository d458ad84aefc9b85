"""The built-in table reporters: CSV, Markdown and the console summary."""

from __future__ import annotations

import math

from rlhfkit.report import atomic_write_text

STATUS_STYLE = {"ok": "green", "failed": "red", "oom": "magenta", "diverged": "yellow", "timeout": "yellow", "pending": "dim"}


def _num(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _mib(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value / 2**20:.0f}"


def _mean_std(row, metric, digits=3) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return _num(mean, digits)
    return f"{_num(mean, digits)} ± {_num(std, digits)}"


def write_csv(context):
    path = context.output_dir / "results.csv"
    return atomic_write_text(path, context.results.to_csv(index=False))


def _cell_rows(results):
    header = ["cell", "status", "gold SFT", "gold final", "score final", "KL final", "peak MiB", "episodes/s", "wall s"]
    rows = []
    for _, r in results.iterrows():
        rows.append(
            [
                r["cell"],
                r["status"],
                _num(r["gold_sft"]),
                _num(r["gold_final"]),
                _num(r["score_final"]),
                _num(r["kl_final"]),
                _mib(r["peak_memory_bytes"]),
                _num(r["episodes_per_s"], 1),
                _num(r["wall_s"], 0),
            ]
        )
    return header, rows


def _summary_rows(summary):
    header = ["model", "algorithm", "memory", "n", "gold SFT", "gold final", "score final", "KL final", "peak MiB", "episodes/s"]
    rows = []
    for _, r in summary.iterrows():
        rows.append(
            [
                r["model"],
                r["algorithm"],
                r["memory"],
                str(int(r["n"])),
                _num(r["gold_sft_mean"]),
                _mean_std(r, "gold_final"),
                _mean_std(r, "score_final"),
                _mean_std(r, "kl_final"),
                _mib(r["peak_memory_bytes_mean"]),
                _num(r["episodes_per_s_mean"], 1),
            ]
        )
    return header, rows


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(context):
    recipe = context.recipe
    results = context.results
    lines = [f"# rlhfkit report: {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description, ""]
    counts = results["status"].value_counts().to_dict()
    lines += ["Cells: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())), ""]
    lines += ["## Stages (SFT and reward model)", ""]
    stage_rows = [
        [name, info.get("status", "-"), _num(info.get("sft/eval_loss")), _num(info.get("reward/eval_accuracy")), _num(info.get("wall_s"), 0)]
        for name, info in sorted(context.stages.items())
    ]
    lines += [_md_table(["model", "status", "SFT eval loss", "RM held-out accuracy", "seconds"], stage_rows), ""]
    summary = context.summary()
    if not summary.empty:
        lines += ["## Summary over seeds (mean ± std)", "", _md_table(*_summary_rows(summary)), ""]
    lines += ["## Cells", "", _md_table(*_cell_rows(results)), ""]
    errors = results[results["status"].isin(["failed", "oom", "diverged", "timeout"])]
    if not errors.empty:
        lines += ["## Problems", ""]
        lines += [f"- `{r['cell']}`: {r['status']}: {r['error']}" for _, r in errors.iterrows()]
        lines += [""]
    info = context.run_info
    if info:
        versions = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items() if v)
        hw = info.get("hardware") or {}
        lines += ["## Environment", "", f"- versions: {versions}", f"- hardware: {hw.get('cpu_count')} CPUs, "
                  f"{_mib(hw.get('memory_bytes'))} MiB RAM, {', '.join(hw.get('gpus', [])) or 'no GPU'}", ""]
    return atomic_write_text(context.output_dir / "report.md", "\n".join(lines))


def print_console(context):
    from rich.console import Console
    from rich.table import Table

    console = context.console or Console()
    summary = context.summary()
    if not summary.empty:
        header, rows = _summary_rows(summary)
        table = Table(title=f"{context.recipe.name}: summary over seeds")
        for column in header:
            table.add_column(column, justify="left" if column in ("model", "algorithm", "memory") else "right")
        best_gold = summary["gold_final_mean"].max()
        for (_, r), row in zip(summary.iterrows(), rows):
            table.add_row(*row, style="bold green" if r["gold_final_mean"] == best_gold and len(summary) > 1 else None)
        console.print(table)
    header, rows = _cell_rows(context.results)
    table = Table(title="cells")
    for column in header:
        table.add_column(column, justify="left" if column in ("cell", "status") else "right")
    for row in rows:
        row[1] = f"[{STATUS_STYLE.get(row[1], 'white')}]{row[1]}[/]"
        table.add_row(*row)
    console.print(table)
    return None
