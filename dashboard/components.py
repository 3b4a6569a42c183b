"""Shared look: colours, figure styling, KPI cards, panels and empty states.

Every page builds its figures through `styled` and says "nothing to show" through
`empty_figure`, so plots look the same everywhere and an empty or unreachable API reads
as a sentence, not as a blank axis or a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from dash import dash_table, dcc, html

from dashboard.client import ApiError, ApiUnreachable

#: One colour per meaning, used by every page.
COLORS = {
    "normal": "#4c78a8",
    "fraud": "#e45756",
    "alert": "#f58518",
    "unlabelled": "#9d9da1",
    "live": "#4c78a8",
    "offline": "#72b7b2",
    "threshold": "#54a24b",
    "muted": "#6b7280",
}
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
# No mode bar: it covers the legends; drag still zooms and a double click resets.
GRAPH_CONFIG = {"displaylogo": False, "displayModeBar": False, "responsive": True}


def styled(fig: go.Figure, *, title: str | None = None, height: int = 320) -> go.Figure:
    """Apply the house style: white background, light grid, small margins, legend on top."""
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 56, "r": 16, "t": 48 if title else 24, "b": 44},
        font={"family": _FONT, "size": 12, "color": "#1f2937"},
        title={"text": title, "x": 0.01, "font": {"size": 14}} if title else None,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        hoverlabel={"font": {"family": _FONT}},
    )
    return fig


def empty_figure(message: str, *, height: int = 320) -> go.Figure:
    """A blank figure that says why it is blank."""
    fig = go.Figure()
    fig.add_annotation(
        text=message,
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        showarrow=False,
        font={"size": 14, "color": COLORS["muted"]},
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return styled(fig, height=height)


def problem_text(exc: Exception) -> str:
    """A short sentence for a failed API call, shown where the data would be."""
    if isinstance(exc, ApiUnreachable):
        return "API unreachable: retrying…"
    if isinstance(exc, ApiError):
        if exc.status == 404:
            return f"Not available from the API ({exc.detail})"
        if exc.status == 503:
            return f"API not ready: {exc.detail}"
        return f"API error {exc.status}: {exc.detail}"
    return f"Unexpected error: {exc}"


def graph(graph_id: str, *, height: int = 320, message: str = "Loading…") -> dcc.Graph:
    """A graph that starts as an empty figure saying `message`."""
    # The box has the figure's height, so the responsive graph never collapses to zero.
    return dcc.Graph(
        id=graph_id,
        figure=empty_figure(message, height=height),
        config=GRAPH_CONFIG,
        className="graph",
        style={"height": f"{height}px"},
    )


def panel(title: str, *children: Any, extra: Any = None, class_name: str = "") -> html.Section:
    """A titled white card holding one plot or table."""
    header = [html.H2(title)]
    if extra is not None:
        header.append(html.Div(extra, className="panel-extra"))
    return html.Section(
        [html.Div(header, className="panel-header"), *children], className=f"panel {class_name}"
    )


def kpi_card(card_id: str, label: str, hint: str = "") -> html.Div:
    """A KPI card whose value (`{card_id}`) and sub-line (`{card_id}-sub`) callbacks fill in."""
    return html.Div(
        [
            html.Div(label, className="kpi-label"),
            html.Div("–", id=card_id, className="kpi-value"),
            html.Div(hint, id=f"{card_id}-sub", className="kpi-sub"),
        ],
        className="kpi",
    )


def notice(message: str | None, kind: str = "info") -> html.Div:
    """An inline notice; `None` renders nothing."""
    if not message:
        return html.Div(className="notice hidden")
    return html.Div(message, className=f"notice notice-{kind}")


def page_header(title: str, subtitle: str) -> html.Div:
    return html.Div([html.H1(title), html.P(subtitle, className="subtitle")], className="page-header")


def fmt_int(value: float | int | None) -> str:
    return "–" if value is None else f"{int(value):,}"


def fmt_pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100.0 * value:.{digits}f}%"


def fmt_num(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "–" if value is None else f"{value:,.{digits}f}{unit}"


def short_version(version: str | None, n: int = 12) -> str:
    return "–" if not version else version[:n]


def options(names: Sequence[str]) -> list[dict[str, str]]:
    return [{"label": name, "value": name} for name in names]


def data_table(table_id: str, *, padding: str = "6px 8px", **options: Any) -> dash_table.DataTable:
    """A DataTable in the dashboard's one table style; `options` go to DataTable as they are."""
    return dash_table.DataTable(
        id=table_id,
        style_cell={"padding": padding, "textAlign": "left", "border": "none"},
        style_header={"fontWeight": "600", "borderBottom": "1px solid #e5e7eb"},
        **options,
    )
