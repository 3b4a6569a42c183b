"""Backtests: replayed windows of history, scored through the live path, compared.

The runs table lists every run with its status and headline metrics; the chart shows
those metrics run after run, so model versions and thresholds can be compared; clicking
a run shows its metrics per time slice when the run reports them.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, dcc, html

from dashboard.client import ApiError, ApiUnreachable
from dashboard.components import (
    COLORS,
    data_table,
    empty_figure,
    graph,
    notice,
    page_header,
    panel,
    problem_text,
)
from dashboard.context import api
from dashboard.views.backtests import (
    HEADLINE,
    run_rows,
    runs_figure,
    slices_figure,
)
from dashboard.views.savings import NO_COST, savings_caption, savings_figure

dash.register_page(__name__, path="/backtests", name="Backtests", title="fraudstream · backtests", order=4)

REFRESH_MS = 5_000
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
                data_table(
                    "backtests-table",
                    columns=RUN_COLUMNS,
                    data=[],
                    style_table={"overflowX": "auto"},
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
                html.Div(id="backtest-savings-caption", className="muted small"),
                graph("backtest-savings", height=340, message="Click a run above for its savings curve."),
            ),
            dcc.Store(id="backtests-ids"),
            dcc.Interval(id="backtests-tick", interval=REFRESH_MS),
        ]
    )


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


@dash.callback(
    Output("backtest-savings", "figure"),
    Output("backtest-savings-caption", "children"),
    Input("backtests-table", "active_cell"),
    State("backtests-table", "data"),
    prevent_initial_call=True,
)
def show_savings(active_cell: dict[str, Any] | None, rows: list[dict[str, Any]]) -> tuple[Any, ...]:
    """The chosen run's net savings by threshold, its own and the live threshold marked."""
    if not active_cell or not rows or active_cell.get("row", -1) >= len(rows):
        return dash.no_update, dash.no_update
    try:
        curve = api().savings(run_id=rows[active_cell["row"]]["id"], bins=200)
    except (ApiUnreachable, ApiError) as exc:
        if isinstance(exc, ApiError) and exc.status == 409:
            return empty_figure(NO_COST, height=340), ""
        return empty_figure(problem_text(exc), height=340), ""
    return savings_figure(curve), savings_caption(curve)
