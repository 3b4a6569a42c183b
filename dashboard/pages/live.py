"""Live: KPIs, the newest alerts (click one for its explanation) and throughput over time.

Each panel has its own callback on the shared tick and costs one API request per tick;
the client caches answers for the tick, so more tabs do not mean more load on the API.
"""

from __future__ import annotations

from typing import Any

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html

from dashboard.client import ApiError, ApiUnreachable
from dashboard.components import (
    COLORS,
    data_table,
    empty_figure,
    graph,
    kpi_card,
    notice,
    page_header,
    panel,
    problem_text,
)
from dashboard.context import api, settings
from dashboard.views.live import (
    alert_rows,
    explain_body,
    kpi_values,
    review_precision,
    timeseries_figure,
)
from dashboard.waterfall import waterfall_figure

dash.register_page(__name__, path="/", name="Live", title="fraudstream · live", order=0)

ALERT_ROWS = 15
KPI_IDS = ("kpi-scored", "kpi-alerts", "kpi-alert-rate", "kpi-caught", "kpi-throughput", "kpi-p99")
TABLE_COLUMNS = [
    {"name": "scored at", "id": "scored_at"},
    {"name": "transaction", "id": "short_id"},
    {"name": "amount", "id": "amount", "type": "numeric"},
    {"name": "score", "id": "score", "type": "numeric"},
    {"name": "label", "id": "label"},
    {"name": "latency ms", "id": "latency_ms", "type": "numeric"},
]


def layout(**_query: Any) -> html.Div:
    refresh_ms = settings().refresh_ms
    return html.Div(
        [
            page_header(
                "Live", f"Transactions as the scorer stores them; refreshes every {refresh_ms / 1000:g} s."
            ),
            html.Div(id="live-notice"),
            html.Div(
                [
                    kpi_card("kpi-scored", "Transactions scored"),
                    kpi_card("kpi-alerts", "Alerts"),
                    kpi_card("kpi-alert-rate", "Alert rate"),
                    kpi_card("kpi-review-precision", "Precision from reviews"),
                    kpi_card("kpi-caught", "Confirmed frauds caught"),
                    kpi_card("kpi-throughput", "Throughput"),
                    kpi_card("kpi-p99", "p99 latency"),
                ],
                className="kpis",
            ),
            html.Div(
                [
                    panel("Throughput and alerts", graph("live-timeseries", height=360)),
                    panel(
                        "Newest alerts",
                        data_table(
                            "alerts-table",
                            columns=TABLE_COLUMNS,
                            data=[],
                            page_action="none",
                            style_table={"height": "340px", "overflowY": "auto"},
                            style_data_conditional=[
                                {"if": {"filter_query": '{label} = "fraud"'}, "color": COLORS["fraud"]},
                                {"if": {"state": "active"}, "backgroundColor": "#eef2ff", "border": "none"},
                            ],
                            cell_selectable=True,
                        ),
                        html.Div("Click a row to see why it was flagged.", className="muted small"),
                        extra=html.Span(id="alerts-count"),
                    ),
                ],
                className="grid grid-live",
            ),
            panel(
                "Why was it flagged?",
                html.Div(id="live-explanation-caption", className="muted"),
                graph("live-explanation", height=420, message="Click an alert above to explain it."),
            ),
            dcc.Store(id="live-alerts-store"),
            dcc.Interval(id="live-tick", interval=refresh_ms),
        ]
    )


# ---------------------------------------------------------------------------- callbacks


@dash.callback(
    *(Output(card, "children") for card in KPI_IDS),
    *(Output(f"{card}-sub", "children") for card in KPI_IDS),
    Output("live-notice", "children"),
    Input("live-tick", "n_intervals"),
)
def update_kpis(_n: int | None) -> tuple[Any, ...]:
    try:
        stats = api().stats()
    except (ApiUnreachable, ApiError) as exc:
        return (*(["–"] * 6), *([""] * 6), notice(problem_text(exc), "error"))
    values, subs = kpi_values(stats)
    message = None
    if not stats.get("volume"):
        message = "No transactions scored yet. Start a replay (`fraudstream replay`) and they appear here."
    return (*values, *subs, notice(message, "info"))


@dash.callback(
    Output("kpi-review-precision", "children"),
    Output("kpi-review-precision-sub", "children"),
    Input("live-tick", "n_intervals"),
)
def update_review_precision(_n: int | None) -> tuple[str, str]:
    """The alerts' precision from the analysts' verdicts, beside the alert rate (Review page)."""
    try:
        summary = api().feedback_summary()
    except (ApiUnreachable, ApiError) as exc:
        return "–", problem_text(exc)
    return review_precision(summary)


@dash.callback(Output("live-timeseries", "figure"), Input("live-tick", "n_intervals"))
def update_timeseries(_n: int | None) -> go.Figure:
    try:
        return timeseries_figure(api().timeseries())
    except (ApiUnreachable, ApiError) as exc:
        return empty_figure(problem_text(exc), height=360)


@dash.callback(
    Output("alerts-table", "data"),
    Output("live-alerts-store", "data"),
    Output("alerts-count", "children"),
    Input("live-tick", "n_intervals"),
)
def update_alerts(_n: int | None) -> tuple[Any, ...]:
    try:
        page = api().alerts(limit=ALERT_ROWS)
    except (ApiUnreachable, ApiError) as exc:
        return dash.no_update, dash.no_update, problem_text(exc)
    items = page.get("items", [])
    keep = {item["id"]: explain_body(item) for item in items}
    count = f"newest {len(items)}" if items else "no alerts yet"
    return alert_rows(items), keep, count


@dash.callback(
    Output("live-explanation", "figure"),
    Output("live-explanation-caption", "children"),
    Input("alerts-table", "active_cell"),
    State("live-alerts-store", "data"),
    prevent_initial_call=True,
)
def explain_alert(active_cell: dict[str, Any] | None, stored: dict[str, Any] | None) -> tuple[Any, ...]:
    row_id = (active_cell or {}).get("row_id")
    body = (stored or {}).get(row_id) if row_id else None
    if body is None:
        return dash.no_update, dash.no_update
    try:
        explanation = api().explain(body)
    except (ApiUnreachable, ApiError) as exc:
        return empty_figure(problem_text(exc), height=420), ""
    caption = (
        f"Transaction {row_id[:12]}… scored {explanation['score']:.4f} "
        f"(threshold {explanation['threshold']:.4f}, model {explanation['model_version'][:12]})."
    )
    return waterfall_figure(explanation), caption
