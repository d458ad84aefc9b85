"""File reporters: results.csv, report.md and report.html (the last two print the same document)."""

from __future__ import annotations

from rlhfkit.report import atomic_write_text


def write_csv(context):
    """results.csv: one row per cell, every column of ``rlhfkit.results.COLUMNS`` (pending cells included)."""
    path = context.output_dir / "results.csv"
    return atomic_write_text(path, context.results.to_csv(index=False))


def write_markdown(context):
    """report.md, figures linked from plots/."""
    from rlhfkit.report.document import build_document, plots, render_markdown

    doc = build_document(context)
    written = [p.path for p in plots(context)]
    return [atomic_write_text(context.output_dir / "report.md", render_markdown(doc, context.output_dir))] + written


def write_html(context):
    """report.html: one self-contained file (figures embedded as base64 PNG)."""
    from rlhfkit.report.document import build_document
    from rlhfkit.report.html import render_html

    doc = build_document(context)
    return atomic_write_text(context.output_dir / "report.html", render_html(doc))
