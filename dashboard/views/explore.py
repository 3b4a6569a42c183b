"""What the Explore page shows, as pure functions of the API's answers (no Dash, no HTTP).

Kept apart from the page module so it can be imported and tested without a Dash app
(`dash.register_page` only works once an app exists).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import plotly.graph_objects as go

from dashboard.components import (
    COLORS,
    empty_figure,
    fmt_int,
    styled,
)

#: What the API serves distributions and scatters for: the transaction's inputs and the model's outputs.
FEATURES: tuple[str, ...] = ("Time", *(f"V{i}" for i in range(1, 29)), "Amount", "score", "recon_error")
CLASSES = ("normal", "fraud")


def _centers(edges: list[float], log: bool) -> list[float]:
    if log:
        return [math.log10(1 + max(a, 0)) / 2 + math.log10(1 + max(b, 0)) / 2 for a, b in pairwise(edges)]
    return [(a + b) / 2 for a, b in pairwise(edges)]


def histogram_figure(dist: dict[str, Any], *, height: int = 340) -> go.Figure:
    """Overlaid per-class histograms as shares of each class (bins from the API)."""
    edges = dist.get("edges") or []
    series = {s["name"]: s for s in dist.get("series", [])}
    shown = [name for name in CLASSES if series.get(name, {}).get("total")]
    if len(edges) < 2 or not shown:
        return empty_figure("No labelled transactions stored yet.", height=height)
    log = dist.get("scale") == "log"
    x = _centers(edges, log)
    widths = [
        (math.log10(1 + max(b, 0)) - math.log10(1 + max(a, 0))) if log else (b - a)
        for a, b in pairwise(edges)
    ]
    fig = go.Figure()
    for name in shown:
        s = series[name]
        total = s["total"]
        fig.add_trace(
            go.Bar(
                x=x,
                y=[c / total for c in s["counts"]],
                width=widths,
                name=f"{name} ({fmt_int(total)})",
                marker_color=COLORS[name],
                opacity=0.6,
                customdata=[(a, b, c) for (a, b), c in zip(pairwise(edges), s["counts"], strict=True)],
                hovertemplate="%{customdata[0]:.2f} – %{customdata[1]:.2f}<br>%{customdata[2]} rows"
                "<br>%{y:.1%} of " + name + "<extra></extra>",
            )
        )
    feature = dist.get("feature", "")
    fig.update_layout(barmode="overlay", bargap=0)
    fig.update_yaxes(title_text="share of the class", tickformat=".0%")
    if log:
        ticks = [v for v in (0, 1, 10, 100, 1_000, 10_000, 100_000) if v <= max(edges) * 1.5 or v == 0]
        fig.update_xaxes(
            title_text=f"{feature} (log scale)",
            tickvals=[math.log10(1 + v) for v in ticks],
            ticktext=[f"{v:,}" for v in ticks],
        )
    else:
        fig.update_xaxes(title_text=feature)
    return styled(fig, height=height)


def scatter_figure(data: dict[str, Any], *, height: int = 460) -> go.Figure:
    """Sampled points of two features, normal and fraud in their colours, alerts ringed."""
    points = data.get("points") or []
    if not points:
        return empty_figure("No transactions stored yet.", height=height)
    fig = go.Figure()
    for name, label in (("normal", 0), ("fraud", 1), ("unlabelled", None)):
        group = [p for p in points if p.get("label") == label]
        if not group:
            continue
        fig.add_trace(
            go.Scattergl(
                x=[p["x"] for p in group],
                y=[p["y"] for p in group],
                mode="markers",
                name=f"{name} ({len(group)})",
                marker={
                    "color": COLORS[name],
                    "size": 6 if name == "fraud" else 5,
                    "opacity": 0.75 if name == "fraud" else 0.45,
                    "line": {"width": [1.2 if p["alert"] else 0 for p in group], "color": "#111827"},
                },
                customdata=[[p["id"][:12], p["score"], " (alert)" if p["alert"] else ""] for p in group],
                hovertemplate="%{customdata[0]}<br>score %{customdata[1]:.4f}%{customdata[2]}<extra>"
                + name
                + "</extra>",
            )
        )
    fig.update_xaxes(title_text=data.get("x"))
    fig.update_yaxes(title_text=data.get("y"))
    return styled(fig, height=height)
