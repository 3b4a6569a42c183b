"""Backtests: replayed windows of history, scored through the live path, compared.

The runs table lists every run with its status and headline metrics; the chart shows
those metrics run after run, so model versions and thresholds can be compared; clicking
a run shows its metrics per time slice when the run reports them.
"""

from __future__ import annotations

from typing import Any

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, dash_table, dcc, html

from dashboard.client import ApiError, ApiUnreachable
from dashboard.components import (
    COLORS,
    empty_figure,
    graph,
    notice,
    page_header,
    panel,
    problem_text,
    short_version,
    styled,
)
from dashboard.context import api

dash.register_page(__name__, path="/backtests", name="Backtests", title="fraudstream · backtests", order=4)

REFRESH_MS = 5_000
#: Headline metrics, in the order they are shown, when a run reports them.
HEADLINE = ("auprc", "roc_auc", "precision", "recall", "f1", "alert_rate")
PALETTE = ("#4c78a8", "#e45756", "#f58518", "#54a24b", "#b279a2", "#72b7b2", "#9d755d")
RUN_COLUMNS = [
    {"name": "run", "id": "id"},
    {"name": "model", "id": "model_version"},
    {"name": "threshold", "id": "threshold", "type": "numeric"},
    {"name": "window (s)", "id": "window"},
    {"name": "status", "id": "status"},
    {"name": "rows", "id": "rows"},
    *({"name": name, "id": name, "type": "numeric"} for name in HEADLINE),
]


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            page_header(
                "Backtests", "History replayed through the scoring path, one run per window and model."
            ),
            html.Div(id="backtests-notice"),
            panel("Metrics run by run", graph("backtests-metrics", height=340)),
            panel(
                "Runs",
                dash_table.DataTable(
                    id="backtests-table",
                    columns=RUN_COLUMNS,
                    data=[],
                    style_table={"overflowX": "auto"},
                    style_cell={"padding": "6px 8px", "textAlign": "left", "border": "none"},
                    style_header={"fontWeight": "600", "borderBottom": "1px solid #e5e7eb"},
                    style_data_conditional=[
                        {"if": {"filter_query": '{status} = "failed"'}, "color": COLORS["fraud"]},
                    ],
                ),
                html.Div("Click a run to see its metrics per time slice.", className="muted small"),
            ),
            panel(
                "Run detail",
                html.Div(id="backtest-caption", className="muted"),
                graph("backtest-slices", height=340, message="Click a run above."),
            ),
            dcc.Store(id="backtests-ids"),
            dcc.Interval(id="backtests-tick", interval=REFRESH_MS),
        ]
    )


# ---------------------------------------------------------------------------- pure views


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def headline(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The headline metrics a run reports, at its top level or under `overall`."""
    metrics = metrics or {}
    source = metrics.get("overall") if isinstance(metrics.get("overall"), dict) else metrics
    out = {}
    for name in HEADLINE:
        value = _number(source.get(name))
        if value is not None:
            out[name] = value
    return out


def run_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        scored = run.get("scored")
        expected = run.get("expected_count")
        rows.append(
            {
                "id": run["id"],
                "model_version": short_version(run.get("model_version")),
                "threshold": round(float(run["threshold"]), 4),
                "window": f"{run['time_from']:,.0f} – {run['time_to']:,.0f}",
                "status": run.get("status", ""),
                "rows": ""
                if expected is None
                else (f"{scored or 0:,}/{expected:,}" if scored is not None else f"{expected:,}"),
                **{k: round(v, 4) for k, v in headline(run.get("metrics")).items()},
            }
        )
    return rows


def runs_figure(runs: list[dict[str, Any]]) -> go.Figure:
    """Headline metrics of each run with metrics, in creation order."""
    done = sorted((r for r in runs if headline(r.get("metrics"))), key=lambda r: str(r.get("created_at")))
    if not done:
        return empty_figure(
            "No backtest has finished yet. Start one with `fraudstream backtest`.", height=340
        )
    labels = [
        f"{r['id'][:10]}<br>{short_version(r.get('model_version'), 8)} @ {float(r['threshold']):.3f}"
        for r in done
    ]
    fig = go.Figure()
    for i, name in enumerate(HEADLINE):
        values = [headline(r.get("metrics")).get(name) for r in done]
        if all(v is None for v in values):
            continue
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=values,
                name=name,
                mode="lines+markers",
                line={"color": PALETTE[i % len(PALETTE)], "width": 2},
            )
        )
    fig.update_yaxes(range=[0, 1.05])
    fig.update_xaxes(title_text="run (model @ threshold), oldest first", type="category")
    return styled(fig, height=340)


def slices_of(metrics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-slice metrics if the run reports them (a list of dicts under `slices`)."""
    slices = (metrics or {}).get("slices")
    return [s for s in slices if isinstance(s, dict)] if isinstance(slices, list) else []


def slices_figure(run: dict[str, Any]) -> go.Figure:
    slices = slices_of(run.get("metrics"))
    if not slices:
        return empty_figure("This run reports no per-slice metrics.", height=340)
    x_key = next((k for k in ("time_from", "start", "from", "t") if k in slices[0]), None)
    x = [s.get(x_key) for s in slices] if x_key else list(range(1, len(slices) + 1))
    fig = go.Figure()
    for i, name in enumerate(HEADLINE):
        values = [_number(s.get(name)) for s in slices]
        if all(v is None for v in values):
            continue
        fig.add_trace(
            go.Scatter(
                x=x,
                y=values,
                name=name,
                mode="lines+markers",
                line={"color": PALETTE[i % len(PALETTE)], "width": 2},
            )
        )
    if not fig.data:
        return empty_figure("This run's slices carry no headline metric.", height=340)
    fig.update_xaxes(title_text="slice start (data seconds)" if x_key else "slice")
    fig.update_yaxes(range=[0, 1.05])
    return styled(fig, height=340)


# ---------------------------------------------------------------------------- callbacks


@dash.callback(
    Output("backtests-table", "data"),
    Output("backtests-metrics", "figure"),
    Output("backtests-notice", "children"),
    Input("backtests-tick", "n_intervals"),
)
def update_runs(_n: int | None) -> tuple[Any, ...]:
    try:
        runs = api().backtests().get("runs", [])
    except (ApiUnreachable, ApiError) as exc:
        return dash.no_update, empty_figure(problem_text(exc), height=340), notice(problem_text(exc), "error")
    message = None if runs else "No backtest runs yet."
    return run_rows(runs), runs_figure(runs), notice(message, "info")


@dash.callback(
    Output("backtest-slices", "figure"),
    Output("backtest-caption", "children"),
    Input("backtests-table", "active_cell"),
    State("backtests-table", "data"),
    prevent_initial_call=True,
)
def show_run(active_cell: dict[str, Any] | None, rows: list[dict[str, Any]]) -> tuple[Any, ...]:
    if not active_cell or not rows or active_cell.get("row", -1) >= len(rows):
        return dash.no_update, dash.no_update
    run_id = rows[active_cell["row"]]["id"]
    try:
        run = api().backtest(run_id)
    except (ApiUnreachable, ApiError) as exc:
        return empty_figure(problem_text(exc), height=340), ""
    caption = f"Run {run_id}: {run.get('status')}" + (f" — {run['error']}" if run.get("error") else "")
    return slices_figure(run), caption
