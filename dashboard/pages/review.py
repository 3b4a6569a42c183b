"""Review: work the live alerts one at a time, highest score first (or by age).

The next alert waiting for a verdict, with its amount, score, model version and the
explanation waterfall (`/api/explain` on its stored inputs); Confirm fraud / Not fraud /
Skip, with a note, by click or by key (f / n / s, `assets/review-keys.js`). A verdict goes
to `POST /api/alerts/{id}/review` under the reviewer's name (the dashboard's write token
acts for its analysts; the API records both), with an id made once per shown alert, so a
double press records it once. The queue is read fresh after every verdict and every tick:
an alert decided here or by anyone else is never shown again. Skipped alerts stay in the
queue (for others, and for this reviewer once nothing else is left).
"""

from __future__ import annotations

import uuid
from typing import Any

import dash
from dash import Input, Output, State, ctx, dcc, html

from dashboard.client import ApiError, ApiUnreachable
from dashboard.components import empty_figure, graph, kpi_card, notice, page_header, panel, problem_text
from dashboard.context import api, settings
from dashboard.views.review import (
    SHORTCUTS,
    VERDICTS,
    alert_facts,
    counts_text,
    explain_body,
    next_alert,
    skip,
)
from dashboard.waterfall import waterfall_figure

dash.register_page(__name__, path="/review", name="Review", title="fraudstream · review", order=5)

#: How much of the queue each read looks at (the shown alert is kept while it is in it).
QUEUE_PAGE = 100
WATERFALL_HEIGHT = 460
BUTTONS = (
    ("review-fraud", "Confirm fraud", "button button-fraud"),
    ("review-not-fraud", "Not fraud", "button"),
    ("review-skip", "Skip", "button button-ghost"),
)
_KEY_OF = {button: key for key, button in SHORTCUTS.items()}


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            page_header(
                "Review", "Decide the live alerts: is it fraud? Every verdict is kept, with who and why."
            ),
            html.Div(
                [
                    html.Label("Reviewer", htmlFor="review-who", className="muted small"),
                    dcc.Input(
                        id="review-who",
                        type="text",
                        placeholder="your name",
                        maxLength=128,
                        debounce=False,
                        persistence=True,
                        persistence_type="local",
                        className="input",
                        style={"width": "240px"},
                    ),
                    html.Label("Order", htmlFor="review-order", className="muted small"),
                    dcc.Dropdown(
                        id="review-order",
                        options=[
                            {"label": "highest score first", "value": "score"},
                            {"label": "oldest first", "value": "oldest"},
                            {"label": "newest first", "value": "newest"},
                        ],
                        value="score",
                        clearable=False,
                        style={"width": "220px"},
                    ),
                ],
                className="controls",
            ),
            html.Div(
                [
                    kpi_card("review-backlog", "Backlog", "live alerts waiting for a verdict"),
                    kpi_card("review-reviewed", "Reviewed", "alerts with a verdict (all reviewers)"),
                    kpi_card("review-precision", "Precision from reviews", "confirmed fraud / reviewed"),
                    kpi_card("review-mine", "Your verdicts"),
                ],
                className="kpis",
            ),
            html.Div(id="review-notice"),
            html.Div(
                [
                    panel(
                        "Next alert",
                        html.Div(id="review-facts"),
                        dcc.Textarea(
                            id="review-note",
                            placeholder="note (optional): why",
                            maxLength=2000,
                            style={"width": "100%", "height": "70px", "margin": "8px 0"},
                        ),
                        html.Div(
                            [
                                html.Button(
                                    [label, html.Kbd(_KEY_OF[button], className="kbd")],
                                    id=button,
                                    className=css,
                                    n_clicks=0,
                                    title=f"shortcut: {_KEY_OF[button]}",
                                )
                                for button, label, css in BUTTONS
                            ],
                            className="controls",
                        ),
                        html.P(
                            "Keys: f = confirm fraud · n = not fraud · s = skip (outside the text fields).",
                            id="review-shortcuts",
                            className="muted small",
                        ),
                        html.Div(id="review-last", className="muted small"),
                    ),
                    panel("Why it alerted", graph("review-waterfall", height=WATERFALL_HEIGHT, message="")),
                ],
                className="grid grid-live",
            ),
            dcc.Store(id="review-current"),
            dcc.Store(id="review-decided"),
            dcc.Store(id="review-skipped", storage_type="session", data=[]),
            dcc.Interval(id="review-tick", interval=max(1000, settings().refresh_ms)),
        ]
    )


# ---------------------------------------------------------------------------- callbacks


@dash.callback(
    Output("review-decided", "data"),
    Output("review-skipped", "data"),
    Output("review-note", "value"),
    Output("review-notice", "children", allow_duplicate=True),
    Output("review-last", "children"),
    Input("review-fraud", "n_clicks"),
    Input("review-not-fraud", "n_clicks"),
    Input("review-skip", "n_clicks"),
    State("review-current", "data"),
    State("review-skipped", "data"),
    State("review-who", "value"),
    State("review-note", "value"),
    prevent_initial_call=True,
)
def act(
    _fraud: int,
    _not_fraud: int,
    _skip: int,
    current: dict[str, Any] | None,
    skipped: list[str] | None,
    who: str | None,
    note: str | None,
) -> tuple[Any, ...]:
    """Record the pressed verdict, or the skip; the `choose` callback then shows the next alert.

    Kept apart from the periodic refresh, so a tick never cancels the answer to a press."""
    pressed = ctx.triggered_id
    if current is None:
        return (dash.no_update,) * 5
    if pressed == "review-skip":
        last = f"Skipped {current['id'][:12]}… (it stays in the queue)."
        return {"id": current["id"]}, skip(skipped or [], current["id"]), "", notice(None), last
    reviewer = (who or "").strip()
    if not reviewer:
        message = notice("Enter your name as reviewer first: every verdict says who gave it.", "warn")
        return dash.no_update, dash.no_update, dash.no_update, message, dash.no_update
    try:
        answer = api().review(
            current["id"],
            VERDICTS[pressed],
            reviewer=reviewer,
            note=(note or "").strip() or None,
            review_id=current["review_id"],
        )
    except (ApiUnreachable, ApiError) as exc:
        message = notice(f"The verdict was not recorded: {problem_text(exc)}", "error")
        return dash.no_update, dash.no_update, dash.no_update, message, dash.no_update
    verdict = "fraud" if answer["label"] == 1 else "not fraud"
    last = f"Recorded: {current['id'][:12]}… is {verdict} ({answer['who']})."
    return {"id": current["id"]}, dash.no_update, "", notice(None), last


@dash.callback(
    Output("review-current", "data"),
    Output("review-notice", "children"),
    *(Output(button, "disabled") for button, _, _ in BUTTONS),
    Input("review-tick", "n_intervals"),
    Input("review-order", "value"),
    Input("review-decided", "data"),
    State("review-current", "data"),
    State("review-skipped", "data"),
)
def choose(
    _tick: int | None,
    order: str,
    decided: dict[str, Any] | None,
    current: dict[str, Any] | None,
    skipped: list[str] | None,
) -> tuple[Any, ...]:
    """Pick the alert to show from a fresh read of the queue: the shown one while it still waits
    (not decided here or anywhere else, not skipped), else the next."""
    trigger = ctx.triggered_id
    if trigger == "review-order" or (
        current and decided and trigger == "review-decided" and decided["id"] == current["id"]
    ):
        current = None
    try:
        items = api().review_queue(limit=QUEUE_PAGE, order=order or "score")["items"]
    except (ApiUnreachable, ApiError) as exc:
        return dash.no_update, notice(problem_text(exc), "error"), *([True] * 3)
    chosen = next_alert(items, current, skipped or [])
    if chosen is None:
        message = notice(
            "No alert is waiting for a verdict. New alerts appear here as they are scored.", "info"
        )
        return None, message, *([True] * 3)
    if chosen is current:
        return dash.no_update, dash.no_update, *([False] * 3)
    # A new id per shown alert: pressing twice (or a retry) records the verdict once.
    return {**chosen, "review_id": uuid.uuid4().hex}, notice(None), *([False] * 3)


@dash.callback(
    Output("review-facts", "children"),
    Output("review-waterfall", "figure"),
    Input("review-current", "data"),
)
def show(current: dict[str, Any] | None) -> tuple[Any, ...]:
    if current is None:
        return (
            html.P("Nothing to review.", id="review-empty", className="muted"),
            empty_figure("", height=WATERFALL_HEIGHT),
        )
    facts = html.Dl(
        [part for label, value in alert_facts(current) for part in (html.Dt(label), html.Dd(value))],
        id="review-alert",
        className="facts",
        **{"data-id": current["id"]},
    )
    try:
        figure = waterfall_figure(api().explain(explain_body(current)), height=WATERFALL_HEIGHT)
    except (ApiUnreachable, ApiError) as exc:
        figure = empty_figure(problem_text(exc), height=WATERFALL_HEIGHT)
    return facts, figure


@dash.callback(
    Output("review-backlog", "children"),
    Output("review-reviewed", "children"),
    Output("review-precision", "children"),
    Output("review-mine", "children"),
    Output("review-mine-sub", "children"),
    Input("review-tick", "n_intervals"),
    Input("review-current", "data"),
    Input("review-who", "value"),
)
def counts(_tick: int | None, _current: Any, who: str | None) -> tuple[str, ...]:
    try:
        summary = api().feedback_summary()
    except (ApiUnreachable, ApiError) as exc:
        return "–", "–", "–", "–", problem_text(exc)
    text = counts_text(summary, (who or "").strip() or None)
    return text["backlog"], text["reviewed"], text["precision"], text["mine"], text["mine_sub"]
