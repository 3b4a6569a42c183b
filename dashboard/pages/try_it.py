"""Try it: take a real normal or fraud transaction from the stored data (or edit its
values), score it with `/api/predict` and see why with `/api/explain`.

Examples come from the API (`/api/transactions?label=0` and `/api/anomalies`), never from
files: the page works against any deployment that has data.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, ctx, dcc, html

from dashboard.client import ApiError, ApiUnreachable
from dashboard.components import (
    data_table,
    empty_figure,
    graph,
    notice,
    page_header,
    panel,
    problem_text,
)
from dashboard.context import api
from dashboard.views.try_it import (
    FEATURES,
    example_rows,
    gauge_figure,
    request_body,
)
from dashboard.waterfall import waterfall_figure

dash.register_page(__name__, path="/try", name="Try it", title="fraudstream · try it", order=3)

EXAMPLES = 50


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            page_header(
                "Try it", "Score one transaction with the live model and see which features decided."
            ),
            html.Div(id="try-notice"),
            html.Div(
                [
                    panel(
                        "Transaction",
                        html.Div(
                            [
                                html.Button(
                                    "Normal example", id="try-normal", className="button", n_clicks=0
                                ),
                                html.Button(
                                    "Fraud example",
                                    id="try-fraud",
                                    className="button button-fraud",
                                    n_clicks=0,
                                ),
                                html.Button(
                                    "Score it", id="try-score", className="button button-ghost", n_clicks=0
                                ),
                            ],
                            className="controls",
                        ),
                        html.Div(id="try-source", className="muted small", style={"margin": "8px 0"}),
                        dcc.Store(id="try-example"),
                        data_table(
                            "try-values",
                            columns=[
                                {"name": "feature", "id": "feature", "editable": False},
                                {
                                    "name": "value (editable)",
                                    "id": "value",
                                    "type": "numeric",
                                    "editable": True,
                                },
                            ],
                            data=[{"feature": name, "value": None} for name in FEATURES],
                            style_table={"height": "520px", "overflowY": "auto"},
                            padding="4px 8px",
                            style_data_conditional=[
                                {"if": {"column_id": "value"}, "backgroundColor": "#f9fafb"},
                            ],
                        ),
                    ),
                    html.Div(
                        [
                            panel(
                                "Score against the threshold",
                                html.Div(id="try-result", className="result"),
                                graph("try-gauge", height=170, message="Pick an example, then score it."),
                            ),
                            panel("Explanation", graph("try-waterfall", height=460, message="")),
                        ],
                    ),
                ],
                className="grid grid-live",
            ),
        ]
    )


# ---------------------------------------------------------------------------- callbacks


@dash.callback(
    Output("try-values", "data"),
    Output("try-source", "children"),
    Output("try-example", "data"),
    Input("try-normal", "n_clicks"),
    Input("try-fraud", "n_clicks"),
    prevent_initial_call=True,
)
def load_example(normal_clicks: int, fraud_clicks: int) -> tuple[Any, ...]:
    fraud = ctx.triggered_id == "try-fraud"
    try:
        page = api().anomalies(limit=EXAMPLES) if fraud else api().transactions(limit=EXAMPLES, label=0)
    except (ApiUnreachable, ApiError) as exc:
        return dash.no_update, problem_text(exc), dash.no_update
    items = [item for item in page.get("items", []) if item.get("features")]
    if not items:
        kind = "fraud" if fraud else "normal"
        return dash.no_update, f"No stored {kind} transactions yet: replay some data first.", dash.no_update
    # Each click steps to the next stored example, so repeated clicks walk through them.
    item = items[((fraud_clicks if fraud else normal_clicks) - 1) % len(items)]
    label = {1: "fraud", 0: "normal"}.get(item.get("label"), "unlabelled")
    source = f"Stored transaction {item['id'][:12]}… (label: {label}, stored score {item['score']:.4f})."
    rows = example_rows(item)
    return rows, source, {"id": item["id"], "values": {r["feature"]: float(r["value"]) for r in rows}}


@dash.callback(
    Output("try-result", "children"),
    Output("try-gauge", "figure"),
    Output("try-waterfall", "figure"),
    Output("try-notice", "children"),
    Input("try-score", "n_clicks"),
    State("try-values", "data"),
    State("try-example", "data"),
    prevent_initial_call=True,
)
def score(_clicks: int, rows: list[dict[str, Any]], example: dict[str, Any] | None) -> tuple[Any, ...]:
    try:
        body = request_body(rows, example)
    except ValueError as exc:
        return dash.no_update, dash.no_update, dash.no_update, notice(f"Cannot score: {exc}.", "warn")
    client = api()
    try:
        prediction = client.predict(body)
        explanation = client.explain(body)
    except (ApiUnreachable, ApiError) as exc:
        message = problem_text(exc)
        if isinstance(exc, ApiError) and exc.status in (401, 403):
            message = (
                f"The API refused the prediction ({exc.detail}): set FRAUDSTREAM_API_TOKEN for the dashboard."
            )
        return (
            "",
            empty_figure(problem_text(exc), height=170),
            empty_figure("", height=460),
            notice(message, "error"),
        )
    alert = prediction["alert"]
    result = [
        html.Span(f"{prediction['score']:.4f}", id="try-score-value", className="result-score"),
        html.Span("ALERT" if alert else "no alert", className="pill pill-alert" if alert else "pill pill-ok"),
        html.Span(
            f"threshold {prediction['threshold']:.4f} · model {prediction['model_version'][:12]}"
            + (" · stored as a new transaction" if prediction.get("stored") else ""),
            className="muted",
        ),
    ]
    return (
        result,
        gauge_figure(prediction["score"], prediction["threshold"]),
        waterfall_figure(explanation),
        notice(None),
    )
