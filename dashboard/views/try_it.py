"""What the Try-it page shows, as pure functions of the API's answers (no Dash, no HTTP).

Kept apart from the page module so it can be imported and tested without a Dash app
(`dash.register_page` only works once an app exists).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from dashboard.components import (
    COLORS,
    styled,
)

#: The inputs of `/api/predict`, in the order the form shows them.
FEATURES: tuple[str, ...] = ("time", *(f"V{i}" for i in range(1, 29)), "amount")


def example_rows(item: dict[str, Any]) -> list[dict[str, Any]]:
    """Form rows for a stored transaction (`features` holds V1..V28)."""
    values = {"time": item["time"], "amount": item["amount"], **(item.get("features") or {})}
    return [{"feature": name, "value": values.get(name)} for name in FEATURES]


def request_body(rows: list[dict[str, Any]], example: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `/api/predict` body from the form; raises ValueError naming a missing or bad value.

    An unedited stored example keeps its id, so scoring it again never stores a second
    copy (the API answers `stored: false`); edited values are a new transaction.
    """
    body: dict[str, Any] = {}
    for row in rows:
        value = row.get("value")
        if value is None or value == "":
            raise ValueError(f"{row['feature']} has no value")
        try:
            body[row["feature"]] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{row['feature']} must be a number, got {value!r}") from None
    if example and example.get("values") == body:
        body["id"] = example["id"]
    return body


def gauge_figure(score: float, threshold: float) -> go.Figure:
    """A bullet gauge: the score as a bar, the threshold as a line."""
    color = COLORS["fraud"] if score >= threshold else COLORS["normal"]
    fig = go.Figure(
        go.Indicator(
            mode="number+gauge",
            value=score,
            number={"valueformat": ".4f", "font": {"size": 28}},
            gauge={
                "shape": "bullet",
                "axis": {"range": [0, 1]},
                "bar": {"color": color, "thickness": 0.6},
                "bgcolor": "#f3f4f6",
                "threshold": {
                    "line": {"color": COLORS["threshold"], "width": 4},
                    "thickness": 0.9,
                    "value": threshold,
                },
            },
            domain={"x": [0.18, 1], "y": [0.15, 0.85]},
        )
    )
    fig = styled(fig, height=170)
    fig.update_layout(margin={"l": 16, "r": 24, "t": 16, "b": 24})
    return fig
