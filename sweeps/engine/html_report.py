"""The sweep's report as one self-contained HTML page, logged on the parent run as `report.html`.

MLflow's artifact view renders an HTML artifact inline, so the answer to "does AP help here, and how sure are
we?" is one click from the run: the pooled high-sparsity rows, the whole table (every level a column, the row
labels fixed while it scrolls sideways), the footnote, the plots, the protocol and the child runs. Nothing is
loaded from outside (no scripts, fonts or remote images: the UI is often offline); plots are data URIs. Links to
child runs are fragment links (`#/experiments/...`) opened in the top window, so inside the MLflow UI they resolve
against the UI's own address, whichever host and port it is served on.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from sweeps.engine.result_table import SweepTable

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px; color: #1a1a1a;
       max-width: 1400px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 6px; }
.scroll { overflow-x: auto; border: 1px solid #ccc; max-width: 100%; }
table { border-collapse: separate; border-spacing: 0; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e4e4e4; white-space: nowrap; text-align: right; }
thead th { background: #f3f3f3; position: sticky; top: 0; z-index: 2; }
th.label, td.label { position: sticky; left: 0; background: #fff; text-align: left; z-index: 1;
                     border-right: 2px solid #bbb; }
thead th.label { background: #f3f3f3; z-index: 3; }
tr.delta td { background: #f4f8ff; } tr.delta td.label { background: #e9f0fd; font-weight: 600; }
td.significant { font-weight: 700; color: #0b5d1e; }
.note { color: #444; font-size: 13px; max-width: 1100px; }
.answer td, .answer th { font-size: 15px; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; font-size: 13px; }
dt { color: #555; } dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
"""


SIGNIFICANT_CELL = '<td class="significant">'
DELTA_ROW = '<tr class="delta">'


@dataclass(frozen=True)
class ChildRun:
    """A trial's MLflow run, as the report links it."""

    name: str
    experiment_id: str
    run_id: str
    status: str


def render_report(
    table: SweepTable,
    protocol: dict[str, str],
    figures: Sequence[tuple[str, bytes]],
    children: Sequence[ChildRun],
) -> str:
    """The whole page: pooled rows, table, footnote, plots (PNG bytes with a caption), protocol and child runs."""
    parts = [f"<h1>{html.escape(table.title)}</h1>"]
    if table.pooled is not None and not table.pooled.empty:
        parts += [
            "<h2>Does AP help at high sparsity? Pooled rows</h2>",
            _table_html(table.pooled, "answer"),
            f'<p class="note">{html.escape(table.pooled_note)}</p>',
        ]
    parts += [
        f"<h2>Every level ({html.escape(str(table.cells.columns.name or 'columns'))})</h2>",
        _table_html(table.cells, "levels"),
        f'<p class="note">{html.escape(table.note)}</p>',
    ]
    for caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<h2>{html.escape(caption)}</h2><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        )
    parts.append("<h2>Protocol</h2><dl>")
    parts += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in protocol.items()]
    parts.append("</dl>")
    if children:
        parts.append(f"<h2>Child runs ({len(children)})</h2><ul>")
        parts += [
            f'<li><a href="#/experiments/{html.escape(c.experiment_id)}/runs/{html.escape(c.run_id)}" target="_top">'
            f"{html.escape(c.name)}</a> ({html.escape(c.status)}, <code>{html.escape(c.run_id)}</code>)</li>"
            for c in children
        ]
        parts.append("</ul>")
    body = "\n".join(parts)
    title = html.escape(table.title)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
        f"<body>\n{body}\n</body></html>\n"
    )


def _table_html(cells: pd.DataFrame, css_class: str) -> str:
    """A table whose row labels (the index levels, joined) stay in view while it scrolls sideways; Δ rows shaded,
    starred (significant) cells bold."""
    label_header = " / ".join(str(name) for name in cells.index.names if name)
    head = f'<th class="label">{html.escape(label_header)}</th>' + "".join(
        f"<th>{html.escape(str(column))}</th>" for column in cells.columns
    )
    rows = []
    for key, values in cells.iterrows():
        labels = key if isinstance(key, tuple) else (key,)
        is_delta = any(str(label).startswith("Δ") for label in labels)
        tds = "".join(
            (SIGNIFICANT_CELL if "*" in str(value) else "<td>") + html.escape(str(value)) + "</td>" for value in values
        )
        label = html.escape(" / ".join(str(label) for label in labels))
        rows.append((DELTA_ROW if is_delta else "<tr>") + f'<td class="label">{label}</td>{tds}</tr>')
    return (
        f'<div class="scroll"><table class="{css_class}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
