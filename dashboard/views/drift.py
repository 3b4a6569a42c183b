"""What the Drift page shows, as pure functions of `GET /api/drift`'s answer (no Dash, no HTTP).

The heat map is inputs × hours of data coloured by PSI on a scale whose breaks sit at the
answer's thresholds (0.1 moderate, 0.25 major), so the colour alone says the level; an
hour with too few rows for PSI stays blank. Beside it: the worst movers, and per hour the
PSI of the score and of the reconstruction error and the alert rate against the rate the
reference expects.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.components import COLORS, empty_figure, styled

#: Colours of the three levels: stable, moderate, major.
LEVEL_COLORS = ("#e8f1e4", "#f6c85f", "#d62728")
#: PSI where the colour scale ends (everything above reads as major).
SCALE_MAX = 0.5
MODEL_QUANTITIES = ("score", "recon_error")


def _colorscale(moderate: float, major: float) -> list[list[Any]]:
    """Stable, moderate and major as three bands, with a sharp break at each threshold."""
    m, j = moderate / SCALE_MAX, major / SCALE_MAX
    stable, middle, high = LEVEL_COLORS
    return [[0.0, stable], [m, stable], [m, middle], [j, middle], [j, high], [1.0, high]]


def inputs(answer: dict[str, Any]) -> list[str]:
    """The inputs in the answer, in their natural order (V1..V28, Amount)."""
    names = {name for hour in answer.get("hours", []) for name in hour["psi"] if name not in MODEL_QUANTITIES}

    def order(name: str) -> tuple[int, int]:
        return (0, int(name[1:])) if name.startswith("V") and name[1:].isdigit() else (1, 0)

    return sorted(names, key=order)


def heatmap_figure(answer: dict[str, Any], *, height: int = 620) -> go.Figure:
    """Inputs × hours of data, coloured by PSI (blank: too few rows in that hour)."""
    hours = answer.get("hours", [])
    if not hours:
        return empty_figure("No scored rows in this window yet.", height=height)
    names = inputs(answer)
    z = [[hour["psi"].get(name) for hour in hours] for name in names]
    labels = [f"h{hour['hour']}" for hour in hours]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=names,
            zmin=0.0,
            zmax=SCALE_MAX,
            colorscale=_colorscale(answer["moderate"], answer["major"]),
            colorbar={
                "title": "PSI",
                "tickvals": [0, answer["moderate"], answer["major"], SCALE_MAX],
                "ticktext": [
                    "0",
                    f"{answer['moderate']:g} moderate",
                    f"{answer['major']:g} major",
                    f"≥{SCALE_MAX:g}",
                ],
            },
            hovertemplate="%{y}, hour %{x}: PSI %{z:.3f}<extra></extra>",
            xgap=1,
            ygap=1,
        )
    )
    fig.update_yaxes(autorange="reversed")
    return styled(fig, title="PSI per input and hour of data", height=height)


def mover_rows(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The worst movers as table rows."""
    return [
        {"quantity": m["quantity"], "psi": round(m["psi"], 4), "level": m["level"], "hour": m["hour"]}
        for m in answer.get("worst", [])
    ]


def model_figure(answer: dict[str, Any], *, height: int = 420) -> go.Figure:
    """Per hour: PSI of the score and of the recon error (thresholds marked); the alert rate vs expected."""
    hours = answer.get("hours", [])
    if not hours:
        return empty_figure("No scored rows in this window yet.", height=height)
    x = [hour["hour"] for hour in hours]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12,
        subplot_titles=("PSI of the score and the reconstruction error", "alert rate"),
    )
    for name, color in zip(MODEL_QUANTITIES, (COLORS["fraud"], "#4c78a8"), strict=True):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[hour["psi"].get(name) for hour in hours],
                name=name,
                mode="lines+markers",
                line={"color": color},
            ),
            row=1,
            col=1,
        )
    for level, value in (("moderate", answer["moderate"]), ("major", answer["major"])):
        fig.add_hline(y=value, line_dash="dot", annotation_text=level, row=1, col=1)
    fig.add_trace(
        go.Scatter(x=x, y=[hour["alert_rate"] for hour in hours], name="alert rate", mode="lines+markers"),
        row=2,
        col=1,
    )
    expected = next(
        (hour["expected_alert_rate"] for hour in hours if hour.get("expected_alert_rate") is not None), None
    )
    if expected is not None:
        fig.add_hline(y=expected, line_dash="dash", annotation_text="expected", row=2, col=1)
    fig.update_xaxes(title_text="hour of data", row=2, col=1)
    return styled(fig, height=height)
