"""Model: the active model's ROC and PR curves, confusion matrix, feature importance,
offline (test split) against live (stored, labelled rows) metrics, the champion against
the shadow on the same rows, and all versions.

One `/api/model/performance` answer feeds the curves, the matrix, the importance and the
metrics comparison; `/api/models` feeds the versions table; `/api/models/compare` the champion-and-shadow panel.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, dcc, html

from dashboard.client import ApiError, ApiUnreachable
from dashboard.components import (
    data_table,
    empty_figure,
    graph,
    notice,
    page_header,
    panel,
    problem_text,
    short_version,
)
from dashboard.context import api
from dashboard.views.model import (
    DISAGREEMENT_COLUMNS,
    active_performance,
    comparison_figure,
    comparison_summary,
    confusion_figure,
    curve_figure,
    disagreement_rows,
    importance_figure,
    metrics_figure,
    version_rows,
)
from dashboard.views.savings import NO_COST, savings_caption, savings_figure

dash.register_page(__name__, path="/model", name="Model", title="fraudstream · model", order=2)

REFRESH_MS = 10_000
VERSION_COLUMNS = [
    {"name": "version", "id": "version"},
    {"name": "created", "id": "created_at"},
    {"name": "threshold", "id": "threshold", "type": "numeric"},
    {"name": "test AUPRC", "id": "auprc", "type": "numeric"},
    {"name": "role", "id": "role"},
    {"name": "registered by", "id": "registered_by"},
    {"name": "served by the API", "id": "loaded"},
]


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            page_header("Model", "The active model, offline (test split) and live (stored, labelled rows)."),
            html.Div(id="model-notice"),
            html.Div(
                [
                    panel("ROC curve", graph("model-roc", height=340)),
                    panel("Precision–recall curve", graph("model-pr", height=340)),
                    panel("Confusion matrix at the threshold (live)", graph("model-confusion", height=340)),
                ],
                className="grid grid-3",
            ),
            html.Div(
                [
                    panel("Offline vs live", graph("model-metrics", height=360)),
                    panel("Feature importance", graph("model-importance", height=360)),
                ],
                className="grid grid-2",
            ),
            savings_section(),
            champion_and_challenger(),
            panel(
                "Model versions",
                data_table(
                    "model-versions",
                    columns=VERSION_COLUMNS,
                    data=[],
                    style_data_conditional=[
                        {"if": {"filter_query": '{role} = "champion"'}, "fontWeight": "600"}
                    ],
                ),
            ),
            dcc.Interval(id="model-tick", interval=REFRESH_MS),
        ]
    )


def savings_section() -> html.Section:
    """Net savings by threshold on the live stream's labelled rows, the live threshold marked."""
    return panel(
        "Net savings by threshold (live, labelled rows)",
        html.Div(id="model-savings-caption", className="muted small"),
        graph("model-savings", height=340),
    )


def champion_and_challenger() -> html.Div:
    """The shadow beside the champion on the same labelled rows (`/api/models/compare`)."""
    return html.Div(
        [
            panel(
                "Champion vs shadow (same rows, last 24 h of data)",
                html.Div(id="model-compare-summary", className="compare-summary"),
                graph("model-compare", height=340),
            ),
            panel(
                "Alerts they disagree on (largest score difference first)",
                data_table("model-disagreements", columns=DISAGREEMENT_COLUMNS, data=[]),
            ),
        ],
        className="grid grid-2",
    )


# ---------------------------------------------------------------------------- callbacks


@dash.callback(
    Output("model-savings", "figure"),
    Output("model-savings-caption", "children"),
    Input("model-tick", "n_intervals"),
)
def update_savings(_n: int | None) -> tuple[Any, str]:
    try:
        curve = api().savings(bins=200)
    except (ApiUnreachable, ApiError) as exc:
        if isinstance(exc, ApiError) and exc.status == 409:
            return empty_figure(NO_COST, height=340), ""
        return empty_figure(problem_text(exc), height=340), ""
    return savings_figure(curve), savings_caption(curve)


@dash.callback(
    Output("model-roc", "figure"),
    Output("model-pr", "figure"),
    Output("model-confusion", "figure"),
    Output("model-metrics", "figure"),
    Output("model-importance", "figure"),
    Output("model-notice", "children"),
    Input("model-tick", "n_intervals"),
)
def update_performance(_n: int | None) -> tuple[Any, ...]:
    try:
        perf = api().model_performance()
    except (ApiUnreachable, ApiError) as exc:
        blank = empty_figure(problem_text(exc), height=340)
        return (
            blank,
            blank,
            blank,
            empty_figure(problem_text(exc), height=360),
            empty_figure(problem_text(exc), height=360),
            notice(problem_text(exc), "error"),
        )
    live = active_performance(perf)
    message = None
    if not live or not live.get("rows"):
        message = (
            f"Model {short_version(perf.get('active_version'))} has not scored any stored transaction yet."
        )
    return (
        curve_figure(perf, "roc"),
        curve_figure(perf, "pr"),
        confusion_figure(perf),
        metrics_figure(perf),
        importance_figure(perf),
        notice(message, "info"),
    )


@dash.callback(Output("model-versions", "data"), Input("model-tick", "n_intervals"))
def update_versions(_n: int | None) -> Any:
    try:
        return version_rows(api().models())
    except (ApiUnreachable, ApiError):
        return dash.no_update


@dash.callback(
    Output("model-compare", "figure"),
    Output("model-compare-summary", "children"),
    Output("model-disagreements", "data"),
    Input("model-tick", "n_intervals"),
)
def update_comparison(_n: int | None) -> tuple[Any, ...]:
    try:
        comparison = api().compare()
    except ApiError as exc:
        if exc.status == 409:  # no shadow: say how to set one
            text = (
                "No shadow model is set: `fraudstream model shadow VERSION` scores one beside the champion."
            )
            return empty_figure(text, height=340), notice(text, "info"), []
        return empty_figure(problem_text(exc), height=340), notice(problem_text(exc), "error"), []
    except ApiUnreachable as exc:
        return empty_figure(problem_text(exc), height=340), notice(problem_text(exc), "error"), []
    summary = [html.P(line) for line in comparison_summary(comparison)]
    return comparison_figure(comparison), summary, disagreement_rows(comparison)
