"""Drift: the champion's live inputs, score and alert rate, hour by hour, against its reference."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, dcc, html

from dashboard.client import ApiError, ApiUnreachable
from dashboard.components import data_table, empty_figure, graph, notice, page_header, panel, problem_text
from dashboard.context import api
from dashboard.views.drift import heatmap_figure, model_figure, mover_rows

dash.register_page(__name__, path="/drift", name="Drift", title="fraudstream · drift", order=5)

REFRESH_MS = 30_000
MOVER_COLUMNS = [
    {"name": "quantity", "id": "quantity"},
    {"name": "largest PSI", "id": "psi", "type": "numeric"},
    {"name": "level", "id": "level"},
    {"name": "hour of data", "id": "hour"},
]


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            page_header(
                "Drift",
                "Population stability index per hour of data against the champion's training reference "
                "(0.1 moderate, 0.25 major).",
            ),
            html.Div(id="drift-notice"),
            dcc.Dropdown(
                id="drift-hours",
                options=[{"label": f"last {h} hours of data", "value": h} for h in (6, 24, 48, 96)],
                value=24,
                clearable=False,
                style={"maxWidth": "260px"},
            ),
            panel("Inputs × hours", graph("drift-heatmap", height=620)),
            panel(
                "Worst movers",
                data_table("drift-movers", columns=MOVER_COLUMNS, data=[]),
            ),
            panel("Score, reconstruction error, alert rate", graph("drift-model", height=420)),
            dcc.Interval(id="drift-tick", interval=REFRESH_MS),
        ]
    )


@dash.callback(
    Output("drift-heatmap", "figure"),
    Output("drift-movers", "data"),
    Output("drift-model", "figure"),
    Output("drift-notice", "children"),
    Input("drift-tick", "n_intervals"),
    Input("drift-hours", "value"),
)
def update(_n: int | None, hours: int) -> tuple[Any, ...]:
    try:
        answer = api().drift(hours=hours)
    except (ApiUnreachable, ApiError) as exc:
        message = problem_text(exc)
        return (
            empty_figure(message, height=620),
            [],
            empty_figure(message, height=420),
            notice(message, "error"),
        )
    thin = [h["hour"] for h in answer["hours"] if not h["enough_rows"]]
    message = (
        f"{len(thin)} hour(s) with fewer than {answer['min_rows']} rows: no PSI there (blank)."
        if thin
        else None
    )
    return heatmap_figure(answer), mover_rows(answer), model_figure(answer), notice(message, "info")
