"""One self-contained HTML file: inline CSS, figures embedded as base64 PNG, no scripts, opens offline."""

from __future__ import annotations

import base64
import html
import re

from rlhfkit.report.document import BulletList, Code, Document, Figure, Heading, Paragraph, Table, TableCell

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1250px;
       padding: 0 1.5em; color: #1b1f24; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 0.88em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; }
th { background: #f6f8fa; }
td:first-child, th:first-child, td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: #fbfcfd; }
.win { background: #dafbe1 !important; font-weight: bold; color: #116329; }
.muted { color: #8c959f; font-style: italic; }
.bad { color: #cf222e; font-weight: bold; }
.caption { color: #57606a; font-size: 0.88em; margin-top: .2em; }
.warning { background: #fff8c5; border: 1px solid #d4a72c; padding: .6em 1em; border-radius: 6px; }
.note { background: #ddf4ff; border: 1px solid #54aeff; padding: .6em 1em; border-radius: 6px; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 0.85em; border-radius: 6px; }
code { background: #eff1f3; padding: 0 .25em; border-radius: 3px; font-size: 0.92em; }
pre code { background: none; padding: 0; }
"""


def inline(text: str) -> str:
    """Escape, then turn `code` and **bold** into tags."""
    out = html.escape(str(text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return out


NUMERIC = re.compile(r"^[+\-−]?(\d|\.\d|-$)")


def _cell(cell) -> str:
    text = cell.text if isinstance(cell, TableCell) else str(cell)
    classes = [cell.emphasis] if isinstance(cell, TableCell) and cell.emphasis else []
    if not NUMERIC.match(text):
        classes.append("text")
    cls = f' class="{" ".join(classes)}"' if classes else ""
    if isinstance(cell, TableCell) and cell.href:
        return f'<td{cls}><a href="{html.escape(cell.href, quote=True)}">{html.escape(text, quote=False)}</a></td>'
    return f"<td{cls}>{inline(text)}</td>"


def table_html(table: Table) -> str:
    text_columns = [
        bool(table.rows) and all(not NUMERIC.match(str(row[i])) for row in table.rows if i < len(row))
        for i in range(len(table.header))
    ]
    text_class = ' class="text"'
    heads = "".join(f"<th{text_class if text else ''}>{inline(h)}</th>" for h, text in zip(table.header, text_columns))
    parts = ["<table>", f"<thead><tr>{heads}</tr></thead>", "<tbody>"]
    parts += ["<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in table.rows]
    parts.append("</tbody></table>")
    if table.caption:
        parts.append(f'<div class="caption">{inline(table.caption)}</div>')
    return "\n".join(parts)


def figure_html(plot) -> str:
    data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
    return (
        f'<figure id="{html.escape(plot.name)}"><img alt="{html.escape(plot.title)}" src="data:image/png;base64,{data}">'
        f'<figcaption class="caption">{inline(plot.caption)} (<code>plots/{html.escape(plot.path.name)}</code>)</figcaption></figure>'
    )


def render_html(doc: Document) -> str:
    body = [f"<h1>{inline(doc.title)}</h1>"]
    for block in doc.blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            cls = f' class="{block.kind}"' if block.kind else ""
            text = html.escape(block.text, quote=False) if block.literal else inline(block.text)
            body.append(f"<p{cls}>{text}</p>")
        elif isinstance(block, BulletList):
            body.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            body.append(table_html(block))
        elif isinstance(block, Figure):
            body.append(figure_html(block.plot))
        elif isinstance(block, Code):
            body.append(f"<pre><code>{html.escape(block.text, quote=False)}</code></pre>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
