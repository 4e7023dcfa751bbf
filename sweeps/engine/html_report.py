"""The sweep's report as one self-contained HTML page, logged on the parent run as `report.html`.

MLflow's artifact view renders an HTML artifact inline, so the answer to "does AP help here, and how sure are
we?" is one click from the run: the pooled high-sparsity rows, the whole table (every level a column, the row
labels fixed while it scrolls sideways), the footnote, the plots, the protocol and the child runs. Nothing is
loaded from outside (no scripts, fonts or remote images: the UI is often offline); plots are data URIs. The only
URLs are links to the child runs on the MLflow UI itself. MLflow shows the page in a sandboxed frame (a blob URL,
scripts only), where a link can neither reach the top window nor resolve a relative address: the links are
absolute and open in a new tab.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from sweeps.engine.result_table import POOLED_COLUMNS, SweepTable

STYLE = """
body { font: 13px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px; color: #1a1a1a;
       max-width: 1400px; }
h1 { font-size: 16px; margin: 0 0 4px; } h2 { font-size: 14px; margin: 20px 0 6px; }
.scroll { overflow-x: auto; border: 1px solid #ccc; max-width: 100%; }
table { border-collapse: separate; border-spacing: 0; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e4e4e4; white-space: nowrap; text-align: right; }
thead th { background: #f3f3f3; position: sticky; top: 0; z-index: 2; }
th.label, td.label { position: sticky; left: 0; background: #fff; text-align: left; z-index: 1;
                     border-right: 2px solid #bbb; }
thead th.label { background: #f3f3f3; z-index: 3; }
tr.delta td { background: #f4f8ff; } tr.delta td.label { background: #e9f0fd; font-weight: 600; }
td.significant { font-weight: 700; color: #0b5d1e; }
.note { color: #444; font-size: 12px; max-width: 1100px; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; font-size: 12px; }
dt { color: #555; } dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
"""


# MLflow 3 opens a run on its GenAI pages unless asked for the "Model training" view.
TRAINING_VIEW = "?workflowType=machine_learning"
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
    ui_url: str,
) -> str:
    """The whole page: pooled rows, table, footnote, plots (PNG bytes with a caption), protocol and child runs,
    linked on the MLflow UI at `ui_url`."""
    parts = [f"<h1>{html.escape(table.title)}</h1>"]
    if table.pooled is not None and not table.pooled.empty:
        parts += [
            "<h2>Does AP help at high sparsity? Pooled rows</h2>",
            _pooled_sentences(table.pooled),
            _table_html(table.pooled, "answer"),
            f'<p class="note">{html.escape(table.pooled_note)}</p>',
        ]
    parts += [
        f"<h2>{html.escape(_table_heading(table))}</h2>",
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
        parts.append(
            f'<h2>Child runs ({len(children)})</h2><p class="note">On {html.escape(ui_url)}; inside MLflow\'s '
            "artifact view, open a link in a new tab (the view shows this page in a sandbox).</p><ul>"
        )
        base = ui_url.rstrip("/")
        parts += [
            f'<li><a href="{html.escape(base)}/#/experiments/{html.escape(c.experiment_id)}/runs/'
            f'{html.escape(c.run_id)}{TRAINING_VIEW}" target="_blank" rel="noopener">{html.escape(c.name)}</a> '
            f"({html.escape(c.status)}, <code>{html.escape(c.run_id)}</code>)</li>"
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


def _table_heading(table: SweepTable) -> str:
    """'Every level (weights remaining (%))' for the weights-remaining tables, 'The table' for the channel ones."""
    return f"Every level ({table.cells.columns.name})" if table.cells.columns.name else "The table"


def _pooled_sentences(pooled: pd.DataFrame) -> str:
    """Each pooled row as one line that wraps, so the answer reads in a narrow artifact pane without scrolling."""
    items = []
    for key, row in pooled.iterrows():
        label = " / ".join(map(str, key if isinstance(key, tuple) else (key,)))
        span, mean, interval, p_value, n, wins_losses_ties = map(str, row[POOLED_COLUMNS])
        text = (
            f"{mean} points, 95% interval {interval}, p = {p_value}, n = {n} seeds, W/L/T {wins_losses_ties} "
            f"(levels {span})"
        )
        items.append(f"<li><b>{html.escape(label)}</b>: {html.escape(text)}</li>")
    return f'<ul class="answer">{"".join(items)}</ul>'


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
