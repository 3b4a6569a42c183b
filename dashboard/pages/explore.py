"""Explore: amount by class, any feature's histogram by class, and a feature-pair scatter.

Histograms come pre-binned from the API (computed in PostgreSQL), so the page stays
fast with the full data stored. Classes are shown as shares of their own rows: frauds
are 0.2% of the data, and raw counts would flatten them to nothing.
"""

from __future__ import annotations

from typing import Any

import dash
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from dashboard.client import ApiError, ApiUnreachable
from dashboard.components import (
    empty_figure,
    graph,
    options,
    page_header,
    panel,
    problem_text,
)
from dashboard.context import api
from dashboard.views.explore import (
    FEATURES,
    histogram_figure,
    scatter_figure,
)

dash.register_page(__name__, path="/explore", name="Explore", title="fraudstream · explore", order=1)

REFRESH_MS = 10_000


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            page_header("Explore", "How frauds differ from normal transactions, on the stored data."),
            html.Div(
                [
                    panel("Amount by class", graph("explore-amount", height=340)),
                    panel(
                        "Feature histogram by class",
                        graph("explore-feature", height=340),
                        extra=dcc.Dropdown(
                            id="explore-feature-name",
                            options=options(FEATURES),
                            value="V14",
                            clearable=False,
                            className="control",
                        ),
                    ),
                ],
                className="grid grid-2",
            ),
            panel(
                "Feature pair (a balanced sample; ringed points are model alerts)",
                graph("explore-scatter", height=460),
                extra=html.Div(
                    [
                        html.Label("x"),
                        dcc.Dropdown(
                            id="explore-x",
                            options=options(FEATURES),
                            value="V14",
                            clearable=False,
                            className="control",
                        ),
                        html.Label("y"),
                        dcc.Dropdown(
                            id="explore-y",
                            options=options(FEATURES),
                            value="V17",
                            clearable=False,
                            className="control",
                        ),
                    ],
                    className="controls",
                ),
            ),
            dcc.Interval(id="explore-tick", interval=REFRESH_MS),
        ]
    )


# ---------------------------------------------------------------------------- callbacks


@dash.callback(Output("explore-amount", "figure"), Input("explore-tick", "n_intervals"))
def update_amount(_n: int | None) -> go.Figure:
    try:
        return histogram_figure(api().amount_distribution())
    except (ApiUnreachable, ApiError) as exc:
        return empty_figure(problem_text(exc), height=340)


@dash.callback(
    Output("explore-feature", "figure"),
    Input("explore-feature-name", "value"),
    Input("explore-tick", "n_intervals"),
)
def update_feature(name: str, _n: int | None) -> go.Figure:
    try:
        return histogram_figure(api().feature_distribution(name))
    except (ApiUnreachable, ApiError) as exc:
        return empty_figure(problem_text(exc), height=340)


@dash.callback(
    Output("explore-scatter", "figure"),
    Input("explore-x", "value"),
    Input("explore-y", "value"),
    Input("explore-tick", "n_intervals"),
)
def update_scatter(x: str, y: str, _n: int | None) -> go.Figure:
    try:
        return scatter_figure(api().scatter(x, y, n=2000))
    except (ApiUnreachable, ApiError) as exc:
        return empty_figure(problem_text(exc), height=460)
